"""A hostile provider and a hostile consumer against a real hub process, on SQLite and PostgreSQL.

Two attacks of issue 7: a fake node that completes a task 0.08 s after its lease began, claiming
an hour of work, and a consumer whose NaN grid value used to store a job nobody could read back
(every node's claim then answered 500).
"""

from __future__ import annotations

import httpx
import pytest

from conftest import FEE_BPS, Cluster
from lumbung.client.auth import SignedAuth
from lumbung.client.node_session import NodeSession
from lumbung.crypto.keys import Identity
from lumbung.wire.api import Inventory, NodeRegister, TaskComplete
from lumbung.wire.spec import validate_spec

pytestmark = pytest.mark.e2e

PRICE_MICRO_PER_HOUR = 50_000_000  # 50 credits an hour: 1 s is worth about 13,889 micro


def _fake_node(cluster: Cluster) -> NodeSession:
    """A node that runs nothing and says whatever pays best."""
    session = NodeSession(cluster.url, Identity.generate())
    session.register(
        NodeRegister(
            name="liar",
            inventory=Inventory(cpus=4, memory_mib=8192, disk_free_mib=50_000),
            price_micro_per_gpu_hour=0,
            price_micro_per_cpu_hour=PRICE_MICRO_PER_HOUR,
        )
    )
    return session


def test_a_node_claiming_an_hour_after_a_moment_is_paid_for_the_moment(cluster: Cluster) -> None:
    liar = _fake_node(cluster)
    spec = validate_spec(
        {
            "name": "sweep",
            "command": ["true"],
            "max_price_micro_per_hour": PRICE_MICRO_PER_HOUR,
            "max_runtime_s": 3600,
        }
    )
    job_id = cluster.client.submit(spec).job.id
    assignment = liar.claim(5.0)
    assert assignment is not None
    assert assignment.job_id == job_id
    liar.complete(assignment.task_id, TaskComplete(attempt=1, exit_code=0, runtime_s=3600.0))

    job = cluster.wait_job(job_id)
    assert job.state == "succeeded"
    [work] = job.work
    assert work.kept_s < 5.0  # what the hub measured, not the 3,600 s claimed
    paid = cluster.client.ledger.account(liar.node_id).balance
    assert paid == work.kept_cost_micro - work.kept_cost_micro * FEE_BPS // 10_000
    assert paid < 5 * PRICE_MICRO_PER_HOUR // 3600  # under five seconds' worth
    assert job.escrow is not None
    assert job.escrow.refunded_micro > 0.99 * job.escrow.locked_micro
    liar.close()


def test_a_nan_grid_is_refused_and_the_market_goes_on(cluster: Cluster) -> None:
    body = (
        b'{"spec": {"name": "nan", "command": ["echo", "{x}"], "grid": {"x": [NaN]},'
        b' "max_price_micro_per_hour": 1000}, "escrow": "AAAA"}'
    )
    identity = Identity.load_or_create(cluster.root / "client")
    with httpx.Client(base_url=cluster.url) as http:
        response = http.post(
            "/v1/jobs",
            content=body,
            headers={"content-type": "application/json"},
            auth=SignedAuth(identity),
        )
    assert response.status_code == 422, response.text
    assert response.json()["field"].startswith("spec.grid.x")
    assert cluster.client.list() == []  # refused at the edge: nothing stored

    cluster.start_node("honest")
    cluster.wait_nodes_online(1)
    spec = validate_spec(
        {"name": "ok", "command": ["true"], "max_price_micro_per_hour": 100_000, "retries": 0}
    )
    job = cluster.wait_job(cluster.client.submit(spec).job.id)
    assert job.state == "succeeded", cluster.logs()
