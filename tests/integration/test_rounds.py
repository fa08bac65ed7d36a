"""The hub's side of DiLoCo rounds, in-process on every store, with workers simulated in numpy.

The workers here do not train: each sends a made-up pseudo-gradient, encoded as a real worker
would (``lumbung.train.codec``). What is tested is the hub: who may send what, when a round
closes, and that the weights it publishes are exactly the outer step of what it received.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from factories import train_job
from hubkit import LEASE_S, Actor, Hub, claim, run_for

from lumbung.errors import StaleWrite, Unavailable
from lumbung.hub.leases import expire_leases
from lumbung.hub.rounds import close_due_rounds, close_ready_rounds, submit_update
from lumbung.train.codec import CodecConfig, decode, encode
from lumbung.train.outer import OuterConfig
from lumbung.train.rounds import FULL_WEIGHTS, GlobalState, close_round
from lumbung.wire.api import RoundUpdateReport

NUMEL = 1000
INT8 = CodecConfig("int8", 256)
OUTER = OuterConfig(0.7, 0.9, True)


def train_spec(**train: Any) -> dict[str, Any]:
    body = {"rounds": 2, "workers": {"wanted": 3, "minimum": 2}, "round_deadline_s": 60, **train}
    return train_job(body, max_price_micro_per_hour=36_000_000, max_runtime_s=600)


def trainers(hub: Hub, count: int = 3) -> list[Actor]:
    nodes = [
        hub.node(f"gpu-{i}", price_cpu=3_600_000, kinds=("run", "train")) for i in range(count)
    ]
    return nodes


def claim_all(hub: Hub, nodes: list[Actor]) -> list[dict[str, Any]]:
    """Each node's task; past the first-refusal grace, so the order of claims does not matter."""
    hub.clock.advance(hub.ctx.config.cheaper_node_grace_s + 0.1)
    tasks = [claim(n) for n in nodes]
    assert all(t is not None for t in tasks)
    return [t for t in tasks if t is not None]


def round_info(node: Actor, task: dict[str, Any], expect: int = 200) -> dict[str, Any]:
    path = f"/v1/tasks/{task['task_id']}/round?attempt={task['attempt']}"
    result: dict[str, Any] = node.call("GET", path, expect=expect)
    return result


def send(
    node: Actor,
    task: dict[str, Any],
    round_index: int,
    delta: np.ndarray,
    base_sha: str,
    expect: int = 204,
    **extra: Any,
) -> Any:
    sha = node.upload(encode(delta, INT8))
    body = {
        "attempt": task["attempt"],
        "sha256": sha,
        "base_sha": base_sha,
        "tokens": 4096,
        "inner_steps": 50,
        "train_loss": 2.0 + round_index,
        "base_val_loss": 2.5,
        "bytes_down": 4000,
        "runtime_s": 10.0 * (round_index + 1),
        **extra,
    }
    path = f"/v1/tasks/{task['task_id']}/rounds/{round_index}/update"
    run_for(node, task["task_id"], body["runtime_s"])  # an honest worker: it trained that long
    return node.call("POST", path, body, expect=expect)


def weights(hub: Hub, sha: str) -> np.ndarray:
    with hub.ctx.blobs.open(sha) as f:
        return decode(f.read(), NUMEL)


def test_rounds_close_on_every_update_then_on_the_survivors_and_publish_the_outer_step(
    hub: Hub,
) -> None:
    nodes = trainers(hub)
    consumer = hub.actor()
    job_id = consumer.submit(train_spec())["job"]["id"]
    tasks = claim_all(hub, nodes)
    assert all(t["kind"] == "train" and t["train"]["rounds"] == 2 for t in tasks)
    assert sorted(t["params"]["shard"] for t in tasks) == [0, 1, 2]

    rng = np.random.default_rng(7)
    theta0 = rng.normal(size=NUMEL).astype(np.float32)
    initial = nodes[0].upload(encode(theta0, FULL_WEIGHTS))
    assert round_info(nodes[0], tasks[0])["base_sha"] is None  # round 0 waits for the weights
    deltas = [rng.normal(scale=0.01, size=NUMEL).astype(np.float32) for _ in range(3)]
    send(nodes[0], tasks[0], 0, deltas[0], initial, initial_sha=initial)
    assert round_info(nodes[0], tasks[0])["state"] == "submitted"
    info = round_info(nodes[1], tasks[1])
    assert (info["state"], info["base_sha"]) == ("open", initial)
    send(nodes[1], tasks[1], 0, deltas[1], initial)
    send(nodes[2], tasks[2], 0, deltas[2], initial)

    # All three reported: round 0 closed and round 1 starts from the outer step's weights.
    info = round_info(nodes[2], tasks[2])
    assert (info["round"], info["state"], info["previous_base_sha"]) == (1, "open", initial)
    expected = close_round(
        GlobalState.start(theta0), [encode(d, INT8) for d in deltas], OUTER, INT8
    ).state
    np.testing.assert_array_equal(weights(hub, info["base_sha"]), expected.published)
    change = weights(hub, info["change_sha"])
    np.testing.assert_array_equal(theta0 + change, expected.published)

    # Round 1: one worker dies; the others report; the round closes once its lease is gone.
    base = info["base_sha"]
    send(nodes[0], tasks[0], 1, deltas[0], base)
    send(nodes[1], tasks[1], 1, deltas[1], base)
    assert close_ready_rounds(hub.ctx) == 0  # gpu-2 still holds its lease
    hub.clock.advance(LEASE_S - 1)
    for node, task in zip(nodes[:2], tasks[:2], strict=True):  # the survivors heartbeat
        node.call("POST", "/v1/nodes/heartbeat", heartbeat(task))
    hub.clock.advance(2)
    assert expire_leases(hub.ctx) == 1
    assert close_ready_rounds(hub.ctx) == 1

    assert round_info(nodes[0], tasks[0])["state"] == "done"
    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert [r["participants"] for r in view["rounds"]] == [3, 2]
    first = view["rounds"][0]["metrics"]
    assert first["bytes_up"] == 3 * len(encode(deltas[0], INT8))
    assert first["tokens"] == 3 * 4096
    assert view["rounds"][0]["devices"] == ["cpu", "cpu", "cpu"]
    assert view["model_sha256"] is not None
    assert weights(hub, view["model_sha256"]).shape == (NUMEL,)
    # Kept inner steps are paid: 20 s at 1,000 micro-credits a second for each survivor.
    assert hub.ctx.log is not None
    assert hub.ctx.log.account(nodes[0].id)[0] == 20 * 1_000


def test_bad_updates_are_refused_naming_the_field_and_leave_the_round_unharmed(hub: Hub) -> None:
    nodes = trainers(hub, 2)
    consumer = hub.actor()
    consumer.submit(train_spec(workers={"wanted": 2, "minimum": 2}))
    tasks = claim_all(hub, nodes)
    theta0 = np.zeros(NUMEL, dtype=np.float32)
    initial = nodes[0].upload(encode(theta0, FULL_WEIGHTS))
    delta = np.full(NUMEL, 0.01, dtype=np.float32)

    assert send(nodes[0], tasks[0], 0, delta, initial, 422)["field"] == "initial_sha"
    send(nodes[0], tasks[0], 0, delta, initial, initial_sha=initial)
    assert send(nodes[0], tasks[0], 0, delta, initial, 409)["field"] == "round"  # twice
    assert send(nodes[1], tasks[1], 1, delta, initial, 409)["field"] == "round"  # not open
    other = nodes[1].upload(encode(np.ones(NUMEL, dtype=np.float32), FULL_WEIGHTS))
    assert send(nodes[1], tasks[1], 0, delta, other, 409)["field"] == "base_sha"
    short = np.zeros(NUMEL - 1, dtype=np.float32)
    body = send(nodes[1], tasks[1], 0, short, initial, 422)
    assert body["field"] == "sha256"
    assert "values" in body["message"]
    never = {**tasks[1]}
    path = f"/v1/tasks/{never['task_id']}/rounds/0/update"
    missing = {
        "attempt": never["attempt"],
        "sha256": "0" * 64,
        "base_sha": initial,
        "tokens": 1,
        "inner_steps": 1,
        "train_loss": 1.0,
        "bytes_down": 0,
        "runtime_s": 1.0,
    }
    assert nodes[1].call("POST", path, missing, expect=422)["field"] == "sha256"
    # Another node's task, and a stranger: 403.
    assert send(nodes[0], tasks[1], 0, delta, initial, 403)["field"] == "task_id"
    assert round_info(nodes[1], tasks[0], expect=403)["field"] == "task_id"

    send(nodes[1], tasks[1], 0, delta, initial)  # the round takes a good one after all that
    assert round_info(nodes[1], tasks[1])["round"] == 1


def test_a_round_at_its_deadline_closes_with_the_minimum_and_waits_when_short(hub: Hub) -> None:
    nodes = trainers(hub, 3)
    consumer = hub.actor()
    job_id = consumer.submit(train_spec(rounds=1))["job"]["id"]
    tasks = claim_all(hub, nodes)
    initial = nodes[0].upload(encode(np.zeros(NUMEL, dtype=np.float32), FULL_WEIGHTS))
    delta = np.full(NUMEL, 0.01, dtype=np.float32)
    send(nodes[0], tasks[0], 0, delta, initial, initial_sha=initial)
    hub.clock.advance(61)
    for node, task in zip(nodes, tasks, strict=True):  # keep every lease alive
        node.call("POST", "/v1/nodes/heartbeat", heartbeat(task))
    assert close_due_rounds(hub.ctx) == 0  # one update, minimum two: the deadline moves
    assert hub.ctx.store.latest_round(job_id).deadline_at > hub.clock()
    send(nodes[1], tasks[1], 0, delta, initial)
    assert close_ready_rounds(hub.ctx) == 0  # gpu-2 holds its lease and may still report
    hub.clock.advance(61)
    for node, task in zip(nodes, tasks, strict=True):
        node.call("POST", "/v1/nodes/heartbeat", heartbeat(task))
    assert close_due_rounds(hub.ctx) == 1
    assert round_info(nodes[2], tasks[2])["state"] == "done"


def heartbeat(task: dict[str, Any] | None) -> dict[str, Any]:
    assert task is not None
    return {
        "free_slots": 0,
        "draining": False,
        "tasks": [{"task_id": task["task_id"], "attempt": task["attempt"], "progress": 0.5}],
    }


def test_a_cancelled_job_resumes_as_a_new_job_from_its_last_weights_and_momentum(
    hub: Hub,
) -> None:
    nodes = trainers(hub, 2)
    consumer = hub.actor()
    two = {"workers": {"wanted": 2, "minimum": 2}}
    first_id = consumer.submit(train_spec(rounds=5, **two))["job"]["id"]
    tasks = claim_all(hub, nodes)
    theta0 = np.zeros(NUMEL, dtype=np.float32)
    initial = nodes[0].upload(encode(theta0, FULL_WEIGHTS))
    delta = np.full(NUMEL, 0.01, dtype=np.float32)
    send(nodes[0], tasks[0], 0, delta, initial, initial_sha=initial)
    send(nodes[1], tasks[1], 0, delta, initial)
    stopped_at = round_info(nodes[0], tasks[0])["base_sha"]  # round 1's weights
    consumer.call("POST", f"/v1/jobs/{first_id}/cancel")

    # Someone else cannot resume it; a different model cannot; its owner can.
    stranger = hub.actor()
    body = stranger.submit(train_spec(resume_from=first_id, **two), expect=403)
    assert body["field"] == "spec.train.resume_from"
    other_model = train_spec(resume_from=first_id, model={"dim": 64}, **two)
    assert consumer.submit(other_model, expect=422)["field"] == "spec.train.resume_from"
    resumed_id = consumer.submit(train_spec(rounds=1, resume_from=first_id, **two))["job"]["id"]

    for node in nodes:  # the first job's cancelled tasks are gone; the new job's are leased
        node.call("POST", "/v1/nodes/heartbeat", {"free_slots": 1, "draining": False, "tasks": []})
    tasks = claim_all(hub, nodes)
    info = round_info(nodes[0], tasks[0])
    assert (info["round"], info["base_sha"]) == (0, stopped_at)
    send(nodes[0], tasks[0], 0, delta, stopped_at)
    send(nodes[1], tasks[1], 0, delta, stopped_at)
    # The outer momentum carried over: the step is that of the first job's second round.
    first_state = GlobalState.start(theta0)
    after_one = close_round(first_state, [encode(delta, INT8)] * 2, OUTER, INT8).state
    after_two = close_round(after_one, [encode(delta, INT8)] * 2, OUTER, INT8).state
    model = consumer.call("GET", f"/v1/jobs/{resumed_id}")["model_sha256"]
    np.testing.assert_array_equal(weights(hub, model), after_two.published)


def test_resuming_needs_a_job_that_finished_a_round(hub: Hub) -> None:
    consumer = hub.actor()
    never_ran = consumer.submit(train_spec())["job"]["id"]
    body = consumer.submit(train_spec(resume_from=never_ran), expect=422)
    assert body["field"] == "spec.train.resume_from"
    assert "no round" in body["message"]
    missing = consumer.submit(train_spec(resume_from="job_" + "a" * 16), expect=404)
    assert missing["field"] == "spec.train.resume_from"


def test_updates_arriving_together_all_count_and_the_round_closes_once(hub: Hub) -> None:
    nodes = trainers(hub, 4)
    consumer = hub.actor()
    job_id = consumer.submit(train_spec(workers={"wanted": 4, "minimum": 4}))["job"]["id"]
    tasks = claim_all(hub, nodes)
    initial = nodes[0].upload(encode(np.zeros(NUMEL, dtype=np.float32), FULL_WEIGHTS))
    rng = np.random.default_rng(3)
    deltas = [rng.normal(scale=0.01, size=NUMEL).astype(np.float32) for _ in range(4)]
    send(nodes[0], tasks[0], 0, deltas[0], initial, initial_sha=initial)
    blobs = [nodes[i].upload(encode(deltas[i], INT8)) for i in range(4)]

    def report(i: int) -> None:
        submit_update(
            hub.ctx, nodes[i].id, tasks[i]["task_id"], 0, _report(tasks[i], blobs[i], initial)
        )

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(report, [1, 2, 3]))
    assert hub.ctx.background.wait_idle(60)  # the round closes off the request path
    rounds = hub.ctx.store.list_rounds(job_id)
    assert [(r.index, r.state.value, r.participants) for r in rounds[:1]] == [(0, "closed", 4)]
    assert len(hub.ctx.store.list_updates(job_id, 0)) == 4
    assert rounds[1].state.value == "open"


def test_an_update_that_loses_every_race_is_503_with_nothing_written(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = trainers(hub, 2)
    job_id = hub.actor().submit(train_spec(workers={"wanted": 2, "minimum": 2}))["job"]["id"]
    tasks = claim_all(hub, nodes)
    initial = nodes[0].upload(encode(np.zeros(NUMEL, dtype=np.float32), FULL_WEIGHTS))
    delta = np.full(NUMEL, 0.01, dtype=np.float32)
    send(nodes[0], tasks[0], 0, delta, initial, initial_sha=initial)
    store, real_apply = hub.ctx.store, hub.ctx.store.apply

    def always_beaten(changes: Any) -> None:
        if changes.updates:  # another worker's update always lands first
            raise StaleWrite("round 0 changed concurrently")
        real_apply(changes)

    monkeypatch.setattr(store, "apply", always_beaten)
    body = _report(tasks[1], nodes[1].upload(encode(delta, INT8)), initial)
    with pytest.raises(Unavailable, match="send it again") as caught:
        submit_update(hub.ctx, nodes[1].id, tasks[1]["task_id"], 0, body)
    assert caught.value.field == "round"
    assert [u.task_id for u in store.list_updates(job_id, 0)] == [tasks[0]["task_id"]]
    monkeypatch.setattr(store, "apply", real_apply)
    submit_update(hub.ctx, nodes[1].id, tasks[1]["task_id"], 0, body)  # sent again: taken
    assert hub.ctx.background.wait_idle(60)
    assert store.get_round(job_id, 0).state.value == "closed"


def _report(task: dict[str, Any], sha256: str, base_sha: str) -> RoundUpdateReport:
    return RoundUpdateReport(
        attempt=task["attempt"],
        sha256=sha256,
        base_sha=base_sha,
        tokens=1,
        inner_steps=1,
        train_loss=1.0,
        bytes_down=0,
        runtime_s=1.0,
    )


def test_screening_leaves_out_bad_updates_names_them_and_pays_only_the_kept(hub: Hub) -> None:
    nodes = trainers(hub, 6)
    consumer = hub.actor()
    spec = train_spec(rounds=1, workers={"wanted": 6, "minimum": 6})
    job_id = consumer.submit(spec)["job"]["id"]
    tasks = claim_all(hub, nodes)
    rng = np.random.default_rng(11)
    theta0 = rng.normal(size=NUMEL).astype(np.float32)
    initial = nodes[0].upload(encode(theta0, FULL_WEIGHTS))
    # Honest workers descend the same loss from the same weights: one direction, their own noise.
    common = rng.normal(scale=0.01, size=NUMEL)
    honest = [(common + rng.normal(scale=0.005, size=NUMEL)).astype(np.float32) for _ in range(3)]
    cheats = [1.05 * honest[0], -honest[1], np.zeros(NUMEL, dtype=np.float32)]
    for i, delta in enumerate(honest + cheats):
        extra = {"initial_sha": initial} if i == 0 else {}
        send(nodes[i], tasks[i], 0, delta, initial, **extra)
        hub.clock.advance(0.5)  # a copy is told from its original by the order they arrived in

    view = consumer.call("GET", f"/v1/jobs/{job_id}")
    (closed,) = view["rounds"]
    assert closed["participants"] == 3
    reasons = {s["node_id"]: s["reason"] for s in closed["screened_out"]}
    assert set(reasons) == {n.id for n in nodes[3:]}
    assert reasons[nodes[3].id] == f"the update is a copy of {tasks[0]['task_id']}'s"
    assert reasons[nodes[4].id].startswith("the update points away from the round's")
    assert reasons[nodes[5].id] == "the update is all zeros"
    assert closed["metrics"]["screened_out"] == 3

    # The published weights are the outer step over the three kept updates alone.
    expected = close_round(
        GlobalState.start(theta0), [encode(d, INT8) for d in honest], OUTER, INT8
    ).state
    np.testing.assert_array_equal(weights(hub, view["model_sha256"]), expected.published)
    # The kept workers' 10 s are paid at 1,000 micro-credits a second; the left-out are not.
    assert hub.ctx.log is not None
    assert [hub.ctx.log.account(n.id)[0] for n in nodes] == [10_000] * 3 + [0] * 3
