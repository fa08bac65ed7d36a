"""Several hubs appending to one shared database at once, on SQLite and PostgreSQL.

Each ``LogService`` here is a hub process's log on its own engine (its own connections); threads
stand in for their request handlers, appending as fast as they can. The hubs take turns under the
store's writer lock, so no caller ever sees a 409 (with optimistic retries alone, some appends lost
the race 20 to 30 times in a row here).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from lumbung.crypto.keys import Identity
from lumbung.hub.ledger import LogService
from lumbung.ledger.entries import Transfer, sign_entry
from lumbung.ledger.merkle import leaf_hash, root
from lumbung.store.ledger import LedgerStore, NodeKey, NodeRange
from lumbung.store.sql import SqlStore

HUBS = 4
APPENDS_PER_HUB = 15


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    )


@pytest.fixture
def stores(url: str) -> Iterator[list[SqlStore]]:
    opened = [SqlStore.open(url) for _ in range(HUBS)]
    yield opened
    for store in opened:
        store.close()


def _run_together(work: list[threading.Thread]) -> None:
    for thread in work:
        thread.start()
    for thread in work:
        thread.join(timeout=120)


def test_concurrent_mints_from_several_hubs_on_one_database_never_raise(
    stores: list[SqlStore],
) -> None:
    key = Identity.generate()
    hubs = [LogService(store.ledger(), key) for store in stores]
    start = threading.Barrier(HUBS)
    failures: list[BaseException] = []
    indexes: dict[int, list[int]] = {i: [] for i in range(HUBS)}

    def appender(number: int, log: LogService) -> None:
        start.wait()
        try:
            for _ in range(APPENDS_PER_HUB):
                indexes[number].append(log.mint(Identity.generate().actor_id, 7))
        except BaseException as exc:
            failures.append(exc)

    _run_together([threading.Thread(target=appender, args=item) for item in enumerate(hubs)])
    assert failures == []
    every = sorted(i for mine in indexes.values() for i in mine)
    assert every == list(range(HUBS * APPENDS_PER_HUB))
    # The hubs really appended at once: some hub's entries are not one block.
    assert any(mine != list(range(mine[0], mine[0] + len(mine))) for mine in indexes.values())
    leaves = stores[0].ledger().leaves(0, HUBS * APPENDS_PER_HUB)
    expected = root([leaf_hash(leaf) for leaf in leaves])
    assert {log.tree.root() for log in hubs} == {expected}
    treasury = hubs[0].treasury
    assert {log.account(treasury)[2] for log in hubs} == {HUBS * APPENDS_PER_HUB}
    # A hub starting now replays and checks all of it.
    assert LogService(stores[0].ledger(), key).size == HUBS * APPENDS_PER_HUB


def test_concurrent_user_appends_through_several_hubs_never_raise(
    stores: list[SqlStore],
) -> None:
    key = Identity.generate()
    hubs = [LogService(store.ledger(), key) for store in stores]
    payers = [Identity.generate() for _ in range(HUBS)]
    for payer in payers:
        hubs[0].mint(payer.actor_id, 1_000)
    start = threading.Barrier(HUBS)
    failures: list[BaseException] = []

    def payer_loop(log: LogService, payer: Identity) -> None:
        start.wait()
        try:
            for seq in range(1, APPENDS_PER_HUB + 1):
                entry = Transfer(author=payer.actor_id, seq=seq, at=seq, to=key.actor_id, amount=1)
                log.append([sign_entry(entry, payer)])
        except BaseException as exc:
            failures.append(exc)

    _run_together(
        [
            threading.Thread(target=payer_loop, args=(log, payer))
            for log, payer in zip(hubs, payers, strict=True)
        ]
    )
    assert failures == []
    for payer in payers:
        assert hubs[-1].account(payer.actor_id) == (1_000 - APPENDS_PER_HUB, 0, APPENDS_PER_HUB)


class AnotherHubAppendsMidCheck:
    """The store of a hub starting while another hub appends: the other hub's append lands just
    as the starting hub looks for rows past the size it replayed."""

    def __init__(self, inner: LedgerStore, other: LogService) -> None:
        self._inner, self._other = inner, other
        self.landed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def node_ranges(self, ranges: Sequence[NodeRange]) -> dict[NodeKey, bytes]:
        if not self.landed and any(end > 1 << 62 for _, _, end in ranges):
            self.landed = True
            self._other.mint(Identity.generate().actor_id, 1)
        return dict(self._inner.node_ranges(ranges))


def test_a_hub_starting_while_another_appends_is_not_mistaken_for_an_edited_log(
    stores: list[SqlStore],
) -> None:
    key = Identity.generate()
    running = LogService(stores[0].ledger(), key)
    for _ in range(3):
        running.mint(Identity.generate().actor_id, 1)
    racing = AnotherHubAppendsMidCheck(stores[1].ledger(), running)
    starting = LogService(racing, key)
    assert racing.landed
    assert starting.size == 4
    assert starting.tree.root() == running.tree.root()
