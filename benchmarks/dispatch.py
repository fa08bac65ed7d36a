"""Dispatch latency: from just before a 1-task job is submitted to the moment an idle node's
long-polling claim returns it. Target: median under 100 ms.

Baseline in the same run: a signed ``GET /v1/health`` round trip to the same hub (the cost of one
HTTP exchange through this stack), and the same request to a bare FastAPI app.

    .venv/bin/python benchmarks/dispatch.py [--repeats 200] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import httpx

from common import (
    bare_process,
    consumer,
    emit,
    hub_process,
    latency_summary_ms,
    log,
    machine,
    noop_spec,
    registered_node,
)
from lumbung.client.auth import SignedAuth
from lumbung.client.node_session import NodeSession
from lumbung.crypto.keys import Identity
from lumbung.wire.api import TaskComplete

TARGET_MEDIAN_MS = 100.0
# How long a claim is held open at the hub; far longer than one dispatch takes.
_CLAIM_WAIT_S = 10.0
# Pause after a task completes so the node's next claim is parked at the hub before the next
# submit: the benchmark measures an idle node that is already waiting, as in a real pool.
_SETTLE_S = 0.05


class ClaimingNode(threading.Thread):
    """A simulated node that long-polls, stamps the time each assignment arrives, and completes
    it at once (exit 0) so the next repetition starts from an idle node."""

    def __init__(self, session: NodeSession) -> None:
        super().__init__(daemon=True)
        self.session = session
        self.arrivals: list[float] = []
        self.arrived = threading.Semaphore(0)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                assignment = self.session.claim(_CLAIM_WAIT_S)
                if assignment is None:
                    continue
                self.arrivals.append(time.perf_counter())
                self.session.complete(
                    assignment.task_id,
                    TaskComplete(attempt=assignment.attempt, exit_code=0, runtime_s=0.0),
                )
                self.arrived.release()
        except BaseException as exc:  # reported by the main thread, which would otherwise wait
            self.error = exc
            self.arrived.release()


def measure_dispatch(hub_url: str, repeats: int) -> list[float]:
    node = ClaimingNode(registered_node(hub_url, "bench-dispatch"))
    client = consumer(hub_url)
    node.start()
    time.sleep(0.2)  # the first claim reaches the hub
    latencies_s: list[float] = []
    try:
        for i in range(repeats):
            started = time.perf_counter()
            client.submit(noop_spec(f"dispatch-{i}", 1))
            if not node.arrived.acquire(timeout=30.0):
                raise RuntimeError(f"repetition {i}: no assignment within 30 s")
            if node.error is not None:
                raise RuntimeError(f"simulated node failed: {node.error!r}") from node.error
            latencies_s.append(node.arrivals[-1] - started)
            time.sleep(_SETTLE_S)
    finally:
        node.stop.set()
        # One more task wakes the parked claim, so the node sees the stop now, not in 10 s.
        client.submit(noop_spec("dispatch-stop", 1))
        client.close()
        node.join(timeout=_CLAIM_WAIT_S + 15)
        node.session.close()
    return latencies_s


def measure_round_trips(url: str, repeats: int) -> list[float]:
    """Signed GETs of ``/v1/health`` on one kept-alive connection, as the node's client does."""
    latencies_s = []
    with httpx.Client(base_url=url, auth=SignedAuth(Identity.generate())) as http:
        http.get("/v1/health").raise_for_status()  # connect outside the measurement
        for _ in range(repeats):
            started = time.perf_counter()
            http.get("/v1/health").raise_for_status()
            latencies_s.append(time.perf_counter() - started)
    return latencies_s


def run(repeats: int) -> dict[str, Any]:
    with hub_process() as hub:
        log(f"hub at {hub.url}; {repeats} dispatches")
        dispatch_s = measure_dispatch(hub.url, repeats)
        hub_health_s = measure_round_trips(hub.url, repeats)
    with bare_process() as bare:
        bare_health_s = measure_round_trips(bare.url, repeats)
    dispatch = latency_summary_ms(dispatch_s)
    hub_health = latency_summary_ms(hub_health_s)
    bare_health = latency_summary_ms(bare_health_s)
    median_ms = statistics.median(dispatch_s) * 1000
    return {
        "benchmark": "dispatch",
        "what": "submit of a 1-task job -> the idle node's long-poll claim returns it",
        "settings": {
            "repeats": repeats,
            "store": "sqlite",
            "claim_wait_s": _CLAIM_WAIT_S,
            "pause_between_repeats_s": _SETTLE_S,
        },
        "machine": machine(),
        "dispatch": dispatch,
        "baseline_hub_health_round_trip": hub_health,
        "baseline_bare_fastapi_round_trip": bare_health,
        "ratio_median_to_hub_health": round(median_ms / hub_health["median_ms"], 2),
        "ratio_median_to_bare_fastapi": round(median_ms / bare_health["median_ms"], 2),
        "target_median_ms": TARGET_MEDIAN_MS,
        "meets_target": median_ms < TARGET_MEDIAN_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="10 repeats: a smoke test")
    args = parser.parse_args()
    emit(run(10 if args.quick else args.repeats))


if __name__ == "__main__":
    main()
