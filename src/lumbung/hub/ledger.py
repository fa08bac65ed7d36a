"""The hub's transparency log: validate signed entries, append them, sign checkpoints, serve proofs.

One ``LogService`` per hub process. It keeps the replayed balances (``lumbung.ledger.Ledger``) in
memory and reads the Merkle tree's nodes from the ``LedgerStore``; balances are never stored, only
the entries they are replayed from.

The hub's own key is both the treasury (the only author of mints) and the hub author (releases,
refunds, fees, slashes) for now; a separate, offline treasury key is future work. The log is named
after that key (its origin), so hubs sharing one database must share the hub key file.

Before it serves anything the log is checked against itself (``lumbung.hub.ledger_integrity``):
every stored tree node against the leaves, nothing stored past the size, and the latest checkpoint's
key, size and root. A log that fails refuses to start (``Corrupted``, naming the first bad leaf or
node). The tree's right frontier, rebuilt from the leaves on the way, is kept: appends compute
their new nodes and root from it without reading the store.

Appends in this process are serialised by a lock, and across the hubs sharing one database by
the store's writer lock (``LedgerStore.writing``), held from reading the tail to signing the new
checkpoint. Each hub holds its own replay: an append starts by replaying any leaves another hub
wrote since. Optimistic retries alone were not enough: under steady appends from several hubs the
loser of a race tends to lose the next one too (measured: some appends needed 20 to 30 tries).
The store still refuses an append at a stale size (``StaleWrite``: a writer that skipped the
lock), after which the tail is replayed and the append tried again after a short random pause.
"""

from __future__ import annotations

import array
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence

from lumbung.crypto.keys import Identity
from lumbung.errors import Corrupted, LumbungError, Rejected, StaleWrite, Unauthenticated
from lumbung.hub.ledger_integrity import check_checkpoint, check_nothing_beyond, check_page
from lumbung.ledger.balances import EscrowState, Ledger
from lumbung.ledger.checkpoint import Checkpoint, sign_checkpoint
from lumbung.ledger.entries import Entry, Mint, SignedEntry, decode_leaf, leaf_bytes, sign_entry
from lumbung.ledger.merkle import leaf_hash
from lumbung.ledger.note import vkey
from lumbung.ledger.signatures import SignatureChecker
from lumbung.ledger.tree import Frontier, MerkleTree
from lumbung.store.ledger import LedgerStore, StoredNodes

# An entry the hub will author, missing only its header: called with author=, seq= and at=.
Draft = Callable[..., Entry]

# Leaves read per query while replaying the log; big enough to be checked over every core.
REPLAY_PAGE = 20_000
# An append that still loses a race (``StaleWrite``) is retried after a random pause of up to
# BACKOFF_FIRST_S * 2^attempt (at most BACKOFF_MAX_S: "full jitter"); about 0.7 s at worst.
APPEND_ATTEMPTS = 16
BACKOFF_FIRST_S = 0.002
BACKOFF_MAX_S = 0.05
# Start-up checks believe a mismatch only if the log did not grow meanwhile (another hub's append
# in flight looks like rows past the size); they look this many times, the last under the lock.
_START_ATTEMPTS = 5


def origin_of(identity: Identity) -> str:
    """The log's name in its checkpoints (C2SP tlog-checkpoint's origin line)."""
    return f"lumbung.hub/{identity.actor_id}"


class LogService:
    """The log of one hub: its identity, replayed balances and Merkle tree."""

    def __init__(
        self, log: LedgerStore, identity: Identity, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = log
        self.identity = identity
        self.origin = origin_of(identity)
        self._clock = clock
        self._lock = threading.Lock()
        self._ledger = Ledger()
        self._size = 0
        self._frontier = Frontier()  # the tree of the leaves replayed, rebuilt from their hashes
        # Leaf indexes of the entries that concern each actor, for ``lumbung account``; 8 bytes an
        # entry per party (array, not list: the hub is a party to most of a big log's entries).
        self._by_actor: dict[str, array.array[int]] = {}
        with self._lock:
            self._check_stored_log()

    @property
    def treasury(self) -> str:
        return self.identity.actor_id

    @property
    def vkey(self) -> str:
        """The verifier key (C2SP signed-note) that checks this log's checkpoints."""
        return vkey(self.origin, self.identity.public_key_raw)

    @property
    def tree(self) -> MerkleTree:
        """The stored tree, read-only: roots and RFC 9162 proofs."""
        return MerkleTree(StoredNodes(self.store))

    def account(self, actor: str) -> tuple[int, int, int]:
        """(balance, staked, last_seq) of ``actor`` after every stored entry."""
        with self._lock:
            self._catch_up()
            return (
                self._ledger.balance(actor),
                self._ledger.staked(actor),
                self._ledger.last_seq(actor),
            )

    @property
    def size(self) -> int:
        """Entries in the log, including any another hub appended since this one last looked."""
        with self._lock:
            self._catch_up()
            return self._size

    def open_escrows(self) -> list[str]:
        """Jobs whose escrow still holds money."""
        with self._lock:
            self._catch_up()
            return self._ledger.open_escrows()

    def balances(self) -> tuple[int, dict[str, tuple[int, int, int]]]:
        """(size, actor -> (balance, staked, last_seq)) of every actor, at one size of the log,
        for auditors to compare with their own replay."""
        with self._lock:
            self._catch_up()
            snapshot = self._ledger.snapshot()
            actors = set(snapshot.balances) | set(snapshot.staked) | set(snapshot.seqs)
            return self._size, {
                actor: (
                    snapshot.balances.get(actor, 0),
                    snapshot.staked.get(actor, 0),
                    snapshot.seqs.get(actor, 0),
                )
                for actor in sorted(actors)
            }

    def entries_of(self, actor: str, limit: int) -> list[int]:
        """The leaf indexes of the newest ``limit`` entries that concern ``actor``, newest first:
        those it wrote, those paying it, and the payouts of its jobs' escrow."""
        with self._lock:
            self._catch_up()
            indexes = self._by_actor.get(actor)
            return [] if indexes is None else list(reversed(indexes[-limit:])) if limit else []

    def escrow(self, job_id: str) -> EscrowState:
        """The escrow of ``job_id`` after every stored entry; ``NotFound`` if none was locked."""
        with self._lock:
            self._catch_up()
            return self._ledger.escrow(job_id)

    def append(
        self,
        entries: Sequence[SignedEntry],
        rules: Callable[[Ledger], None] | None = None,
        unleased: Sequence[str] = (),
    ) -> list[int]:
        """Validate ``entries`` in order and append them all, or none; returns their indexes.

        ``rules`` sees the (read-only) ledger as it would be after the batch, under this log's
        lock, and raises to refuse it: the API's rules on top of the ledger's own. The actors
        ``unleased`` must hold no lease, checked in the append's own transaction (``HoldsLease``
        otherwise, from ``lumbung.store.ledger``).
        """
        batch = list(entries)
        return self._append(lambda: batch, rules, unleased)

    def mint(self, to: str, amount_micro: int) -> int:
        """Mint ``amount_micro`` to ``to`` as the treasury (the hub's key); returns the index."""

        def build() -> list[SignedEntry]:
            entry = Mint(
                author=self.treasury,
                seq=self._ledger.last_seq(self.treasury) + 1,
                at=int(self._clock() * 1000),
                to=to,
                amount=amount_micro,
            )
            return [sign_entry(entry, self.identity)]

        return self._append(build)[0]

    def append_as_hub(self, decide: Callable[[Ledger], Sequence[Draft]]) -> list[int]:
        """Append the entries ``decide`` drafts from the current (read-only) ledger, as the hub.

        ``decide`` runs under this log's lock after catching up with other hubs, and again if
        another hub appended first, so what it decides always rests on the state it is appended
        to: settlement reads what was already paid there and cannot pay it twice.
        """

        def build() -> list[SignedEntry]:
            seq = self._ledger.last_seq(self.treasury)
            at = int(self._clock() * 1000)
            return [
                sign_entry(draft(author=self.treasury, seq=seq + i, at=at), self.identity)
                for i, draft in enumerate(decide(self._ledger), start=1)
            ]

        return self._append(build)

    def _append(
        self,
        build: Callable[[], list[SignedEntry]],
        rules: Callable[[Ledger], None] | None = None,
        unleased: Sequence[str] = (),
    ) -> list[int]:
        with self._lock:
            for attempt in range(APPEND_ATTEMPTS):
                try:
                    with self.store.writing():
                        return self._append_once(build, rules, unleased)
                except StaleWrite:
                    if attempt + 1 == APPEND_ATTEMPTS:
                        raise
                time.sleep(random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)))  # noqa: S311
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _append_once(
        self,
        build: Callable[[], list[SignedEntry]],
        rules: Callable[[Ledger], None] | None,
        unleased: Sequence[str],
    ) -> list[int]:
        self._catch_up()
        entries = build()
        if not entries:
            return []
        start = self._size
        # Tentatively: a batch failing at its last entry, or a write that loses the race to
        # another hub, changes nothing here either.
        with self._ledger.tentative():
            for position, signed in enumerate(entries):
                self._apply_one(self._ledger, signed, position)
            if rules is not None:
                rules(self._ledger)
            frontier = self._write(entries, unleased)
        self._size, self._frontier = start + len(entries), frontier
        for offset, signed in enumerate(entries):
            self._index(signed, start + offset)
        self._sign()
        return list(range(start, self._size))

    def _apply_one(self, ledger: Ledger, signed: SignedEntry, position: int) -> None:
        try:
            ledger.apply(signed, treasury=self.treasury, hub=self.treasury)
        except Unauthenticated as exc:
            # The request was signed fine; it is this entry's own signature that fails.
            raise Rejected(
                f"entry {position}: {exc.message}", field=f"entries.{position}.signature"
            ) from exc
        except LumbungError as exc:
            where = f"entries.{position}" + (f".entry.{exc.field}" if exc.field else "")
            raise type(exc)(f"entry {position}: {exc.message}", field=where) from exc

    def _write(self, entries: list[SignedEntry], unleased: Sequence[str]) -> Frontier:
        """Store ``entries`` with the tree nodes they complete; returns the tree after them."""
        leaves = [leaf_bytes(signed) for signed in entries]
        frontier = self._frontier.copy()
        nodes = frontier.extend(leaf_hash(leaf) for leaf in leaves)
        self.store.append(leaves, nodes, self._size, unleased)
        return frontier

    def _sign(self) -> None:
        """Sign a checkpoint of every leaf replayed, over the root of the rebuilt tree."""
        size = self._size
        cp = Checkpoint(origin=self.origin, size=size, root=self._frontier.root())
        self.store.put_checkpoint(size, sign_checkpoint(cp, self.identity))

    def _check_stored_log(self) -> None:
        """Replay and check the whole stored log, then sign its size if the newest checkpoint is
        older (a crash between an append and its checkpoint) or there is none yet (a new log:
        size 0 is a valid tree head).

        A mismatch is believed only if the log did not grow while it was looked at: rows past
        the size, or a checkpoint newer than the replay, may be another hub's append landing.
        The last look holds the writer lock, so no append can land during it.
        """
        for attempt in range(_START_ATTEMPTS):
            last = attempt + 1 == _START_ATTEMPTS
            with self.store.writing() if last else contextlib.nullcontext():
                self._catch_up()
                try:
                    check_nothing_beyond(self.store, self._size)
                    signed_size = check_checkpoint(
                        self.store,
                        self.origin,
                        self.identity.public_key_raw,
                        self._size,
                        self._root,
                    )
                except Corrupted:
                    if last or self.store.ledger_size() == self._size:
                        raise
                    continue
                if signed_size < self._size:
                    self._sign()
                return

    def _root(self, size: int) -> bytes:
        # Every stored node below the replayed size was checked against the leaves on the way.
        return self._frontier.root() if size == self._size else self.tree.root(size)

    def _catch_up(self) -> None:
        """Replay leaves appended since this process last looked (on start: all of them).

        Each page's tree nodes are checked against its leaves, and every signature is checked
        again, over every core when there are many (a hub starting on a big log): the store is
        not trusted to hold only what was verified when appended.
        """
        stored = self.store.ledger_size()
        if self._size >= stored:
            return
        with SignatureChecker() as checker:
            while self._size < stored:
                end = min(self._size + REPLAY_PAGE, stored)
                page = self.store.leaves(self._size, end)
                frontier = self._frontier.copy()
                check_page(self.store, frontier, end, page)
                try:
                    checker.check(page, self._size)
                except Unauthenticated as exc:
                    raise Corrupted(exc.message) from exc
                for leaf in page:
                    self._replay(decode_leaf(leaf))
                self._frontier = frontier

    def _replay(self, signed: SignedEntry) -> None:
        try:
            self._ledger.apply_verified(signed, treasury=self.treasury, hub=self.treasury)
        except LumbungError as exc:
            raise Corrupted(f"leaf {self._size} does not replay: {exc.message}") from exc
        self._index(signed, self._size)
        self._size += 1

    def _index(self, signed: SignedEntry, index: int) -> None:
        entry = signed.entry
        parties = {entry.author}
        for name in ("to", "node"):
            party = getattr(entry, name, None)
            if isinstance(party, str):
                parties.add(party)
        job_id = getattr(entry, "job_id", None)
        if isinstance(job_id, str):
            parties.add(self._ledger.escrow(job_id).consumer)
        for party in parties:
            self._by_actor.setdefault(party, array.array("q")).append(index)
