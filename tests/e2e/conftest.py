"""End-to-end harness: a real hub process and real node processes on 127.0.0.1.

Each test gets its own temporary directory; every process is started in its own process group and
killed at teardown, whatever the test did.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lumbung.client import Client
from lumbung.crypto.keys import Identity
from lumbung.demo.cluster import Cluster as Processes
from lumbung.demo.cluster import Process
from lumbung.wire.api import JobView

WORKLOADS = Path(__file__).parent / "workloads"
LEASE_TIMEOUT_S = 3.0
# The hub keeps 5% of what providers earn; the faucet gives the test consumer 1,000 credits.
FEE_BPS = 500
FAUCET_MICRO = 1_000_000_000


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Cluster(Processes):
    """A hub and its nodes as real processes (``lumbung.demo.cluster``); a client signed with
    its own key. A hub started again keeps its port and data directory."""

    def __init__(self, root: Path, db_url: str) -> None:
        super().__init__(root)
        self.db_url = db_url
        self._client: Client | None = None

    @property
    def url(self) -> str:
        return self.hub_url

    @property
    def hub(self) -> Process | None:
        return self.procs.get("hub")

    @property
    def nodes(self) -> dict[str, Process]:
        return {name: p for name, p in self.procs.items() if name != "hub"}

    def start_hub(self, witnesses: tuple[str, ...] = ()) -> None:  # type: ignore[override]
        """Start the hub, taking cosignatures from the ``witnesses`` (verifier keys) named."""
        flags = ["--lease-timeout-s", str(LEASE_TIMEOUT_S), "--fee-bps", str(FEE_BPS)]
        flags += ["--faucet-micro", str(FAUCET_MICRO)]
        if self.db_url:
            flags += ["--db", self.db_url]
        for vkey in witnesses:
            flags += ["--witness", vkey]
        super().start_hub(*flags)

    def start_node(  # type: ignore[override]
        self, name: str, price_cpu: int = 10_000, slots: int = 1
    ) -> Process:
        return super().start_node(
            name,
            "--price-cpu-hour", str(price_cpu),
            "--heartbeat-s", "0.5",
            "--slots", str(slots),
            "--grace-s", "5",
            # Sandboxed wherever bubblewrap runs (CI requires it: see the sandbox_runner
            # fixture); elsewhere the suite still runs, on plain processes.
            "--allow-unsandboxed",
        )  # fmt: skip

    def wait_nodes_online(self, count: int) -> None:
        _wait_for(lambda: sum(n.online for n in self.client.nodes()) >= count, 60, f"{count} nodes")

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, Identity.load_or_create(self.root / "client"))
            self._client.ledger.faucet()  # credits for the jobs' escrow
        return self._client

    def wait_job(self, job_id: str, timeout_s: float = 120) -> JobView:
        return self.client.wait(job_id, timeout_s=timeout_s, poll_s=0.2)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for process in self.procs.values():
            process.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""  # the hub's default: SQLite in its data directory
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def cluster(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path, db_url)
    try:
        c.start_hub()
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(c.logs())
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def counter_spec(name: str = "count", **params: object) -> dict[str, object]:
    grid = {"steps": [params.pop("steps", 10)]}
    grid.update({k: [v] for k, v in params.items()})
    return {
        "name": name,
        "command": ["python", "inputs/counter.py"],
        "inputs": [{"name": "counter.py", "path": str(WORKLOADS / "counter.py")}],
        "outputs": ["result.json"],
        "grid": grid,
        "checkpoint_interval_s": 1,
        "retries": 1,
        "max_price_micro_per_hour": 100_000_000,
        "max_runtime_s": 120,
    }


wait_for = _wait_for


def lumbung_cli(
    cluster: Cluster, *args: str, data_dir: str = "client"
) -> subprocess.CompletedProcess[str]:
    """The real CLI against the cluster's hub, as the key in ``root/data_dir``."""
    argv = [sys.executable, "-m", "lumbung", *args, "--hub", cluster.url]
    argv += ["--data-dir", str(cluster.root / data_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
