"""How the command line draws things: Rich tables for plans, jobs, nodes and results.

Everything here turns wire models (``lumbung.wire.api``) into renderables and does no I/O of its
own, so the same tables serve ``lumbung job ...``, the live watch view and ``lumbung demo``. Money
is formatted from integer micro-credits, exactly, by ``format_credits``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from lumbung.errors import LumbungError
from lumbung.ledger.balances import balance_change
from lumbung.ledger.entries import Entry, SignedEntry
from lumbung.market.plan import format_credits
from lumbung.wire.api import (
    EscrowView,
    JobSummary,
    JobView,
    LogLine,
    NodeView,
    Plan,
    Results,
    RoundView,
    TaskView,
    WorkView,
)

__all__ = ["format_credits"]

TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
_STATE_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def stdout_console() -> Console:
    # Built per command, not at import, so a test runner's replaced sys.stdout is the one used.
    return Console(file=sys.stdout, highlight=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def print_error(error: LumbungError) -> None:
    console = stderr_console()
    console.print(Text(f"error: {error.message}", style="bold red"))
    if error.field is not None:
        console.print(Text(f"field: {error.field}", style="red"))


def print_json(value: BaseModel | Sequence[BaseModel]) -> None:
    """A model (or a list of models) as JSON on stdout, and nothing else, for scripts."""
    if isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        text = "[" + ",".join(item.model_dump_json() for item in value) + "]"
    sys.stdout.write(text + "\n")


def per_hour(micro_per_hour: int) -> str:
    return f"{format_credits(micro_per_hour)}/h"


def percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def state_text(state: str) -> Text:
    return Text(state, style=_STATE_STYLES.get(state, ""))


def format_params(params: Mapping[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def format_time(unix_s: float | None) -> str:
    if unix_s is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s))


def plan_view(plan: Plan) -> RenderableType:
    """The nodes that fit, the excluded counts per constraint, and the plan's own sentences."""
    table = Table(title=f"Plan: {plan.task_count} task(s), {plan.nodes_considered} node(s) seen")
    table.add_column("node")
    table.add_column("online")
    table.add_column("price/hour", justify="right")
    table.add_column("reliability", justify="right")
    table.add_column("max cost", justify="right")
    for node in plan.fits:
        table.add_row(
            node.name,
            "yes" if node.online else Text("no", style="yellow"),
            per_hour(node.price_micro_per_hour),
            percent(node.reliability),
            format_credits(node.max_cost_micro),
        )
    parts: list[RenderableType] = [table]
    if plan.excluded:
        excluded = Table(title="Excluded nodes by constraint")
        excluded.add_column("constraint")
        excluded.add_column("nodes", justify="right")
        for constraint, count in sorted(plan.excluded.items(), key=lambda kv: -kv[1]):
            excluded.add_row(constraint.replace("_", " "), str(count))
        parts.append(excluded)
    parts.append(Text(f"Escrow at the job's price limit: {format_credits(plan.max_cost_micro)}"))
    parts.extend(Text(sentence) for sentence in plan.explanation)
    return Group(*parts)


def task_counts(tasks: Iterable[TaskView]) -> dict[str, int]:
    counts = dict.fromkeys(TASK_STATES, 0)
    for task in tasks:
        counts[task.state] = counts.get(task.state, 0) + 1
    return counts


def counts_line(job: JobView) -> Text:
    line = Text()
    line.append(f"{job.name} ({job.id}) ", style="bold")
    line.append_text(state_text(job.state))
    line.append("\ntasks:")
    counts = task_counts(job.tasks)
    for state in ("queued", "running", "succeeded", "failed"):
        line.append("  ")
        line.append(f"{state} {counts[state]}", style=_STATE_STYLES[state])
    if counts.get("cancelled"):
        line.append(f"  cancelled {counts['cancelled']}", style=_STATE_STYLES["cancelled"])
    if job.waiting_reason:
        line.append(f"\nwaiting: {job.waiting_reason}", style="yellow")
    if job.error:
        line.append(f"\nerror: {job.error}", style="red")
    return line


def progress_cell(fraction: float) -> Table:
    """A bar and its percentage on one line."""
    cell = Table.grid(padding=(0, 1))
    cell.add_row(ProgressBar(total=1.0, completed=fraction, width=10), percent(fraction))
    return cell


def tasks_table(job: JobView, node_names: Mapping[str, str]) -> Table:
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("params")
    table.add_column("node")
    table.add_column("try", justify="right")
    table.add_column("state")
    table.add_column("progress")
    table.add_column("ckpts", justify="right")
    replicated = job.spec.verify.replicated
    if replicated:
        table.add_column("verdict")
    for task in sorted(job.tasks, key=lambda t: (t.index, t.replica)):
        node = node_names.get(task.node_id, task.node_id) if task.node_id else "-"
        verdict = [verdict_text(task.verdict)] if replicated else []
        table.add_row(
            f"{task.index}.{task.replica}" if replicated else str(task.index),
            format_params(task.params),
            node,
            str(task.attempt),
            state_text(task.state),
            progress_cell(task.progress),
            str(len(task.checkpoints)),
            *verdict,
        )
    return table


_VERDICT_STYLES = {
    "pending": "dim",
    "agreed": "green",
    "trusted": "cyan",
    "wrong": "bold red",
    "unverified": "yellow",
}


def verdict_text(verdict: str | None) -> Text:
    """A replica's verdict: what the quorum found, or that it is still open."""
    if verdict is None:
        return Text("-", style="dim")
    return Text(verdict, style=_VERDICT_STYLES.get(verdict, ""))


def work_table(work: Sequence[WorkView]) -> Table:
    """Who ran what, at what price: kept work (checkpointed or finished) and lost work."""
    table = Table(title="Work by node")
    table.add_column("node")
    table.add_column("price/hour", justify="right")
    table.add_column("kept s", justify="right")
    table.add_column("lost s", justify="right")
    table.add_column("kept cost", justify="right")
    table.add_column("lost cost", justify="right")
    for w in work:
        table.add_row(
            w.node_name,
            per_hour(w.price_micro_per_hour),
            f"{w.kept_s:.1f}",
            f"{w.lost_s:.1f}",
            format_credits(w.kept_cost_micro),
            format_credits(w.lost_cost_micro),
        )
    return table


def job_view(job: JobView, node_names: Mapping[str, str]) -> RenderableType:
    parts: list[RenderableType] = [
        counts_line(job),
        Text(f"created {format_time(job.created_at)}, updated {format_time(job.updated_at)}"),
        tasks_table(job, node_names),
    ]
    errors = [t for t in job.tasks if t.error]
    for task in errors:
        parts.append(Text(f"task {task.index}: {task.error}", style="red"))
    if job.work:
        parts.append(work_table(job.work))
    if job.rounds:
        parts.append(rounds_table(job.rounds))
        for r in job.rounds:
            for left in r.screened_out:
                name = node_names.get(left.node_id, left.node_id)
                parts.append(
                    Text(f"round {r.index} left out {name}'s update: {left.reason}", style="red")
                )
    if job.model_sha256 is not None:
        parts.append(Text(f"trained model: {job.model_sha256}"))
    if job.escrow is not None:
        parts.append(escrow_line(job.escrow))
    return Group(*parts)


# Rounds shown live under a train job; the whole table is in `job status`.
WATCH_ROUNDS = 12
_SPARKS = "▁▂▃▄▅▆▇█"


def rounds_table(rounds: Sequence[RoundView]) -> Table:
    """A train job's rounds: who took part, the losses, the bytes each way, how long it took.

    "start val loss" scores the weights a round started from on held-out plays."""
    table = Table(title="Rounds")
    for column in ("round", "workers", "train loss", "start val loss", "up", "down", "time"):
        table.add_column(column, justify="right")
    for r in rounds:
        m = r.metrics
        table.add_row(
            str(r.index),
            str(r.participants) if r.state == "closed" else "...",
            f"{m['train_loss']:.3f}" if "train_loss" in m else "-",
            f"{m['base_val_loss']:.3f}" if "base_val_loss" in m else "-",
            _bytes(m.get("bytes_up")),
            _bytes(m.get("bytes_down")),
            f"{m['duration_s']:.1f} s" if "duration_s" in m else r.state,
        )
    return table


def _bytes(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def escrow_line(escrow: EscrowView) -> Text:
    """Where the job's escrow went: paid for kept work, the hub's fee, refunded, still held."""
    return Text(
        f"escrow: {format_credits(escrow.locked_micro)} locked, "
        f"{format_credits(escrow.released_micro)} paid to providers, "
        f"{format_credits(escrow.fees_micro)} hub fee, "
        f"{format_credits(escrow.refunded_micro)} refunded, "
        f"{format_credits(escrow.remaining_micro)} held"
    )


def account_entries(actor: str, entries: Sequence[tuple[int, SignedEntry]]) -> Table:
    """An account's newest entries, with what each did to the actor's money (+ in, - out)."""
    table = Table(title="Newest entries")
    table.add_column("index", justify="right")
    table.add_column("kind")
    table.add_column("amount", justify="right")
    table.add_column("what")
    for index, signed in entries:
        entry = signed.entry
        table.add_row(
            str(index), entry.kind.value, _signed_amount(actor, entry), _entry_detail(entry)
        )
    return table


def _signed_amount(actor: str, entry: Entry) -> str:
    change = balance_change(entry, actor)
    if change is None:
        return ""
    if change > 0:
        return "+" + format_credits(change)
    if change < 0:
        return "-" + format_credits(-change)
    return format_credits(getattr(entry, "amount", 0))  # none of the actor's spendable credits


def _entry_detail(entry: Entry) -> str:
    names = ("job_id", "to", "node", "task_id")
    parts = [f"{name} {getattr(entry, name)}" for name in names if hasattr(entry, name)]
    reason = getattr(entry, "reason", None)
    if reason:
        parts.append(str(reason))
    return ", ".join(parts)


def watch_view(
    job: JobView, node_names: Mapping[str, str], recent_logs: Sequence[LogLine]
) -> RenderableType:
    """The live view of a running job: counts, tasks with progress bars, the last log lines."""
    index_of = {t.id: t.index for t in job.tasks}
    logs = Text()
    for line in recent_logs:
        style = "red" if line.stream == "stderr" else "dim"
        logs.append(f"[task {index_of.get(line.task_id, '?')}] ", style="bold")
        logs.append(line.text.rstrip("\n") + "\n", style=style)
    if job.rounds:
        recent = job.rounds[-WATCH_ROUNDS:]
        return Group(counts_line(job), rounds_table(recent), loss_curve(job.rounds), logs)
    return Group(counts_line(job), tasks_table(job, node_names), logs)


def loss_curve(rounds: Sequence[RoundView]) -> Text:
    """The training loss by round as a one-line sparkline, first and last value beside it."""
    losses = [r.metrics["train_loss"] for r in rounds if "train_loss" in r.metrics]
    if not losses:
        return Text("loss curve: no round closed yet", style="dim")
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    marks = "".join(_SPARKS[round((v - low) / span * (len(_SPARKS) - 1))] for v in losses)
    return Text(f"train loss {losses[0]:.3f} {marks} {losses[-1]:.3f}")


def jobs_table(jobs: Sequence[JobSummary]) -> Table:
    table = Table(title="Jobs")
    table.add_column("id")
    table.add_column("name")
    table.add_column("state")
    table.add_column("tasks")
    table.add_column("created")
    for job in jobs:
        tasks = ", ".join(f"{state} {n}" for state, n in sorted(job.task_states.items()) if n)
        table.add_row(job.id, job.name, state_text(job.state), tasks, format_time(job.created_at))
    return table


def nodes_table(nodes: Sequence[NodeView], now_s: float | None = None) -> Table:
    """One row per node; ids are left to ``--json``, where scripts want them whole."""
    now_s = time.time() if now_s is None else now_s
    table = Table(title="Nodes")
    table.add_column("name")
    table.add_column("online")
    table.add_column("hardware")
    table.add_column("isolation")
    table.add_column("CPU/h", justify="right")
    table.add_column("GPU/h", justify="right")
    table.add_column("slots", justify="right")
    table.add_column("reliable", justify="right")
    table.add_column("checked ok", justify="right")
    table.add_column("heartbeat", justify="right")
    for node in nodes:
        inv = node.inventory
        gpus = ", ".join(g.model for g in inv.gpus) or "no GPU"
        online = "draining" if node.draining else ("yes" if node.online else "no")
        seen = node.last_heartbeat_at
        table.add_row(
            node.name,
            Text(online, style="green" if node.online else "yellow"),
            f"{inv.cpus} CPU, {inv.memory_mib // 1024} GiB, {gpus}",
            Text(inv.isolation.level, style="green" if inv.isolation.level == "sandbox" else "red"),
            format_credits(node.price_micro_per_cpu_hour),
            format_credits(node.price_micro_per_gpu_hour),
            str(node.slots),
            percent(node.reliability),
            _streaks(node.valid_streaks),
            "never" if seen is None else f"{max(0.0, now_s - seen):.0f}s ago",
        )
    return table


def _streaks(streaks: Mapping[str, int]) -> str:
    """Valid results in a row per kind of work: "run:cpu 12"; "-" for a node never checked."""
    return ", ".join(f"{kind} {count}" for kind, count in sorted(streaks.items())) or "-"


def results_table(results: Results, node_names: Mapping[str, str]) -> Table:
    table = Table(title=f"Results of {results.job_id} ({results.state})")
    table.add_column("#", justify="right")
    table.add_column("params")
    table.add_column("state")
    table.add_column("node")
    table.add_column("exit", justify="right")
    table.add_column("outputs")
    replicated = any(t.replica or t.verdict for t in results.tasks)
    if replicated:
        table.add_column("verdict")
    for task in sorted(results.tasks, key=lambda t: (t.index, t.replica)):
        node = node_names.get(task.node_id, task.node_id) if task.node_id else "-"
        outputs = ", ".join(f"{name} {sha[:12]}" for name, sha in sorted(task.outputs.items()))
        table.add_row(
            f"{task.index}.{task.replica}" if replicated else str(task.index),
            format_params(task.params),
            state_text(task.state),
            node,
            "-" if task.exit_code is None else str(task.exit_code),
            outputs or "-",
            *([verdict_text(task.verdict)] if replicated else []),
        )
    return table
