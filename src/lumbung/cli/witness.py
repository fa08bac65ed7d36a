"""``lumbung witness``: watch a hub's log and cosign checkpoints that extend what it saw before.

A fork or a rollback is printed loudly on stderr and never cosigned; with ``--once`` it is also
exit code 1. Other errors (the hub unreachable, say, or a hub that does not list this witness)
rise to ``lumbung.cli.main`` with ``--once`` and are printed and retried in the loop.
``--print-vkey`` prints the witness's verifier key and exits: what a hub's operator lists with
``lumbung hub serve --witness VKEY`` and an auditor passes to ``ledger verify --witness``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from lumbung.cli import render
from lumbung.cli.jobs import HubOption
from lumbung.client.transport import HubTransport
from lumbung.config import ClientConfig, load
from lumbung.crypto.keys import Identity
from lumbung.errors import LumbungError
from lumbung.ledger.witness_state import Fork, WitnessState
from lumbung.witness import Rollback, Witness, default_name

DEFAULT_DATA_DIR = Path("~/.lumbung/witness")


def witness(
    hub: HubOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The witness's key and per-log state [default ~/.lumbung/witness]."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Key name of the cosignatures [default lumbung.witness/<actor id>]."),
    ] = None,
    interval_s: Annotated[
        float, typer.Option("--interval-s", min=0.1, help="Seconds between rounds.")
    ] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Run one round, then exit.")] = False,
    print_vkey: Annotated[
        bool, typer.Option("--print-vkey", help="Print this witness's verifier key and exit.")
    ] = False,
) -> None:
    """Check that the hub's log never forks, and cosign each new checkpoint."""
    config = load(ClientConfig, env=os.environ, overrides={"hub_url": hub})
    directory = (data_dir or DEFAULT_DATA_DIR).expanduser()
    identity = Identity.load_or_create(directory)
    me = Witness(identity=identity, data_dir=directory, name=name or default_name(identity))
    if print_vkey:
        typer.echo(me.vkey)  # plain, for $(...) in a shell
        return
    render.stdout_console().print(f"witness   {me.vkey}")
    transport = HubTransport(config.hub_url, identity, timeout_s=config.timeout_s)
    if once:
        try:
            report(me.round(transport))
        except (Fork, Rollback) as exc:
            report(exc)
            raise typer.Exit(1) from exc
        return
    try:
        me.watch(transport, interval_s, threading.Event(), report)
    except KeyboardInterrupt:
        return


def report(outcome: WitnessState | LumbungError) -> None:
    """One line per round: what was cosigned, or why not (a fork in capitals, on stderr)."""
    if isinstance(outcome, WitnessState):
        render.stdout_console().print(f"cosigned {outcome.origin} size {outcome.size}")
    elif isinstance(outcome, Fork | Rollback):
        what = "FORK" if isinstance(outcome, Fork) else "ROLLBACK"
        loud = f"{what} DETECTED, NOT COSIGNED: {outcome.message}"
        render.stderr_console().print(Text(loud, style="bold red"))
    else:
        render.print_error(outcome)
