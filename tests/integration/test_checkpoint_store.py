"""Rejected checkpoint links in the store, on every backend, and migration 0005 on the SQL ones."""

from __future__ import annotations

import dataclasses
import math

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from test_store import T0, lease, link, make_job, make_task, stored_job_with_tasks

from lumbung.errors import NotFound
from lumbung.market.model import Work
from lumbung.store import tables as t
from lumbung.store.protocol import Changes, Store
from lumbung.store.sql import MIGRATIONS_DIR, SqlStore

NODE = "ak_" + "n" * 32


def test_a_rejected_link_keeps_every_field_but_gains_its_reason(store: Store) -> None:
    job, (task,) = stored_job_with_tasks(store)
    store.apply(Changes(tasks=[lease(task)]))
    first, second = link(task, 1, "a" * 64), link(task, 2, "b" * 64)
    store.apply(Changes(checkpoints=[first, second]))
    # Only the reason is written, whatever else the record passed in says.
    store.apply(
        Changes(rejected_checkpoints=[dataclasses.replace(second, rejected="corrupt", kept_s=0)])
    )
    assert store.list_checkpoints(task.id) == [
        first,
        dataclasses.replace(second, rejected="corrupt"),
    ]
    assert store.list_job_checkpoints(job.id)[1].rejected == "corrupt"


def test_rejecting_a_link_never_stored_writes_nothing(store: Store) -> None:
    _, (task,) = stored_job_with_tasks(store)
    store.apply(Changes(checkpoints=[link(task, 1)]))
    moved = dataclasses.replace(store.get_task(task.id), last_checkpoint_sha=None)
    missing = dataclasses.replace(link(task, 9), rejected="corrupt")
    with pytest.raises(NotFound):
        store.apply(Changes(tasks=[moved], rejected_checkpoints=[missing]))
    assert store.get_task(task.id).version == task.version
    assert store.list_checkpoints(task.id)[0].rejected is None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_migration_0005_forgets_times_no_node_could_have_kept(sql_url: str) -> None:
    engine = sa.create_engine(sql_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
    # Rows as revision 0004 held them: no replica, verdict or execution class (revision 0007).
    job = make_job()
    task = make_task(job)
    task_row = {
        k: v
        for k, v in t.task_row(task).items()
        if k not in ("replica", "verdict", "execution_class")
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(t.jobs), t.job_row(job))
        conn.execute(sa.insert(t.tasks), task_row)
    # Before the hub measured time, a node's claim of infinity was stored as it came.
    poisoned = {"runtime_s": math.inf, "kept_s": math.inf}
    row = {k: v for k, v in t.checkpoint_row(link(task, 1)).items() if k != "rejected"}
    work = Work(job.id, task.id, 1, NODE, 3_600_000, kept_s=math.inf, lost_s=2.0)
    with engine.begin() as conn:
        conn.execute(sa.insert(t.checkpoints), {**row, **poisoned})
        conn.execute(sa.insert(t.work), t.work_row(work))
    engine.dispose()

    migrated = SqlStore.open(sql_url)
    try:
        assert migrated.get_work(task.id, 1) == dataclasses.replace(work, kept_s=0.0)
        (stored,) = migrated.list_checkpoints(task.id)
        assert (stored.runtime_s, stored.kept_s, stored.rejected) == (0.0, 0.0, None)
        assert stored.created_at == T0 + 31
    finally:
        migrated.close()
