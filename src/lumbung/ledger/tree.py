"""An append-only RFC 9162 Merkle tree that reads O(log n) stored nodes per root or proof.

Storage: only perfect subtrees are stored, keyed (level, index). Level 0 holds the leaf hashes;
node (level, i) is the root of the perfect subtree over leaves [i * 2^level, (i + 1) * 2^level).
A perfect subtree never changes once complete, so nodes are write-once and any later tree's
root and proofs can be assembled from them:

- MTH(D[lo:hi]) for every range the RFC's recursion visits splits, by the binary representation
  of hi - lo, into perfect subtrees (biggest first), folded from the right (``range_keys``);
- PATH and SUBPROOF (sections 2.1.3.1, 2.1.4.1) are lists of such ranges
  (``inclusion_ranges``, ``consistency_ranges``), of which at most one is not itself perfect.

So each operation is one ``get_many`` of O(log n) keys, which a SQL store can answer with one
query. The planning functions are public for exactly that reason.

A ``Frontier`` is the tree's right edge alone (one root per set bit of the size): enough to compute
every node an append completes and the root, from the leaf hashes only. A hub rebuilds it from its
leaves at start and so checks each stored node against what its leaves say it must be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from lumbung.errors import Rejected
from lumbung.ledger.merkle import EMPTY_ROOT, HASH_SIZE_BYTES, largest_power_of_two_below, node_hash

NodeKey = tuple[int, int]  # (level, index) of a perfect subtree
LeafRange = tuple[int, int]  # [lo, hi) leaf positions


class NodeStore(Protocol):
    """Where a MerkleTree keeps its perfect-subtree nodes and its size.

    Nodes are write-once. ``put_many`` and the following ``set_size`` belong to one append: a
    durable store commits them together (the caller's transaction).
    """

    def get(self, level: int, index: int) -> bytes:
        """The node's hash; KeyError if it is not stored."""
        ...

    def get_many(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        """The stored nodes among ``keys``; absent keys are left out."""
        ...

    def put_many(self, items: Mapping[NodeKey, bytes]) -> None:
        """Store new nodes."""
        ...

    def size(self) -> int:
        """How many leaves the tree has."""
        ...

    def set_size(self, n: int) -> None:
        """Record that the tree now has ``n`` leaves."""
        ...


class MemoryNodeStore:
    """The in-memory twin of the SQL node store."""

    def __init__(self) -> None:
        self._nodes: dict[NodeKey, bytes] = {}
        self._size = 0

    def get(self, level: int, index: int) -> bytes:
        return self._nodes[(level, index)]

    def get_many(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        nodes = self._nodes
        return {key: nodes[key] for key in keys if key in nodes}

    def put_many(self, items: Mapping[NodeKey, bytes]) -> None:
        self._nodes.update(items)

    def size(self) -> int:
        return self._size

    def set_size(self, n: int) -> None:
        self._size = n


# --- Planning: which stored nodes make up a root or a proof ------------------------------------


def range_keys(lo: int, hi: int) -> list[NodeKey]:
    """The perfect subtrees, biggest first, whose right fold is MTH(D[lo:hi]).

    Valid for the ranges RFC 9162's recursion produces: lo is a multiple of every power of two
    up to hi - lo, so each piece starts on its own boundary.
    """
    keys: list[NodeKey] = []
    offset = lo
    for level in range((hi - lo).bit_length() - 1, -1, -1):
        if (hi - lo) >> level & 1:
            keys.append((level, offset >> level))
            offset += 1 << level
    return keys


def inclusion_ranges(index: int, size: int) -> list[LeafRange]:
    """The leaf ranges whose MTHs are PATH(index, D[size]), in proof order (section 2.1.3.1)."""
    ranges: list[LeafRange] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = largest_power_of_two_below(hi - lo)
        if index - lo < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[LeafRange]:
    """The leaf ranges whose MTHs are PROOF(size1, D[size2]), in proof order (section 2.1.4.1)."""
    ranges: list[LeafRange] = []
    lo, hi, m, whole = 0, size2, size1, True
    while m != hi - lo:
        k = largest_power_of_two_below(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def fold_range(nodes: Mapping[NodeKey, bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) from its perfect subtrees: the right fold of section 2.1.1's splits."""
    if hi == lo:
        return EMPTY_ROOT
    pieces = [_need(nodes, key) for key in range_keys(lo, hi)]
    result = pieces.pop()
    while pieces:
        result = node_hash(pieces.pop(), result)
    return result


def _need(nodes: Mapping[NodeKey, bytes], key: NodeKey) -> bytes:
    try:
        return nodes[key]
    except KeyError:
        raise KeyError(f"Merkle node {key} is missing from the store") from None


# --- The right frontier -------------------------------------------------------------------------


class Frontier:
    """The roots of the perfect subtrees that make up the first ``size`` leaves, by level.

    O(log n) hashes, and all an append needs: each new leaf completes the subtrees of the trailing
    1 bits of the size before it (``extend``), and the root is their right fold (``root``).
    """

    def __init__(self, size: int = 0, roots: Mapping[int, bytes] | None = None) -> None:
        self.size = size
        self._roots = dict(roots or {})  # level -> root of the frontier subtree there

    @classmethod
    def from_nodes(cls, size: int, nodes: Mapping[NodeKey, bytes]) -> Frontier:
        """The frontier of a tree of ``size`` leaves, from its stored nodes (``range_keys``)."""
        keys = range_keys(0, size)
        return cls(size, {level: _need(nodes, (level, index)) for level, index in keys})

    def copy(self) -> Frontier:
        return Frontier(self.size, self._roots)

    def extend(self, leaf_hashes: Iterable[bytes]) -> dict[NodeKey, bytes]:
        """Add leaf hashes in order; returns every node they complete, leaves (level 0) included,
        in the order they complete: leaf by leaf, each leaf's node then the subtrees it closes."""
        new_nodes: dict[NodeKey, bytes] = {}
        roots = self._roots
        for index, value in enumerate(leaf_hashes, self.size):
            self.size = index + 1
            new_nodes[(0, index)] = value
            level, top = 0, value
            # Each trailing 1 bit of the old size is a frontier subtree this leaf completes.
            while index >> level & 1:
                top = node_hash(roots.pop(level), top)
                level += 1
                new_nodes[(level, index >> level)] = top
            roots[level] = top
        return new_nodes

    def root(self) -> bytes:
        """MTH of the ``size`` leaves: the frontier folded from its smallest subtree up."""
        result: bytes | None = None
        for level in sorted(self._roots):
            top = self._roots[level]
            result = top if result is None else node_hash(top, result)
        return EMPTY_ROOT if result is None else result


def completed_ranges(lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(level, first, end) index ranges of the nodes that leaves [lo, hi) complete: node
    (level, i) is complete once leaf (i + 1) * 2^level - 1 is in, so i runs over
    [lo >> level, hi >> level)."""
    ranges: list[tuple[int, int, int]] = []
    level = 0
    while hi >> level > lo >> level:
        ranges.append((level, lo >> level, hi >> level))
        level += 1
    return ranges


# --- The tree -----------------------------------------------------------------------------------


class MerkleTree:
    """An append-only Merkle tree over a NodeStore; proofs equal lumbung.ledger.merkle's exactly.

    The tree caches its right frontier so an append reads nothing; the cache is checked against
    the store's size and reloaded with one ``get_many`` if another writer has moved the tree on.
    """

    def __init__(self, store: NodeStore) -> None:
        self._store = store
        self._frontier: Frontier | None = None

    @property
    def size(self) -> int:
        return self._store.size()

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index. Writes the leaf and each subtree it completes."""
        return self.append_many([leaf_hash])[0]

    def append_many(self, leaf_hashes: Iterable[bytes]) -> list[int]:
        """Add leaf hashes in order with one ``put_many``; returns their indices."""
        hashes = list(leaf_hashes)
        for position, value in enumerate(hashes):
            if not isinstance(value, bytes) or len(value) != HASH_SIZE_BYTES:
                raise Rejected(
                    f"leaf hash {position} must be {HASH_SIZE_BYTES} bytes", field="leaf_hash"
                )
        start = self._store.size()
        frontier = self._load_frontier(start)
        self._frontier = None  # extend edits the cache: keep it only if the store takes the nodes
        new_nodes = frontier.extend(hashes)
        if new_nodes:
            self._store.put_many(new_nodes)
            self._store.set_size(start + len(hashes))
        self._frontier = frontier
        return list(range(start, start + len(hashes)))

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all), from popcount(size) stored nodes."""
        size = self._checked_size(size, "size")
        return fold_range(self._fetch(range_keys(0, size)), 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) (RFC 9162 section 2.1.3.1) from O(log size) stored nodes."""
        size = self._checked_size(size, "size")
        if not 0 <= index < size:
            raise Rejected(f"leaf index {index} is not in a tree of {size} leaves", field="index")
        return self._hashes_of(inclusion_ranges(index, size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(size1, D[size2]) (RFC 9162 section 2.1.4.1) from O(log size2) stored nodes."""
        size2 = self._checked_size(size2, "size2")
        if not 0 < size1 <= size2:
            raise Rejected(
                f"no consistency proof from size {size1} to size {size2}: need 0 < size1 <= size2",
                field="size1",
            )
        return self._hashes_of(consistency_ranges(size1, size2))

    def _hashes_of(self, ranges: list[LeafRange]) -> list[bytes]:
        nodes = self._fetch([key for lo, hi in ranges for key in range_keys(lo, hi)])
        return [fold_range(nodes, lo, hi) for lo, hi in ranges]

    def _fetch(self, keys: list[NodeKey]) -> dict[NodeKey, bytes]:
        return self._store.get_many(keys) if keys else {}

    def _checked_size(self, size: int | None, field: str) -> int:
        current = self._store.size()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise Rejected(f"the tree has {current} leaves, not {size}", field=field)
        return size

    def _load_frontier(self, size: int) -> Frontier:
        """The frontier of the first ``size`` leaves: the cache, or read from the store."""
        if self._frontier is not None and self._frontier.size == size:
            return self._frontier
        return Frontier.from_nodes(size, self._fetch(range_keys(0, size)))
