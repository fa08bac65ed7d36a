"""``LedgerStore`` on SQLAlchemy Core, sharing the engine of ``lumbung.store.sql.SqlStore``.

An append is one transaction whose first statement moves the size forward conditionally
(``UPDATE ledger_meta SET size = :new WHERE size = :expected``): the row lock it takes (PostgreSQL)
or the database write lock (SQLite) makes a second writer wait, then find the size moved and get a
row count of zero, which is ``StaleWrite``. The leaves' primary keys back this up.

Hubs take turns before that point, under ``writing``: a transaction-scoped advisory lock on
PostgreSQL, an exclusive ``flock`` of ``<database>.ledger-lock`` beside a SQLite file.

An append that names ``unleased`` actors (an unstake) checks in its own transaction that none of
them holds a lease. On SQLite the transaction holds the database's write lock from its start, so
no lease can be granted until it ends; on PostgreSQL it first takes the tasks table in SHARE
mode, which waits for every task write in flight (a lease being granted, by any hub) and holds off
new ones until it commits: a few milliseconds, and only for unstakes.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, and_, bindparam, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert

from lumbung.errors import NotFound, StaleWrite
from lumbung.market.model import PENDING_VERDICT, TaskState
from lumbung.store import tables as t
from lumbung.store.ledger import HoldsLease, NodeKey, NodeRange, check_leaf_parts

_META_ID = 1
# The key of the log's writer lock for pg_advisory_xact_lock: any fixed number ("lumbung").
_WRITER_LOCK_KEY = 0x6C756D62756E67
# Node keys per IN (...) query: far below every database's bound-parameter limit.
_KEYS_PER_QUERY = 400

# Read before every append (has another hub appended?): built once, like the hub's hot statements.
_SIZE = select(t.ledger_meta.c.size).where(t.ledger_meta.c.id == _META_ID)
_NODE_RANGE = select(t.ledger_nodes.c.idx, t.ledger_nodes.c.hash).where(
    t.ledger_nodes.c.level == bindparam("level"),
    t.ledger_nodes.c.idx >= bindparam("first"),
    t.ledger_nodes.c.idx < bindparam("end"),
)
# Leases, and results still waiting for their check: a node may not take its stake away from
# under a verdict that could slash it.
_LEASES_HELD = (
    select(t.tasks.c.node_id, func.count())
    .where(
        or_(
            t.tasks.c.state == TaskState.RUNNING.value,
            t.tasks.c.verdict == PENDING_VERDICT,
        ),
        t.tasks.c.node_id.in_(bindparam("actors", expanding=True)),
    )
    .group_by(t.tasks.c.node_id)
)
# Conflicts with every UPDATE of tasks (ROW EXCLUSIVE), and with nothing the log itself takes.
_HOLD_OFF_LEASES = text(f"LOCK TABLE {t.tasks.name} IN SHARE MODE")

# A write transaction, as the SQL store begins them (on SQLite: IMMEDIATE, one at a time).
BeginWrite = Callable[[], AbstractContextManager[Connection]]


class SqlLedgerStore:
    def __init__(self, engine: Engine, begin_write: BeginWrite | None = None) -> None:
        self._engine = engine
        self._begin_write = begin_write or engine.begin
        self._insert: Callable[[Table], Insert] = (
            sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        )
        database = engine.url.database
        self._lock_path = (
            Path(f"{database}.ledger-lock") if database and database != ":memory:" else None
        )
        self._in_process = threading.Lock()  # an in-memory SQLite database has no file to lock

    @contextlib.contextmanager
    def writing(self) -> Iterator[object]:
        if self._engine.dialect.name == "postgresql":
            # Released when this (otherwise idle) transaction ends, whatever happens inside.
            with self._engine.begin() as conn:
                conn.execute(select(func.pg_advisory_xact_lock(_WRITER_LOCK_KEY)))
                yield None
        elif self._lock_path is not None:
            with self._lock_path.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
                yield None
        else:
            with self._in_process:
                yield None

    def ledger_size(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(_SIZE).scalar_one())

    def append(
        self,
        leaves: Sequence[bytes],
        nodes: Mapping[NodeKey, bytes],
        expected_size: int,
        unleased: Sequence[str] = (),
    ) -> None:
        check_leaf_parts(leaves, nodes, expected_size)
        new_size = expected_size + len(leaves)
        leaf_rows = [
            {"idx": index, "leaf": bytes(leaf), "leaf_hash": nodes[(0, index)]}
            for index, leaf in enumerate(leaves, expected_size)
        ]
        node_rows = [{"level": lv, "idx": ix, "hash": h} for (lv, ix), h in nodes.items()]
        meta = t.ledger_meta
        move = (
            meta.update()
            .where(meta.c.id == _META_ID, meta.c.size == expected_size)
            .values(size=new_size)
        )
        try:
            with self._begin_write() as conn:
                if unleased:
                    self._check_unleased(conn, unleased)
                if conn.execute(move).rowcount != 1:
                    raise StaleWrite(f"the log is no longer at size {expected_size}")
                if leaf_rows:
                    conn.execute(t.ledger_leaves.insert(), leaf_rows)
                if node_rows:
                    conn.execute(t.ledger_nodes.insert(), node_rows)
        except IntegrityError as exc:
            raise StaleWrite("a leaf of this append is already in the log") from exc

    def _check_unleased(self, conn: Connection, actors: Sequence[str]) -> None:
        if self._engine.dialect.name == "postgresql":
            conn.execute(_HOLD_OFF_LEASES)
        for actor, leases in conn.execute(_LEASES_HELD, {"actors": list(actors)}):
            raise HoldsLease(str(actor), int(leases))

    def leaves(self, start: int, end: int) -> list[bytes]:
        table = t.ledger_leaves
        stmt = (
            select(table.c.leaf)
            .where(table.c.idx >= max(start, 0), table.c.idx < end)
            .order_by(table.c.idx)
        )
        with self._engine.connect() as conn:
            return [bytes(leaf) for leaf in conn.scalars(stmt)]

    def nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        table = t.ledger_nodes
        found: dict[NodeKey, bytes] = {}
        with self._engine.connect() as conn:
            for at in range(0, len(keys), _KEYS_PER_QUERY):
                by_level: dict[int, list[int]] = {}
                for level, index in keys[at : at + _KEYS_PER_QUERY]:
                    by_level.setdefault(level, []).append(index)
                # One "level = L AND idx IN (...)" per level, not a row-value IN: SQLite plans a
                # row-value IN as a scan of the whole table (157 ms at a million entries) and
                # this as primary-key lookups (0.7 ms).
                stmt = select(table.c.level, table.c.idx, table.c.hash).where(
                    or_(
                        *(
                            and_(table.c.level == level, table.c.idx.in_(indexes))
                            for level, indexes in by_level.items()
                        )
                    )
                )
                for level, index, value in conn.execute(stmt):
                    found[(int(level), int(index))] = bytes(value)
        return found

    def node_ranges(self, ranges: Sequence[NodeRange]) -> dict[NodeKey, bytes]:
        # One primary-key range scan per level, a statement built once: a hub starting on a
        # million entries reads two million nodes this way (OR-ing the levels into one query and
        # converting each value, as ``nodes`` does, cost half as much again).
        found: dict[NodeKey, bytes] = {}
        with self._engine.connect() as conn:
            for level, first, end in ranges:
                rows = conn.execute(_NODE_RANGE, {"level": level, "first": first, "end": end})
                found.update({(level, index): value for index, value in rows})
        return found

    def index_of(self, leaf_hash: bytes) -> int:
        table = t.ledger_leaves
        with self._engine.connect() as conn:
            index = conn.scalar(select(table.c.idx).where(table.c.leaf_hash == leaf_hash))
        if index is None:
            raise NotFound(f"no leaf with hash {leaf_hash.hex()}", field="leaf_hash")
        return int(index)

    def put_checkpoint(self, size: int, note: str) -> None:
        stmt = self._insert(t.ledger_checkpoints).values(size=size, note=note)
        stmt = stmt.on_conflict_do_update(index_elements=["size"], set_={"note": note})  # type: ignore[attr-defined]
        with self._begin_write() as conn:
            conn.execute(stmt)

    def latest_checkpoint(self) -> tuple[int, str]:
        table = t.ledger_checkpoints
        stmt = select(table.c.size, table.c.note).order_by(table.c.size.desc()).limit(1)
        with self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise NotFound("the log has no checkpoint yet")
        return int(row[0]), str(row[1])
