"""The benchmarks' shared harness: a real hub process, a bare FastAPI process, simulated nodes.

Every benchmark compares the hub against a baseline measured in the same run on the same machine,
so a number means something on a laptop, in CI and on a server alike. Loads go to 127.0.0.1 only.
Scripts print one JSON object to stdout; progress and the servers' logs go to stderr and files.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pstats
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from lumbung.client.consumer import Client
from lumbung.client.node_session import NodeSession
from lumbung.crypto.keys import Identity
from lumbung.demo.cluster import HOST, Process, wait_for_port
from lumbung.wire.api import Inventory, NodeRegister
from lumbung.wire.spec import JobSpec

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# A server that has not published its port by then failed to start (its log says why).
_START_TIMEOUT_S = 60.0
# uvicorn finishes open requests on SIGTERM; a server still alive after this is killed.
_STOP_TIMEOUT_S = 15.0
# Credits each benchmark consumer gets: far more than any benchmark's escrow needs.
FAUCET_MICRO = 10**12


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays one JSON object."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Where the numbers were taken: the hub and the load generator share these cores."""
    return {
        "cpus": os.cpu_count(),
        "note": "hub, baseline server and load generator all run on this machine and share its "
        "cores; numbers are lower bounds for a hub on a machine of its own",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, sort_keys=False), flush=True)


# --- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float | int]:
    ms = [x * 1000.0 for x in latencies_s]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


# --- server processes -----------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server on 127.0.0.1 in a child process (``lumbung.demo.cluster``, the launcher the demo
    and the e2e tests use too), and what it cost in CPU."""

    process: Process
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def cpu_s(self) -> float:
        """User plus system CPU seconds the server has used so far (Linux /proc)."""
        return self.process.cpu_s()

    def stop(self) -> None:
        self.process.stop(_STOP_TIMEOUT_S)


def child_env() -> dict[str, str]:
    # A developer's LUMBUNG_HUB_* settings must not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBUNG_")}
    src = str(BENCH_DIR.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def server_process(
    argv: list[str], port_file: Path, log_path: Path, *, start_timeout_s: float = _START_TIMEOUT_S
) -> Iterator[ServerProcess]:
    """``argv`` as a server process, yielded once it has published its port in ``port_file``."""
    process = Process(log_path.stem, argv, log_path, env=child_env(), cwd=BENCH_DIR.parent)
    try:
        port = wait_for_port(process, port_file, start_timeout_s)
        yield ServerProcess(process, f"http://{HOST}:{port}")
    finally:
        process.stop(_STOP_TIMEOUT_S)


# uvicorn re-raises the SIGTERM it caught once it has shut down; exiting through Python (not the
# default handler) lets the profile be written.
_PROFILED_HUB = """
import cProfile, signal, sys
from pathlib import Path
from lumbung.config import HubConfig
from lumbung.hub.server import serve
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
profile = cProfile.Profile()
profile.enable()
try:
    data_dir, db_url, faucet = Path(sys.argv[1]), sys.argv[2], int(sys.argv[4])
    serve(HubConfig(data_dir=data_dir, port=0, db_url=db_url, faucet_micro=faucet))
finally:
    profile.disable()
    profile.dump_stats(sys.argv[3])
"""


@contextlib.contextmanager
def hub_process(db_url: str = "", *, profile_path: Path | None = None) -> Iterator[ServerProcess]:
    """The real hub (``lumbung hub serve``) on a port of its own in a fresh data directory.

    With ``profile_path`` the hub runs under cProfile (its event loop thread, where every handler
    runs) and writes pstats there when it stops; cProfile slows Python code, so profiled runs
    say where time goes, not how fast the hub is.
    """
    with tempfile.TemporaryDirectory(prefix="lumbung-bench-hub-") as tmp:
        data_dir = Path(tmp) / "hub"
        if profile_path is None:
            argv = [
                sys.executable,
                "-m",
                "lumbung",
                "hub",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--faucet-micro",
                str(FAUCET_MICRO),
            ]
            if db_url:
                argv += ["--db", db_url]
        else:
            argv = [
                sys.executable,
                "-c",
                _PROFILED_HUB,
                str(data_dir),
                db_url,
                str(profile_path),
                str(FAUCET_MICRO),
            ]
        with server_process(argv, data_dir / "port", Path(tmp) / "hub.log") as server:
            yield server


_BARE_APP = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from common import serve_bare
serve_bare(Path(sys.argv[2]))
"""


@contextlib.contextmanager
def bare_process() -> Iterator[ServerProcess]:
    """The baseline: a FastAPI app with no-op endpoints, on the same uvicorn stack as the hub."""
    with tempfile.TemporaryDirectory(prefix="lumbung-bench-bare-") as tmp:
        port_file = Path(tmp) / "port"
        argv = [sys.executable, "-c", _BARE_APP, str(BENCH_DIR), str(port_file)]
        with server_process(argv, port_file, Path(tmp) / "bare.log") as server:
            yield server


def serve_bare(port_file: Path) -> None:
    """Run the baseline app until SIGTERM: what FastAPI, uvicorn and JSON cost with no hub logic.

    It reads and parses the JSON body like the hub's endpoints do, but checks no signature and
    touches no database. It publishes its port as ``lumbung.hub.server`` does.
    """
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/noop")
    async def noop(body: dict[str, Any]) -> dict[str, Any]:
        return {}

    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and uvicorn writes a response's head and body separately, so with Nagle on
    # every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(2048)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    tmp.replace(port_file)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def profile_summary(profile_path: Path, top: int = 25) -> dict[str, Any]:
    """The hub's cProfile as JSON: total seconds, then the heaviest functions by own and by
    cumulative time, each with its share of the total."""
    stats = pstats.Stats(str(profile_path))
    total_s: float = stats.total_tt  # type: ignore[attr-defined]
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        where = f"{Path(file).name}:{line}:{func}" if line else func
        rows.append((where, calls, tottime, cumtime))

    def table(index: int) -> list[dict[str, Any]]:
        ranked = sorted(rows, key=lambda r: r[index], reverse=True)[:top]
        return [
            {
                "function": w,
                "calls": c,
                "own_s": round(o, 3),
                "cum_s": round(cu, 3),
                "own_pct": round(100 * o / total_s, 1),
                "cum_pct": round(100 * cu / total_s, 1),
            }
            for w, c, o, cu in ranked
        ]

    return {"total_s": round(total_s, 3), "by_own_time": table(2), "by_cumulative_time": table(3)}


# --- PostgreSQL -----------------------------------------------------------------------------------


class PostgresUnreachable(RuntimeError):
    pass


@contextlib.contextmanager
def postgres_schema(base_url: str = DEFAULT_POSTGRES_URL) -> Iterator[str]:
    """A URL whose connections see only a fresh schema, dropped afterwards."""
    admin = sa.create_engine(base_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    schema = f"lumbung_bench_{secrets.token_hex(6)}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        raise PostgresUnreachable(f"PostgreSQL unreachable at {base_url}: {exc}") from exc
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# --- simulated actors -----------------------------------------------------------------------------


def node_registration(name: str) -> NodeRegister:
    """A CPU-only node that fits the benchmarks' no-op jobs."""
    return NodeRegister(
        name=name,
        inventory=Inventory(cpus=4, memory_mib=8192, disk_free_mib=50_000),
        price_micro_per_gpu_hour=1_000_000,
        price_micro_per_cpu_hour=10_000,
        slots=1,
    )


def registered_node(hub_url: str, name: str) -> NodeSession:
    """A simulated node: its own key, registered, running nothing (tasks are only reported)."""
    session = NodeSession(hub_url, Identity.generate(), timeout_s=60.0)
    session.register(node_registration(name))
    return session


def consumer(hub_url: str) -> Client:
    """A consumer with the faucet's credits: every submission locks its escrow in the ledger."""
    client = Client(hub_url, Identity.generate(), timeout_s=60.0)
    client.ledger.faucet()
    return client


def noop_spec(name: str, count: int) -> JobSpec:
    """``count`` tasks that would run ``true``; the simulated nodes never run them."""
    return JobSpec(
        name=name,
        command=["true"],
        count=count,
        max_price_micro_per_hour=1_000_000,
        max_runtime_s=600,
        retries=0,
    )
