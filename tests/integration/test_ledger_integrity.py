"""A hub checks its stored ledger before it serves it, on SQLite and PostgreSQL.

Each test builds an honest log through ``LogService``, then edits the database behind the hub's
back as an attacker with database access would (a leaf deleted, two swapped, a tree node or the
checkpoint changed), and starts a new ``LogService`` on it: it must refuse, naming the first bad
leaf or node, where today's hub started and went on signing, or answered 409 for ever.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from lumbung.cli.main import app
from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import Corrupted
from lumbung.hub.ledger import LogService
from lumbung.hub.server import sqlite_url
from lumbung.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from lumbung.ledger.merkle import leaf_hash
from lumbung.ledger.merkle import root as reference_root
from lumbung.store.protocol import Store
from lumbung.store.sql import SqlStore

LEAVES = 6


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    opened = SqlStore.open(url)
    yield opened
    opened.close()


@pytest.fixture
def key() -> Identity:
    return Identity.generate()


@pytest.fixture
def honest(sql: SqlStore, key: Identity) -> LogService:
    """A log of six mints (sizes 1 to 6 signed), as the hub wrote it."""
    log = LogService(sql.ledger(), key)
    for _ in range(LEAVES):
        log.mint(Identity.generate().actor_id, 5)
    return log


def _execute(sql: SqlStore, statement: str, **params: object) -> None:
    with sql.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def _leaf(sql: SqlStore, index: int) -> bytes:
    with sql.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT leaf FROM ledger_leaves WHERE idx = :i"), {"i": index})
        return bytes(row.scalar_one())


def _refused(sql: SqlStore, key: Identity, match: str) -> str:
    with pytest.raises(Corrupted, match=match) as caught:
        LogService(sql.ledger(), key)
    return caught.value.message


def test_an_intact_log_starts_with_the_same_root_and_checkpoint(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    leaves = sql.ledger().leaves(0, LEAVES)
    again = LogService(sql.ledger(), key)
    assert again.size == LEAVES
    assert again.tree.root() == reference_root([leaf_hash(leaf) for leaf in leaves])
    size, note = sql.ledger().latest_checkpoint()
    assert size == LEAVES
    assert open_checkpoint(note, again.origin, key.public_key_raw).root == again.tree.root()


def test_a_crash_between_the_leaves_and_their_checkpoint_starts_and_signs_the_new_size(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "DELETE FROM ledger_checkpoints WHERE size > 3")  # the last appends' checkpoints
    assert sql.ledger().latest_checkpoint()[0] == 3
    LogService(sql.ledger(), key)
    assert sql.ledger().latest_checkpoint()[0] == LEAVES


def test_the_last_leaf_deleted_with_its_nodes_and_the_size_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    # As tidy as an attacker can make it: only the checkpoint still remembers six leaves.
    _execute(sql, "DELETE FROM ledger_leaves WHERE idx = 5")
    _execute(
        sql, "DELETE FROM ledger_nodes WHERE (level = 0 AND idx = 5) OR (level = 1 AND idx = 2)"
    )
    _execute(sql, "UPDATE ledger_meta SET size = 5")
    message = _refused(sql, key, "leaf 5 is missing")
    assert "checkpoint signs 6 leaves" in message


def test_the_last_leaf_deleted_with_the_size_but_not_its_nodes_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    # What made every later append collide with the leaf's node and answer 409 for ever.
    _execute(sql, "DELETE FROM ledger_leaves WHERE idx = 5")
    _execute(sql, "UPDATE ledger_meta SET size = 5")
    _refused(sql, key, r"leaf 5's hash \(node \(0, 5\)\) is stored beyond the log's 5 leaves")


def test_the_last_leaf_deleted_alone_refuses_to_start_instead_of_hanging(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "DELETE FROM ledger_leaves WHERE idx = 5")
    _refused(sql, key, "leaf 5 is missing from the store: it holds 5 of the 6 leaves")


def test_a_leaf_deleted_in_the_middle_names_it(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "DELETE FROM ledger_leaves WHERE idx = 2")
    _refused(sql, key, "leaf 2 is missing from the store")


def test_two_leaves_swapped_refuse_to_start_naming_the_first(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    one, three = _leaf(sql, 1), _leaf(sql, 3)
    _execute(sql, "UPDATE ledger_leaves SET leaf = :leaf WHERE idx = 1", leaf=three)
    _execute(sql, "UPDATE ledger_leaves SET leaf = :leaf WHERE idx = 3", leaf=one)
    _refused(sql, key, r"leaf 1 does not match the stored tree: its hash is not node \(0, 1\)")


def test_two_leaves_swapped_with_their_hashes_are_caught_at_the_node_above(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    one, three = _leaf(sql, 1), _leaf(sql, 3)
    for index, leaf in ((1, three), (3, one)):
        _execute(sql, "UPDATE ledger_leaves SET leaf = :leaf WHERE idx = :i", leaf=leaf, i=index)
        _execute(
            sql,
            "UPDATE ledger_nodes SET hash = :h WHERE level = 0 AND idx = :i",
            h=leaf_hash(leaf),
            i=index,
        )
    _refused(sql, key, r"tree node \(1, 0\) does not match its leaves 0 to 1")


def test_an_edited_tree_node_refuses_to_start_naming_it(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "UPDATE ledger_nodes SET hash = :h WHERE level = 2 AND idx = 0", h=b"\x07" * 32)
    _refused(sql, key, r"tree node \(2, 0\) does not match its leaves 0 to 3")


def test_an_edited_leaf_hash_node_refuses_to_start_naming_its_leaf(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "UPDATE ledger_nodes SET hash = :h WHERE level = 0 AND idx = 4", h=b"\x07" * 32)
    _refused(sql, key, "leaf 4 does not match the stored tree")


def test_a_stray_node_beyond_the_size_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "INSERT INTO ledger_nodes (level, idx, hash) VALUES (3, 0, :h)", h=b"\x01" * 32)
    _refused(sql, key, r"tree node \(3, 0\) is stored beyond the log's 6 leaves")


def test_a_checkpoint_whose_text_was_edited_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _, note = sql.ledger().latest_checkpoint()
    origin, size, _, rest = note.split("\n", 3)
    other_root = base64.b64encode(b"\x09" * 32).decode()
    edited = "\n".join((origin, size, other_root, rest))
    _execute(sql, "UPDATE ledger_checkpoints SET note = :n WHERE size = 6", n=edited)
    _refused(sql, key, "carries this hub's signature, but it does not verify")


def test_a_checkpoint_stored_under_another_size_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    _execute(sql, "UPDATE ledger_checkpoints SET size = 9 WHERE size = 6")
    _refused(sql, key, "the checkpoint stored for size 9 signs size 6")


def test_a_signed_checkpoint_over_another_root_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    # Signed with the hub's own key (a key thief, or a bug): the tree must still agree with it.
    forged = sign_checkpoint(Checkpoint(honest.origin, LEAVES, b"\x05" * 32), key)
    _execute(sql, "UPDATE ledger_checkpoints SET note = :n WHERE size = 6", n=forged)
    _refused(sql, key, r"the latest checkpoint \(size 6\) signs a root the stored leaves do not")


def test_a_signed_checkpoint_larger_than_the_log_refuses_to_start(
    sql: SqlStore, key: Identity, honest: LogService
) -> None:
    bigger = sign_checkpoint(Checkpoint(honest.origin, 8, b"\x05" * 32), key)
    sql.ledger().put_checkpoint(8, bigger)
    _refused(sql, key, "leaf 6 is missing from the store: the latest checkpoint signs 8 leaves")


def test_hub_serve_on_an_edited_ledger_exits_1_naming_the_leaf_without_a_traceback(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    key = Identity.load_or_create(data_dir)
    store = SqlStore.open(sqlite_url(HubConfig(data_dir=data_dir)))
    try:
        log = LogService(store.ledger(), key)
        for _ in range(3):
            log.mint(Identity.generate().actor_id, 5)
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE ledger_nodes SET hash = :h WHERE level = 0 AND idx = 1"),
                {"h": b"\x03" * 32},
            )
    finally:
        store.close()
    result = CliRunner().invoke(app, ["hub", "serve", "--data-dir", str(data_dir), "--port", "0"])
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr
    assert "leaf 1 does not match the stored tree" in result.stderr
    assert "Traceback" not in result.output
    assert not (data_dir / "port").exists()  # it never listened


def test_node_ranges_reads_each_levels_range_and_nothing_else(store: Store) -> None:
    log = LogService(store.ledger(), Identity.generate())
    for _ in range(5):
        log.mint(Identity.generate().actor_id, 1)
    ledger = store.ledger()
    got = ledger.node_ranges([(0, 1, 3), (1, 0, 2), (2, 1, 1 << 62)])
    assert sorted(got) == [(0, 1), (0, 2), (1, 0), (1, 1)]
    assert got == ledger.nodes(sorted(got))
    assert ledger.node_ranges([(0, 5, 1 << 62)]) == {}
