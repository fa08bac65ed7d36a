"""``lumbung demo``: a hub and three nodes on this machine, a job, a node killed, the bill.

Everything runs as real processes on 127.0.0.1 (``lumbung.demo.cluster``): the hub on SQLite and
three providers at different prices. The scenario is the training demo (``lumbung.demo.training``)
or, with ``--sweep``, the sweep (``lumbung.demo.sweep``); both end by auditing the ledger from
outside and printing the settlement: every credit moves through the hub's public ledger, the
consumer's escrow is locked at submit, providers are paid for the work they keep, the hub keeps
its fee and the rest is refunded.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from lumbung.cli import render
from lumbung.client import Client
from lumbung.client.audit import audit
from lumbung.config import ClientConfig
from lumbung.demo.cluster import Cluster
from lumbung.errors import ConfigError, Unavailable
from lumbung.wire.api import JobView

# Three providers, cheapest first: micro-credits per CPU-core-hour (0.8, 1.2 and 2 credits).
NODE_PRICES = {"node-a": 800_000, "node-b": 1_200_000, "node-c": 2_000_000}
# The hub keeps 5% of what providers earn; its faucet gives the consumer 100 credits.
FEE_BPS = 500
FAUCET_MICRO = 100_000_000
# Settlement follows the job's last report within a request; this is ample.
SETTLE_TIMEOUT_S = 15.0
# Short leases so the demo need not wait long for the hub to notice the dead node.
LEASE_TIMEOUT_S = 6
STARTUP_TIMEOUT_S = 30.0


def start_cluster(cluster: Cluster, console: Console) -> str:
    """Start the hub and the nodes; the hub's URL."""
    url = cluster.start_hub(
        "--lease-timeout-s", str(LEASE_TIMEOUT_S),
        "--fee-bps", str(FEE_BPS),
        "--faucet-micro", str(FAUCET_MICRO),
        timeout_s=STARTUP_TIMEOUT_S,
    )  # fmt: skip
    console.print(f"hub listening on {url} (SQLite in {cluster.root / 'hub'})")
    for name, price in NODE_PRICES.items():
        cluster.start_node(
            name, "--price-cpu-hour", str(price), "--heartbeat-s", "1", "--slots", "1",
            "--grace-s", "2",
            # The demo's own workloads: sandboxed where bubblewrap runs, plain processes (and a
            # warning below) where it cannot.
            "--allow-unsandboxed",
        )  # fmt: skip
        console.print(f"started {name} asking {render.per_hour(price)} per CPU core")
    return url


def wait_for_nodes(client: Client, cluster: Cluster, console: Console) -> dict[str, str]:
    """Node id -> name once every node is online."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for name in NODE_PRICES:
            if not cluster.procs[name].alive():
                raise Unavailable(f"{name} exited at start-up:\n{cluster.log_tail(name)}")
        nodes = [n for n in client.nodes() if n.online]
        online = {n.id: n.name for n in nodes}
        if set(online.values()) >= set(NODE_PRICES):
            weak = [n.name for n in nodes if n.inventory.isolation.level != "sandbox"]
            if weak:
                console.print(
                    f"[yellow]WARNING: no bubblewrap sandbox here; {', '.join(weak)} run "
                    "tasks as plain processes[/] (install bubblewrap)"
                )
            return online
        time.sleep(0.2)
    raise Unavailable(f"the nodes did not come online within {STARTUP_TIMEOUT_S:.0f} s")


def settlement_report(
    client: Client, job_id: str, names: dict[str, str], audit_dir: Path, console: Console
) -> bool:
    """Audit the ledger from outside, then print who was paid what; True if it all adds up."""
    job = _settled_job(client, job_id)
    report = audit(client.ledger, audit_dir)
    console.print(
        f"[bold]Ledger verified:[/] {report.size} entries, every signature and sequence number "
        f"checked, balances replayed, root {report.root.hex()[:16]}... matches the hub's signed "
        "checkpoint."
    )
    escrow = job.escrow
    if escrow is None or escrow.remaining_micro != 0:
        console.print("[red]the job's escrow did not settle[/]")
        return False
    table = Table(title="Settlement (from the ledger)")
    for column in ("provider", "kept s", "lost s", "earned", "hub fee", "received"):
        table.add_column(column, justify="left" if column == "provider" else "right")
    received_total = 0
    for work in job.work:
        received = client.ledger.account(work.node_id).balance
        received_total += received
        table.add_row(
            names.get(work.node_id, work.node_id),
            f"{work.kept_s:.1f}",
            f"{work.lost_s:.1f}",
            render.format_credits(work.kept_cost_micro),
            render.format_credits(work.kept_cost_micro - received),
            render.format_credits(received),
        )
    refunded = escrow.refunded_micro
    table.caption = (
        f"consumer: locked {render.format_credits(escrow.locked_micro)}, paid "
        f"{render.format_credits(escrow.released_micro + escrow.fees_micro)} for kept work "
        f"(of which the hub's fee {render.format_credits(escrow.fees_micro)}), refunded "
        f"{render.format_credits(refunded)}"
    )
    console.print(table)
    adds_up = received_total == escrow.released_micro and (
        escrow.released_micro + escrow.fees_micro + refunded == escrow.locked_micro
    )
    if not adds_up:
        console.print("[red]the providers' balances do not add up to the escrow's releases[/]")
    return adds_up


def _settled_job(client: Client, job_id: str) -> JobView:
    """The job once its escrow holds nothing: settlement runs just after the last report."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        job = client.get(job_id)
        if job.escrow is None or job.escrow.remaining_micro == 0:
            return job
        if time.monotonic() >= deadline:
            return job
        time.sleep(0.2)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the same path as Ctrl-C, so the finally block always cleans up."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(*, keep: bool, max_tasks: int, sweep: bool = False, long: bool = False) -> int:
    """Run the whole demo (the training, or with ``sweep`` the digits sweep); its exit code."""
    # The nodes run the workload on this machine: without its library every task would fail.
    needed, extra = ("sklearn", "demo") if sweep else ("torch", "train")
    if importlib.util.find_spec(needed) is None:
        raise ConfigError(f"this demo's workload needs {needed}: pip install 'lumbung[{extra}]'")
    console = render.stdout_console()
    root = Path(tempfile.mkdtemp(prefix="lumbung-demo-"))
    cluster = Cluster(root)
    started_s = time.monotonic()
    try:
        with _sigterm_as_interrupt():
            url = start_cluster(cluster, console)
            config = ClientConfig(hub_url=url, data_dir=root / "client")
            with Client.connect(url, config) as client:
                if sweep:
                    from lumbung.demo.sweep import run_sweep

                    code = run_sweep(cluster, client, console, max_tasks)
                else:
                    from lumbung.demo.training import LONG, QUICK, run_training

                    code = run_training(cluster, client, console, LONG if long else QUICK)
        console.print(f"demo took {time.monotonic() - started_s:.0f} s")
        return code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping the hub and the nodes[/]")
        return 130
    finally:
        cluster.stop_all()
        if keep:
            console.print(f"kept {root} (logs: hub.log, node-*.log)")
        else:
            shutil.rmtree(root, ignore_errors=True)
