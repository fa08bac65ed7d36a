"""``lumbung job ...`` and ``lumbung nodes``: the consumer's commands, all through ``Client``.

Errors are not handled here: they rise to the one handler in ``lumbung.cli.main``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from lumbung.cli import render
from lumbung.client import Client
from lumbung.client.consumer import TERMINAL_STATES
from lumbung.config import ClientConfig, load
from lumbung.errors import Rejected
from lumbung.wire.api import JobView, LogLine, Results, TaskResult
from lumbung.wire.spec import JobSpec, parse_spec

job_app = typer.Typer(help="Submit, plan, watch and collect jobs.", no_args_is_help=True)

HubOption = Annotated[
    str | None,
    typer.Option(
        "--hub",
        help="Hub URL [env LUMBUNG_CLIENT_HUB_URL; default http://127.0.0.1:8600].",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the client key lives [env LUMBUNG_CLIENT_DATA_DIR; default ~/.lumbung/client].",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts, nothing else.")]
SpecArgument = Annotated[Path, typer.Argument(help="Job spec file (YAML or JSON).")]
JobIdArgument = Annotated[str, typer.Argument(help="Job id (job_...).")]

# How often the watch view and `logs --follow` ask the hub for news.
WATCH_REFRESH_S = 0.5
# Log lines kept under the watch view's task table.
WATCH_LOG_LINES = 8


def connect(hub: str | None, data_dir: Path | None) -> Client:
    """A client from defaults < LUMBUNG_CLIENT_* < the flags given."""
    config = load(ClientConfig, env=os.environ, overrides={"hub_url": hub, "data_dir": data_dir})
    return Client.connect(config.hub_url, config)


def read_spec(path: Path) -> JobSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise Rejected(f"cannot read spec file {path}: {exc.strerror}", field="spec") from exc
    return parse_spec(text)


def node_names(client: Client) -> dict[str, str]:
    return {node.id: node.name for node in client.nodes()}


class LogTail:
    """Polls a job's logs from where it left off and keeps the last few lines for display."""

    def __init__(self, keep_lines: int) -> None:
        self.after_seq = 0
        self.lines: deque[LogLine] = deque(maxlen=keep_lines)

    def poll(self, client: Client, job_id: str) -> list[LogLine]:
        new = client.logs(job_id, self.after_seq)
        if new:
            self.after_seq = max(line.seq for line in new)
        for chunk in new:
            # A chunk may hold several lines (or half of one); the view shows whole lines.
            for text in chunk.text.splitlines():
                self.lines.append(chunk.model_copy(update={"text": text}))
        return new


def all_logs(client: Client, job_id: str) -> list[LogLine]:
    """Every log chunk of a job so far, following ``after_seq`` until the hub has no more."""
    lines: list[LogLine] = []
    after_seq = 0
    while batch := client.logs(job_id, after_seq):
        lines.extend(batch)
        after_seq = max(line.seq for line in batch)
    return lines


def watch_job(
    client: Client,
    job_id: str,
    console: Console,
    on_tick: Callable[[JobView], None] | None = None,
) -> JobView:
    """Draw the job live until it ends; ``on_tick`` sees every fresh view (the demo uses it)."""
    tail = LogTail(WATCH_LOG_LINES)
    names = node_names(client)
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            job = client.get(job_id)
            if any(t.node_id and t.node_id not in names for t in job.tasks):
                names = node_names(client)
            tail.poll(client, job_id)
            live.update(render.watch_view(job, names, list(tail.lines)), refresh=True)
            if on_tick is not None:
                on_tick(job)
            if job.state in TERMINAL_STATES:
                return job
            time.sleep(WATCH_REFRESH_S)


@job_app.command()
def plan(
    spec: SpecArgument,
    json: JsonOption = False,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Dry run: which nodes fit the spec, what excluded the rest, what it may cost."""
    job_spec = read_spec(spec)
    with connect(hub, data_dir) as client:
        result = client.plan(job_spec, base_dir=spec.parent)
    if json:
        render.print_json(result)
        return
    render.stdout_console().print(render.plan_view(result))


@job_app.command()
def submit(
    spec: SpecArgument,
    watch: Annotated[bool, typer.Option("--watch", help="Watch it live until it ends.")] = False,
    json: JsonOption = False,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Upload the spec's inputs and submit it. With --watch, exit 0 only if the job succeeds."""
    if watch and json:
        raise typer.BadParameter("--watch draws a live view; it cannot be combined with --json")
    job_spec = read_spec(spec)
    with connect(hub, data_dir) as client:
        response = client.submit(job_spec, base_dir=spec.parent)
        if json:
            render.print_json(response)
            return
        console = render.stdout_console()
        console.print(render.plan_view(response.plan))
        console.print(f"submitted [bold]{response.job.id}[/] ({len(response.job.tasks)} tasks)")
        if response.job.escrow is not None:
            console.print(render.escrow_line(response.job.escrow))
        if not watch:
            return
        job = watch_job(client, response.job.id, console)
    if job.work:
        console.print(render.work_table(job.work))
    if job.escrow is not None:
        console.print(render.escrow_line(job.escrow))
    if job.state != "succeeded":
        raise typer.Exit(1)


@job_app.command()
def status(
    job_id: JobIdArgument,
    json: JsonOption = False,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """A job's state, its tasks and who did what work."""
    with connect(hub, data_dir) as client:
        job = client.get(job_id)
        if json:
            render.print_json(job)
            return
        names = node_names(client)
    render.stdout_console().print(render.job_view(job, names))


@job_app.command()
def watch(job_id: JobIdArgument, hub: HubOption = None, data_dir: DataDirOption = None) -> None:
    """Watch a job live until it ends (a train job: its rounds and loss curve); exit 0 only if it
    succeeds."""
    console = render.stdout_console()
    with connect(hub, data_dir) as client:
        job = watch_job(client, job_id, console)
    if job.work:
        console.print(render.work_table(job.work))
    if job.model_sha256 is not None:
        console.print(f"trained model: {job.model_sha256}")
    if job.escrow is not None:
        console.print(render.escrow_line(job.escrow))
    if job.state != "succeeded":
        raise typer.Exit(1)


@job_app.command("list")
def list_jobs(
    json: JsonOption = False, hub: HubOption = None, data_dir: DataDirOption = None
) -> None:
    """Your jobs."""
    with connect(hub, data_dir) as client:
        jobs = client.list()
    if json:
        render.print_json(jobs)
        return
    render.stdout_console().print(render.jobs_table(jobs))


@job_app.command()
def logs(
    job_id: JobIdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """A job's task output, oldest first."""
    console = render.stdout_console()
    with connect(hub, data_dir) as client:
        index_of = {t.id: t.index for t in client.get(job_id).tasks}
        after_seq = 0
        while True:
            # Read the state before the logs, so no line written before the end is missed.
            done = not follow or client.get(job_id).state in TERMINAL_STATES
            while batch := client.logs(job_id, after_seq):
                after_seq = max(line.seq for line in batch)
                for line in batch:
                    _print_log_line(console, line, index_of.get(line.task_id, -1))
            if done:
                return
            time.sleep(WATCH_REFRESH_S)


def _print_log_line(console: Console, line: LogLine, index: int) -> None:
    prefix = f"[task {index} #{line.attempt}]"
    style = "red" if line.stream == "stderr" else None
    for text in line.text.splitlines():
        console.print(f"{prefix} {text}", style=style, markup=False)


@job_app.command()
def results(
    job_id: JobIdArgument,
    download: Annotated[
        Path | None, typer.Option("--download", help="Fetch outputs into DIR/task-<index>/.")
    ] = None,
    json: JsonOption = False,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Each task's outcome and outputs; optionally download the outputs (and for a train job
    its model, metrics.csv and loss.png)."""
    with connect(hub, data_dir) as client:
        outcome = client.results(job_id)
        if download is not None:
            for task in _kept_results(outcome):
                for name, sha256 in task.outputs.items():
                    dest = download / f"task-{task.index}" / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    client.download(sha256, dest)
            job = client.get(job_id)
            if job.spec.train is not None:
                from lumbung.cli.model import write_training_results

                write_training_results(client, job, download)
        if json:
            render.print_json(outcome)
            return
        names = node_names(client)
    console = render.stdout_console()
    console.print(render.results_table(outcome, names))
    if download is not None:
        console.print(f"outputs downloaded into {download}")


def _kept_results(outcome: Results) -> list[TaskResult]:
    """The result of each task to download: of a replicated task, the first replica the quorum
    agreed on, or an adaptive result trusted unchecked (a wrong or unverified one never)."""
    if not any(t.replica or t.verdict for t in outcome.tasks):
        return outcome.tasks
    kept: dict[int, TaskResult] = {}
    for task in sorted(outcome.tasks, key=lambda t: (t.index, t.replica)):
        if task.verdict in ("agreed", "trusted"):
            kept.setdefault(task.index, task)
    return [kept[index] for index in sorted(kept)]


@job_app.command()
def cancel(job_id: JobIdArgument, hub: HubOption = None, data_dir: DataDirOption = None) -> None:
    """Cancel a job: queued tasks never start, running ones are stopped."""
    with connect(hub, data_dir) as client:
        job = client.cancel(job_id)
    render.stdout_console().print(Text(f"{job.id}: ").append_text(render.state_text(job.state)))


def nodes(json: JsonOption = False, hub: HubOption = None, data_dir: DataDirOption = None) -> None:
    """The nodes the hub knows, their hardware, prices and reliability."""
    with connect(hub, data_dir) as client:
        found = client.nodes()
    if json:
        render.print_json(found)
        return
    render.stdout_console().print(render.nodes_table(found))
