"""The sweep demo (``lumbung demo --sweep``): a hyper-parameter sweep, a node killed mid-task.

A sweep of ``run`` tasks on scikit-learn's digits (the workload is ``digits_sweep.py``, uploaded
as the job's input) across three providers at different prices. One node is killed (``kill -9``)
while it runs a task; the hub's lease expires and another node resumes the task from its last
checkpoint. It ends with the results, who ran what at what price, what the failure cost, and the
settlement. Exit code 0 only if the sweep succeeded, the killed task resumed from a checkpoint
rather than from scratch, the escrow settled to the last micro-credit, and the audit passed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lumbung.cli import render
from lumbung.cli.jobs import all_logs, watch_job
from lumbung.client import Client
from lumbung.demo.cluster import Cluster
from lumbung.demo.run import settlement_report, wait_for_nodes
from lumbung.wire.api import JobView, Results
from lumbung.wire.spec import JobSpec, parse_spec

MAX_PRICE_MICRO_PER_HOUR = 5_000_000
HIDDEN_SIZES = [32, 64, 128]
LEARNING_RATES = [0.003, 0.01]
# A task must have run this long, with a checkpoint of its current attempt, before it is killed.
KILL_AFTER_S = 5.0
# Never kill a task this close to done: there would be little left to resume.
KILL_BEFORE_PROGRESS = 0.7
_RESUMED_RE = re.compile(r"resumed at epoch (\d+)")


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
