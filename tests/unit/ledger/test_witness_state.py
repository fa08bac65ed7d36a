"""The witness's decision: trust on first use, extend with proof, refuse forks and rollbacks."""

from __future__ import annotations

import hashlib

import pytest

from lumbung.errors import Conflict, Rejected
from lumbung.ledger.checkpoint import Checkpoint
from lumbung.ledger.merkle import EMPTY_ROOT, consistency_proof, leaf_hash, root
from lumbung.ledger.witness_state import (
    Fork,
    WitnessState,
    decide,
    state_from_json,
    state_to_json,
)

ORIGIN = "hub.lumbung.example/ledger"


def _leaves(count: int, history: str = "main") -> list[bytes]:
    return [leaf_hash(f"{history} entry {index}".encode()) for index in range(count)]


def _checkpoint(leaves: list[bytes], origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin=origin, size=len(leaves), root=root(leaves))


def _state(leaves: list[bytes]) -> WitnessState:
    return WitnessState(origin=ORIGIN, size=len(leaves), root=root(leaves))


def test_first_checkpoint_is_trusted_on_first_use() -> None:
    cp = _checkpoint(_leaves(5))
    assert decide(None, cp, []) == WitnessState(origin=ORIGIN, size=5, root=cp.root)


@pytest.mark.parametrize(("size1", "size2"), [(1, 2), (3, 7), (4, 8), (5, 6), (7, 100), (64, 65)])
def test_checkpoint_extending_the_cosigned_one_with_a_valid_proof_is_accepted(
    size1: int, size2: int
) -> None:
    leaves = _leaves(size2)
    new = _checkpoint(leaves)
    proof = consistency_proof(leaves, size1)
    assert decide(_state(leaves[:size1]), new, proof) == WitnessState(ORIGIN, size2, new.root)


def test_same_checkpoint_again_is_a_no_op() -> None:
    leaves = _leaves(9)
    state = _state(leaves)
    assert decide(state, _checkpoint(leaves), []) is state


def test_same_size_with_another_root_is_a_fork_and_says_so_loudly() -> None:
    state = _state(_leaves(9))
    other = _checkpoint(_leaves(9, history="rewritten"))
    with pytest.raises(Fork) as caught:
        decide(state, other, [])
    message = str(caught.value)
    assert message.startswith(f"log {ORIGIN} forked: checkpoint of size 9 with root ")
    assert "does not extend cosigned size 9 root " in message
    assert isinstance(caught.value, Conflict)


def test_bigger_checkpoint_whose_proof_does_not_verify_is_a_fork() -> None:
    leaves = _leaves(12)
    proof = consistency_proof(leaves, 5)
    broken = [proof[0], hashlib.sha256(b"not the right node").digest(), *proof[2:]]
    with pytest.raises(Fork, match="does not extend cosigned size 5"):
        decide(_state(leaves[:5]), _checkpoint(leaves), broken)


def test_bigger_checkpoint_of_a_rewritten_history_is_a_fork_even_with_its_own_proof() -> None:
    # The log rewrote entry 2 and proves consistency within the rewritten history: the proof is
    # well formed but cannot lead to the root the witness cosigned.
    cosigned = _leaves(6)
    rewritten = [*cosigned[:2], leaf_hash(b"forged entry"), *_leaves(12)[3:]]
    with pytest.raises(Fork):
        decide(_state(cosigned), _checkpoint(rewritten), consistency_proof(rewritten, 6))


def test_proof_for_other_sizes_is_a_fork() -> None:
    leaves = _leaves(12)
    with pytest.raises(Fork):
        decide(_state(leaves[:5]), _checkpoint(leaves), consistency_proof(leaves, 6))
    with pytest.raises(Fork):
        decide(_state(leaves[:5]), _checkpoint(leaves), [])


def test_smaller_checkpoint_is_a_refused_rollback() -> None:
    leaves = _leaves(10)
    with pytest.raises(Conflict, match="rolled back") as caught:
        decide(_state(leaves), _checkpoint(leaves[:7]), [])
    assert not isinstance(caught.value, Fork)


def test_checkpoint_of_another_log_is_rejected() -> None:
    leaves = _leaves(10)
    with pytest.raises(Rejected, match=r"other\.example"):
        decide(_state(leaves[:4]), _checkpoint(leaves, origin="other.example/log"), [])


def test_every_tree_extends_the_empty_one_without_a_proof() -> None:
    empty = WitnessState(origin=ORIGIN, size=0, root=EMPTY_ROOT)
    leaves = _leaves(3)
    assert decide(empty, _checkpoint(leaves), []) == _state(leaves)
    with pytest.raises(Rejected):
        decide(empty, _checkpoint(leaves), [leaves[0]])


def test_empty_tree_with_a_root_other_than_sha256_of_nothing_is_rejected() -> None:
    with pytest.raises(Rejected, match="empty root"):
        decide(None, Checkpoint(origin=ORIGIN, size=0, root=root(_leaves(1))), [])


def test_a_chain_of_extensions_ends_at_the_latest_tree() -> None:
    leaves = _leaves(40)
    state: WitnessState | None = None
    for size in (1, 2, 3, 8, 13, 13, 40):
        extends = state is not None and 0 < state.size < size
        proof = consistency_proof(leaves[:size], state.size) if state and extends else []
        state = decide(state, _checkpoint(leaves[:size]), proof)
    assert state == _state(leaves)


def test_state_survives_a_json_round_trip() -> None:
    state = _state(_leaves(7))
    assert state_from_json(state_to_json(state)) == state


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"origin": "o", "size": 1}',
        '{"origin": "o", "size": 1, "root": "AAAA", "extra": 1}',
        '{"origin": "o", "size": "1", "root": "' + "A" * 43 + '="}',
        '{"origin": "o", "size": true, "root": "' + "A" * 43 + '="}',
        '{"origin": "o", "size": -1, "root": "' + "A" * 43 + '="}',
        '{"origin": "o", "size": 1, "root": "AAAA"}',
        '{"origin": "o", "size": 1, "root": "!!"}',
        '{"origin": "", "size": 1, "root": "' + "A" * 43 + '="}',
    ],
)
def test_corrupt_state_json_is_rejected(text: str) -> None:
    with pytest.raises(Rejected):
        state_from_json(text)
