"""Scale: 1,000 simulated nodes heartbeating every 5 s for 60 s. Target: p99 heartbeat latency
under 200 ms. Also reports the hub's CPU use (CPU seconds per wall second, from /proc).

The nodes are coroutines, each with its own key and its own ``httpx.AsyncClient`` (one
connection, dropped after 4 s idle, so each heartbeat 5 s apart opens a new one). Their first
heartbeats are spread evenly over one interval, as real nodes that joined at different times
would be. Registration happens before the clock starts and is timed on its own.

Baseline in the same run: the same loop against a bare FastAPI no-op endpoint.

    .venv/bin/python benchmarks/scale.py [--nodes 1000] [--interval-s 5] [--duration-s 60] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from common import (
    ServerProcess,
    bare_process,
    emit,
    hub_process,
    latency_summary_ms,
    log,
    machine,
    node_registration,
)
from lumbung.client.auth import SignedAuth
from lumbung.crypto.keys import Identity
from lumbung.wire.api import HeartbeatRequest

TARGET_P99_MS = 200.0
# Registrations in flight at once; a fleet joining all at the same instant is not the case here.
_REGISTER_CONCURRENCY = 16
# Below uvicorn's 5 s keep-alive, so the pool never reuses a connection the server is closing.
_KEEPALIVE_EXPIRY_S = 4.0
_REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoints:
    register: str
    heartbeat: str


HUB = Endpoints(register="/v1/nodes/register", heartbeat="/v1/nodes/heartbeat")
BARE = Endpoints(register="/v1/noop", heartbeat="/v1/noop")


@dataclass
class Fleet:
    auths: list[SignedAuth]
    # One client (one connection) per node, as real nodes have: a shared pool scans all of its
    # connections on every request, so once responses slow down the load generator's own cost
    # grows with the number of open connections and is measured as hub latency.
    clients: list[httpx.AsyncClient]
    latencies_s: list[float] = field(default_factory=list)
    # How late each heartbeat left against its schedule: the load generator's own backlog.
    lag_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def register_all(fleet: Fleet, path: str) -> float:
    gate = asyncio.Semaphore(_REGISTER_CONCURRENCY)

    async def one(i: int) -> None:
        body = node_registration(f"bench-scale-{i}").model_dump(mode="json")
        async with gate:
            response = await fleet.clients[i].post(path, json=body, auth=fleet.auths[i])
            response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(fleet.auths))))
    return time.perf_counter() - started


async def heartbeats(
    fleet: Fleet, index: int, path: str, start_at: float, interval_s: float, end_at: float
) -> None:
    """One node: a heartbeat every ``interval_s`` on a fixed schedule, offset by its index."""
    loop = asyncio.get_running_loop()
    body = HeartbeatRequest(tasks=[], free_slots=1).model_dump(mode="json")
    due = start_at + interval_s * index / len(fleet.auths)
    while due < end_at:
        await asyncio.sleep(max(0.0, due - loop.time()))
        fleet.lag_s.append(loop.time() - due)
        sent = time.perf_counter()
        try:
            response = await fleet.clients[index].post(path, json=body, auth=fleet.auths[index])
            response.raise_for_status()
            fleet.latencies_s.append(time.perf_counter() - sent)
        except httpx.HTTPError as exc:
            fleet.errors.append(repr(exc)[:300])
        due += interval_s


async def measure_async(
    server: ServerProcess, endpoints: Endpoints, nodes: int, interval_s: float, duration_s: float
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=1, keepalive_expiry=_KEEPALIVE_EXPIRY_S)
    fleet = Fleet(
        auths=[SignedAuth(Identity.generate()) for _ in range(nodes)],
        clients=[
            httpx.AsyncClient(base_url=server.url, limits=limits, timeout=_REQUEST_TIMEOUT_S)
            for _ in range(nodes)
        ],
    )
    try:
        register_s = await register_all(fleet, endpoints.register)
        loop = asyncio.get_running_loop()
        start_at = loop.time() + 0.5
        end_at = start_at + duration_s
        cpu_before_s, gen_cpu_before_s = server.cpu_s(), time.process_time()
        wall_started = time.perf_counter()
        await asyncio.gather(
            *(
                heartbeats(fleet, i, endpoints.heartbeat, start_at, interval_s, end_at)
                for i in range(nodes)
            )
        )
        wall_s = time.perf_counter() - wall_started
        cpu_s, gen_cpu_s = server.cpu_s() - cpu_before_s, time.process_time() - gen_cpu_before_s
    finally:
        await asyncio.gather(*(client.aclose() for client in fleet.clients))
    if not fleet.latencies_s:
        raise RuntimeError(f"no heartbeat succeeded; first errors: {fleet.errors[:3]}")
    return {
        "register_s": round(register_s, 3),
        "heartbeats": len(fleet.latencies_s),
        "heartbeats_per_s": round(len(fleet.latencies_s) / wall_s, 1),
        "latency": latency_summary_ms(fleet.latencies_s),
        "max_schedule_lag_ms": round(1000 * max(fleet.lag_s), 1),
        "server_cpu_s_per_wall_s": round(cpu_s / wall_s, 3),
        "server_cpu_ms_per_heartbeat": round(1000 * cpu_s / len(fleet.latencies_s), 3),
        "load_generator_cpu_s_per_wall_s": round(gen_cpu_s / wall_s, 3),
        "errors": len(fleet.errors),
        "first_errors": fleet.errors[:3],
    }


def run(nodes: int, interval_s: float, duration_s: float) -> dict[str, Any]:
    with hub_process() as hub:
        log(f"hub: {nodes} nodes, a heartbeat each every {interval_s} s for {duration_s} s")
        hub_result = asyncio.run(measure_async(hub, HUB, nodes, interval_s, duration_s))
    with bare_process() as bare:
        log("baseline: the same loop against a bare FastAPI app")
        bare_result = asyncio.run(measure_async(bare, BARE, nodes, interval_s, duration_s))
    p99_ms = hub_result["latency"]["p99_ms"]
    return {
        "benchmark": "scale",
        "what": "heartbeat latency and hub CPU with many nodes heartbeating",
        "settings": {
            "nodes": nodes,
            "heartbeat_interval_s": interval_s,
            "duration_s": duration_s,
            "store": "sqlite",
            "connections": "one per node (its own httpx.AsyncClient)",
            "register_concurrency": _REGISTER_CONCURRENCY,
        },
        "machine": machine(),
        "hub": hub_result,
        "baseline_bare_fastapi": bare_result,
        "ratio_p99_to_bare": round(p99_ms / bare_result["latency"]["p99_ms"], 2),
        "ratio_median_to_bare": round(
            hub_result["latency"]["median_ms"] / bare_result["latency"]["median_ms"], 2
        ),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": p99_ms < TARGET_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="50 nodes for 10 s: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.duration_s = 50, 10.0
    if args.nodes < 1 or args.interval_s <= 0 or args.duration_s <= 0:
        raise SystemExit("--nodes, --interval-s and --duration-s must be positive")
    emit(run(args.nodes, args.interval_s, args.duration_s))


if __name__ == "__main__":
    main()
