"""Where the transparency log lives: its leaves, Merkle tree nodes, size and signed checkpoints.

``LedgerStore`` is the seam; ``MemoryLedgerStore`` is its in-memory twin and
``lumbung.store.ledger_sql.SqlLedgerStore`` the durable one. The store knows nothing of what a leaf
means: the hub validates entries and computes the tree's nodes (``lumbung.ledger.tree``), then
hands both here to be written in one transaction, together with the one market rule that must
hold in that same transaction: an actor that unstakes holds no lease (``unleased``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from lumbung.errors import Conflict, NotFound, Rejected, StaleWrite

NodeKey = tuple[int, int]  # (level, index), as in lumbung.ledger.tree
NodeRange = tuple[int, int, int]  # (level, first index, end index): one level's nodes in a range
_READ_ONLY = "the log's tree is written only through LedgerStore.append, with its leaves"


class HoldsLease(Conflict):
    """An append refused because an actor that had to hold no lease holds ``leases`` of them."""

    def __init__(self, actor: str, leases: int) -> None:
        super().__init__(f"{actor} holds {leases} lease(s)")
        self.actor = actor
        self.leases = leases


class LedgerStore(Protocol):
    def ledger_size(self) -> int:
        """How many leaves the log has."""

    def append(
        self,
        leaves: Sequence[bytes],
        nodes: Mapping[NodeKey, bytes],
        expected_size: int,
        unleased: Sequence[str] = (),
    ) -> None:
        """Write ``leaves`` at indexes ``expected_size``.., the new ``nodes`` (which include each
        leaf's hash at level 0) and the new size, all in one transaction.

        ``StaleWrite`` (and nothing written) if the stored size is not ``expected_size``: another
        writer appended first, possibly another hub sharing the database. ``HoldsLease`` (and
        nothing written) if an actor of ``unleased`` holds a lease (a running task) as the
        transaction commits: no lease another request or hub grants can slip in between.
        """

    def writing(self) -> AbstractContextManager[object]:
        """The log's writer lock, shared by every process on this database: held around a whole
        append (read the tail, build, write, sign), so that hubs sharing a database take turns
        instead of racing, where the loser of a race can lose again and again."""

    def leaves(self, start: int, end: int) -> list[bytes]:
        """The leaves at indexes [start, end), clipped to the log's size."""

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        """The stored nodes among ``keys``; absent keys are left out."""

    def node_ranges(self, ranges: Sequence[NodeRange]) -> dict[NodeKey, bytes]:
        """The stored nodes of each (level, first, end) range, end exclusive: every node a run
        of leaves completed, read at once, for checking the stored tree against its leaves."""

    def index_of(self, leaf_hash: bytes) -> int:
        """The index of the leaf with this RFC 9162 leaf hash; ``NotFound`` if none."""

    def put_checkpoint(self, size: int, note: str) -> None:
        """Keep the signed checkpoint note for tree size ``size`` (a later one for the same size
        replaces it: checkpoints for one size differ only in their signatures)."""

    def latest_checkpoint(self) -> tuple[int, str]:
        """(size, note) of the checkpoint with the largest size; ``NotFound`` if there is none."""


def check_leaf_parts(
    leaves: Sequence[bytes], nodes: Mapping[NodeKey, bytes], expected_size: int
) -> None:
    """Refuse an append whose nodes do not include a level-0 hash for each new leaf."""
    for index in range(expected_size, expected_size + len(leaves)):
        if (0, index) not in nodes:
            raise Rejected(f"append is missing the leaf hash of leaf {index}", field="nodes")


class StoredNodes:
    """A read-only ``lumbung.ledger.tree.NodeStore`` over a ``LedgerStore``, for roots and proofs:
    the tree is written only through ``LedgerStore.append``, with its leaves."""

    def __init__(self, log: LedgerStore) -> None:
        self._log = log

    def get(self, level: int, index: int) -> bytes:
        return self._log.nodes([(level, index)])[(level, index)]

    def get_many(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        return self._log.nodes(keys)

    def put_many(self, items: Mapping[NodeKey, bytes]) -> None:
        raise RuntimeError(
            "the log's tree is written only through LedgerStore.append, with its leaves"
        )

    def size(self) -> int:
        return self._log.ledger_size()

    def set_size(self, n: int) -> None:
        raise RuntimeError(
            "the log's tree is written only through LedgerStore.append, with its leaves"
        )


# How many leases each of the actors named holds; called with the memory store's lock held.
LeaseCount = Callable[[Sequence[str]], dict[str, int]]


class MemoryLedgerStore:
    """``LedgerStore`` in dictionaries, behind one lock.

    Beside a ``MemoryStore`` it shares that store's lock and reads its leases, so that an append
    and the lease check of ``unleased`` are one step, as they are one transaction in SQL; alone,
    nobody holds a lease.
    """

    def __init__(
        self, lock: threading.Lock | None = None, leases: LeaseCount | None = None
    ) -> None:
        self._lock = lock or threading.Lock()
        self._leases = leases or (lambda actors: {})
        self._leaves: list[bytes] = []
        self._index_by_hash: dict[bytes, int] = {}
        self._nodes: dict[NodeKey, bytes] = {}
        self._checkpoints: dict[int, str] = {}
        self._writer = threading.Lock()

    def ledger_size(self) -> int:
        with self._lock:
            return len(self._leaves)

    def writing(self) -> AbstractContextManager[object]:
        return self._writer

    def append(
        self,
        leaves: Sequence[bytes],
        nodes: Mapping[NodeKey, bytes],
        expected_size: int,
        unleased: Sequence[str] = (),
    ) -> None:
        check_leaf_parts(leaves, nodes, expected_size)
        with self._lock:
            for actor, leases in self._leases(unleased).items():
                if leases:
                    raise HoldsLease(actor, leases)
            if len(self._leaves) != expected_size:
                raise StaleWrite(
                    f"the log has {len(self._leaves)} leaves, not the expected {expected_size}"
                )
            hashes = [nodes[(0, i)] for i in range(expected_size, expected_size + len(leaves))]
            if any(h in self._index_by_hash for h in hashes) or len(set(hashes)) != len(hashes):
                raise StaleWrite("a leaf of this append is already in the log")
            for leaf, leaf_hash in zip(leaves, hashes, strict=True):
                self._index_by_hash[leaf_hash] = len(self._leaves)
                self._leaves.append(bytes(leaf))
            self._nodes.update(nodes)

    def leaves(self, start: int, end: int) -> list[bytes]:
        with self._lock:
            return self._leaves[max(start, 0) : max(end, 0)]

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        with self._lock:
            return {key: self._nodes[key] for key in keys if key in self._nodes}

    def node_ranges(self, ranges: Sequence[NodeRange]) -> dict[NodeKey, bytes]:
        found: dict[NodeKey, bytes] = {}
        with self._lock:
            for level, first, end in ranges:
                if end - first <= len(self._nodes):
                    keys = ((level, index) for index in range(first, end))
                    found.update((key, self._nodes[key]) for key in keys if key in self._nodes)
                else:  # an open-ended range (nodes beyond the size): look at what is stored
                    found.update(
                        (key, value)
                        for key, value in self._nodes.items()
                        if key[0] == level and first <= key[1] < end
                    )
        return found

    def index_of(self, leaf_hash: bytes) -> int:
        with self._lock:
            index = self._index_by_hash.get(leaf_hash)
        if index is None:
            raise NotFound(f"no leaf with hash {leaf_hash.hex()}", field="leaf_hash")
        return index

    def put_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._checkpoints[size] = note

    def latest_checkpoint(self) -> tuple[int, str]:
        with self._lock:
            if not self._checkpoints:
                raise NotFound("the log has no checkpoint yet")
            size = max(self._checkpoints)
            return size, self._checkpoints[size]
