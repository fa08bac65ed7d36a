"""Real hub and node processes on loopback, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import (
    FAUCET_MICRO,
    FEE_BPS,
    LEASE_TIMEOUT_S,
    WORKLOADS,
    Cluster,
    counter_spec,
    lumbung_cli,
    wait_for,
)
from lumbung.client import Client
from lumbung.client.auth import SignedAuth
from lumbung.crypto.keys import Identity
from lumbung.errors import Forbidden
from lumbung.wire.spec import validate_spec

pytestmark = pytest.mark.e2e


def _submit(cluster: Cluster, **params: object) -> str:
    return cluster.client.submit(validate_spec(counter_spec(**params))).job.id


def _running_task(cluster: Cluster, job_id: str, min_checkpoints: int = 1):  # type: ignore[no-untyped-def]
    def ready():  # type: ignore[no-untyped-def]
        task = cluster.client.get(job_id).tasks[0]
        enough = len(task.checkpoints) >= min_checkpoints
        return task if task.state == "running" and enough else None

    return wait_for(ready, 60, "a running task with a checkpoint")


def _result(cluster: Cluster, job_id: str, tmp_path: Path) -> dict[str, int]:
    sha = cluster.client.results(job_id).tasks[0].outputs["result.json"]
    dest = tmp_path / f"{job_id}.json"
    cluster.client.download(sha, dest)
    return json.loads(dest.read_text())


def test_a_job_completes_on_a_real_node(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_node("n1")
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=3, step_s=0.05)
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    assert _result(cluster, job_id, tmp_path) == {"started_at_step": 0, "steps": 3}
    assert any("step 3" in line.text for line in cluster.client.logs(job_id))


def test_kill_9_of_a_node_mid_task_resumes_from_its_checkpoint_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_node("cheap", price_cpu=3_600_000)  # 1,000 micro-credits a second
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=30, step_s=0.2, child=1)
    task = _running_task(cluster, job_id, min_checkpoints=2)
    marker = _child_marker(cluster, job_id)
    cluster.start_node("dear", price_cpu=18_000_000)
    cluster.nodes["cheap"].kill()  # SIGKILL to the node's process group; its tasks have their own
    # Nothing of the killed node's task lives on (a sandboxed task dies with its node).
    wait_for(lambda: not _running(marker), 10, "the killed node's task to die with it")
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    done = job.tasks[0]
    assert done.attempt == 2
    assert done.node_id != task.node_id
    result = _result(cluster, job_id, tmp_path)
    assert result["started_at_step"] > 0  # resumed from a checkpoint, not from scratch
    work = {w.node_name: w for w in job.work}
    assert work["cheap"].kept_s > 0
    assert work["dear"].kept_s > 0
    _assert_paid_only_for_kept_work(cluster, job_id)


def _assert_paid_only_for_kept_work(cluster: Cluster, job_id: str) -> None:
    """Each provider got the cost of its kept work less the hub's fee; the consumer got the rest
    of the escrow back; lost work (the killed node's time since its last checkpoint) went unpaid."""
    job = wait_for(
        lambda: (j := cluster.client.get(job_id)).escrow.remaining_micro == 0 and j,  # type: ignore[union-attr]
        15,
        "the escrow to settle",
    )
    ledger = cluster.client.ledger
    for work in job.work:  # one task: one fee per provider, on its kept work's cost
        fee = work.kept_cost_micro * FEE_BPS // 10_000
        assert ledger.account(work.node_id).balance == work.kept_cost_micro - fee, work
    escrow = job.escrow
    assert escrow.released_micro == sum(w.kept_cost_micro for w in job.work) - escrow.fees_micro
    assert escrow.locked_micro == escrow.released_micro + escrow.fees_micro + escrow.refunded_micro
    balance = ledger.account(cluster.client.actor_id).balance
    assert balance == FAUCET_MICRO - escrow.locked_micro + escrow.refunded_micro


def test_hub_killed_and_restarted_mid_job_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_node("n1")
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=20, step_s=0.2)
    _running_task(cluster, job_id)
    assert cluster.hub is not None
    cluster.hub.kill()
    time.sleep(LEASE_TIMEOUT_S + 1)  # down longer than a lease: no node could renew meanwhile
    cluster.start_hub()  # same port and data directory
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    assert job.tasks[0].attempt == 1  # the node carried on through the hub's absence
    assert _result(cluster, job_id, tmp_path)["steps"] == 20


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_task_that_finishes_during_a_40_s_hub_outage_is_not_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    # SQLite only: what is tested is the node's patience (its database plays no part), and the
    # hub's restart on PostgreSQL is test_hub_killed_and_restarted_mid_job_loses_nothing's.
    cluster.start_node("n1")
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=8, step_s=0.5)
    _running_task(cluster, job_id)
    assert cluster.hub is not None
    cluster.hub.kill()
    time.sleep(40)  # the task finishes meanwhile; its node keeps the output and retries
    cluster.start_hub()
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    assert job.tasks[0].attempt == 1  # no retry spent on work that was done
    assert _result(cluster, job_id, tmp_path)["steps"] == 8


def test_forged_replayed_and_misaddressed_requests_change_nothing(cluster: Cluster) -> None:
    cluster.start_node("n1")
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=50, step_s=0.2)
    _running_task(cluster, job_id)
    with httpx.Client(base_url=cluster.url) as http:
        request = http.build_request("POST", f"/v1/jobs/{job_id}/cancel")
        forged = http.build_request("POST", f"/v1/jobs/{job_id}/cancel")
        stranger = Identity.generate()
        signed = next(SignedAuth(stranger).auth_flow(request))
        assert http.send(signed).status_code == 403  # a stranger may not cancel another's job
        own = Identity.load_or_create(cluster.root / "client")
        good = next(SignedAuth(own).auth_flow(http.build_request("GET", f"/v1/jobs/{job_id}")))
        assert http.send(good).status_code == 200
        assert http.send(good).status_code == 401  # the same signed request again: a replay
        forged.headers.update({k: v for k, v in signed.headers.items() if k.startswith("sig")})
        forged.headers["signature"] = signed.headers["signature"].replace("A", "B", 1)
        assert http.send(forged).status_code == 401
    with Client(cluster.url, Identity.generate()) as intruder, pytest.raises(Forbidden):
        intruder.cancel(job_id)
    assert cluster.client.get(job_id).state == "running"


def test_cancel_kills_every_process_of_the_task(cluster: Cluster) -> None:
    cluster.start_node("n1")
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=100, step_s=0.2, child=1)
    _running_task(cluster, job_id)
    marker = _child_marker(cluster, job_id)
    assert wait_for(lambda: _running(marker), 10, "the grandchild on the host")
    cluster.client.cancel(job_id)
    wait_for(lambda: not _running(marker), 10, "the task's grandchild to die")
    assert cluster.client.get(job_id).state == "cancelled"


def _child_marker(cluster: Cluster, job_id: str, attempt: int = 1) -> str:
    """The marker in the command line of the task's grandchild (the counter's child=1)."""

    def find() -> str | None:
        for line in cluster.client.logs(job_id):
            match = re.search(r"child marker ([0-9.]+)", line.text)
            if match and line.attempt == attempt:
                return match.group(1)
        return None

    marker: str = wait_for(find, 30, "the child's marker")
    assert wait_for(lambda: _running(marker), 10, "the grandchild on the host")
    return marker


def _running(marker: str) -> list[int]:
    """Host pids of live processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in argv and state != "Z":
            found.append(int(entry))
    return found


def test_sigterm_drains_a_node_and_its_task_resumes_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = cluster.start_node("first", price_cpu=1_000)
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=60, step_s=0.2)
    _running_task(cluster, job_id, min_checkpoints=2)
    cluster.start_node("second", price_cpu=5_000)
    first.signal(signal.SIGTERM)  # grace 5 s < remaining work: checkpoint, release, leave
    assert first.popen is not None
    first.popen.wait(30)
    assert first.popen.returncode == 0
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    assert _result(cluster, job_id, tmp_path)["started_at_step"] > 0


def test_a_failing_task_is_retried_then_fails_the_job_with_its_logs(cluster: Cluster) -> None:
    cluster.start_node("n1")
    cluster.wait_nodes_online(1)
    job_id = _submit(cluster, steps=1, step_s=0.01, fail=1)
    job = cluster.wait_job(job_id)
    assert job.state == "failed"
    assert job.tasks[0].attempt == 2  # retries: 1
    assert job.error is not None
    assert "failing on purpose" in job.error


def test_a_replicated_task_runs_on_two_real_nodes_which_commit_to_one_result(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.wait_nodes_online(2)
    spec = {**counter_spec(steps=3, step_s=0.05), "verify": {"mode": "replicate"}}
    job_id = cluster.client.submit(validate_spec(spec)).job.id
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    replicas = sorted(job.tasks, key=lambda t: t.replica)
    assert [(t.replica, t.verdict) for t in replicas] == [(0, "agreed"), (1, "agreed")]
    assert len({t.node_id for t in replicas}) == 2  # on distinct nodes
    assert replicas[0].outputs == replicas[1].outputs  # same bytes from the same class
    assert {w.node_id for w in job.work if w.kept_s > 0} == {t.node_id for t in replicas}
    # Each node signed what it returned; the audit checks every signature against its node.
    audited = lumbung_cli(cluster, "ledger", "verify")
    assert audited.returncode == 0, audited.stderr
    assert "2 commitments, each signed by its node" in audited.stdout


def test_a_node_that_fabricates_its_output_is_outvoted_slashed_and_unpaid(
    cluster: Cluster, tmp_path: Path
) -> None:
    cheat_dir = cluster.root / "cheat"
    argv = [sys.executable, str(WORKLOADS / "cheating_node.py"), "node", "start"]
    argv += ["--hub", cluster.url, "--data-dir", str(cheat_dir), "--name", "cheat"]
    argv += ["--heartbeat-s", "0.5", "--grace-s", "5", "--allow-unsandboxed"]
    cluster.start("cheat", argv)
    cluster.wait_nodes_online(1)
    cheat_id = Identity.load_or_create(cheat_dir).actor_id
    stake = lumbung_cli(cluster, "ledger", "faucet", data_dir="cheat")
    assert stake.returncode == 0, stake.stderr
    staked = lumbung_cli(cluster, "ledger", "stake", "50", data_dir="cheat")
    assert staked.returncode == 0, staked.stderr
    # Three replicas: the cheat's and two honest ones, so the quorum settles it at once.
    spec = {**counter_spec(steps=3, step_s=0.05), "verify": {"mode": "replicate", "replicas": 3}}
    job_id = cluster.client.submit(validate_spec(spec)).job.id
    cluster.start_node("h1")
    cluster.start_node("h2")
    job = cluster.wait_job(job_id)
    assert job.state == "succeeded", cluster.logs()
    verdicts = {t.node_id: t.verdict for t in job.tasks}
    assert verdicts[cheat_id] == "wrong", verdicts
    assert sorted(v for n, v in verdicts.items() if n != cheat_id) == ["agreed", "agreed"]
    assert not [w for w in job.work if w.node_id == cheat_id and w.kept_cost_micro]
    kept = next(t for t in cluster.client.results(job_id).tasks if t.verdict == "agreed")
    cluster.client.download(kept.outputs["result.json"], tmp_path / "kept.json")
    assert json.loads((tmp_path / "kept.json").read_text()) == {"started_at_step": 0, "steps": 3}
    account = cluster.client.ledger.account(cheat_id)
    assert account.staked < 50_000_000  # slashed: 12 task budgets, or all of it
