"""The hub in-process (hubkit.py: Starlette's TestClient over the ASGI app) on every store.

A fake clock drives leases and signatures, so expiry is tested without sleeping.
"""

from __future__ import annotations

import hashlib

import pytest
from factories import run_job
from hubkit import LEASE_S, Hub, archive, claim, run_for

from lumbung.client.auth import SignedAuth
from lumbung.config import HubConfig
from lumbung.hub.leases import MAX_LOST_LEASES, expire_leases, grace_after_restart
from lumbung.market.reliability import DAY_S


def test_job_runs_from_submit_to_results(hub: Hub) -> None:
    node = hub.node("n1")
    consumer = hub.actor()
    code = consumer.upload(b"print('hello')")
    body = run_job(inputs=[{"name": "main.py", "sha256": code}], outputs=["out.txt"])
    submitted = consumer.submit(body, expect=201)
    job_id = submitted["job"]["id"]
    assert submitted["plan"]["fits"][0]["node_id"] == node.id

    task = claim(node)
    assert task is not None
    assert task["inputs"] == {"main.py": code}
    assert task["command"] == ["python", "-c", "print(1)"]
    state = archive(b"state-1")
    ckpt = node.upload(state)
    run_for(node, task["task_id"], 3.0)
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/checkpoints",
        {
            "attempt": 1,
            "sha256": ckpt,
            "size_bytes": len(state),
            "prev_sha256": None,
            "progress": 0.5,
            "runtime_s": 3.0,
        },
        expect=204,
    )
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/logs",
        {"attempt": 1, "stream": "stdout", "text": "1\n"},
        expect=204,
    )
    out = node.upload(b"result")
    run_for(node, task["task_id"], 5.0)
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": 1, "exit_code": 0, "outputs": {"out.txt": out}, "runtime_s": 5.0},
        expect=204,
    )

    job = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert job["state"] == "succeeded"
    assert job["tasks"][0]["checkpoints"][0]["sha256"] == ckpt
    assert job["work"][0]["kept_s"] == 5.0
    assert job["work"][0]["lost_s"] == 0.0
    results = consumer.call("GET", f"/v1/jobs/{job_id}/results")
    assert results["tasks"][0]["outputs"] == {"out.txt": out}
    logs = consumer.call("GET", f"/v1/jobs/{job_id}/logs")
    assert [line["text"] for line in logs] == ["1\n"]


def test_expired_lease_returns_task_to_queue_with_its_checkpoint(hub: Hub) -> None:
    first = hub.node("cheap", price_cpu=1_000)
    consumer = hub.actor()
    job_id = consumer.submit(run_job(), expect=201)["job"]["id"]
    task = claim(first)
    assert task is not None
    state = archive(b"epoch-3")
    ckpt = first.upload(state)
    hub.clock.advance(4.0)
    first.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/checkpoints",
        {
            "attempt": 1,
            "sha256": ckpt,
            "size_bytes": len(state),
            "prev_sha256": None,
            "progress": 0.3,
            "runtime_s": 4.0,
        },
        expect=204,
    )
    hub.clock.advance(2.0)
    beat = {"tasks": [{"task_id": task["task_id"], "attempt": 1, "progress": 0.4}]}
    first.call("POST", "/v1/nodes/heartbeat", beat)
    second = hub.node("dear", price_cpu=5_000)
    assert claim(second) is None  # the task is still leased to the first node

    hub.clock.advance(LEASE_S + 1)
    assert expire_leases(hub.ctx) == 1
    resumed = claim(second)
    assert resumed is not None
    assert resumed["task_id"] == task["task_id"]
    assert resumed["attempt"] == 2
    assert resumed["resume_from"] == ckpt
    job = consumer.call("GET", f"/v1/jobs/{job_id}")
    work = {w["node_id"]: w for w in job["work"]}
    assert work[first.id]["kept_s"] == 4.0
    assert work[first.id]["lost_s"] == pytest.approx(2.0)  # heard last 6 s in, checkpoint at 4 s
    # The first node comes back: its report on the old attempt is refused, changing nothing.
    first.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": 1, "exit_code": 0, "runtime_s": 9.0},
        expect=403,
    )


def test_failed_task_is_retried_then_fails_the_job_with_its_last_log_lines(hub: Hub) -> None:
    node = hub.node("n1")
    consumer = hub.actor()
    job_id = consumer.submit(run_job(retries=1), expect=201)["job"]["id"]
    for attempt in (1, 2):
        task = claim(node)
        assert task is not None
        assert task["attempt"] == attempt
        node.call(
            "POST",
            f"/v1/tasks/{task['task_id']}/logs",
            {"attempt": attempt, "stream": "stderr", "text": f"boom {attempt}\n"},
            expect=204,
        )
        node.call(
            "POST",
            f"/v1/tasks/{task['task_id']}/complete",
            {"attempt": attempt, "exit_code": 3, "runtime_s": 1.0},
            expect=204,
        )
    job = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert job["state"] == "failed"
    assert "exit code 3" in job["error"]
    assert "boom 2" in job["error"]
    assert claim(node) is None


def test_cancel_reaches_the_node_in_its_next_heartbeat(hub: Hub) -> None:
    node = hub.node("n1")
    consumer = hub.actor()
    job_id = consumer.submit(run_job(), expect=201)["job"]["id"]
    task = claim(node)
    assert task is not None
    beat = {"tasks": [{"task_id": task["task_id"], "attempt": 1, "progress": 0.1}]}
    assert node.call("POST", "/v1/nodes/heartbeat", beat)["renewed"] == [task["task_id"]]
    assert consumer.call("POST", f"/v1/jobs/{job_id}/cancel")["state"] == "cancelled"
    assert node.call("POST", "/v1/nodes/heartbeat", beat)["cancel"] == [task["task_id"]]
    consumer.call("POST", f"/v1/jobs/{job_id}/cancel", expect=409)


def test_cheapest_idle_node_gets_the_task_first(hub: Hub) -> None:
    dear = hub.node("dear", price_cpu=9_000)
    cheap = hub.node("cheap", price_cpu=1_000)
    consumer = hub.actor()
    consumer.submit(run_job(), expect=201)
    assert claim(dear) is None
    assert claim(cheap) is not None


def test_a_job_nothing_can_run_is_queued_and_says_why(hub: Hub) -> None:
    hub.node("small", cpus=2)
    consumer = hub.actor()
    big = run_job(resources={"cpus": 64})
    submitted = consumer.submit(big, expect=201)
    assert submitted["job"]["state"] == "queued"
    assert "too_few_cpus" in submitted["job"]["waiting_reason"]
    plan = consumer.call("POST", "/v1/jobs/plan", {"spec": big})
    assert plan["fits"] == []
    assert plan["excluded"]["too_few_cpus"] == 1


def test_bad_spec_is_refused_naming_the_field(hub: Hub) -> None:
    consumer = hub.actor()
    body = consumer.submit(run_job(resources={"cpus": 0}), expect=422)
    assert body["field"] == "spec.resources.cpus"
    assert consumer.call("GET", "/v1/jobs") == []


def test_unsigned_forged_and_replayed_requests_change_nothing(hub: Hub) -> None:
    consumer = hub.actor()
    response = hub.http.post("/v1/jobs", json={"spec": run_job()})
    assert response.status_code == 401
    assert "missing signature" in response.json()["message"]

    body = {"spec": run_job(), "escrow": consumer.escrow(run_job())}
    request = hub.http.build_request("POST", "/v1/jobs", json=body)
    signed = next(SignedAuth(consumer.identity, clock=hub.clock).auth_flow(request))
    evil = {**body, "spec": run_job(name="evil")}
    forged = hub.http.build_request("POST", "/v1/jobs", json=evil, headers=dict(signed.headers))
    forged.headers["content-digest"] = signed.headers["content-digest"]
    response = hub.http.send(forged)
    assert response.status_code == 401, response.text

    assert hub.http.send(signed).status_code == 201
    replay = hub.http.send(signed)
    assert replay.status_code == 401
    assert "replayed" in replay.json()["message"]
    assert len(consumer.call("GET", "/v1/jobs")) == 1


def test_nodes_and_consumers_act_only_on_their_own_objects(hub: Hub) -> None:
    holder, thief = hub.node("n1"), hub.node("n2")
    owner, other = hub.actor(), hub.actor()
    job_id = owner.submit(run_job(), expect=201)["job"]["id"]
    hub.clock.advance(5.0)  # past the cheaper-node grace: whichever node asks first gets it
    task = claim(holder)
    assert task is not None
    thief.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": 1, "exit_code": 0, "runtime_s": 1.0},
        expect=403,
    )
    thief.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/logs",
        {"attempt": 1, "stream": "stdout", "text": "fake"},
        expect=403,
    )
    other.call("GET", f"/v1/jobs/{job_id}", expect=403)
    other.call("POST", f"/v1/jobs/{job_id}/cancel", expect=403)
    job = owner.call("GET", f"/v1/jobs/{job_id}")
    assert job["tasks"][0]["state"] == "running"
    assert job["tasks"][0]["node_id"] == holder.id
    assert owner.call("GET", f"/v1/jobs/{job_id}/logs") == []


def test_uploads_must_match_their_name_and_size_limit(hub: Hub) -> None:
    actor = hub.actor()
    wrong = hashlib.sha256(b"other").hexdigest()
    response = hub.http.put(
        f"/v1/blobs/{wrong}",
        content=b"data",
        headers={"x-lumbung-streamed": "1"},
        auth=SignedAuth(actor.identity, clock=hub.clock),
    )
    assert response.status_code == 422
    assert response.json()["error"] == "HashMismatch"
    assert not hub.ctx.blobs.exists(wrong)
    big = b"x" * (hub.ctx.config.max_blob_bytes + 1)
    hub.ctx.config = HubConfig(data_dir=hub.ctx.config.data_dir, max_blob_bytes=16)
    actor.upload(big[:17], expect=413)
    actor.upload(b"small", expect=201)


def test_checkpoint_must_extend_the_chain(hub: Hub) -> None:
    node = hub.node("n1")
    consumer = hub.actor()
    consumer.submit(run_job(), expect=201)
    task = claim(node)
    assert task is not None
    a, b = node.upload(archive(b"a")), node.upload(archive(b"b"))
    sizes = {a: len(archive(b"a")), b: len(archive(b"b"))}
    url = f"/v1/tasks/{task['task_id']}/checkpoints"
    node.call(
        "POST",
        url,
        {"attempt": 1, "sha256": a, "size_bytes": sizes[a], "prev_sha256": None, "runtime_s": 1.0},
        expect=204,
    )
    node.call(
        "POST",
        url,
        {"attempt": 1, "sha256": b, "size_bytes": sizes[b], "prev_sha256": None, "runtime_s": 2.0},
        expect=409,
    )
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    node.call(
        "POST",
        url,
        {"attempt": 1, "sha256": missing, "size_bytes": 1, "prev_sha256": a, "runtime_s": 2.0},
        expect=422,
    )
    node.call(
        "POST",
        url,
        {"attempt": 1, "sha256": b, "size_bytes": sizes[b], "prev_sha256": a, "runtime_s": 2.0},
        expect=204,
    )


def test_a_failed_task_is_retried_on_another_node_when_one_is_free(hub: Hub) -> None:
    cheap = hub.node("cheap", price_cpu=1_000)
    dear = hub.node("dear", price_cpu=9_000)
    consumer = hub.actor()
    consumer.submit(run_job(retries=2), expect=201)
    task = claim(cheap)
    assert task is not None
    cheap.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/complete",
        {"attempt": 1, "exit_code": 1, "runtime_s": 1.0},
        expect=204,
    )
    assert claim(cheap) is None  # it failed here; the other free node should try it
    hub.clock.advance(5.0)  # past the grace given to the cheaper node
    retry = claim(dear)
    assert retry is not None
    assert retry["attempt"] == 2


def test_a_restarted_hub_gives_running_leases_time_to_be_renewed(hub: Hub) -> None:
    node = hub.node("n1")
    consumer = hub.actor()
    consumer.submit(run_job(), expect=201)
    task = claim(node)
    assert task is not None
    hub.clock.advance(LEASE_S * 5)  # the hub was down; nobody could renew
    assert grace_after_restart(hub.ctx) == 1
    assert expire_leases(hub.ctx) == 0
    beat = {"tasks": [{"task_id": task["task_id"], "attempt": 1, "progress": 0.5}]}
    assert node.call("POST", "/v1/nodes/heartbeat", beat)["renewed"] == [task["task_id"]]


def test_an_oversized_json_body_is_refused_before_it_is_read(hub: Hub) -> None:
    consumer = hub.actor()
    limit = hub.ctx.config.max_body_bytes
    huge = run_job(name="x", env={"PAD": "y" * (limit + 1)})
    body = consumer.submit(huge, expect=413)
    assert body["field"] == "body"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = hub.http.post("/v1/jobs", content=chunks())  # chunked: no content-length
    assert response.status_code == 413
    assert consumer.call("GET", "/v1/jobs") == []


def test_a_task_that_keeps_losing_its_node_fails_instead_of_cycling_for_ever(hub: Hub) -> None:
    node = hub.node("n1")
    consumer = hub.actor()
    job_id = consumer.submit(run_job(), expect=201)["job"]["id"]
    for _ in range(MAX_LOST_LEASES):
        assert claim(node) is not None
        hub.clock.advance(LEASE_S + 1)
        node.call(
            "POST", "/v1/nodes/heartbeat", {"tasks": []}
        )  # the node lives; the task's run does not
        assert expire_leases(hub.ctx) == 1
    job = consumer.call("GET", f"/v1/jobs/{job_id}")
    assert job["state"] == "failed"
    assert f"lost its node {MAX_LOST_LEASES} times" in job["error"]


def test_reliability_counts_are_reused_for_a_minute_and_minutes_past_a_day_are_swept(
    hub: Hub,
) -> None:
    node = hub.node("steady")  # registered, so heard, in the first minute
    hub.clock.advance(60)
    assert hub.ctx.snapshots(fresh=True)[0].reliability == 0.5  # heard in 1 of 2 minutes
    node.call("POST", "/v1/nodes/heartbeat", {"tasks": []})
    hub.clock.advance(2)  # past the snapshots' second, within the counts' minute
    assert hub.ctx.snapshots()[0].reliability == 0.5
    assert hub.ctx.snapshots(fresh=True)[0].reliability == 1.0
    hub.clock.advance(30)
    hub.node("newcomer")  # registered after that count, in the minute it was taken
    hub.clock.advance(29)  # the next minute, the count still reused
    by_name = {s.node.name: s.reliability for s in hub.ctx.snapshots()}
    assert by_name == {"steady": 1.0, "newcomer": 1.0}  # as of the count: new, not unheard
    hub.clock.advance(DAY_S + 120)
    assert hub.ctx.store.purge_heartbeat_minutes(hub.clock() - DAY_S - 60) == 3
    assert hub.ctx.store.heartbeat_minutes(since=0.0) == {}
