"""No input halts the market: hostile specs, reports, queries and stored rows, in-process on every
store (hubkit.py).

Bodies are sent as raw JSON text where they hold what strict JSON cannot (NaN, Infinity), as a
hostile client would send them; Python's ``json`` reads those literals, and so does the hub.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from factories import run_job
from hubkit import Actor, Hub, archive, claim, make_hub, run_for

from lumbung.client.auth import SignedAuth
from lumbung.errors import NotFound, Rejected, Unavailable
from lumbung.hub import escrow, jobs
from lumbung.hub.ledger import LogService
from lumbung.market.model import Job, Task
from lumbung.store import tables
from lumbung.store.memory import MemoryStore
from lumbung.store.protocol import Store
from lumbung.store.sql import SqlStore
from lumbung.wire.spec import validate_spec

PRICE = 36_000_000  # micro-credits per hour: 10,000 a second
PER_S = 10_000


def send(actor: Actor, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
    """``actor.call`` with the body as Python's json writes it: NaN and Infinity as literals."""
    content = None if body is None else json.dumps(body).encode()
    response = actor.http.request(
        method,
        path,
        content=content,
        headers={"content-type": "application/json"},
        auth=SignedAuth(actor.identity, clock=actor.clock),
    )
    assert response.status_code == expect, response.text
    return response.json() if response.content else None


def log_of(hub: Hub) -> LogService:
    assert hub.ctx.log is not None
    return hub.ctx.log


def job_id_of(leaf: str) -> str:
    return escrow.decode_escrow(leaf).entry.job_id


# --- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10**20])
def test_a_grid_value_the_store_cannot_hold_is_refused_and_nothing_is_stored_or_locked(
    hub: Hub, bad: float
) -> None:
    consumer = hub.actor()
    body = run_job(grid={"x": [1, bad]})
    leaf = consumer.escrow(run_job(grid={"x": [1, 2]}))  # the lock such a job would need
    size = log_of(hub).size
    refused = send(consumer, "POST", "/v1/jobs", {"spec": body, "escrow": leaf}, expect=422)
    assert refused["field"] == "spec.grid.x.1", refused
    assert consumer.call("GET", "/v1/jobs") == []
    assert log_of(hub).size == size
    assert job_id_of(leaf) not in log_of(hub).open_escrows()
    # And the market goes on: the next job is dispatched as ever.
    node = hub.node("n1")
    job_id = consumer.submit(run_job())["job"]["id"]
    task = claim(node)
    assert task is not None
    assert task["job_id"] == job_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"env": {"KEY": "value\x00"}}, "spec.env.KEY"),
        ({"command": ["python", "-c", "print({x})\x00"]}, "spec.command.2"),
        ({"name": "sweep\x00"}, "spec.name"),
        ({"resources": {"memory_gb": math.inf}}, "spec.resources.memory_gb"),
        ({"max_runtime_s": 10**20}, "spec.max_runtime_s"),
    ],
)
def test_a_spec_the_task_or_the_store_cannot_take_is_refused_naming_the_field(
    hub: Hub, change: dict[str, Any], field: str
) -> None:
    consumer = hub.actor()
    body = {"spec": run_job(**change), "escrow": consumer.escrow(run_job())}
    assert send(consumer, "POST", "/v1/jobs", body, expect=422)["field"] == field
    assert (
        send(consumer, "POST", "/v1/jobs/plan", {"spec": run_job(**change)}, 422)["field"] == field
    )
    assert consumer.call("GET", "/v1/jobs") == []


def test_a_price_of_zero_is_refused_saying_why(hub: Hub) -> None:
    consumer = hub.actor()
    body = {"spec": run_job(max_price_micro_per_hour=0)}
    refused = consumer.call("POST", "/v1/jobs/plan", body, expect=422)
    assert refused["field"] == "spec.max_price_micro_per_hour"
    assert "at least one micro-credit" in refused["message"]


def test_a_spec_that_would_not_read_back_is_refused_before_its_lock(hub: Hub) -> None:
    consumer = hub.actor()
    leaf = consumer.escrow(run_job())
    # Past the wire somehow (a bug, a new field): NaN is stored as null, which never reads back.
    bad = validate_spec(run_job()).model_copy(update={"grid": {"x": [math.nan]}})
    size = log_of(hub).size
    with pytest.raises(Rejected) as caught:
        jobs.submit(hub.ctx, consumer.id, bad, leaf)
    assert caught.value.field == "spec.grid.x.0"
    assert log_of(hub).size == size
    assert hub.ctx.store.list_jobs(consumer.id) == []


# --- reports, queries, paths --------------------------------------------------------------------


def _running(hub: Hub) -> tuple[Actor, Actor, dict[str, Any]]:
    node, consumer = hub.node("n1"), hub.actor()
    consumer.submit(run_job())
    task = claim(node)
    assert task is not None
    return node, consumer, task


REPORTS = [
    ("checkpoints", {"runtime_s": math.inf}, "runtime_s"),
    ("checkpoints", {"progress": math.nan}, "progress"),
    ("checkpoints", {"size_bytes": 10**20}, "size_bytes"),
    ("checkpoints", {"attempt": 10**20}, "attempt"),
    ("complete", {"exit_code": 10**20}, "exit_code"),
    ("complete", {"runtime_s": 1e300}, "runtime_s"),
    ("complete", {"error": "missing\x00"}, "error"),
    ("release", {"runtime_s": -math.inf}, "runtime_s"),
    ("release", {"reason": "drain\x00"}, "reason"),
    ("logs", {"attempt": 10**20}, "attempt"),
]
GOOD_REPORTS: dict[str, dict[str, Any]] = {
    "checkpoints": {"size_bytes": 1, "prev_sha256": None, "progress": 0.5, "runtime_s": 1.0},
    "complete": {"exit_code": 0, "outputs": {}, "runtime_s": 1.0},
    "release": {"runtime_s": 1.0},
    "logs": {"stream": "stdout", "text": "hi"},
}


@pytest.mark.parametrize(("report", "change", "field"), REPORTS)
def test_a_report_the_store_cannot_hold_is_refused_naming_the_field_and_changes_nothing(
    hub: Hub, report: str, change: dict[str, Any], field: str
) -> None:
    node, _, task = _running(hub)
    body = {"attempt": task["attempt"], **GOOD_REPORTS[report], **change}
    if report == "checkpoints":
        body["sha256"] = node.upload(archive())
    path = f"/v1/tasks/{task['task_id']}/{report}"
    assert send(node, "POST", path, body, expect=422)["field"] == field
    stored = hub.ctx.store.get_task(task["task_id"])
    assert stored.state.value == "running"
    assert stored.last_checkpoint_sha is None
    assert stored.exit_code is None
    # The node goes on with a good report.
    run_for(node, task["task_id"], 1.0)
    good = {"attempt": task["attempt"], **GOOD_REPORTS["complete"]}
    node.call("POST", f"/v1/tasks/{task['task_id']}/complete", good, expect=204)


def test_a_heartbeat_the_store_cannot_hold_is_refused_naming_the_field(hub: Hub) -> None:
    node, _, task = _running(hub)
    beat = {"tasks": [{"task_id": task["task_id"], "attempt": 10**20, "progress": math.nan}]}
    refused = send(node, "POST", "/v1/nodes/heartbeat", beat, expect=422)
    assert refused["field"] in ("tasks.0.attempt", "tasks.0.progress")


def test_query_and_path_values_beyond_their_columns_are_refused_naming_them(hub: Hub) -> None:
    node, consumer, task = _running(hub)
    job, tid, big = task["job_id"], task["task_id"], 10**20
    refused = consumer.call("GET", f"/v1/jobs/{job}/logs?after={big}", expect=422)
    assert refused["field"] == "query.after"
    refused = node.call("GET", f"/v1/tasks/{tid}/round?attempt={big}", expect=422)
    assert refused["field"] == "query.attempt"
    update = {
        "attempt": 1,
        "sha256": "a" * 64,
        "base_sha": "b" * 64,
        "tokens": 1,
        "inner_steps": 1,
        "train_loss": 1.0,
        "bytes_down": 0,
        "runtime_s": 1.0,
    }
    path = f"/v1/tasks/{tid}/rounds/{big}/update"
    assert node.call("POST", path, update, expect=422)["field"] == "path.round_index"
    assert consumer.call("GET", "/v1/jobs/job%00", expect=422)["field"] == "path.job_id"
    chunk = {"attempt": 1, "stream": "stdout", "text": "x"}
    refused = node.call("POST", "/v1/tasks/task%00/logs", chunk, expect=422)
    assert refused["field"] == "path.task_id"
    assert consumer.call("GET", f"/v1/jobs/{job}/logs?after=0") == []


def test_nul_bytes_in_task_output_are_kept_as_replacement_characters(hub: Hub) -> None:
    node, consumer, task = _running(hub)
    chunk = {"attempt": task["attempt"], "stream": "stdout", "text": "a\x00b\n"}
    node.call("POST", f"/v1/tasks/{task['task_id']}/logs", chunk, expect=204)
    logs = consumer.call("GET", f"/v1/jobs/{task['job_id']}/logs")
    assert [line["text"] for line in logs] == ["a\ufffdb\n"]


# --- nodes ------------------------------------------------------------------------------------


def _registration(**change: Any) -> dict[str, Any]:
    inventory = {"cpus": 4, "memory_mib": 8192, "disk_free_mib": 50_000, **change}
    return {
        "name": "n",
        "inventory": inventory,
        "price_micro_per_gpu_hour": 0,
        "price_micro_per_cpu_hour": 1,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**_registration(), "name": "node\x00"}, "name"),
        (_registration(os="x" * 3_900_000), "inventory.os"),
        (_registration(gpus=[{"model": "A100", "memory_mib": 1}] * 65), "inventory.gpus"),
        (
            _registration(gpus=[{"model": "A100", "memory_mib": 10**20}]),
            "inventory.gpus.0.memory_mib",
        ),
        (_registration(memory_mib=math.inf), "inventory.memory_mib"),
    ],
)
def test_a_registration_too_big_or_unstorable_is_refused_and_never_served(
    hub: Hub, body: dict[str, Any], field: str
) -> None:
    node = hub.actor()
    assert send(node, "POST", "/v1/nodes/register", body, expect=422)["field"] == field
    assert hub.actor().call("GET", "/v1/nodes") == []


# --- a submission that fails after its lock ---------------------------------------------------


class _FailingOnce:
    """A store that fails once, ``where`` the test says: before committing a job, after it (a
    connection lost on the way back), or reading its tasks back for the submission's answer."""

    where = ""

    def _fail(self, where: str) -> None:
        if self.where == where:
            self.where = ""
            raise Unavailable(f"the database went away ({where})")

    def create_job(self, job: Job, tasks: Sequence[Task]) -> None:
        self._fail("before-commit")
        super().create_job(job, tasks)  # type: ignore[misc]
        self._fail("after-commit")

    def list_tasks(self, job_id: str) -> list[Task]:
        self._fail("read-back")
        return super().list_tasks(job_id)  # type: ignore[misc, no-any-return]


class _FailingMemory(_FailingOnce, MemoryStore):
    pass


class _FailingSql(_FailingOnce, SqlStore):
    pass


@pytest.fixture(params=["memory", "sqlite"])
def failing_store(request: Any, tmp_path: Path) -> Iterator[_FailingOnce]:
    if request.param == "memory":
        yield _FailingMemory()
        return
    store = _FailingSql.open(f"sqlite:///{tmp_path}/hub.sqlite3")
    yield store
    store.close()


@pytest.mark.parametrize("where", ["before-commit", "after-commit", "read-back"])
def test_a_submission_that_fails_after_its_lock_leaves_nothing_running_and_is_refunded(
    failing_store: _FailingOnce, tmp_path: Path, where: str
) -> None:
    assert isinstance(failing_store, MemoryStore | SqlStore)
    hub = make_hub(failing_store, tmp_path)
    node, consumer = hub.node("n1"), hub.actor()
    leaf = consumer.escrow(run_job())
    job_id = job_id_of(leaf)
    failing_store.where = where
    consumer.call("POST", "/v1/jobs", {"spec": run_job(), "escrow": leaf}, expect=503)

    assert claim(node) is None  # nothing of it runs
    listed = consumer.call("GET", "/v1/jobs")
    assert all(job["state"] == "failed" for job in listed)
    state = log_of(hub).escrow(job_id)
    assert state.refunded == state.locked > 0
    assert state.remaining == 0
    assert log_of(hub).account(consumer.id)[0] == state.locked


# --- the store's fail_job -----------------------------------------------------------------------


def test_fail_job_fails_a_live_job_and_cancels_only_its_unfinished_tasks(hub: Hub) -> None:
    store: Store = hub.ctx.store
    node, consumer = hub.node("n1"), hub.actor()
    job_id = consumer.submit(run_job(grid={"x": [1, 2, 3]}))["job"]["id"]
    done = claim(node)
    assert done is not None
    run_for(node, done["task_id"], 1.0)
    body = {"attempt": 1, **GOOD_REPORTS["complete"]}
    node.call("POST", f"/v1/tasks/{done['task_id']}/complete", body, expect=204)
    running = claim(node)
    assert running is not None

    store.fail_job(job_id, "why", hub.clock())
    job = store.get_job(job_id)
    assert job.state.value == "failed"
    assert job.error == "why"
    states = {t.id: t.state.value for t in store.list_tasks(job_id)}
    assert states.pop(done["task_id"]) == "succeeded"
    assert states.pop(running["task_id"]) == "cancelled"
    assert list(states.values()) == ["cancelled"]
    assert store.get_task(running["task_id"]).lease_expires_at is None

    store.fail_job(job_id, "again", hub.clock())  # over: left as it is
    assert store.get_job(job_id).error == "why"
    with pytest.raises(NotFound):
        store.fail_job("job_aaaaaaaaaaaaaaaa", "why", hub.clock())


# --- a stored job the hub cannot read back ----------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_hub(request: Any, tmp_path: Path) -> Iterator[Hub]:
    store = SqlStore.open(request.getfixturevalue(f"{request.param}_url"))
    yield make_hub(store, tmp_path)
    store.close()


def plant(hub: Hub, job_id: str, spec_text: str) -> None:
    """Write ``spec_text`` as the job's stored spec, as an older hub or a hand edit might."""
    store = hub.ctx.store
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:
        jobs_table = tables.jobs
        conn.execute(sa.update(jobs_table).where(jobs_table.c.id == job_id).values(spec=spec_text))


def stored_job(hub: Hub, job_id: str) -> tuple[str, str | None, list[str]]:
    store = hub.ctx.store
    assert isinstance(store, SqlStore)
    with store.engine.connect() as conn:
        j, t = tables.jobs.c, tables.tasks.c
        state, error = conn.execute(sa.select(j.state, j.error).where(j.id == job_id)).one()
        tasks = conn.execute(sa.select(t.state).where(t.job_id == job_id)).scalars().all()
    return state, error, list(tasks)


def _bad_spec(good: dict[str, Any], kind: str) -> str:
    if kind == "garbage":
        return "{not json"
    text = json.dumps({**good, "grid": {"x": [1.5]}})
    return text.replace("1.5", "NaN" if kind == "nan" else "null")


@pytest.mark.parametrize("kind", ["nan", "null", "garbage"])
def test_an_unreadable_job_is_failed_and_refunded_and_claims_for_the_others_go_on(
    sql_hub: Hub, kind: str
) -> None:
    hub = sql_hub
    consumer = hub.actor()
    bad = consumer.submit(run_job(name="bad"))["job"]
    hub.clock.advance(1)  # its task is the oldest in the queue
    good_id = consumer.submit(run_job(name="good"))["job"]["id"]
    plant(hub, bad["id"], _bad_spec(bad["spec"], kind))
    node = hub.node("n1")

    task = claim(node)
    assert task is not None
    assert task["job_id"] == good_id
    state, error, tasks = stored_job(hub, bad["id"])
    assert state == "failed"
    assert tasks == ["cancelled"]
    assert error is not None
    assert "cannot read it back" in error
    assert ("grid.x.0" in error) == (kind != "garbage")
    locked = log_of(hub).escrow(bad["id"])
    assert locked.refunded == locked.locked
    assert locked.remaining == 0

    listed = consumer.call("GET", "/v1/jobs")
    assert [job["id"] for job in listed] == [good_id]
    view = consumer.call("GET", f"/v1/jobs/{bad['id']}", expect=409)
    assert view["field"] == "job_id"
    assert "cannot be read back" in view["message"]
    hub.actor().call("GET", f"/v1/jobs/{bad['id']}", expect=403)
    assert consumer.call("GET", f"/v1/jobs/{good_id}")["state"] == "running"


def test_the_owners_view_of_an_unreadable_job_fails_it_and_refunds_it(sql_hub: Hub) -> None:
    hub = sql_hub
    consumer = hub.actor()
    bad = consumer.submit(run_job())["job"]
    plant(hub, bad["id"], _bad_spec(bad["spec"], "null"))
    consumer.call("GET", f"/v1/jobs/{bad['id']}", expect=409)
    assert stored_job(hub, bad["id"])[0] == "failed"
    assert log_of(hub).escrow(bad["id"]).remaining == 0


def test_reconcile_fails_an_unreadable_running_job_and_pays_its_kept_work(sql_hub: Hub) -> None:
    hub = sql_hub
    node, consumer = hub.node("n1", price_cpu=PRICE), hub.actor()
    bad = consumer.submit(run_job(max_price_micro_per_hour=PRICE, max_runtime_s=3600))["job"]
    task = claim(node)
    assert task is not None
    state = archive()
    run_for(node, task["task_id"], 3.0)
    checkpoint = {
        "attempt": task["attempt"],
        "sha256": node.upload(state),
        "size_bytes": len(state),
        "prev_sha256": None,
        "progress": 0.5,
        "runtime_s": 3.0,
    }
    node.call("POST", f"/v1/tasks/{task['task_id']}/checkpoints", checkpoint, expect=204)
    plant(hub, bad["id"], _bad_spec(bad["spec"], "nan"))

    escrow.reconcile(hub.ctx)  # the hub's minute sweep
    assert stored_job(hub, bad["id"])[:1] == ("failed",)
    assert log_of(hub).account(node.id)[0] == 3 * PER_S  # its kept work is still paid
    locked = log_of(hub).escrow(bad["id"])
    assert locked.refunded == PRICE - 3 * PER_S
    assert locked.remaining == 0
    beat = {"tasks": [{"task_id": task["task_id"], "attempt": task["attempt"]}]}
    assert node.call("POST", "/v1/nodes/heartbeat", beat)["cancel"] == [task["task_id"]]
