"""Audit a hub's transparency log from outside, trusting nothing the hub says without proof.

``audit`` downloads every leaf, checks every author's signature (over all cores for a big log)
and sequence numbers by replaying the balances (``lumbung.ledger.Ledger``), recomputes the RFC 9162
Merkle root, and requires it to equal the root in the hub's signed checkpoint. Then it asks the hub
for every balance it reports and requires the replay to give exactly those. The hub's checkpoint
key is pinned on first use (``<data_dir>/ledger/<origin>.json``) together with the last verified
tree head; every later audit requires a consistency proof (RFC 9162 section 2.1.4) from that
head, so a hub that rewrites or truncates history is caught even when its new history is
internally sound.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from lumbung.client.ledger import Account, LedgerClient
from lumbung.errors import LumbungError, ProofError, Rejected, Unauthenticated
from lumbung.ids import actor_id
from lumbung.ledger.balances import Ledger
from lumbung.ledger.checkpoint import (
    Checkpoint,
    open_checkpoint,
    require_witnesses,
    witnesses_that_signed,
)
from lumbung.ledger.commitments import verify_commitment
from lumbung.ledger.entries import ResultCommitment, decode_leaf
from lumbung.ledger.merkle import leaf_hash, root, verify_consistency, verify_inclusion
from lumbung.ledger.note import parse_vkey
from lumbung.ledger.signatures import SignatureChecker

PAGE_ENTRIES = 10_000  # the hub's limit per read
# Inclusion proofs checked against the stored tree: all of a small log, a spread of a big one.
PROOF_SAMPLE = 256
HUB_ORIGIN_PREFIX = "lumbung.hub/"
_NO_WITNESSES: Mapping[str, bytes] = MappingProxyType({})


@dataclass(frozen=True)
class Pin:
    """What an auditor remembers of one log: its key and the last tree head it verified."""

    origin: str
    vkey: str
    size: int
    root: bytes


@dataclass(frozen=True)
class AuditReport:
    origin: str
    size: int
    root: bytes
    accounts: int  # actors with a non-zero balance after replay
    supply_micro: int
    previous_size: int | None  # the pinned size the new head was proven consistent with
    witnesses: tuple[str, ...] = ()  # the given witnesses whose cosignature verified
    commitments: int = 0  # result commitments, each checked against its node's signature


def pin_path(data_dir: Path, origin: str) -> Path:
    # Origins contain '/', which a file name cannot: it becomes '_' (actor ids have none).
    return data_dir / "ledger" / f"{origin.replace('/', '_')}.json"


def load_pin(path: Path) -> Pin | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Pin(data["origin"], data["vkey"], int(data["size"]), bytes.fromhex(data["root"]))


def save_pin(path: Path, pin: Pin) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"origin": pin.origin, "vkey": pin.vkey, "size": pin.size, "root": pin.root.hex()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class TrustedLog:
    """The log the auditor checks against: its name, verifier key, and what was pinned before."""

    origin: str
    vkey: str
    key: bytes  # the raw Ed25519 public key in ``vkey``
    pin: Pin | None


def trusted_key(ledger: LedgerClient, data_dir: Path) -> TrustedLog:
    """The hub's log with the pinned key, or the served one on first use (trust on first use).

    ``Unauthenticated`` if the hub now serves a different key than the pinned one.
    """
    origin, served_vkey = ledger.key()
    pin = load_pin(pin_path(data_dir, origin))
    vkey_text = pin.vkey if pin is not None else served_vkey
    if pin is not None and served_vkey != pin.vkey:
        raise Unauthenticated(
            f"the hub's log key changed: pinned {pin.vkey}, served {served_vkey}", field="vkey"
        )
    name, key = parse_vkey(vkey_text)
    if name != origin or origin != HUB_ORIGIN_PREFIX + actor_id(key):
        raise Unauthenticated(f"key {vkey_text} does not belong to log {origin}", field="vkey")
    return TrustedLog(origin, vkey_text, key, pin)


def signed_checkpoint(ledger: LedgerClient, origin: str, key: bytes) -> Checkpoint:
    return open_signed(ledger.checkpoint(), origin, key)


def open_signed(note: str, origin: str, key: bytes) -> Checkpoint:
    """The checkpoint in ``note``, signed by the log's key and naming the log ``origin``."""
    cp = open_checkpoint(note, origin, key)
    if cp.origin != origin:
        raise Unauthenticated(f"checkpoint is for log {cp.origin}, not {origin}", field="origin")
    return cp


def audit(
    ledger: LedgerClient,
    data_dir: Path,
    witness_keys: Mapping[str, bytes] = _NO_WITNESSES,
    min_witnesses: int = 0,
) -> AuditReport:
    """Verify the whole log against its signed checkpoint and the pinned head; raise if not.

    With ``witness_keys`` (witness name to Ed25519 key), the checkpoint must also carry valid
    cosignatures by at least ``min_witnesses`` of them (C2SP tlog-cosignature), or it is refused.
    """
    log = trusted_key(ledger, data_dir)
    note = ledger.checkpoint()
    cp = open_signed(note, log.origin, log.key)
    replay = _Replay(ledger, actor_id(log.key))
    try:
        hashes = replay.leaves(0, cp.size)
        if root(hashes) != cp.root:
            raise ProofError(f"the leaves do not hash to the signed root of size {cp.size}")
        _check_served_proofs(ledger, cp, hashes)
        _check_extends(ledger, log.pin, cp)
        require_witnesses(note, witness_keys, min_witnesses)
        _check_reported_balances(ledger, replay, cp.size)
    finally:
        replay.close()
    save_pin(pin_path(data_dir, log.origin), Pin(log.origin, log.vkey, cp.size, cp.root))
    snapshot = replay.ledger.snapshot()
    return AuditReport(
        origin=log.origin,
        size=cp.size,
        root=cp.root,
        accounts=len(snapshot.balances),
        supply_micro=snapshot.supply,
        previous_size=None if log.pin is None else log.pin.size,
        witnesses=tuple(witnesses_that_signed(note, witness_keys)),
        commitments=replay.commitments,
    )


class _Replay:
    """Downloads leaves, checks their signatures (in parallel when worth it), replays them."""

    def __init__(self, ledger: LedgerClient, treasury: str) -> None:
        self.client = ledger
        self.ledger = Ledger()
        self.size = 0
        self._treasury = treasury
        self._checker = SignatureChecker()
        self.commitments = 0  # result commitments whose node signature was checked

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Replay leaves ``start`` to ``end`` (from where the last call stopped); their hashes."""
        assert start == self.size, "leaves are replayed in order"
        hashes: list[bytes] = []
        while self.size < end:
            page = self.client.entries(self.size, min(self.size + PAGE_ENTRIES, end))
            if not page:
                raise Rejected(f"the hub served no leaf at {self.size} of {end}", field="entries")
            self._checker.check(page, self.size)
            for leaf in page:
                try:
                    signed = decode_leaf(leaf)
                    self.ledger.apply_verified(signed, treasury=self._treasury, hub=self._treasury)
                    if isinstance(signed.entry, ResultCommitment):
                        # The node's own signature: the hub cannot invent a node's claim.
                        verify_commitment(signed.entry.body)
                        self.commitments += 1
                except LumbungError as exc:
                    raise type(exc)(f"leaf {self.size}: {exc.message}", field=exc.field) from exc
                hashes.append(leaf_hash(leaf))
                self.size += 1
        return hashes

    def close(self) -> None:
        self._checker.close()


def _check_reported_balances(ledger: LedgerClient, replay: _Replay, signed_size: int) -> None:
    """Every balance, stake and sequence number the hub reports must be what the replay gives.

    The hub answers at its current size, which may be past the checkpoint if entries arrived
    meanwhile; those are downloaded and replayed too (signatures and sequence numbers checked;
    the next audit proves them in the tree).
    """
    size, reported = ledger.balances()
    if size < signed_size:
        raise ProofError(
            f"the hub reports balances at size {size}, below its signed checkpoint {signed_size}",
            field="balances",
        )
    replay.leaves(replay.size, size)
    snapshot = replay.ledger.snapshot()
    actors = set(snapshot.balances) | set(snapshot.staked) | set(snapshot.seqs) | set(reported)
    for actor in sorted(actors):
        mine = Account(
            snapshot.balances.get(actor, 0),
            snapshot.staked.get(actor, 0),
            snapshot.seqs.get(actor, 0),
        )
        theirs = reported.get(actor, Account(0, 0, 0))
        if theirs != mine:
            raise ProofError(
                f"the hub reports {actor} at balance {theirs.balance}, staked {theirs.staked}, "
                f"seq {theirs.last_seq}; replaying its log gives {mine.balance}, {mine.staked}, "
                f"{mine.last_seq}",
                field="balances",
            )


def proof_sample(size: int) -> list[int]:
    """The leaf indexes whose served inclusion proofs ``audit`` checks.

    Every stored tree node is a sibling on some leaf's path, so checking every leaf's proof
    checks every node the hub serves proofs from; past ``PROOF_SAMPLE`` leaves an evenly spread
    sample (first and last included) checks about ``PROOF_SAMPLE * log2(size)`` of them.
    """
    if size <= PROOF_SAMPLE:
        return list(range(size))
    step = (size - 1) / (PROOF_SAMPLE - 1)
    return sorted({round(i * step) for i in range(PROOF_SAMPLE)})


def _check_served_proofs(ledger: LedgerClient, cp: Checkpoint, hashes: list[bytes]) -> None:
    """The hub's stored tree must agree with its leaves: an edited node breaks the proofs it is
    in, which the recomputed root alone cannot see."""
    for index in proof_sample(cp.size):
        served = ledger.inclusion_proof(cp.size, index=index)
        try:
            verify_inclusion(hashes[index], index, cp.size, served.proof, cp.root)
        except ProofError as exc:
            raise ProofError(
                f"the hub's inclusion proof for leaf {index} of {cp.size} fails: {exc.message}",
                field="proof",
            ) from exc


def _check_extends(ledger: LedgerClient, pin: Pin | None, cp: Checkpoint) -> None:
    """The new head must extend the pinned one (RFC 9162 section 2.1.4.2)."""
    if pin is None or pin.size == 0:
        return
    if cp.size < pin.size:
        raise ProofError(f"the log shrank from {pin.size} to {cp.size} leaves: history rewritten")
    proof = [] if cp.size == pin.size else ledger.consistency_proof(pin.size, cp.size)
    verify_consistency(pin.size, cp.size, pin.root, cp.root, proof)


def prove_inclusion(ledger: LedgerClient, data_dir: Path, index: int) -> tuple[Checkpoint, bytes]:
    """Check leaf ``index`` is in the hub's latest signed tree; returns (checkpoint, leaf)."""
    log = trusted_key(ledger, data_dir)
    cp = signed_checkpoint(ledger, log.origin, log.key)
    leaves = ledger.entries(index, index + 1)
    if not leaves:
        raise Rejected(f"the hub has no leaf {index}", field="index")
    proof = ledger.inclusion_proof(cp.size, index=index)
    verify_inclusion(leaf_hash(leaves[0]), index, cp.size, proof.proof, cp.root)
    return cp, leaves[0]
