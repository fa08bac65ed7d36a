"""Time the hub measures, on every store: a node is paid for the time it held its lease, never for
the time it claims, and a lease never outlives its job's time limit.

The adversary is a node that reports more runtime than it had. Prices make one second of work
earn 10,000 micro-credits and there is no fee, so every amount below is exact arithmetic.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from factories import run_job
from hubkit import Actor, Hub, archive, claim, make_hub

from lumbung.config import HubConfig, load
from lumbung.errors import ConfigError
from lumbung.hub import reports
from lumbung.hub.leases import expire_leases
from lumbung.store.protocol import Store
from lumbung.wire.api import CheckpointReport, TaskComplete

PRICE = 36_000_000  # micro-credits per CPU-hour: 10,000 a second
PER_S = 10_000
BUDGET = PRICE  # one task of max_runtime_s 3600 at the price limit
GRACE_S = 30.0


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Hub:
    return make_hub(store, tmp_path, runtime_grace_s=GRACE_S)


job_spec = functools.partial(run_job, max_price_micro_per_hour=PRICE, max_runtime_s=3600)


def started(hub: Hub) -> tuple[Actor, Actor, dict[str, Any]]:
    node = hub.node("cheat", price_cpu=PRICE)
    consumer = hub.actor()
    consumer.submit(job_spec(retries=1))
    task = claim(node)
    assert task is not None
    return node, consumer, task


def checkpoint(node: Actor, task: dict[str, Any], runtime_s: float, expect: int = 204) -> Any:
    state = archive(f"{task['task_id']}-{task['attempt']}-{runtime_s}".encode())
    job = node.ctx.store.get_task(task["task_id"])
    return node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/checkpoints",
        {
            "attempt": task["attempt"],
            "sha256": node.upload(state),
            "size_bytes": len(state),
            "prev_sha256": job.last_checkpoint_sha,
            "progress": 0.5,
            "runtime_s": runtime_s,
        },
        expect=expect,
    )


def escrow_of(consumer: Actor, task: dict[str, Any]) -> dict[str, int]:
    view: dict[str, int] = consumer.call("GET", f"/v1/jobs/{task['job_id']}")["escrow"]
    return view


def heartbeat(node: Actor, task: dict[str, Any]) -> dict[str, Any]:
    beat = {"tasks": [{"task_id": task["task_id"], "attempt": task["attempt"]}]}
    result: dict[str, Any] = node.call("POST", "/v1/nodes/heartbeat", beat)
    return result


def test_a_node_completing_after_a_fraction_of_a_second_claiming_an_hour_is_paid_the_fraction(
    hub: Hub,
) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(0.08)
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": 1, "exit_code": 0, "outputs": {}, "runtime_s": 3600.0},
        expect=204,
    )
    escrow = escrow_of(consumer, task)
    assert 0 < escrow["released_micro"] <= 0.08 * PER_S  # not the 36,000,000 it claimed
    assert escrow["refunded_micro"] == BUDGET - escrow["released_micro"]
    view = consumer.call("GET", f"/v1/jobs/{task['job_id']}")
    assert view["work"][0]["kept_s"] <= 0.08


def test_a_checkpoint_claiming_more_than_the_lease_held_keeps_only_the_time_held(
    hub: Hub,
) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(2.0)
    checkpoint(node, task, 3600.0)
    assert escrow_of(consumer, task)["released_micro"] == 2 * PER_S
    link = consumer.call("GET", f"/v1/jobs/{task['job_id']}")["tasks"][0]["checkpoints"][0]
    assert link["kept_s"] == 2.0


def test_two_checkpoints_that_together_claim_more_than_the_lease_held_keep_only_the_time_held(
    hub: Hub,
) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(4.0)
    checkpoint(node, task, 3.0)  # honest: 3 s of the 4 s held
    hub.clock.advance(1.0)
    checkpoint(node, task, 9.0)  # 5 s held in all: 2 s more, not 6
    view = consumer.call("GET", f"/v1/jobs/{task['job_id']}")
    assert [c["kept_s"] for c in view["tasks"][0]["checkpoints"]] == [3.0, 2.0]
    assert view["escrow"]["released_micro"] == 5 * PER_S
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": 1, "exit_code": 0, "outputs": {}, "runtime_s": 10.0},
        expect=204,
    )
    assert escrow_of(consumer, task)["released_micro"] == 5 * PER_S  # still 5 s held, no more


def test_an_infinite_or_nan_runtime_that_got_past_the_wire_never_reaches_settlement(
    hub: Hub,
) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(2.0)
    state = archive(b"inf")
    sha = node.upload(state)
    # Built without validation, as if the wire had let it through: the hub must still cope.
    report = CheckpointReport.model_construct(
        attempt=1,
        sha256=sha,
        size_bytes=len(state),
        prev_sha256=None,
        progress=0.5,
        runtime_s=float("nan"),
    )
    reports.add_checkpoint(hub.ctx, node.id, task["task_id"], report)
    assert escrow_of(consumer, task)["released_micro"] == 0  # NaN keeps nothing
    hub.clock.advance(1.0)
    done = TaskComplete.model_construct(
        attempt=1, exit_code=0, outputs={}, runtime_s=float("inf"), error=None
    )
    reports.complete(hub.ctx, node.id, task["task_id"], done)
    view = consumer.call("GET", f"/v1/jobs/{task['job_id']}")  # answers, and the escrow settled
    assert view["state"] == "succeeded"
    assert view["work"][0]["kept_s"] == 3.0
    assert view["escrow"]["released_micro"] == 3 * PER_S
    assert view["escrow"]["refunded_micro"] == BUDGET - 3 * PER_S
    assert view["escrow"]["remaining_micro"] == 0


def test_a_released_task_keeps_no_more_than_the_lease_held(hub: Hub) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(1.0)
    checkpoint(node, task, 1.0)
    hub.clock.advance(2.0)
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/release",
        {"attempt": 1, "runtime_s": 3600.0},
        expect=204,
    )
    work = consumer.call("GET", f"/v1/jobs/{task['job_id']}")["work"][0]
    assert (work["kept_s"], work["lost_s"]) == (1.0, 2.0)


def heartbeat_until_cancelled(hub: Hub, node: Actor, task: dict[str, Any]) -> float:
    """Heartbeat every 5 s, the reaper running between beats, for up to 4x the job's limit of
    60 s; returns how long into the attempt the hub told the node to stop."""
    started = hub.ctx.store.get_task(task["task_id"]).started_at
    assert started is not None
    while hub.clock.now - started < 4 * 60:
        hub.clock.advance(5.0)
        expire_leases(hub.ctx)
        if heartbeat(node, task)["cancel"]:
            return hub.clock.now - started
    raise AssertionError("the hub let the lease run to 4x its time limit")


def test_a_lease_past_its_time_limit_and_grace_ends_as_a_timed_out_failure_and_is_retried(
    hub: Hub,
) -> None:
    node = hub.node("slow", price_cpu=PRICE)
    consumer = hub.actor()
    job_id = consumer.submit(job_spec(max_runtime_s=60, retries=1))["job"]["id"]
    task = claim(node)
    assert task is not None
    hub.clock.advance(20.0)
    checkpoint(node, task, 20.0)
    # The node heartbeats on past its limit: renewals stop at 60 s + the grace.
    assert heartbeat_until_cancelled(hub, node, task) == 60 + GRACE_S
    hub.clock.advance(5.0)
    assert expire_leases(hub.ctx) == 1  # the reaper's pass ends the attempt

    stored = hub.ctx.store.get_task(task["task_id"])
    assert (stored.state.value, stored.failures) == ("queued", 1)
    assert stored.error == "time limit of 60 s exceeded"
    assert heartbeat(node, task)["cancel"] == [task["task_id"]]
    checkpoint(node, task, 21.0, expect=409)  # its reports on the attempt are refused
    work = consumer.call("GET", f"/v1/jobs/{job_id}")["work"][0]
    assert work["kept_s"] == 20.0  # up to its last checkpoint
    assert work["lost_s"] == 60 + GRACE_S - 20.0  # the rest it held is lost

    again = claim(node)  # the retry has the same limit, and then the job fails
    assert again is not None
    assert again["attempt"] == 2
    assert heartbeat_until_cancelled(hub, node, again) == 60 + GRACE_S
    hub.clock.advance(5.0)
    assert expire_leases(hub.ctx) == 1
    job = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert job["state"] == "failed"
    assert "time limit of 60 s exceeded" in job["error"]
    assert job["escrow"]["released_micro"] == 20 * PER_S
    assert job["escrow"]["refunded_micro"] == 60 * PER_S - 20 * PER_S


def test_no_lease_is_ever_renewed_past_its_time_limit(hub: Hub) -> None:
    node = hub.node("slow", price_cpu=PRICE)
    consumer = hub.actor()
    consumer.submit(job_spec(max_runtime_s=5, retries=0))
    task = claim(node)
    assert task is not None
    started = hub.ctx.store.get_task(task["task_id"]).started_at
    assert started is not None
    limit = started + 5 + GRACE_S
    for _ in range(8):  # 40 s of heartbeats, 5 s past the limit
        hub.clock.advance(5.0)
        beat = heartbeat(node, task)
        expires = hub.ctx.store.get_task(task["task_id"]).lease_expires_at
        assert expires is not None
        assert expires <= limit
    assert beat["cancel"] == [task["task_id"]]
    assert expire_leases(hub.ctx) == 1
    stored = hub.ctx.store.get_task(task["task_id"])
    assert (stored.state.value, stored.error) == ("failed", "time limit of 5 s exceeded")


def test_the_runtime_grace_is_a_hub_setting_that_refuses_a_bad_value(tmp_path: Path) -> None:
    env = {"LUMBUNG_HUB_RUNTIME_GRACE_S": "12.5"}
    assert load(HubConfig, env=env).runtime_grace_s == 12.5
    assert load(HubConfig, env=env, overrides={"runtime_grace_s": 3.0}).runtime_grace_s == 3.0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError) as caught:
            load(HubConfig, env={"LUMBUNG_HUB_RUNTIME_GRACE_S": bad})
        assert caught.value.field == "runtime_grace_s"
