"""The training demo (``lumbung demo``): a character model trained across three nodes with DiLoCo.

The hub and three nodes run as real processes (``lumbung.demo.cluster``). The job trains the
built-in Llama-style character model on Shakespeare: each round every worker takes H AdamW steps
alone on its shard and sends an int8 pseudo-gradient; the hub takes the outer Nesterov step. One
node is killed with ``kill -9`` in the middle of a round: that round closes without it once its
lease expires, and training goes on with the other two. At the end: the loss curve, the bytes
sent against what data parallelism would have sent for the same steps, text the model writes,
the ledger's audit and the settlement. Exit code 0 only if the job succeeded, the kill shrank a
round, and the escrow settled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from lumbung.cli import render
from lumbung.cli.jobs import watch_job
from lumbung.cli.model import fetch_model, models_cache, sample_text
from lumbung.client import Client
from lumbung.demo.cluster import Cluster
from lumbung.demo.run import settlement_report, wait_for_nodes
from lumbung.train.codec import HEADER
from lumbung.wire.api import JobView
from lumbung.wire.spec import validate_spec

# Kill a node once this round is open and has run this long: mid-round, with work to lose.
KILL_IN_ROUND = 3
KILL_AFTER_S = 1.0
SAMPLE_PROMPT = "ROMEO:"
SAMPLE_LENGTH = 300


@dataclass(frozen=True)
class Size:
    """How big a run: the default fits in a few minutes on a laptop, --long learns more."""

    dim: int
    layers: int
    context: int
    inner_steps: int
    rounds: int


QUICK = Size(dim=96, layers=2, context=64, inner_steps=50, rounds=12)
LONG = Size(dim=128, layers=3, context=128, inner_steps=50, rounds=40)


def train_spec(size: Size) -> dict[str, Any]:
    return {
        "name": "shakespeare-diloco",
        "kind": "train",
        "train": {
            "model": {
                "dim": size.dim,
                "layers": size.layers,
                "heads": 4,
                "context": size.context,
                "mlp_hidden": 3 * size.dim,
            },
            "dataset": {"name": "shakespeare", "sharding": "iid"},
            "workers": {"wanted": 3, "minimum": 2},
            "inner_steps": size.inner_steps,
            "inner": {"lr": 3e-3, "warmup_steps": 20, "batch_size": 16},
            "outer": {"lr": 0.7, "momentum": 0.9},
            "rounds": size.rounds,
            "compression": {"codec": "int8"},
            "round_deadline_s": 120,
        },
        "max_price_micro_per_hour": 5_000_000,
        "max_runtime_s": 3600,
    }


class RoundKiller:
    """Kills, once, the node of a worker that is training round ``KILL_IN_ROUND``."""

    def __init__(self, cluster: Cluster, names: dict[str, str], console: Console) -> None:
        self.cluster, self.names, self.console = cluster, names, console
        self.killed: str | None = None
        self._round_seen_at: float | None = None

    def tick(self, job: JobView) -> None:
        if self.killed is not None or len(job.rounds) <= KILL_IN_ROUND:
            return
        if job.rounds[KILL_IN_ROUND].state != "open":
            return
        now = time.monotonic()
        self._round_seen_at = self._round_seen_at or now
        if now - self._round_seen_at < KILL_AFTER_S:
            return
        running = [t for t in job.tasks if t.state == "running" and t.node_id in self.names]
        name = self.names[running[-1].node_id] if running else None  # type: ignore[index]
        if name is None or name not in self.cluster.procs:
            return
        self.console.print(f"[bold red]killing {name} (kill -9) in round {KILL_IN_ROUND}[/]")
        self.cluster.kill(name)
        self.killed = name


def bytes_report(job: JobView, numel: int) -> tuple[int, int]:
    """(bytes DiLoCo sent, bytes data parallelism would have sent for the same inner steps).

    Data parallelism exchanges every gradient at every step: each worker sends its float32
    gradient and receives the average, 2 x 4 x numel bytes per worker per step.
    """
    sent = sum(
        int(r.metrics.get("bytes_up", 0) + r.metrics.get("bytes_down", 0)) for r in job.rounds
    )

    assert job.spec.train is not None
    steps = sum(r.participants for r in job.rounds) * job.spec.train.inner_steps
    return sent, steps * 2 * 4 * numel


def run_training(cluster: Cluster, client: Client, console: Console, size: Size) -> int:
    names = wait_for_nodes(client, cluster, console)
    spec = validate_spec(train_spec(size))
    console.print(render.plan_view(client.plan(spec)))
    client.ledger.faucet()
    submitted = client.submit(spec).job
    console.print(f"submitted [bold]{submitted.id}[/]: {size.rounds} rounds of {size.inner_steps} "
                  "inner steps on 3 workers")  # fmt: skip
    if submitted.escrow is not None:
        console.print(f"{render.escrow_line(submitted.escrow)}\n")
    killer = RoundKiller(cluster, names, console)
    job = watch_job(client, submitted.id, console, on_tick=killer.tick)
    console.print(render.rounds_table(job.rounds))
    console.print(render.loss_curve(job.rounds))
    shrunk = next((r for r in job.rounds if r.participants < 3), None)
    if killer.killed is not None and shrunk is not None:
        console.print(
            f"{killer.killed} was killed in round {KILL_IN_ROUND}; round {shrunk.index} closed "
            f"with {shrunk.participants} workers once its lease expired, and training went on."
        )
    sampled = ""
    if job.model_sha256 is not None:
        cache = models_cache()
        weights = fetch_model(client, job, cache)
        numel = (weights.stat().st_size - HEADER.size) // 4  # the header, then float32 values
        sent, data_parallel = bytes_report(job, numel)
        console.print(
            f"[bold]Communication:[/] {sent / 1e6:.2f} MB sent in all; data parallelism would "
            f"have sent {data_parallel / 1e6:.1f} MB for the same steps "
            f"({data_parallel / max(sent, 1):.0f}x more)."
        )
        sampled = sample_text(job, weights, cache, SAMPLE_PROMPT, SAMPLE_LENGTH, 0.8, 0)
        console.print("[bold]The model writes:[/]")
        console.print(sampled, markup=False, highlight=False)
    names.update({n.id: n.name for n in client.nodes()})
    settled = settlement_report(client, job.id, names, cluster.root / "auditor", console)
    console.print(Text(f"job {job.id}: ").append_text(render.state_text(job.state)))
    ok = job.state == "succeeded" and killer.killed is not None and shrunk is not None and settled
    return 0 if ok and sampled else 1
