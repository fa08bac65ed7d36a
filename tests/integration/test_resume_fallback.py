"""Resuming when a checkpoint does not restore, on every store: the lease offers the chain's earlier
links, and a node that had to fall back says so; the hub moves the chain back, rejects the links
that failed, and stops paying for the time they claimed to keep.

One second of work earns 10,000 micro-credits and there is no fee, so amounts are exact.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pytest
from factories import run_job
from hubkit import LEASE_S, Actor, Hub, archive, claim, run_for

from lumbung.client.node_session import NodeSession
from lumbung.errors import Conflict
from lumbung.hub.leases import expire_leases
from lumbung.wire.api import ResumeFailed

PRICE = 36_000_000  # micro-credits per CPU-hour: 10,000 a second
PER_S = 10_000
BUDGET = PRICE  # one task of max_runtime_s 3600 at the price limit


def started(hub: Hub) -> tuple[Actor, Actor, dict[str, Any]]:
    node = hub.node("n1", price_cpu=PRICE)
    consumer = hub.actor()
    consumer.submit(run_job(max_price_micro_per_hour=PRICE, max_runtime_s=3600))
    task = claim(node)
    assert task is not None
    return node, consumer, task


def checkpoint(
    node: Actor, task: dict[str, Any], runtime_s: float, prev: str | None, expect: int = 204
) -> str:
    state = archive(f"{task['task_id']}-{task['attempt']}-{runtime_s}".encode())
    sha = node.upload(state)
    run_for(node, task["task_id"], runtime_s)
    node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/checkpoints",
        {
            "attempt": task["attempt"],
            "sha256": sha,
            "size_bytes": len(state),
            "prev_sha256": prev,
            "progress": runtime_s / 100,
            "runtime_s": runtime_s,
        },
        expect=expect,
    )
    return sha


def lose_lease(hub: Hub, node: Actor) -> dict[str, Any]:
    """The node goes silent; its task comes back to it as the next attempt."""
    hub.clock.advance(LEASE_S + 1)
    assert expire_leases(hub.ctx) == 1
    node.call("POST", "/v1/nodes/heartbeat", {"tasks": [], "free_slots": 1})  # back online
    task = claim(node)
    assert task is not None
    return task


def resume_failed(
    node: Actor,
    task: dict[str, Any],
    failed: list[str],
    resumed_from: str | None,
    expect: int = 204,
) -> Any:
    body = {
        "attempt": task["attempt"],
        "failed": failed,
        "resumed_from": resumed_from,
        "reason": "checkpoint does not unpack",
    }
    return node.call("POST", f"/v1/tasks/{task['task_id']}/resume-failed", body, expect=expect)


def chain_of(consumer: Actor, task: dict[str, Any]) -> list[dict[str, Any]]:
    view = consumer.call("GET", f"/v1/jobs/{task['job_id']}")
    links: list[dict[str, Any]] = view["tasks"][0]["checkpoints"]
    return links


def test_a_lease_offers_the_earlier_links_of_the_chain_newest_first(hub: Hub) -> None:
    node, _, task = started(hub)
    a = checkpoint(node, task, 1.0, None)
    b = checkpoint(node, task, 2.0, a)
    c = checkpoint(node, task, 3.0, b)
    again = lose_lease(hub, node)
    assert (again["resume_from"], again["resume_chain"]) == (c, [b, a])


def test_a_failed_resume_moves_the_chain_back_and_its_links_time_is_not_paid(hub: Hub) -> None:
    node, consumer, task = started(hub)
    a = checkpoint(node, task, 4.0, None)
    b = checkpoint(node, task, 8.0, a)
    assert consumer.call("GET", f"/v1/jobs/{task['job_id']}")["escrow"]["released_micro"] == (
        8 * PER_S
    )
    again = lose_lease(hub, node)
    assert (again["resume_from"], again["resume_chain"]) == (b, [a])

    resume_failed(node, again, [b], a)  # b did not restore; the node resumed from a
    links = chain_of(consumer, task)
    assert [(c["sha256"], c["rejected"]) for c in links] == [
        (a, None),
        (b, "checkpoint does not unpack"),
    ]
    assert hub.ctx.store.get_task(task["task_id"]).last_checkpoint_sha == a
    work = consumer.call("GET", f"/v1/jobs/{task['job_id']}")["work"][0]
    assert (work["kept_s"], work["lost_s"]) == (4.0, 4.0)  # b's 4 s moved from kept to lost

    checkpoint(node, again, 3.0, b, expect=409)  # the chain now ends at a
    checkpoint(node, again, 3.0, a)
    run_for(node, again["task_id"], 6.0)
    node.call(
        "POST",
        f"/v1/tasks/{again['task_id']}/complete",
        {"attempt": again["attempt"], "exit_code": 0, "outputs": {}, "runtime_s": 6.0},
        expect=204,
    )
    escrow = consumer.call("GET", f"/v1/jobs/{task['job_id']}")["escrow"]
    # 4 s of a + 6 s of the second attempt: b's 4 s, already paid, came out of the 6 s.
    assert escrow["released_micro"] == 10 * PER_S
    assert escrow["refunded_micro"] == BUDGET - 10 * PER_S


def test_rejected_links_are_never_offered_again_and_a_fresh_start_empties_the_chain(
    hub: Hub,
) -> None:
    node, consumer, task = started(hub)
    a = checkpoint(node, task, 1.0, None)
    b = checkpoint(node, task, 2.0, a)
    c = checkpoint(node, task, 3.0, b)
    second = lose_lease(hub, node)
    resume_failed(node, second, [c, b], a)
    third = lose_lease(hub, node)
    assert (third["resume_from"], third["resume_chain"]) == (a, [])
    resume_failed(node, third, [a], None)  # nothing restored: it started afresh
    fourth = lose_lease(hub, node)
    assert (fourth["resume_from"], fourth["resume_chain"]) == (None, [])
    assert all(link["rejected"] for link in chain_of(consumer, task))
    assert consumer.call("GET", f"/v1/jobs/{task['job_id']}")["work"][0]["kept_s"] == 0.0


def test_a_resume_failed_report_that_does_not_fit_the_chain_or_the_lease_is_refused(
    hub: Hub,
) -> None:
    node, consumer, task = started(hub)
    a = checkpoint(node, task, 1.0, None)
    b = checkpoint(node, task, 2.0, a)
    again = lose_lease(hub, node)
    stranger = hashlib.sha256(b"never in the chain").hexdigest()

    assert resume_failed(node, again, [stranger], a, expect=422)["field"] == "failed.0"
    assert resume_failed(node, again, [b], stranger, expect=422)["field"] == "resumed_from"
    assert resume_failed(node, again, [a], b, expect=422)["field"] == "failed.0"  # a is older
    assert resume_failed(node, task, [b], a, expect=409)["field"] == "attempt"  # a stale attempt
    other = hub.node("other", price_cpu=PRICE)
    assert resume_failed(other, again, [b], a, expect=403)["field"] == "task_id"
    assert hub.ctx.store.get_task(task["task_id"]).last_checkpoint_sha == b
    assert all(link["rejected"] is None for link in chain_of(consumer, task))

    resume_failed(node, again, [b], a)
    assert resume_failed(node, again, [b], a, expect=409)["field"] == "failed.0"  # once only


def test_the_node_session_reports_a_failed_resume_and_gets_a_refusal_as_an_error(
    hub: Hub,
) -> None:
    hub.clock.now = time.time()  # the client's transport signs with the real clock
    node, consumer, task = started(hub)
    a = checkpoint(node, task, 1.0, None)
    b = checkpoint(node, task, 2.0, a)
    again = lose_lease(hub, node)

    def forward(request: httpx.Request) -> httpx.Response:
        return hub.http.request(
            request.method, str(request.url), headers=request.headers, content=request.content
        )

    session = NodeSession(
        "http://testserver", node.identity, transport=httpx.MockTransport(forward)
    )
    report = ResumeFailed(attempt=again["attempt"], failed=[b], resumed_from=a, reason="corrupt")
    session.resume_failed(again["task_id"], report)
    assert [link["rejected"] for link in chain_of(consumer, task)] == [None, "corrupt"]
    with pytest.raises(Conflict) as refused:
        session.resume_failed(again["task_id"], report)
    assert refused.value.field == "failed.0"
    session.close()
