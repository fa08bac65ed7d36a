"""Throughput: no-op tasks through claim, heartbeat and completion by 50 simulated nodes, on SQLite
and on PostgreSQL. Target: at least 300 tasks/s on 2 cores.

Each node loops: claim (long-poll, wait_s=1) -> one heartbeat naming the task -> complete (exit 0,
with a signed result commitment, as a real node sends: the hub checks it and appends it to the
ledger).
All jobs are queued before the nodes start, and the run waits out the hub's cheaper-node grace, so
what is measured is the hub's claim path, not its first-refusal policy.

Baseline in the same run: a bare FastAPI no-op POST endpoint on the same uvicorn stack, hammered by
the same 50 threads (signed requests, one kept-alive connection each) for 3 requests per task.
Ratio = hub tasks/s x 3 / bare requests/s: the share of the bare stack's capacity the hub reaches.

    .venv/bin/python benchmarks/throughput.py [--tasks 2000] [--nodes 50] [--quick]
        [--backends sqlite,postgres] [--profile-dir DIR]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from common import (
    DEFAULT_POSTGRES_URL,
    PostgresUnreachable,
    ServerProcess,
    bare_process,
    consumer,
    emit,
    hub_process,
    log,
    machine,
    noop_spec,
    postgres_schema,
    profile_summary,
    registered_node,
)
from lumbung.client.auth import SignedAuth
from lumbung.client.consumer import Client
from lumbung.client.node_session import NodeSession
from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import LumbungError
from lumbung.wire.api import HeartbeatRequest, TaskComplete, TaskReport
from lumbung.wire.commitment import ExecutionClass, commitment_body

TARGET_TASKS_PER_S = 300.0
REQUESTS_PER_TASK = 3
CLAIM_WAIT_S = 1.0
# A run that has not drained its queue by then stops and reports what it did.
MAX_DRAIN_S = 240.0
# A node that keeps failing is a broken run, not a slow one.
_MAX_ERRORS = 50
WHERE = ExecutionClass(
    device="cpu", device_model="bench", platform="Linux-x86_64", python="3.11", threads=1,
    deterministic=True,
)  # fmt: skip


class Drain:
    """Shared state of one drain: tasks done, errors seen, and when the last task finished."""

    def __init__(self, total_tasks: int) -> None:
        self.total_tasks = total_tasks
        self.completed = 0
        self.errors: list[str] = []
        self.finished_at: float | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def task_done(self) -> None:
        with self._lock:
            self.completed += 1
            if self.completed >= self.total_tasks:
                self.finished_at = time.perf_counter()
                self.done.set()

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(repr(exc)[:300])
            if len(self.errors) >= _MAX_ERRORS:
                self.done.set()


def node_loop(session: NodeSession, drain: Drain, start: threading.Barrier) -> None:
    start.wait()
    while not drain.done.is_set():
        try:
            assignment = session.claim(CLAIM_WAIT_S)
            if assignment is None:
                continue
            report = TaskReport(task_id=assignment.task_id, attempt=assignment.attempt)
            session.heartbeat(HeartbeatRequest(tasks=[report], free_slots=0))
            body = commitment_body(
                job_id=assignment.job_id,
                task_id=assignment.task_id,
                attempt=assignment.attempt,
                node=session.node_id,
                outputs={},
                execution_class=WHERE,
            )
            result = TaskComplete(
                attempt=assignment.attempt,
                exit_code=0,
                runtime_s=0.0,
                commitment=session.commit(body),
            )
            session.complete(assignment.task_id, result)
            drain.task_done()
        except LumbungError as exc:
            drain.error(exc)
            time.sleep(0.1)


def queue_jobs(client: Client, total_tasks: int, tasks_per_job: int) -> tuple[list[str], float]:
    """Submit jobs totalling ``total_tasks``; returns their ids and the seconds it took."""
    started = time.perf_counter()
    job_ids: list[str] = []
    remaining = total_tasks
    while remaining > 0:
        count = min(tasks_per_job, remaining)
        job_ids.append(client.submit(noop_spec(f"throughput-{len(job_ids)}", count)).job.id)
        remaining -= count
    return job_ids, time.perf_counter() - started


def measure_hub(
    hub: ServerProcess, nodes: int, total_tasks: int, tasks_per_job: int
) -> dict[str, Any]:
    sessions = [registered_node(hub.url, f"bench-{i}") for i in range(nodes)]
    owner = consumer(hub.url)
    job_ids, submit_s = queue_jobs(owner, total_tasks, tasks_per_job)
    # Tasks younger than the grace are offered first to the best-ranked idle node only.
    time.sleep(HubConfig().cheaper_node_grace_s + 0.5)
    drain = Drain(total_tasks)
    start = threading.Barrier(nodes + 1)
    threads = [
        threading.Thread(target=node_loop, args=(s, drain, start), daemon=True) for s in sessions
    ]
    for thread in threads:
        thread.start()
    hub_cpu_before_s = hub.cpu_s()
    gen_cpu_before_s = time.process_time()
    start.wait()
    started = time.perf_counter()
    drain.done.wait(timeout=MAX_DRAIN_S)
    ended = drain.finished_at or time.perf_counter()
    hub_cpu_s = hub.cpu_s() - hub_cpu_before_s
    gen_cpu_s = time.process_time() - gen_cpu_before_s
    drain.done.set()
    for thread in threads:
        thread.join(timeout=CLAIM_WAIT_S + 30)
    for session in sessions:
        session.close()
    elapsed_s = ended - started
    succeeded = drain.completed >= total_tasks and all(
        owner.get(job_id).state == "succeeded" for job_id in job_ids
    )
    owner.close()
    return {
        "tasks_completed": drain.completed,
        "drained": drain.completed >= total_tasks,
        "elapsed_s": round(elapsed_s, 3),
        "tasks_per_s": round(drain.completed / elapsed_s, 1),
        "hub_cpu_s_per_wall_s": round(hub_cpu_s / elapsed_s, 2),
        "hub_cpu_ms_per_task": round(1000 * hub_cpu_s / max(drain.completed, 1), 2),
        "load_generator_cpu_s_per_wall_s": round(gen_cpu_s / elapsed_s, 2),
        "submit_s": round(submit_s, 3),
        "jobs": len(job_ids),
        "all_jobs_succeeded": succeeded,
        "errors": len(drain.errors),
        "first_errors": drain.errors[:3],
    }


def measure_backend(
    db_url: str, nodes: int, total_tasks: int, tasks_per_job: int, profile_path: Path | None
) -> dict[str, Any]:
    with hub_process(db_url, profile_path=profile_path) as hub:
        result = measure_hub(hub, nodes, total_tasks, tasks_per_job)
    if profile_path is not None:
        result["profile"] = profile_summary(profile_path)
    return result


def measure_bare(nodes: int, total_requests: int) -> dict[str, Any]:
    """The same threads posting to a no-op endpoint until ``total_requests`` have been answered."""
    with bare_process() as bare:
        clients = [
            httpx.Client(base_url=bare.url, auth=SignedAuth(Identity.generate()))
            for _ in range(nodes)
        ]
        for client in clients:
            client.get("/v1/health").raise_for_status()  # connect before the clock starts
        counter = iter(range(total_requests))
        lock = threading.Lock()
        start = threading.Barrier(nodes + 1)

        def hammer(client: httpx.Client) -> None:
            start.wait()
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                client.post("/v1/noop", json={"wait_s": CLAIM_WAIT_S}).raise_for_status()

        threads = [threading.Thread(target=hammer, args=(c,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        cpu_before_s = bare.cpu_s()
        start.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed_s = time.perf_counter() - started
        cpu_s = bare.cpu_s() - cpu_before_s
        for client in clients:
            client.close()
    return {
        "requests": total_requests,
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(total_requests / elapsed_s, 1),
        "server_cpu_ms_per_request": round(1000 * cpu_s / total_requests, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    total_tasks, nodes = args.tasks, args.nodes
    if args.quick:
        total_tasks, nodes = 100, 20
    backends: dict[str, Any] = {}
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    for backend in args.backends.split(","):
        profile_path = (
            Path(args.profile_dir) / f"hub-{backend}.pstats" if args.profile_dir else None
        )
        log(f"{backend}: {nodes} nodes, {total_tasks} tasks")
        if backend == "sqlite":
            backends[backend] = measure_backend(
                "", nodes, total_tasks, args.tasks_per_job, profile_path
            )
        elif backend == "postgres":
            try:
                with postgres_schema(args.postgres_url) as url:
                    backends[backend] = measure_backend(
                        url, nodes, total_tasks, args.tasks_per_job, profile_path
                    )
            except PostgresUnreachable as exc:
                backends[backend] = {"skipped": str(exc)}
        else:
            raise SystemExit(f"unknown backend {backend!r}: use sqlite and/or postgres")
    log(f"baseline: bare FastAPI, {total_tasks * REQUESTS_PER_TASK} requests")
    bare = measure_bare(nodes, total_tasks * REQUESTS_PER_TASK)
    for result in backends.values():
        if "tasks_per_s" in result:
            result["ratio_to_bare"] = round(
                result["tasks_per_s"] * REQUESTS_PER_TASK / bare["requests_per_s"], 3
            )
            result["meets_target"] = result["tasks_per_s"] >= TARGET_TASKS_PER_S
    return {
        "benchmark": "throughput",
        "what": "no-op tasks/s through claim -> heartbeat -> complete",
        "settings": {
            "nodes": nodes,
            "tasks": total_tasks,
            "tasks_per_job": args.tasks_per_job,
            "claim_wait_s": CLAIM_WAIT_S,
            "requests_per_task": REQUESTS_PER_TASK,
            "profiled": bool(args.profile_dir),
        },
        "machine": machine(),
        "hub": backends,
        "baseline_bare_fastapi": bare,
        "target_tasks_per_s": TARGET_TASKS_PER_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--tasks-per-job", type=int, default=100)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--profile-dir", help="run the hub under cProfile, keep pstats here")
    parser.add_argument("--quick", action="store_true", help="100 tasks, 20 nodes: a smoke test")
    args = parser.parse_args()
    if args.tasks < 1 or args.nodes < 1 or args.tasks_per_job < 1:
        raise SystemExit("--tasks, --nodes and --tasks-per-job must be at least 1")
    emit(run(args))


if __name__ == "__main__":
    main()
