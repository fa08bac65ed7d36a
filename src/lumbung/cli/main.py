"""The ``lumbung`` command: ``hub serve``, ``node start``, ``job ...``, ``nodes``, ``demo``.

Every ``LumbungError`` raised below is translated here, in one place (``_ErrorHandlingGroup``):
"error: <message>" (and "field: <field>") in red on stderr, exit code 1. Bad usage exits 2, as
Click decides. The hub and node modules are imported only by the commands that start them, so the
client commands start quickly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from lumbung.cli import jobs, ledger, model, render, witness
from lumbung.config import HubConfig, NodeConfig, load
from lumbung.errors import LumbungError


class _ErrorHandlingGroup(TyperGroup):
    """The top-level group: every subcommand runs inside its ``invoke``, so this is the one edge."""

    # ``Any``: the context class lives in Typer's private vendored copy of Click.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LumbungError as exc:
            render.print_error(exc)
            raise typer.Exit(1) from exc


app = typer.Typer(
    cls=_ErrorHandlingGroup,
    help="Lumbung: an open network for pooled AI compute.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
hub_app = typer.Typer(help="Run the hub: the market and control plane.", no_args_is_help=True)
node_app = typer.Typer(help="Run a provider node that lends this machine.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(node_app, name="node")
app.add_typer(jobs.job_app, name="job")
app.command("nodes")(jobs.nodes)
app.add_typer(ledger.ledger_app, name="ledger")
app.add_typer(model.model_app, name="model")
app.command("account")(ledger.account)
app.command("witness")(witness.witness)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML file of settings (flags and environment win over it)."),
]


def _version(value: bool) -> None:
    if value:
        from lumbung import __version__

        typer.echo(f"lumbung {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Lumbung: an open network for pooled AI compute."""


def _log_to_stderr() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One INFO line per HTTP request would bury what the process itself has to say.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@hub_app.command("serve")
def hub_serve(
    data_dir: Annotated[Path | None, typer.Option(help="Key, SQLite database and blobs.")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; 0 picks a free one.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL; default SQLite.")] = None,
    lease_timeout_s: Annotated[
        float | None, typer.Option(help="Seconds before an unrenewed lease expires.")
    ] = None,
    fee_bps: Annotated[
        int | None, typer.Option(help="Hub fee on providers' earnings, basis points.")
    ] = None,
    runtime_grace_s: Annotated[
        float | None, typer.Option(help="Seconds past max_runtime_s before a lease times out.")
    ] = None,
    faucet_micro: Annotated[
        int | None, typer.Option(help="Faucet mint per request (demos only); 0 = off.")
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness",
            metavar="VKEY",
            help="A witness verifier key to take cosignatures from (repeatable).",
        ),
    ] = None,
    write_rate_per_s: Annotated[
        float | None, typer.Option(help="Signed writes per actor per second; 0 = no limit.")
    ] = None,
    write_burst: Annotated[
        int | None, typer.Option(help="Writes an actor may make at once above that rate.")
    ] = None,
    entry_rate_per_s: Annotated[
        float | None, typer.Option(help="Ledger entries per author per second; 0 = no limit.")
    ] = None,
    entry_burst: Annotated[
        int | None, typer.Option(help="Ledger entries an author may append at once.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the hub's API until interrupted (flags > LUMBUNG_HUB_* > --config)."""
    overrides = {
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "db_url": db,
        "lease_timeout_s": lease_timeout_s,
        "fee_bps": fee_bps,
        "runtime_grace_s": runtime_grace_s,
        "faucet_micro": faucet_micro,
        "witnesses": ",".join(witness) if witness else None,
        "write_rate_per_s": write_rate_per_s,
        "write_burst": write_burst,
        "entry_rate_per_s": entry_rate_per_s,
        "entry_burst": entry_burst,
    }
    hub_config = load(HubConfig, env=os.environ, file=config, overrides=overrides)
    from lumbung.hub.server import serve

    _log_to_stderr()
    serve(hub_config)


@node_app.command("start")
def node_start(
    hub: Annotated[str | None, typer.Option("--hub", help="Hub URL to dial.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Key and task directories.")] = None,
    name: Annotated[str | None, typer.Option(help="Name shown in plans and results.")] = None,
    price_gpu_hour: Annotated[
        int | None, typer.Option(help="Asking price per GPU-hour, micro-credits.")
    ] = None,
    price_cpu_hour: Annotated[
        int | None, typer.Option(help="Asking price per CPU-core-hour, micro-credits.")
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="CPU cores offered; 0 = all.")] = None,
    slots: Annotated[int | None, typer.Option(help="Tasks run at the same time.")] = None,
    heartbeat_s: Annotated[float | None, typer.Option(help="Seconds between heartbeats.")] = None,
    grace_s: Annotated[
        float | None, typer.Option(help="On SIGTERM, seconds tasks get to checkpoint and stop.")
    ] = None,
    runner: Annotated[str | None, typer.Option(help="'process' or 'container'.")] = None,
    allow_unsandboxed: Annotated[
        bool,
        typer.Option(
            "--allow-unsandboxed",
            help="Where bubblewrap cannot run, run tasks as plain processes (they can read "
            "what this user can) instead of refusing to start.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Lend this machine to a hub until interrupted (flags > LUMBUNG_NODE_* > --config)."""
    overrides = {
        "hub_url": hub,
        "data_dir": data_dir,
        "name": name,
        "price_micro_per_gpu_hour": price_gpu_hour,
        "price_micro_per_cpu_hour": price_cpu_hour,
        "cpus": cpus,
        "slots": slots,
        "heartbeat_s": heartbeat_s,
        "grace_s": grace_s,
        "runner": runner,
        "allow_unsandboxed": allow_unsandboxed or None,  # unset: the environment decides
    }
    node_config = load(NodeConfig, env=os.environ, file=config, overrides=overrides)
    from lumbung.node.agent import run_node

    _log_to_stderr()
    raise typer.Exit(run_node(node_config))


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo's directory.")] = False,
    long: Annotated[
        bool, typer.Option("--long", help="Train a bigger model for 40 rounds (some minutes).")
    ] = False,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Instead: a hyper-parameter sweep of run tasks.")
    ] = False,
    tasks: Annotated[
        int, typer.Option("--tasks", min=1, max=6, help="Run at most this many sweep tasks.")
    ] = 6,
) -> None:
    """A hub and three nodes on this machine train a model together, one node killed mid-round;
    then the loss curve, the bytes saved, text the model writes, and the bill."""
    from lumbung.demo.run import run_demo

    raise typer.Exit(run_demo(keep=keep, max_tasks=tasks, sweep=sweep, long=long))
