"""``lumbung.client.audit`` against an in-process log: honest, forked, shrunk, re-keyed, tampered.

The auditor's ``LedgerClient`` is replaced by one that reads a ``LogService`` directly, so each
test can hand the auditor exactly the history it wants it to see.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from lumbung.client.audit import PROOF_SAMPLE, audit, proof_sample, prove_inclusion
from lumbung.client.ledger import Account, InclusionProof, LedgerClient
from lumbung.crypto.keys import Identity
from lumbung.errors import ProofError, Rejected, Unauthenticated
from lumbung.hub.ledger import LogService
from lumbung.ledger import signatures
from lumbung.ledger.entries import ResultCommitment, SignedEntry, decode_leaf, leaf_bytes
from lumbung.store.ledger import MemoryLedgerStore
from lumbung.wire.commitment import ExecutionClass, commitment_body, signed_bytes


class InProcessLedger(LedgerClient):
    def __init__(
        self,
        log: LogService,
        tamper: dict[int, bytes] | None = None,
        misreport: dict[str, Account] | None = None,
    ) -> None:
        self._log = log
        self._tamper = tamper or {}
        self._misreport = misreport or {}

    def balances(self) -> tuple[int, dict[str, Account]]:
        size, reported = self._log.balances()
        accounts = {actor: Account(*values) for actor, values in reported.items()}
        return size, {**accounts, **self._misreport}

    def key(self) -> tuple[str, str]:
        return self._log.origin, self._log.vkey

    def checkpoint(self) -> str:
        return self._log.store.latest_checkpoint()[1]

    def entries(self, start: int, end: int) -> list[bytes]:
        leaves = self._log.store.leaves(start, end)
        return [self._tamper.get(start + i, leaf) for i, leaf in enumerate(leaves)]

    def inclusion_proof(
        self, size: int, *, index: int | None = None, leaf_hash: bytes | None = None
    ) -> InclusionProof:
        assert index is not None
        return InclusionProof(index, size, self._log.tree.inclusion_proof(index, size))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return self._log.tree.consistency_proof(size1, size2)

    def append(self, entries: Sequence[SignedEntry]) -> list[int]:
        return self._log.append(entries)


def _log(key: Identity, mints: int, tag: int = 1) -> LogService:
    log = LogService(MemoryLedgerStore(), key)
    for _ in range(mints):
        log.mint(Identity.generate().actor_id, tag)
    return log


def test_an_honest_log_verifies_and_later_heads_extend_the_pinned_one(tmp_path: Path) -> None:
    key = Identity.generate()
    log = _log(key, 5)
    first = audit(InProcessLedger(log), tmp_path)
    assert (first.size, first.accounts, first.supply_micro, first.previous_size) == (5, 5, 5, None)
    for _ in range(4):
        log.mint(Identity.generate().actor_id, 1)
    second = audit(InProcessLedger(log), tmp_path)
    assert (second.size, second.previous_size) == (9, 5)
    checkpoint, _ = prove_inclusion(InProcessLedger(log), tmp_path, 7)
    assert checkpoint.size == 9


def test_a_forked_history_under_the_same_key_is_refused(tmp_path: Path) -> None:
    key = Identity.generate()
    audit(InProcessLedger(_log(key, 3)), tmp_path)
    fork = _log(key, 6, tag=2)  # sound on its own, but not an extension of what was seen
    with pytest.raises(ProofError):
        audit(InProcessLedger(fork), tmp_path)


def test_a_shrunk_log_is_refused(tmp_path: Path) -> None:
    key = Identity.generate()
    audit(InProcessLedger(_log(key, 4)), tmp_path)
    with pytest.raises(ProofError, match="shrank"):
        audit(InProcessLedger(_log(key, 2)), tmp_path)


def test_a_changed_log_key_is_refused(tmp_path: Path) -> None:
    key = Identity.generate()
    audit(InProcessLedger(_log(key, 2)), tmp_path)
    honest = _log(key, 2)
    impostor = _log(Identity.generate(), 2)

    class Rekeyed(InProcessLedger):
        def key(self) -> tuple[str, str]:
            return honest.origin, impostor.vkey

    with pytest.raises(Unauthenticated, match="key changed"):
        audit(Rekeyed(honest), tmp_path)


def test_a_tampered_leaf_fails_the_audit(tmp_path: Path) -> None:
    log = _log(Identity.generate(), 3)
    leaf = log.store.leaves(1, 2)[0]
    tampered = leaf.replace(b'"amount":1', b'"amount":2')
    assert tampered != leaf
    with pytest.raises(Unauthenticated, match="leaf 1"):
        audit(InProcessLedger(log, tamper={1: tampered}), tmp_path)


def test_an_edited_tree_node_fails_the_audit_though_the_leaves_are_intact(tmp_path: Path) -> None:
    key = Identity.generate()
    log = _log(key, 6)
    store = log.store
    assert isinstance(store, MemoryLedgerStore)
    audit(InProcessLedger(log), tmp_path / "before")  # honest: passes
    key_of_node = (1, 1)  # the node over leaves 2 and 3, on the proof paths of leaves 0, 1, 4, 5
    store._nodes[key_of_node] = bytes(32)  # behind the hub's back
    with pytest.raises(ProofError, match="inclusion proof for leaf 0 of 6 fails"):
        audit(InProcessLedger(log), tmp_path / "after")


def test_a_big_log_is_checked_through_an_even_sample_of_its_proofs() -> None:
    assert proof_sample(5) == [0, 1, 2, 3, 4]
    sample = proof_sample(1_000_000)
    assert len(sample) == PROOF_SAMPLE
    assert sample[0] == 0
    assert sample[-1] == 999_999


def test_a_balance_the_hub_misreports_fails_the_audit(tmp_path: Path) -> None:
    key = Identity.generate()
    log = _log(key, 3)
    rich = Identity.generate().actor_id
    log.mint(rich, 7)
    audit(InProcessLedger(log), tmp_path)
    inflated = InProcessLedger(log, misreport={rich: Account(8, 0, 0)})
    with pytest.raises(ProofError, match=f"reports {rich} at balance 8"):
        audit(inflated, tmp_path)
    invented = InProcessLedger(log, misreport={Identity.generate().actor_id: Account(1, 0, 0)})
    with pytest.raises(ProofError, match="replaying its log gives 0"):
        audit(invented, tmp_path)


def test_entries_appended_after_the_checkpoint_are_replayed_before_comparing(
    tmp_path: Path,
) -> None:
    log = _log(Identity.generate(), 2)

    class Racing(InProcessLedger):
        """A hub that appends one more entry between the auditor's two reads."""

        def balances(self) -> tuple[int, dict[str, Account]]:
            log.mint(Identity.generate().actor_id, 5)
            return super().balances()

    report = audit(Racing(log), tmp_path)
    assert report.size == 2  # the signed size it proved; the third entry is checked, not pinned


def test_signatures_checked_in_worker_processes_catch_a_forged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signatures, "PARALLEL_MIN_LEAVES", 2)
    monkeypatch.setattr(signatures.os, "cpu_count", lambda: 2)
    log = _log(Identity.generate(), 9)
    assert audit(InProcessLedger(log), tmp_path).size == 9
    honest = decode_leaf(log.store.leaves(6, 7)[0])
    forged = replace(honest, signature=bytes(64))
    tampered = InProcessLedger(log, tamper={6: leaf_bytes(forged)})
    with pytest.raises(Unauthenticated, match="leaf 6"):
        audit(tampered, tmp_path / "fresh")


def _commitment(node: Identity, signer: Identity, outputs: dict[str, str]) -> dict[str, object]:
    where = ExecutionClass(
        device="cpu", device_model="x", platform="Linux-x86_64", python="3.11", threads=1,
        deterministic=True,
    )  # fmt: skip
    body = commitment_body(
        job_id="job_aaaaaaaaaaaaaaaa", task_id="task_aaaaaaaaaaaaaaaa", attempt=1,
        node=node.actor_id, outputs=outputs, execution_class=where,
    )  # fmt: skip
    signature = signer.sign(signed_bytes(body)).hex()
    return {**body, "public_key": signer.public_key_raw.hex(), "signature": signature}


def test_a_result_commitment_the_hub_made_up_for_a_node_fails_the_audit(tmp_path: Path) -> None:
    key, node = Identity.generate(), Identity.generate()
    log = _log(key, 1)
    honest = _commitment(node, node, {"out.json": "a" * 64})
    log.append_as_hub(lambda _: [functools.partial(ResultCommitment, body=honest)])
    assert audit(InProcessLedger(log), tmp_path).commitments == 1
    # The hub claims the node committed to other outputs: the node's signature does not cover it.
    edited = {**honest, "outputs": {"out.json": "b" * 64}}
    log.append_as_hub(lambda _: [functools.partial(ResultCommitment, body=edited)])
    with pytest.raises(Rejected, match="leaf 2: does not sign this result"):
        audit(InProcessLedger(log), tmp_path)


def test_a_commitment_signed_with_the_hubs_own_key_for_a_node_fails_the_audit(
    tmp_path: Path,
) -> None:
    key, node = Identity.generate(), Identity.generate()
    log = _log(key, 1)
    forged = _commitment(node, key, {"out.json": "a" * 64})
    log.append_as_hub(lambda _: [functools.partial(ResultCommitment, body=forged)])
    with pytest.raises(Rejected, match="not the key of the node"):
        audit(InProcessLedger(log), tmp_path)
