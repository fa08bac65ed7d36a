"""The transparency log's store on every backend: atomic appends, stale sizes, reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from lumbung.errors import NotFound, StaleWrite
from lumbung.ledger.merkle import leaf_hash, root
from lumbung.ledger.tree import MemoryNodeStore, MerkleTree, NodeKey
from lumbung.store.ledger import LedgerStore, StoredNodes
from lumbung.store.protocol import Store


def _nodes_for(log: LedgerStore, leaves: list[bytes]) -> dict[NodeKey, bytes]:
    written: dict[NodeKey, bytes] = {}
    size = log.ledger_size()

    class Buffer(MemoryNodeStore):
        def get_many(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
            return log.nodes(keys)

        def put_many(self, items: Mapping[NodeKey, bytes]) -> None:
            written.update(items)

    buffer = Buffer()
    buffer.set_size(size)
    MerkleTree(buffer).append_many([leaf_hash(leaf) for leaf in leaves])
    return written


def _leaves(n: int, tag: str = "x") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def test_append_writes_leaves_nodes_and_size_together(store: Store) -> None:
    log = store.ledger()
    first = _leaves(3)
    log.append(first, _nodes_for(log, first), 0)
    second = _leaves(4, "y")
    log.append(second, _nodes_for(log, second), 3)
    assert log.ledger_size() == 7
    assert log.leaves(0, 7) == first + second
    assert log.leaves(2, 5) == [first[2], second[0], second[1]]
    assert log.leaves(5, 100) == second[2:]
    everything = [leaf_hash(leaf) for leaf in first + second]
    tree = MerkleTree(StoredNodes(log))
    assert tree.root() == root(everything)


def test_append_at_a_stale_size_raises_and_writes_nothing(store: Store) -> None:
    log = store.ledger()
    first = _leaves(2)
    log.append(first, _nodes_for(log, first), 0)
    late = _leaves(2, "late")
    nodes = {(0, 1 + i): leaf_hash(leaf) for i, leaf in enumerate(late)}
    with pytest.raises(StaleWrite):
        log.append(late, nodes, 1)
    assert log.ledger_size() == 2
    assert log.leaves(0, 10) == first
    with pytest.raises(NotFound):
        log.index_of(leaf_hash(late[1]))


def test_a_leaf_already_in_the_log_is_refused_whole(store: Store) -> None:
    log = store.ledger()
    first = _leaves(2)
    log.append(first, _nodes_for(log, first), 0)
    again = [b"new", first[0]]
    with pytest.raises(StaleWrite):
        log.append(again, _nodes_for(log, again), 2)
    assert log.ledger_size() == 2
    assert log.leaves(0, 10) == first


def test_nodes_returns_only_stored_keys(store: Store) -> None:
    log = store.ledger()
    leaves = _leaves(4)
    written = _nodes_for(log, leaves)
    log.append(leaves, written, 0)
    assert (2, 0) in written
    got = log.nodes([(0, 0), (2, 0), (5, 0), (0, 9)])
    assert got == {(0, 0): written[(0, 0)], (2, 0): written[(2, 0)]}


def test_index_of_finds_a_leaf_by_its_hash(store: Store) -> None:
    log = store.ledger()
    leaves = _leaves(5)
    log.append(leaves, _nodes_for(log, leaves), 0)
    assert log.index_of(leaf_hash(leaves[3])) == 3
    with pytest.raises(NotFound):
        log.index_of(leaf_hash(b"absent"))


def test_latest_checkpoint_is_the_largest_size(store: Store) -> None:
    log = store.ledger()
    with pytest.raises(NotFound):
        log.latest_checkpoint()
    log.put_checkpoint(3, "note three\n")
    log.put_checkpoint(7, "note seven\n")
    log.put_checkpoint(5, "note five\n")
    assert log.latest_checkpoint() == (7, "note seven\n")
    log.put_checkpoint(7, "note seven, signed again\n")
    assert log.latest_checkpoint() == (7, "note seven, signed again\n")


def test_an_empty_log_has_size_zero_and_no_leaves(store: Store) -> None:
    log = store.ledger()
    assert log.ledger_size() == 0
    assert log.leaves(0, 10) == []
    assert log.nodes([(0, 0)]) == {}
