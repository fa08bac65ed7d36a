"""A node's reports race its own heartbeats, on every store.

Handlers run at once, so a heartbeat can renew a task between a log, checkpoint, completion or
release report reading that task and writing it. The report's write then loses the store's
optimistic check; that is not a lost lease, and the report must still land. A lease that really
ended meanwhile must still be refused.

The race is made deterministic: the store lets another write of the same task in just before a
report's own write, exactly where a concurrent heartbeat lands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import run_job
from hubkit import Actor, Hub, archive, claim, make_hub

from lumbung.hub import escrow, leases, reports
from lumbung.hub.context import HubContext
from lumbung.market.model import JobState, TaskState
from lumbung.market.states import TaskEvent
from lumbung.store.protocol import Changes, Store
from lumbung.wire.api import HeartbeatRequest, TaskReport
from lumbung.wire.api import TaskComplete as CompleteBody


class InterleavingStore:
    """``store``, with ``interloper`` run before the next ``times`` writes of a task."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.interloper: Callable[[], None] | None = None
        self.times = 0
        self.interleaved = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def apply(self, changes: Changes) -> None:
        interloper = self.interloper
        if interloper is not None and changes.tasks and self.times > 0:
            self.times -= 1
            self.interloper = None  # the interloper's own write goes straight through
            try:
                interloper()
            finally:
                self.interloper = interloper if self.times > 0 else None
            self.interleaved += 1
        self._store.apply(changes)


@pytest.fixture
def racing(store: Store, tmp_path: Path) -> tuple[Hub, InterleavingStore]:
    interleaving = InterleavingStore(store)
    return make_hub(interleaving, tmp_path), interleaving  # type: ignore[arg-type]


def _running(hub: Hub) -> tuple[Actor, dict[str, Any]]:
    node = hub.node("n1")
    hub.actor().submit(run_job())
    task = claim(node)
    assert task is not None
    return node, task


def _heartbeat(ctx: HubContext, node: Actor, task: dict[str, Any]) -> Callable[[], None]:
    beat = HeartbeatRequest(tasks=[TaskReport(task_id=task["task_id"], attempt=task["attempt"])])

    def renew() -> None:
        response = leases.heartbeat(ctx, node.id, beat)
        assert response.renewed == [task["task_id"]]

    return renew


def _report(kind: str, node: Actor, task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    path = f"/v1/tasks/{task['task_id']}/{kind}"
    attempt = task["attempt"]
    if kind == "logs":
        return path, {"attempt": attempt, "stream": "stdout", "text": "step 1\n"}
    if kind == "checkpoints":
        state = archive(b"step 1")
        return path, {
            "attempt": attempt,
            "sha256": node.upload(state),
            "size_bytes": len(state),
            "prev_sha256": None,
            "progress": 0.5,
            "runtime_s": 0.0,
        }
    if kind == "complete":
        return path, {"attempt": attempt, "exit_code": 0, "outputs": {}, "runtime_s": 0.0}
    return path, {"attempt": attempt, "runtime_s": 0.0}


@pytest.mark.parametrize("kind", ["logs", "checkpoints", "complete", "release"])
def test_a_report_that_loses_a_race_to_its_nodes_heartbeat_still_lands(
    racing: tuple[Hub, InterleavingStore], kind: str
) -> None:
    hub, store = racing
    node, task = _running(hub)
    path, body = _report(kind, node, task)
    store.interloper, store.times = _heartbeat(hub.ctx, node, task), 3
    node.call("POST", path, body, expect=204)
    assert store.interleaved == 3  # three lost races, then the report's fourth read won
    stored = hub.ctx.store.get_task(task["task_id"])
    if kind == "logs":
        assert stored.log_bytes == len(b"step 1\n")
    elif kind == "checkpoints":
        assert stored.last_checkpoint_sha == body["sha256"]
    elif kind == "complete":
        assert stored.state.value == "succeeded"
    else:
        assert stored.state.value == "queued"


@pytest.mark.parametrize("kind", ["checkpoints", "complete", "release"])
def test_a_report_racing_the_end_of_its_lease_is_refused_and_writes_nothing(
    racing: tuple[Hub, InterleavingStore], kind: str
) -> None:
    hub, store = racing
    node, task = _running(hub)
    path, body = _report(kind, node, task)

    def lease_lost() -> None:
        held = hub.ctx.store.get_task(task["task_id"])
        leases.requeue(hub.ctx, held, TaskEvent.LEASE_LOST, 0.0, hub.clock())

    store.interloper, store.times = lease_lost, 1
    node.call("POST", path, body, expect=409)
    stored = hub.ctx.store.get_task(task["task_id"])
    assert stored.state.value == "queued"
    assert stored.last_checkpoint_sha is None
    assert hub.ctx.store.list_checkpoints(task["task_id"]) == []


def test_a_report_that_loses_every_race_is_asked_again_not_refused(
    racing: tuple[Hub, InterleavingStore],
) -> None:
    hub, store = racing
    node, task = _running(hub)
    path, body = _report("logs", node, task)
    store.interloper, store.times = _heartbeat(hub.ctx, node, task), 1000
    refusal = node.call("POST", path, body, expect=503)
    assert refusal["error"] == "Unavailable"
    assert "send the report again" in refusal["message"]
    assert hub.ctx.store.get_task(task["task_id"]).log_bytes == 0


def test_the_last_two_tasks_of_a_job_completing_at_once_end_the_job(
    racing: tuple[Hub, InterleavingStore],
) -> None:
    # Each completion counts the other task as still running; had neither written the job,
    # the job would stay running for ever with both its tasks succeeded.
    hub, store = racing
    first, second = hub.node("n1"), hub.node("n2")
    consumer = hub.actor()
    consumer.submit(run_job(grid={"x": [1, 2]}))
    hub.clock.advance(hub.ctx.config.cheaper_node_grace_s + 0.1)  # either node may take either
    task_a, task_b = claim(first), claim(second)
    assert task_a is not None
    assert task_b is not None
    done = {"exit_code": 0, "outputs": {}, "runtime_s": 0.0}

    def other_completes() -> None:
        body = CompleteBody(attempt=task_b["attempt"], **done)
        reports.complete(hub.ctx, second.id, task_b["task_id"], body)

    store.interloper, store.times = other_completes, 1
    first.call(
        "POST", f"/v1/tasks/{task_a['task_id']}/complete", {"attempt": 1, **done}, expect=204
    )
    view = consumer.call("GET", f"/v1/jobs/{task_a['job_id']}")
    assert [t["state"] for t in view["tasks"]] == ["succeeded", "succeeded"]
    assert view["state"] == "succeeded"


def test_a_job_whose_hub_stopped_before_its_recount_ends_at_the_next_reconcile(
    racing: tuple[Hub, InterleavingStore],
) -> None:
    # The task's success committed, then the hub stopped: the job row still says running.
    hub, _ = racing
    _, task = _running(hub)
    stored = hub.ctx.store.get_task(task["task_id"])
    stored.state, stored.lease_expires_at, stored.progress = TaskState.SUCCEEDED, None, 1.0
    hub.ctx.store.apply(Changes(tasks=[stored]))
    assert hub.ctx.store.get_job(task["job_id"]).state is JobState.RUNNING
    escrow.reconcile(hub.ctx)
    assert hub.ctx.store.get_job(task["job_id"]).state is JobState.SUCCEEDED
    assert hub.ctx.log is not None
    assert hub.ctx.log.escrow(task["job_id"]).remaining == 0  # over, so settled: none held
