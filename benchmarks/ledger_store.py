"""The ledger through the hub's real path: ``LogService`` on the SQL store, proofs, a full audit.

Where ``benchmarks/ledger.py`` prices the ledger's pure pieces in memory, this runs what the hub
runs: ``LogService.append`` (signature check, replay on a copy of the balances, tree update, one
SQL transaction, a signed checkpoint) on ``SqlLedgerStore``, and ``lumbung ledger verify`` as a
separate process against a real hub serving the stored log. Floors are measured in the same run
(raw Ed25519 verifications/s and SHA-256s/s, from ``benchmarks/ledger.py``).

1. Appends/s, one entry per call and in batches of 1,000, on SQLite (a file in a temporary
   directory) and PostgreSQL (a fresh schema, dropped afterwards). Target: >= 5,000/s batched.
2. A large stored log (SQLite) built through ``LogService.append`` in batches of 10,000; then
   inclusion and consistency proofs generated from the stored tree and verified, per second; and
   single appends on top of the large log.
3. ``lumbung ledger verify`` end to end: the hub (``lumbung hub serve``) started on that log, the
   CLI run against it. Target: 1,000,000 entries in under two minutes.

The log is ``benchmarks/ledger.py``'s synthetic economy with the treasury and the hub as one key,
as ``LogService`` has it; that key is the hub's key file.

    .venv/bin/python benchmarks/ledger_store.py [--quick] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from common import (
    DEFAULT_POSTGRES_URL,
    PostgresUnreachable,
    ServerProcess,
    child_env,
    emit,
    log,
    machine,
    postgres_schema,
    server_process,
)
from ledger import ENTRIES_PER_ROUND, Economy, floors, proof_rates, rate
from lumbung.crypto.keys import KEY_FILE_NAME, Identity
from lumbung.hub.ledger import LogService
from lumbung.ledger import merkle
from lumbung.ledger.entries import Entry, SignedEntry, decode_leaf, leaf_bytes, sign_entry
from lumbung.store import tables as t
from lumbung.store.sql import SqlStore

TARGET_APPENDS_PER_S = 5_000
TARGET_AUDIT_S = 120.0
BATCH_SIZE = 1_000
BUILD_BATCH_SIZE = 10_000
# Slots of a round (see ledger.Economy.entry) that the treasury and the hub author: one key here.
_HUB_SLOTS = (0, 2, 3, 4)
_SIGN_CHUNK = 5_000
# A hub starting on a large log replays all of it before it listens.
_HUB_START_TIMEOUT_S = 900.0
_AUDIT_TIMEOUT_S = 1_800.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    single: int  # entries appended one per call
    batched: int  # entries appended in batches of BATCH_SIZE
    big_log: int  # the stored log for proofs and the audit
    proofs: int
    # One-per-call appends on top of the big log. Sizes are whole rounds of the economy: a log
    # that ends with an escrow still open gets it refunded by the hub, one entry more.
    single_on_big: int


QUICK = Sizes(single=100, batched=2_000, big_log=2_000, proofs=200, single_on_big=8)
# Few proofs on the big log: each costs a full scan of the stored nodes on SQLite (see
# nodes_query below), about a tenth of a second at a million entries.
FULL = Sizes(single=2_000, batched=50_000, big_log=1_000_000, proofs=200, single_on_big=8)


class HubEconomy(Economy):
    """``ledger.Economy`` with the treasury and the hub as one key (``LogService``'s identity):
    its four entries per round take consecutive sequence numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = self.treasury

    def entry(self, index: int) -> tuple[Entry, Identity]:
        entry, signer = super().entry(index)
        r, slot = divmod(index, ENTRIES_PER_ROUND)
        if slot in _HUB_SLOTS:
            entry = dataclasses.replace(entry, seq=len(_HUB_SLOTS) * r + _HUB_SLOTS.index(slot) + 1)
        return entry, signer


_ECONOMY: HubEconomy | None = None


def _sign_range(bounds: tuple[int, int]) -> list[bytes]:
    global _ECONOMY
    if _ECONOMY is None:
        _ECONOMY = HubEconomy()
    economy = _ECONOMY
    return [leaf_bytes(sign_entry(*economy.entry(i))) for i in range(*bounds)]


def sign_log(n: int, pool: Any) -> tuple[list[bytes], float]:
    """The first ``n`` leaves of the log, signed across the pool; and the seconds it took."""
    started = time.perf_counter()
    leaves: list[bytes] = []
    bounds = [(lo, min(lo + _SIGN_CHUNK, n)) for lo in range(0, n, _SIGN_CHUNK)]
    for part in pool.imap(_sign_range, bounds):
        leaves.extend(part)
        if len(leaves) % 200_000 == 0:
            log(f"signed {len(leaves):,} of {n:,}")
    return leaves, time.perf_counter() - started


def _append_all(
    service: LogService, leaves: Sequence[bytes], batch: int, report: Callable[[int], None]
) -> list[float]:
    """Append ``leaves`` through ``service`` ``batch`` at a time; the seconds each ``append`` took.

    Decoding the leaves into entries (the hub's HTTP route does it) is left out of the time."""
    batch_s: list[float] = []
    for lo in range(0, len(leaves), batch):
        entries = [decode_leaf(data) for data in leaves[lo : lo + batch]]
        started = time.perf_counter()
        service.append(entries)
        batch_s.append(time.perf_counter() - started)
        report(lo + len(entries))
    return batch_s


def _check_stored(service: LogService, leaves: Sequence[bytes]) -> None:
    """The stored tree must have the leaves' root, and a signed checkpoint at its size."""
    expected = merkle.root([merkle.leaf_hash(d) for d in leaves])
    if service.store.ledger_size() != len(leaves) or service.tree.root() != expected:
        raise AssertionError("the stored log does not hold the appended leaves")
    if service.store.latest_checkpoint()[0] != len(leaves):
        raise AssertionError("the latest checkpoint is not at the log's size")


# --- 1. Appends ---------------------------------------------------------------------------------


def _append_run(url: str, leaves: Sequence[bytes], batch: int, economy: HubEconomy) -> float:
    store = SqlStore.open(url)
    try:
        service = LogService(store.ledger(), economy.treasury)
        spent_s = sum(_append_all(service, leaves, batch, lambda _: None))
        _check_stored(service, leaves)
    finally:
        store.close()
    return spent_s


@contextlib.contextmanager
def _backend_url(backend: str, postgres_url: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp / f"appends-{time.monotonic_ns()}.sqlite3"
        yield f"sqlite:///{path}"
    else:
        with postgres_schema(postgres_url) as url:
            yield url


def appends(
    leaves: Sequence[bytes],
    sizes: Sizes,
    postgres_url: str,
    floor_per_s: float,
    economy: HubEconomy,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lumbung-bench-ledger-") as tmp:
        for backend in ("sqlite", "postgresql"):
            part: dict[str, Any] = {}
            try:
                for mode, batch, n in (
                    ("one_at_a_time", 1, sizes.single),
                    ("batched", BATCH_SIZE, sizes.batched),
                ):
                    with _backend_url(backend, postgres_url, Path(tmp)) as url:
                        spent_s = _append_run(url, leaves[:n], batch, economy)
                    per_s = rate(n, spent_s)
                    part[mode] = {
                        "entries": n,
                        "batch_size": batch,
                        "seconds": round(spent_s, 3),
                        "per_s": per_s,
                        "ratio_to_floor": round(per_s / floor_per_s, 3),
                    }
                    log(f"appends {backend} {mode}: {per_s:,.0f}/s")
            except PostgresUnreachable as exc:
                part = {"skipped": str(exc)}
            else:
                part["meets_target"] = part["batched"]["per_s"] >= TARGET_APPENDS_PER_S
            results[backend] = part
    results["floor_per_s"] = floor_per_s
    results["floor"] = "one raw Ed25519 verification + one SHA-256 of the leaf, per entry"
    results["target_batched_per_s"] = TARGET_APPENDS_PER_S
    return results


# --- 2. The big stored log, its proofs, and appends on top of it --------------------------------


def build_big_log(service: LogService, leaves: Sequence[bytes]) -> dict[str, Any]:
    def report(done: int) -> None:
        if done % 100_000 == 0:
            log(f"stored {done:,} of {len(leaves):,}")

    batch_s = _append_all(service, leaves, BUILD_BATCH_SIZE, report)
    spent_s = sum(batch_s)
    _check_stored(service, leaves)
    log(f"built a {len(leaves):,}-entry stored log in {spent_s:.1f} s")
    return {
        "entries": len(leaves),
        "batch_size": BUILD_BATCH_SIZE,
        "seconds": round(spent_s, 3),
        "per_s": rate(len(leaves), spent_s),
        "first_batch_per_s": rate(len(leaves[:BUILD_BATCH_SIZE]), batch_s[0]),
        "last_batch_per_s": rate(len(leaves) - BUILD_BATCH_SIZE * (len(batch_s) - 1), batch_s[-1]),
    }


def proofs(
    service: LogService, leaves: Sequence[bytes], n_proofs: int, node_hashes_per_s: float
) -> dict[str, Any]:
    tree, rng = service.tree, random.Random(3)
    size, root = tree.size, tree.root()
    indices = [rng.randrange(size) for _ in range(n_proofs)]
    started = time.perf_counter()
    inclusion = [tree.inclusion_proof(i) for i in indices]
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    for i, path in zip(indices, inclusion, strict=True):
        merkle.verify_inclusion(merkle.leaf_hash(leaves[i]), i, size, path, root)
    results: dict[str, Any] = {
        "tree_leaves": size,
        "inclusion": proof_rates(inclusion, generate_s, time.perf_counter() - started),
    }
    sizes = [rng.randrange(1, size) for _ in range(n_proofs)]
    roots = {s: tree.root(s) for s in sizes}  # the checkpoints an auditor already holds
    started = time.perf_counter()
    consistency = [tree.consistency_proof(s, size) for s in sizes]
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    for s, path in zip(sizes, consistency, strict=True):
        merkle.verify_consistency(s, size, roots[s], root, path)
    results["consistency"] = proof_rates(consistency, generate_s, time.perf_counter() - started)
    for kind in ("inclusion", "consistency"):
        part = results[kind]
        floor_per_s = node_hashes_per_s / max(part["mean_hashes_per_proof"], 1)
        part["floor_per_s"] = round(floor_per_s, 1)
        part["generate_ratio_to_floor"] = round(part["generated_per_s"] / floor_per_s, 6)
        part["verify_ratio_to_floor"] = round(part["verified_per_s"] / floor_per_s, 3)
        log(f"{kind}: {part['generated_per_s']:,.0f}/s generated, {part['verified_per_s']:,.0f}/s")
    results["floor"] = "SHA-256s of 65-byte node inputs per second / mean hashes per proof"
    return results


def nodes_query(store: SqlStore, size: int, samples: int) -> dict[str, Any]:
    """Seconds per ``SqlLedgerStore.nodes`` call for the sibling keys of a random leaf's path,
    against the same keys read by OR-ed primary-key equalities on the same engine.

    Every root, proof and append reads the tree this way. The store's row-value
    ``(level, idx) IN (VALUES ...)`` is planned by SQLite as a scan of the whole table."""
    rng, table = random.Random(5), t.ledger_nodes
    key_sets = []
    for _ in range(samples):
        leaf = rng.randrange(size)
        keys = [(lv, (leaf >> lv) ^ 1) for lv in range(size.bit_length() - 1)]
        key_sets.append([(lv, ix) for lv, ix in keys if (ix + 1) << lv <= size])
    store_s, or_s = [], []
    with store.engine.connect() as conn:
        for keys in key_sets:
            started = time.perf_counter()
            by_store = store.ledger().nodes(keys)
            store_s.append(time.perf_counter() - started)
            match = sa.or_(*(sa.and_(table.c.level == lv, table.c.idx == ix) for lv, ix in keys))
            started = time.perf_counter()
            rows = conn.execute(sa.select(table.c.level, table.c.idx, table.c.hash).where(match))
            by_or = {(int(lv), int(ix)): bytes(h) for lv, ix, h in rows}
            or_s.append(time.perf_counter() - started)
            if by_or != by_store:
                raise AssertionError("the two queries read different nodes")
    result = {
        "calls": samples,
        "mean_keys": round(statistics.fmean(len(k) for k in key_sets), 1),
        "store_nodes_median_ms": round(1000 * statistics.median(store_s), 3),
        "or_of_primary_keys_median_ms": round(1000 * statistics.median(or_s), 3),
    }
    log(f"nodes query: {result}")
    return result


def appends_on_big(service: LogService, leaves: Sequence[bytes]) -> dict[str, Any]:
    entries: list[SignedEntry] = [decode_leaf(data) for data in leaves]
    started = time.perf_counter()
    for signed in entries:
        service.append([signed])
    spent_s = time.perf_counter() - started
    log(f"one-at-a-time appends on the big log: {rate(len(entries), spent_s):,.1f}/s")
    return {
        "entries": len(entries),
        "log_size_before": service.store.ledger_size() - len(entries),
        "seconds": round(spent_s, 3),
        "per_s": rate(len(entries), spent_s),
    }


# --- 3. lumbung ledger verify against a real hub ------------------------------------------------


def write_hub_key(data_dir: Path, identity: Identity) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = data_dir / KEY_FILE_NAME
    key_path.write_bytes(identity.private_key_pem())
    key_path.chmod(0o600)


@contextlib.contextmanager
def hub_on(data_dir: Path, log_path: Path) -> Iterator[tuple[ServerProcess, float]]:
    """``lumbung hub serve`` on the log in ``data_dir``; and the seconds until it listened."""
    argv = [
        sys.executable,
        "-m",
        "lumbung",
        "hub",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
    ]
    started = time.perf_counter()
    # A hub on a big log replays it before it listens: minutes, not the usual start-up timeout.
    with server_process(
        argv, data_dir / "port", log_path, start_timeout_s=_HUB_START_TIMEOUT_S
    ) as server:
        yield server, time.perf_counter() - started


def audit_cli(data_dir: Path, n: int, floor: dict[str, float], processes: int) -> dict[str, Any]:
    with hub_on(data_dir, data_dir.parent / "hub.log") as (hub, start_s):
        log(f"hub listening after {start_s:.1f} s (it replays the stored log first)")
        hub_cpu_before = hub.cpu_s()
        argv = [
            sys.executable,
            "-m",
            "lumbung",
            "ledger",
            "verify",
            "--hub",
            hub.url,
            "--data-dir",
            str(data_dir.parent / "auditor"),
        ]
        started = time.perf_counter()
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=_AUDIT_TIMEOUT_S,
            check=False,
        )
        audit_s = time.perf_counter() - started
        hub_cpu_s = hub.cpu_s() - hub_cpu_before
    if done.returncode != 0 or "ledger verified" not in done.stdout:
        raise RuntimeError(f"lumbung ledger verify failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    audited = int(done.stdout.split("entries")[1].split()[0])
    if audited != n:
        raise RuntimeError(f"lumbung ledger verify audited {audited} entries, not {n}")
    log(f"lumbung ledger verify: {n:,} entries in {audit_s:.1f} s")
    floor_s = n / floor["ed25519_verifications_per_s"] / processes
    floor_s += n / floor["sha256_leaf_hashes_per_s"]
    # The hub replays on one thread, verifying each signature: n verifications on one core.
    hub_start_floor_s = n / floor["ed25519_verifications_per_s"]
    return {
        "entries": n,
        "verified": True,  # the CLI exited 0 and printed "ledger verified" for all n entries
        "hub_start_s": round(start_s, 3),
        "hub_start_note": "`lumbung hub serve` on the stored log, until it listens: LogService "
        "checks every stored entry's signature over every core, then replays them",
        "hub_start_floor_s": round(hub_start_floor_s, 3),
        "hub_start_ratio_to_floor": round(start_s / hub_start_floor_s, 3),
        "total_s": round(audit_s, 3),
        "hub_cpu_s": round(hub_cpu_s, 3),
        "hub_cpu_note": "the hub's CPU while the CLI audited: serving pages of leaves, the "
        "checkpoint and the inclusion proofs the audit samples",
        "processes": processes,
        "floor_s": round(floor_s, 3),
        "floor": f"{n:,} raw Ed25519 verifications split over {processes} processes + {n:,} "
        "SHA-256 leaf hashes, from the rates measured in this run",
        "ratio_to_floor": round(audit_s / floor_s, 3),
        "target_s": TARGET_AUDIT_S,
        "meets_target": audit_s < TARGET_AUDIT_S,
    }


# --- Main ---------------------------------------------------------------------------------------


def _big_log_part(
    leaves: list[bytes], sizes: Sizes, floor: dict[str, float], economy: HubEconomy, processes: int
) -> dict[str, Any]:
    big, extra = leaves[: sizes.big_log], leaves[sizes.big_log :]
    with tempfile.TemporaryDirectory(prefix="lumbung-bench-ledger-") as tmp:
        data_dir = Path(tmp) / "hub"
        write_hub_key(data_dir, economy.treasury)
        store = SqlStore.open(f"sqlite:///{(data_dir / 'hub.sqlite3').resolve()}")
        try:
            service = LogService(store.ledger(), economy.treasury)
            build = build_big_log(service, big)
            proof_results = proofs(service, big, sizes.proofs, floor["sha256_node_hashes_per_s"])
            query = nodes_query(store, len(big), 20)
            on_big = appends_on_big(service, extra)
        finally:
            store.close()
        audit_results = audit_cli(data_dir, len(leaves), floor, processes)
    return {
        "build": build,
        "proofs": proof_results,
        "nodes_query": query,
        "appends_on_big_log": on_big,
        "audit": audit_results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    processes = os.cpu_count() or 1
    economy = HubEconomy()
    n_total = max(sizes.big_log + sizes.single_on_big, sizes.batched)
    # fork: the workers inherit the imported modules, so the pool starts in milliseconds.
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        log(f"signing a {n_total:,}-entry log over {processes} processes")
        leaves, sign_s = sign_log(n_total, pool)
    floor = floors(leaves[: min(len(leaves), 50_000)])
    log(f"floors: {floor}")
    per_entry_floor_s = (
        1 / floor["ed25519_verifications_per_s"] + 1 / floor["sha256_leaf_hashes_per_s"]
    )
    append_results = appends(
        leaves, sizes, args.postgres_url, round(1 / per_entry_floor_s, 1), economy
    )
    big = _big_log_part(
        leaves[: sizes.big_log + sizes.single_on_big], sizes, floor, economy, processes
    )
    emit(
        {
            "benchmark": "ledger_store",
            "scope": "the hub's real path: LogService.append on SqlLedgerStore (SQLite file, "
            "PostgreSQL schema), proofs from the stored tree, `lumbung ledger verify` as a "
            "process against `lumbung hub serve`",
            "quick": args.quick,
            "machine": machine(),
            "log_generation": {
                "entries": len(leaves),
                "processes": processes,
                "seconds": round(sign_s, 3),
                "signed_per_s": rate(len(leaves), sign_s),
                "note": "signing the synthetic log; not measured as appends",
            },
            "floors": floor,
            "appends": append_results,
            "big_log": big,
        }
    )


if __name__ == "__main__":
    main()
