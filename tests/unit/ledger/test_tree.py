"""The stored Merkle tree: the same roots and proofs as the reference, from O(log n) nodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lumbung.errors import Rejected
from lumbung.ledger import merkle
from lumbung.ledger.tree import (
    Frontier,
    MemoryNodeStore,
    MerkleTree,
    NodeKey,
    completed_ranges,
    range_keys,
)


class CountingStore(MemoryNodeStore):
    """A memory store that counts what the tree asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes_read = 0
        self.read_calls = 0
        self.nodes_written = 0
        self.write_calls = 0

    def get(self, level: int, index: int) -> bytes:
        self.nodes_read += 1
        self.read_calls += 1
        return super().get(level, index)

    def get_many(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        self.nodes_read += len(set(keys))
        self.read_calls += 1
        return super().get_many(keys)

    def put_many(self, items: Mapping[NodeKey, bytes]) -> None:
        self.nodes_written += len(items)
        self.write_calls += 1
        super().put_many(items)

    def reset(self) -> None:
        self.nodes_read = self.read_calls = self.nodes_written = self.write_calls = 0


def leaves_of(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"entry %d" % i) for i in range(n)]


def tree_of(leaves: Sequence[bytes], batch_sizes: Sequence[int] = ()) -> MerkleTree:
    """A tree fed by append_many in the given batch sizes, then one append at a time."""
    tree = MerkleTree(MemoryNodeStore())
    position = 0
    for batch in batch_sizes:
        tree.append_many(leaves[position : position + batch])
        position += batch
    for value in leaves[position:]:
        tree.append(value)
    return tree


def bit_length_bound(n: int) -> int:
    """ceil(log2 n), the height of a tree of n leaves."""
    return (n - 1).bit_length() if n > 1 else 0


def check_against_reference(tree: MerkleTree, leaves: Sequence[bytes]) -> None:
    n = len(leaves)
    assert tree.size == n
    root_hash = merkle.root(leaves)
    assert tree.root() == root_hash
    for index in range(n):
        proof = tree.inclusion_proof(index)
        assert proof == merkle.inclusion_proof(leaves, index)
        merkle.verify_inclusion(leaves[index], index, n, proof, root_hash)
    for size1 in range(1, n + 1):
        old_root = tree.root(size1)
        assert old_root == merkle.root(leaves[:size1])
        proof = tree.consistency_proof(size1)
        assert proof == merkle.consistency_proof(leaves, size1)
        merkle.verify_consistency(size1, n, old_root, root_hash, proof)


@pytest.mark.parametrize("n", range(0, 34))
def test_small_trees_serve_the_reference_roots_and_proofs(n: int) -> None:
    check_against_reference(tree_of(leaves_of(n)), leaves_of(n))


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(34, 300),
    batch_sizes=st.lists(st.integers(0, 120), max_size=4),
)
def test_larger_trees_serve_the_reference_roots_and_proofs(n: int, batch_sizes: list[int]) -> None:
    leaves = leaves_of(n)
    check_against_reference(tree_of(leaves, batch_sizes), leaves)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_proofs_for_earlier_tree_sizes_equal_the_reference(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n)
    tree = tree_of(leaves, [n // 3])
    size2 = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size2 - 1))
    size1 = data.draw(st.integers(1, size2))
    assert tree.root(size2) == merkle.root(leaves[:size2])
    assert tree.inclusion_proof(index, size2) == merkle.inclusion_proof(leaves[:size2], index)
    assert tree.consistency_proof(size1, size2) == merkle.consistency_proof(leaves[:size2], size1)


def test_empty_tree_has_the_empty_root() -> None:
    tree = MerkleTree(MemoryNodeStore())
    assert tree.size == 0
    assert tree.root() == merkle.EMPTY_ROOT
    assert tree.root(0) == merkle.EMPTY_ROOT


def test_append_returns_consecutive_indices() -> None:
    tree = MerkleTree(MemoryNodeStore())
    leaves = leaves_of(10)
    assert tree.append(leaves[0]) == 0
    assert tree.append_many(leaves[1:6]) == [1, 2, 3, 4, 5]
    assert tree.append_many([]) == []
    assert tree.append(leaves[6]) == 6
    assert tree.size == 7


def test_append_writes_at_most_the_tree_height_plus_one_nodes_and_reads_none() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    for n, value in enumerate(leaves_of(1100), start=1):
        store.reset()
        tree.append(value)
        assert store.nodes_written <= bit_length_bound(n) + 1, n
        # Exactly the leaf plus one node per perfect subtree the leaf completes.
        trailing_ones = (n - 1 ^ n).bit_length() - 1
        assert store.nodes_written == 1 + trailing_ones
        assert store.nodes_read == 0
        assert store.write_calls == 1


def test_append_many_writes_once() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    tree.append_many(leaves_of(1000))
    assert store.write_calls == 1
    assert store.nodes_written == 2 * 1000 - bin(1000).count("1")  # every perfect subtree, once


def test_root_and_proofs_read_logarithmically_many_nodes_in_one_query() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    n = 5000
    tree.append_many(leaves_of(n))
    height = bit_length_bound(n)
    for size in (1, 2, 3, 1023, 1024, 1025, 4097, n):
        store.reset()
        tree.root(size)
        assert store.nodes_read == bin(size).count("1")
        assert store.read_calls == 1
    for index in (0, 1, 2500, 4095, 4096, 4999):
        store.reset()
        tree.inclusion_proof(index)
        assert store.nodes_read <= 2 * height
        assert store.read_calls == 1
    for size1 in (1, 2, 3, 1000, 4096, 4097, 4999):
        store.reset()
        tree.consistency_proof(size1)
        assert store.nodes_read <= 2 * height + 1
        assert store.read_calls == 1


def test_a_reopened_tree_continues_where_the_store_left_off() -> None:
    leaves = leaves_of(77)
    store = MemoryNodeStore()
    MerkleTree(store).append_many(leaves[:45])
    reopened = MerkleTree(store)
    reopened.append_many(leaves[45:60])
    for value in leaves[60:]:
        reopened.append(value)
    check_against_reference(MerkleTree(store), leaves)


def test_two_writers_on_one_store_stay_consistent() -> None:
    leaves = leaves_of(40)
    store = MemoryNodeStore()
    first, second = MerkleTree(store), MerkleTree(store)
    for index, value in enumerate(leaves):
        (first if index % 3 else second).append(value)
    check_against_reference(first, leaves)


def test_a_failed_write_leaves_the_tree_usable() -> None:
    class FailingOnce(MemoryNodeStore):
        fail = False

        def put_many(self, items: Mapping[NodeKey, bytes]) -> None:
            if self.fail:
                self.fail = False
                raise OSError("disk full")
            super().put_many(items)

    leaves = leaves_of(20)
    store = FailingOnce()
    tree = MerkleTree(store)
    tree.append_many(leaves[:7])
    store.fail = True
    with pytest.raises(OSError, match="disk full"):
        tree.append(leaves[7])
    assert tree.size == 7
    tree.append_many(leaves[7:])
    check_against_reference(tree, leaves)


def test_a_missing_node_is_reported_not_guessed() -> None:
    store = MemoryNodeStore()
    tree = MerkleTree(store)
    tree.append_many(leaves_of(6))
    del store._nodes[(2, 0)]
    with pytest.raises(KeyError, match=r"\(2, 0\)"):
        tree.root()


def test_requests_beyond_the_tree_are_rejected() -> None:
    tree = tree_of(leaves_of(8))
    with pytest.raises(Rejected, match="8 leaves"):
        tree.root(9)
    with pytest.raises(Rejected):
        tree.root(-1)
    with pytest.raises(Rejected):
        tree.inclusion_proof(8)
    with pytest.raises(Rejected):
        tree.inclusion_proof(3, 3)
    with pytest.raises(Rejected):
        tree.inclusion_proof(0, 0)
    with pytest.raises(Rejected):
        tree.consistency_proof(0)
    with pytest.raises(Rejected):
        tree.consistency_proof(5, 4)
    with pytest.raises(Rejected):
        tree.consistency_proof(5, 9)
    assert tree.consistency_proof(8) == []


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33])
def test_leaf_hashes_that_are_not_32_bytes_are_rejected_and_nothing_is_written(bad: bytes) -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    with pytest.raises(Rejected, match="32 bytes"):
        tree.append_many([merkle.leaf_hash(b"fine"), bad])
    assert store.nodes_written == 0
    assert tree.size == 0


def test_range_keys_split_a_range_by_the_bits_of_its_length() -> None:
    assert range_keys(0, 0) == []
    assert range_keys(0, 1) == [(0, 0)]
    assert range_keys(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert range_keys(8, 13) == [(2, 2), (0, 12)]
    assert range_keys(0, 1 << 20) == [(20, 0)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=6))
def test_a_frontier_rebuilt_from_leaves_gives_the_reference_root_and_the_stored_nodes(
    batches: list[int],
) -> None:
    leaves = leaves_of(sum(batches))
    store = MemoryNodeStore()
    tree = MerkleTree(store)
    frontier, position = Frontier(), 0
    for batch in batches:
        lo, hi = position, position + batch
        tree.append_many(leaves[lo:hi])
        nodes = frontier.extend(leaves[lo:hi])
        # Exactly the nodes those leaves complete, as the planning function says, as stored.
        expected = {
            (lv, ix) for lv, first, end in completed_ranges(lo, hi) for ix in range(first, end)
        }
        assert set(nodes) == expected
        assert nodes == store.get_many(list(nodes))
        assert frontier.size == hi
        assert frontier.root() == merkle.root(leaves[:hi]) == tree.root()
        position = hi


def test_a_frontier_read_from_stored_nodes_continues_where_the_tree_stopped() -> None:
    leaves = leaves_of(13)
    store = MemoryNodeStore()
    MerkleTree(store).append_many(leaves[:11])
    frontier = Frontier.from_nodes(11, store.get_many(range_keys(0, 11)))
    frontier.extend(leaves[11:])
    assert frontier.root() == merkle.root(leaves)
    assert Frontier().root() == merkle.EMPTY_ROOT
