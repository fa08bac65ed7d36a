"""``lumbung demo``: a hub and three nodes on this machine, a sweep, and a node killed mid-task.

What it shows, end to end with real processes on 127.0.0.1: a plan that explains itself, three
providers at different prices, a node dying (``kill -9``) while it runs a task, the hub's lease
expiring and another node resuming that task from its last checkpoint, and the bill: who ran what,
at what price, and what the failure cost. Every credit moves through the hub's public ledger: the
consumer's escrow is locked at submit, providers are paid for the work they keep (the killed node
only up to its last checkpoint), the hub keeps its fee, and the rest is refunded. The demo ends by
auditing the ledger from outside (``lumbung ledger verify``) and printing the settlement. Exit
code 0 only if the sweep succeeded, the killed task resumed from a checkpoint rather than from
scratch, the escrow settled to the last micro-credit, and the audit passed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import FrameType

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lumbung.cli import render
from lumbung.cli.jobs import all_logs, watch_job
from lumbung.client import Client
from lumbung.client.audit import audit
from lumbung.config import ClientConfig
from lumbung.errors import Unavailable
from lumbung.wire.api import JobView, Results
from lumbung.wire.spec import JobSpec, parse_spec

# Three providers, cheapest first: micro-credits per CPU-core-hour (0.8, 1.2 and 2 credits).
NODE_PRICES = {"node-a": 800_000, "node-b": 1_200_000, "node-c": 2_000_000}
MAX_PRICE_MICRO_PER_HOUR = 5_000_000
# The hub keeps 5% of what providers earn; its faucet gives the consumer 100 credits.
FEE_BPS = 500
FAUCET_MICRO = 100_000_000
# Settlement follows the job's last report within a request; this is ample.
SETTLE_TIMEOUT_S = 15.0
HIDDEN_SIZES = [32, 64, 128]
LEARNING_RATES = [0.003, 0.01]
# Short leases so the demo need not wait long for the hub to notice the dead node.
LEASE_TIMEOUT_S = 6
STARTUP_TIMEOUT_S = 30.0
# A task must have run this long, with a checkpoint of its current attempt, before it is killed.
KILL_AFTER_S = 5.0
# Never kill a task this close to done: there would be little left to resume.
KILL_BEFORE_PROGRESS = 0.7
STOP_GRACE_S = 5.0
_RESUMED_RE = re.compile(r"resumed at epoch (\d+)")


@dataclass
class Cluster:
    """The demo's child processes, each the leader of its own process group."""

    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "lumbung", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process group: the machine is gone, nothing is saved."""
        _signal_group(self.procs[name], signal.SIGKILL)
        self.procs[name].wait()

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        """Stop the nodes (together, so their drains overlap), then the hub."""
        self._stop([name for name in self.procs if name != "hub"])
        self._stop([name for name in self.procs if name == "hub"])

    def _stop(self, names: list[str]) -> None:
        """SIGTERM each group, give them ``STOP_GRACE_S`` in all, then SIGKILL what is left."""
        for name in names:
            _signal_group(self.procs[name], signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name in names:
            with suppress(subprocess.TimeoutExpired):
                self.procs[name].wait(timeout=max(0.0, deadline - time.monotonic()))
            # A node stops its own tasks on SIGTERM; whatever of the group remains goes now.
            _signal_group(self.procs[name], signal.SIGKILL)
            self.procs[name].wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, sig)


@dataclass
class Killed:
    node_name: str
    node_id: str
    task_id: str
    task_index: int
    attempt: int


class NodeKiller:
    """Watches the job and, once, kills the node of a running task that has a checkpoint."""

    def __init__(self, cluster: Cluster, names: dict[str, str], console: Console) -> None:
        self.cluster = cluster
        self.names = names
        self.console = console
        self.killed: Killed | None = None
        self._first_seen: dict[tuple[str, int], float] = {}

    def tick(self, job: JobView) -> None:
        if self.killed is not None:
            return
        now = time.monotonic()
        for task in job.tasks:
            if task.state != "running" or task.node_id is None:
                continue
            running_s = now - self._first_seen.setdefault((task.id, task.attempt), now)
            checkpointed = any(c.attempt == task.attempt for c in task.checkpoints)
            name = self.names.get(task.node_id)
            if (
                checkpointed
                and running_s >= KILL_AFTER_S
                and task.progress < KILL_BEFORE_PROGRESS
                and name in self.cluster.procs
            ):
                self.console.print(
                    f"[bold red]killing {name} (kill -9) while it runs task {task.index} "
                    f"at {task.progress:.0%}[/]"
                )
                self.cluster.kill(name)
                self.killed = Killed(name, task.node_id, task.id, task.index, task.attempt)
                return


def sweep_spec_text(max_tasks: int) -> str:
    """The demo's job spec as YAML: the largest hidden x lr grid of at most ``max_tasks`` tasks."""
    shapes = [
        (h, lr)
        for h in range(1, len(HIDDEN_SIZES) + 1)
        for lr in range(1, len(LEARNING_RATES) + 1)
        if h * lr <= max_tasks
    ]
    hidden_count, lr_count = max(shapes, key=lambda shape: (shape[0] * shape[1], shape[1]))
    script = Path(str(files("lumbung.demo") / "digits_sweep.py"))
    spec = {
        "name": "digits-sweep",
        "kind": "run",
        # The node puts inputs under inputs/ in the task's working directory.
        "command": ["python", "inputs/digits_sweep.py"],
        "inputs": [{"name": "digits_sweep.py", "path": str(script)}],
        "outputs": ["result.json"],
        "grid": {"hidden": HIDDEN_SIZES[:hidden_count], "lr": LEARNING_RATES[:lr_count]},
        "checkpoint_interval_s": 2,
        "retries": 2,
        "max_price_micro_per_hour": MAX_PRICE_MICRO_PER_HOUR,
        "max_runtime_s": 360,
        "resources": {"cpus": 1, "memory_gb": 2},
    }
    return yaml.safe_dump(spec, sort_keys=False)


def start_cluster(cluster: Cluster, console: Console) -> str:
    """Start the hub and the nodes; the hub's URL once all nodes are online."""
    hub_dir = cluster.root / "hub"
    lease = str(LEASE_TIMEOUT_S)
    hub_args = [
        "hub",
        "serve",
        "--data-dir",
        str(hub_dir),
        "--port",
        "0",
        "--lease-timeout-s",
        lease,
        "--fee-bps",
        str(FEE_BPS),
        "--faucet-micro",
        str(FAUCET_MICRO),
    ]
    cluster.start("hub", hub_args)
    port = _wait_for_port(cluster, hub_dir / "port")
    url = f"http://127.0.0.1:{port}"
    console.print(f"hub listening on {url} (SQLite in {hub_dir})")
    for name, price in NODE_PRICES.items():
        cluster.start(name, [
            "node", "start", "--hub", url, "--data-dir", str(cluster.root / name),
            "--name", name, "--price-cpu-hour", str(price), "--heartbeat-s", "1", "--slots", "1",
            "--grace-s", "2",
            # The demo's own workloads: sandboxed where bubblewrap runs, plain processes (and a
            # warning below) where it cannot.
            "--allow-unsandboxed",
        ])  # fmt: skip
        console.print(f"started {name} asking {render.per_hour(price)} per CPU core")
    return url


def _wait_for_port(cluster: Cluster, port_file: Path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if cluster.procs["hub"].poll() is not None:
            raise Unavailable(f"the hub exited at start-up:\n{cluster.log_tail('hub')}")
        text = port_file.read_text().strip() if port_file.is_file() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.1)
    raise Unavailable(f"the hub did not start within {STARTUP_TIMEOUT_S:.0f} s")


def wait_for_nodes(client: Client, cluster: Cluster, console: Console) -> dict[str, str]:
    """Node id -> name once every node is online."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for name in NODE_PRICES:
            if cluster.procs[name].poll() is not None:
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


def results_view(
    client: Client, job: JobView, results: Results, names: dict[str, str], out_dir: Path
) -> Table:
    """Each task's params, the accuracy from its downloaded result.json, its node and price."""
    price_of = {w.node_id: w.price_micro_per_hour for w in job.work}
    table = Table(title="Sweep results")
    for column in ("#", "params", "test accuracy", "finished by", "price/hour"):
        table.add_column(column)
    for task in sorted(results.tasks, key=lambda t: t.index):
        accuracy = "-"
        if "result.json" in task.outputs:
            dest = out_dir / f"task-{task.index}" / "result.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download(task.outputs["result.json"], dest)
            accuracy = f"{json.loads(dest.read_text())['test_accuracy']:.4f}"
        node_id = task.node_id or ""
        price = render.per_hour(price_of[node_id]) if node_id in price_of else "-"
        table.add_row(str(task.index), render.format_params(task.params), accuracy,
                      names.get(node_id, node_id or "-"), price)  # fmt: skip
    return table


def resumed_epoch(client: Client, job_id: str, killed: Killed) -> int | None:
    """The epoch a later attempt of the killed task resumed from, as its own log says."""
    for line in all_logs(client, job_id):
        if line.task_id == killed.task_id and line.attempt > killed.attempt:
            match = _RESUMED_RE.search(line.text)
            if match:
                return int(match.group(1))
    return None


def failure_report(client: Client, job: JobView, killed: Killed | None, console: Console) -> bool:
    """Print what the failure cost; True if the killed task resumed from a checkpoint."""
    if killed is None:
        console.print("[red]no task was running with a checkpoint long enough to kill its node[/]")
        return False
    lost = [w for w in job.work if w.node_id == killed.node_id]
    lost_s = sum(w.lost_s for w in lost)
    lost_micro = sum(w.lost_cost_micro for w in lost)
    console.print(
        f"[bold]What the failure cost:[/] {killed.node_name} died with {lost_s:.1f} s of "
        f"unsaved work ({render.format_credits(lost_micro)}), which nobody pays for."
    )
    epoch = resumed_epoch(client, job.id, killed)
    if epoch is None or epoch == 0:
        console.print(f"[red]task {killed.task_index} did not resume from a checkpoint[/]")
        return False
    console.print(
        f"Task {killed.task_index} resumed from its checkpoint at epoch {epoch} on another node "
        "instead of starting over."
    )
    return True


def run_sweep(cluster: Cluster, client: Client, console: Console, max_tasks: int) -> int:
    names = wait_for_nodes(client, cluster, console)
    spec_path = cluster.root / "sweep.yaml"
    spec_path.write_text(sweep_spec_text(max_tasks))
    spec: JobSpec = parse_spec(spec_path.read_text())
    console.print(f"\nspec written to {spec_path}")
    console.print(render.plan_view(client.plan(spec, base_dir=cluster.root)))
    client.ledger.faucet()
    submitted = client.submit(spec, base_dir=cluster.root).job
    job_id = submitted.id
    console.print(f"submitted [bold]{job_id}[/] ({spec.task_count()} tasks)")
    if submitted.escrow is not None:
        console.print(f"{render.escrow_line(submitted.escrow)}\n")
    killer = NodeKiller(cluster, names, console)
    job = watch_job(client, job_id, console, on_tick=killer.tick)
    names.update({n.id: n.name for n in client.nodes()})
    results = client.results(job_id)
    console.print(results_view(client, job, results, names, cluster.root / "results"))
    console.print(render.work_table(job.work))
    resumed = failure_report(client, job, killer.killed, console)
    settled = settlement_report(client, job_id, names, cluster.root / "auditor", console)
    console.print(Text(f"job {job_id}: ").append_text(render.state_text(job.state)))
    return 0 if job.state == "succeeded" and resumed and settled else 1


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
                    code = run_sweep(cluster, client, console, max_tasks)
                else:
                    from lumbung.cli.demo_train import LONG, QUICK, run_training

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
