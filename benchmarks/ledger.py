"""The ledger's pure pieces, in memory: appends, Merkle proofs, and a full audit of a signed log.

Nothing here touches a store, a transaction or the network (benchmarks/ledger_store.py measures
the hub's real path): every number is an in-memory upper bound. Each is compared with a floor
measured in the same run on the same machine (raw Ed25519 verifications and SHA-256 hashes per
second), and reported as a ratio to it.

1. Appends of signed entries (leaf bytes -> decode -> Ledger.apply, which checks the signature,
   -> Merkle append), one at a time and in batches of 1,000. Target: >= 5,000/s batched.
2. Inclusion and consistency proofs generated and verified per second on a large tree.
3. A full audit: given a log's leaf bytes and its root, verify every signature (in parallel over
   os.cpu_count() processes), replay every entry (sequence numbers, balances, invariants) and
   recompute the root. Target: 1,000,000 entries in under two minutes.

    .venv/bin/python benchmarks/ledger.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common import emit, log, machine
from lumbung.crypto.keys import Identity
from lumbung.ledger import merkle
from lumbung.ledger.balances import Ledger
from lumbung.ledger.entries import (
    Entry,
    EscrowLock,
    Fee,
    Mint,
    Refund,
    Release,
    Stake,
    Transfer,
    Unstake,
    decode_leaf,
    leaf_bytes,
    sign_entry,
    signing_bytes,
    verify_entry,
)
from lumbung.ledger.tree import MemoryNodeStore, MerkleTree

TARGET_APPENDS_PER_S = 5_000
TARGET_AUDIT_S = 120.0
BATCH_SIZE = 1_000
# One round of the synthetic economy: a mint, a job's escrow paid out three ways, a transfer, and
# a provider staking and unstaking. Every kind that moves money except slash appears.
ENTRIES_PER_ROUND = 8
_CONSUMERS = 100
_PROVIDERS = 50
_CHUNK_ENTRIES = 5_000  # leaves per task sent to a worker process
_START_MS = 1_780_000_000_000


# --- A deterministic log that any process can sign a slice of --------------------------------


def _identity(name: str) -> Identity:
    seed = hashlib.sha256(f"lumbung-bench-ledger/{name}".encode()).digest()
    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


class Economy:
    """The actors of the synthetic log; entry i depends only on i, so workers sign any slice."""

    def __init__(self) -> None:
        self.treasury = _identity("treasury")
        self.hub = _identity("hub")
        self.consumers = [_identity(f"consumer/{i}") for i in range(_CONSUMERS)]
        self.providers = [_identity(f"provider/{i}") for i in range(_PROVIDERS)]

    def signed_leaf(self, index: int) -> bytes:
        entry, signer = self.entry(index)
        return leaf_bytes(sign_entry(entry, signer))

    def entry(self, index: int) -> tuple[Entry, Identity]:
        r, slot = divmod(index, ENTRIES_PER_ROUND)
        at = _START_MS + index
        c, p = self.consumers[r % _CONSUMERS], self.providers[r % _PROVIDERS]
        c_seq, p_seq = 2 * (r // _CONSUMERS), 2 * (r // _PROVIDERS)  # entries before this round
        hub, job = self.hub, _object_id("job", r)
        match slot:
            case 0:
                return Mint(self.treasury.actor_id, r + 1, at, c.actor_id, 1_000), self.treasury
            case 1:
                return EscrowLock(c.actor_id, c_seq + 1, at, job, 1_000), c
            case 2:
                task = _object_id("task", r)
                release = Release(hub.actor_id, 3 * r + 1, at, job, p.actor_id, 700, task, "done")
                return release, hub
            case 3:
                return Fee(hub.actor_id, 3 * r + 2, at, job, 100), hub
            case 4:
                return Refund(hub.actor_id, 3 * r + 3, at, job, c.actor_id, 200), hub
            case 5:
                return Transfer(c.actor_id, c_seq + 2, at, p.actor_id, 200), c
            case 6:
                return Stake(p.actor_id, p_seq + 1, at, 300), p
            case _:
                return Unstake(p.actor_id, p_seq + 2, at, 300), p


def _object_id(kind: str, number: int) -> str:
    return f"{kind}_{base64.b32encode(number.to_bytes(10, 'big')).decode().lower()}"


_ECONOMY: Economy | None = None


def _sign_range(bounds: tuple[int, int]) -> list[bytes]:
    global _ECONOMY
    if _ECONOMY is None:
        _ECONOMY = Economy()
    return [_ECONOMY.signed_leaf(i) for i in range(*bounds)]


def _verify_chunk(leaves: list[bytes]) -> int:
    """Decode and verify every leaf's signature; raises at the first bad one."""
    for data in leaves:
        verify_entry(decode_leaf(data))
    return len(leaves)


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + _CHUNK_ENTRIES, n)) for lo in range(0, n, _CHUNK_ENTRIES)]


def generate_log(n: int, pool: Any) -> tuple[list[bytes], float]:
    """The first ``n`` leaves of the synthetic log, signed across the pool; and the seconds."""
    started = time.perf_counter()
    leaves: list[bytes] = []
    for part in pool.imap(_sign_range, _chunks(n)):
        leaves.extend(part)
        if len(leaves) % 100_000 == 0:
            log(f"signed {len(leaves):,} of {n:,}")
    return leaves, time.perf_counter() - started


# --- Floors -------------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def floors(leaves: Sequence[bytes]) -> dict[str, float]:
    """Raw Ed25519 verifications/s on the entries' own messages, and SHA-256s/s of the leaves."""
    keys: dict[bytes, Ed25519PublicKey] = {}
    triples = []
    for data in leaves:  # preparing the messages is not part of the floor
        signed = decode_leaf(data)
        if signed.public_key not in keys:
            keys[signed.public_key] = Ed25519PublicKey.from_public_bytes(signed.public_key)
        triples.append((keys[signed.public_key], signed.signature, signing_bytes(signed.entry)))
    verify_s = _timed(lambda: [key.verify(sig, msg) for key, sig, msg in triples])
    sha = hashlib.sha256
    hash_s = _timed(lambda: [sha(b"\x00" + data).digest() for data in leaves])
    nodes = [os.urandom(32) for _ in range(len(leaves) + 1)]
    node_s = _timed(lambda: [merkle.node_hash(a, b) for a, b in itertools.pairwise(nodes)])
    return {
        "ed25519_verifications_per_s": rate(len(triples), verify_s),
        "sha256_leaf_hashes_per_s": rate(len(leaves), hash_s),
        "sha256_node_hashes_per_s": rate(len(leaves), node_s),
        "mean_leaf_bytes": round(statistics.fmean(len(d) for d in leaves), 1),
    }


# --- 1. Appends ---------------------------------------------------------------------------------


def appends(leaves: Sequence[bytes], economy: Economy, floor: dict[str, float]) -> dict[str, Any]:
    treasury, hub = economy.treasury.actor_id, economy.hub.actor_id
    results: dict[str, Any] = {}
    for mode, batch in (("one_at_a_time", 1), ("batched", BATCH_SIZE)):
        ledger, tree = Ledger(), MerkleTree(MemoryNodeStore())
        started = time.perf_counter()
        for lo in range(0, len(leaves), batch):
            hashes = []
            for data in leaves[lo : lo + batch]:
                ledger.apply(decode_leaf(data), treasury=treasury, hub=hub)
                hashes.append(merkle.leaf_hash(data))
            tree.append_many(hashes)
        elapsed = time.perf_counter() - started
        ledger.check_invariants()
        if tree.size != len(leaves):
            raise AssertionError(f"tree has {tree.size} leaves, not {len(leaves)}")
        results[mode] = {"entries": len(leaves), "seconds": round(elapsed, 3)}
        results[mode]["per_s"] = rate(len(leaves), elapsed)
        log(f"appends {mode}: {results[mode]['per_s']:,.0f}/s")
    per_entry_floor_s = (
        1 / floor["ed25519_verifications_per_s"] + 1 / floor["sha256_leaf_hashes_per_s"]
    )
    floor_per_s = round(1 / per_entry_floor_s, 1)
    for mode in ("one_at_a_time", "batched"):
        results[mode]["ratio_to_floor"] = round(results[mode]["per_s"] / floor_per_s, 3)
    results["floor_per_s"] = floor_per_s
    results["floor"] = "one raw Ed25519 verification + one SHA-256 of the leaf, per entry"
    results["batch_size"] = BATCH_SIZE
    results["target_batched_per_s"] = TARGET_APPENDS_PER_S
    results["meets_target"] = results["batched"]["per_s"] >= TARGET_APPENDS_PER_S
    return results


# --- 2. Proofs ----------------------------------------------------------------------------------


def _build_tree(n_leaves: int) -> tuple[MerkleTree, list[bytes], float]:
    """A tree over hashes of random bytes (signing is priced in the audit), and its build time."""
    hashes = [merkle.leaf_hash(os.urandom(64)) for _ in range(n_leaves)]
    tree = MerkleTree(MemoryNodeStore())
    started = time.perf_counter()
    for lo in range(0, n_leaves, 100_000):
        tree.append_many(hashes[lo : lo + 100_000])
    return tree, hashes, time.perf_counter() - started


def _inclusion(
    tree: MerkleTree, hashes: list[bytes], n_proofs: int, rng: random.Random
) -> dict[str, Any]:
    size, root = tree.size, tree.root()
    indices = [rng.randrange(size) for _ in range(n_proofs)]
    started = time.perf_counter()
    proofs = [tree.inclusion_proof(i) for i in indices]
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    for i, proof in zip(indices, proofs, strict=True):
        merkle.verify_inclusion(hashes[i], i, size, proof, root)
    verify_s = time.perf_counter() - started
    return proof_rates(proofs, generate_s, verify_s)


def _consistency(tree: MerkleTree, n_proofs: int, rng: random.Random) -> dict[str, Any]:
    size2 = tree.size
    sizes = [rng.randrange(1, size2) for _ in range(n_proofs)]
    roots = {s: tree.root(s) for s in sizes}  # the checkpoints an auditor already holds
    root2 = tree.root()
    started = time.perf_counter()
    proofs = [tree.consistency_proof(s, size2) for s in sizes]
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    for s, proof in zip(sizes, proofs, strict=True):
        merkle.verify_consistency(s, size2, roots[s], root2, proof)
    verify_s = time.perf_counter() - started
    return proof_rates(proofs, generate_s, verify_s)


def proof_rates(proofs: list[list[bytes]], generate_s: float, verify_s: float) -> dict[str, Any]:
    return {
        "proofs": len(proofs),
        "verified": len(proofs),  # verify_* raises on the first failure, so all passed
        "mean_hashes_per_proof": round(statistics.fmean(len(p) for p in proofs), 2),
        "generated_per_s": rate(len(proofs), generate_s),
        "verified_per_s": rate(len(proofs), verify_s),
    }


def proofs(n_leaves: int, n_proofs: int, floor: dict[str, float]) -> dict[str, Any]:
    tree, hashes, build_s = _build_tree(n_leaves)
    log(f"built a {n_leaves:,}-leaf tree in {build_s:.1f} s")
    rng = random.Random(3)
    results: dict[str, Any] = {
        "tree_leaves": n_leaves,
        "tree_build_s": round(build_s, 3),
        "tree_appends_per_s": rate(n_leaves, build_s),
        "inclusion": _inclusion(tree, hashes, n_proofs, rng),
        "consistency": _consistency(tree, n_proofs, rng),
        "floor": "SHA-256s of 65-byte node inputs per second / mean hashes per proof: "
        "the verifier's hashing alone",
    }
    for kind in ("inclusion", "consistency"):
        part = results[kind]
        floor_per_s = floor["sha256_node_hashes_per_s"] / max(part["mean_hashes_per_proof"], 1)
        part["floor_per_s"] = round(floor_per_s, 1)
        part["verify_ratio_to_floor"] = round(part["verified_per_s"] / floor_per_s, 3)
        part["generate_ratio_to_floor"] = round(part["generated_per_s"] / floor_per_s, 3)
        log(f"{kind}: {part['generated_per_s']:,.0f}/s generated, {part['verified_per_s']:,.0f}/s")
    return results


# --- 3. Audit -----------------------------------------------------------------------------------


def _pieces(leaves: list[bytes]) -> Iterator[list[bytes]]:
    for lo in range(0, len(leaves), _CHUNK_ENTRIES):
        yield leaves[lo : lo + _CHUNK_ENTRIES]


def _replay(leaves: list[bytes], economy: Economy) -> tuple[Ledger, bytes]:
    """Replay every entry in order, its signature already verified in parallel (seq, authority,
    funds and escrow are checked here)."""
    treasury, hub = economy.treasury.actor_id, economy.hub.actor_id
    ledger, hashes = Ledger(), []
    for data in leaves:
        ledger.apply_verified(decode_leaf(data), treasury=treasury, hub=hub)
        hashes.append(merkle.leaf_hash(data))
    ledger.check_invariants()
    return ledger, merkle.root(hashes)


def audit(leaves: list[bytes], root: bytes, economy: Economy, pool: Any, processes: int,
          floor: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    n = len(leaves)
    started = time.perf_counter()
    verified = sum(pool.imap_unordered(_verify_chunk, _pieces(leaves)))
    parallel_s = time.perf_counter() - started
    log(f"audit: {verified:,} signatures verified in parallel in {parallel_s:.1f} s")
    started = time.perf_counter()
    ledger, recomputed = _replay(leaves, economy)
    replay_s = time.perf_counter() - started
    log(f"audit: replayed and re-rooted {n:,} entries in {replay_s:.1f} s")
    if recomputed != root:
        raise AssertionError("the recomputed root differs from the log's root")
    total_s = parallel_s + replay_s
    verify_floor_s = n / floor["ed25519_verifications_per_s"]
    hash_floor_s = n / floor["sha256_leaf_hashes_per_s"]
    floor_s = verify_floor_s / processes + hash_floor_s
    return {
        "entries": n,
        "signatures_verified_parallel": verified,
        "entries_replayed": sum(ledger.snapshot().seqs.values()),
        "root_matches": recomputed == root,
        "invariants_hold": True,  # check_invariants raised otherwise
        "processes": processes,
        "a_parallel_verify_s": round(parallel_s, 3),
        "b_sequential_replay_s": round(replay_s, 3),
        "b_note": "Ledger.apply_verified: signatures were checked in (a), not again",
        "total_s": round(total_s, 3),
        "floor_s": round(floor_s, 3),
        "floor": f"{n:,} raw Ed25519 verifications split over {processes} processes + {n:,} "
        "SHA-256 leaf hashes, from the rates measured in this run",
        "ratio_to_floor": round(total_s / floor_s, 3),
        "target_s": TARGET_AUDIT_S,
        "meets_target": total_s < TARGET_AUDIT_S,
    }


# --- Main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    args = parser.parse_args()
    n_appends, n_leaves, n_proofs, n_audit = (
        (2_000, 10_000, 500, 5_000) if args.quick else (100_000, 1_000_000, 10_000, 1_000_000)
    )
    processes = os.cpu_count() or 1
    economy = Economy()
    # fork: the workers inherit the imported modules, so the pool starts in milliseconds.
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        log(f"signing a {n_audit:,}-entry log over {processes} processes")
        leaves, generate_s = generate_log(max(n_audit, n_appends), pool)
        root = merkle.root([merkle.leaf_hash(d) for d in leaves[:n_audit]])
        floor = floors(leaves[:n_appends])
        log(f"floors: {floor}")
        append_results = appends(leaves[:n_appends], economy, floor)
        proof_results = proofs(n_leaves, n_proofs, floor)
        audit_results = audit(leaves[:n_audit], root, economy, pool, processes, floor)
    emit(
        {
            "benchmark": "ledger",
            "scope": "in-memory: no store, no transactions, no network (ledger_store.py measures "
            "the hub's real path); these are upper bounds for the hub's ledger",
            "quick": args.quick,
            "machine": machine()
            | {
                "note": "one process per core for signing and the parallel verification; "
                "everything else single-threaded"
            },
            "log_generation": {
                "entries": len(leaves),
                "processes": processes,
                "seconds": round(generate_s, 3),
                "signed_per_s": rate(len(leaves), generate_s),
                "note": "signing the synthetic log; not part of the audit",
            },
            "floors": floor,
            "appends": append_results,
            "proofs": proof_results,
            "audit": audit_results,
        }
    )


if __name__ == "__main__":
    main()
