"""``lumbung ledger verify|proof`` and ``lumbung account``: audit the hub's log from outside.

Errors (a bad signature, a root that does not match, a history that does not extend the pinned
one) are ``LumbungError``s, which ``lumbung.cli.main`` prints and turns into exit code 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lumbung.cli import render
from lumbung.cli.jobs import DataDirOption, HubOption
from lumbung.client import Client
from lumbung.client.audit import audit, prove_inclusion
from lumbung.config import ClientConfig, load
from lumbung.ledger.checkpoint import SIG_TYPE_COSIGNATURE_V1
from lumbung.ledger.merkle import leaf_hash
from lumbung.ledger.note import parse_vkey

ledger_app = typer.Typer(help="Audit the hub's public ledger.", no_args_is_help=True)
MICRO_PER_CREDIT = 1_000_000


def _config(hub: str | None, data_dir: Path | None) -> ClientConfig:
    return load(ClientConfig, env=os.environ, overrides={"hub_url": hub, "data_dir": data_dir})


def credits(micro: int) -> str:
    """Micro-credits as exact decimal credits (integer arithmetic: money never goes via float)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_CREDIT)
    return f"{sign}{whole}.{frac:06d}"


WitnessOption = Annotated[
    list[str] | None,
    typer.Option(
        "--witness",
        help="A witness's verifier key (as `lumbung witness` prints it); repeatable.",
        show_default=False,
    ),
]
MinWitnessesOption = Annotated[
    int,
    typer.Option("--min-witnesses", min=0, help="Refuse unless this many witnesses cosigned."),
]


@ledger_app.command("verify")
def verify(
    hub: HubOption = None,
    data_dir: DataDirOption = None,
    witness: WitnessOption = None,
    min_witnesses: MinWitnessesOption = 0,
) -> None:
    """Download the whole log, check every entry, replay balances and match the signed root."""
    config = _config(hub, data_dir)
    witness_keys = dict(parse_vkey(text, SIG_TYPE_COSIGNATURE_V1) for text in witness or [])
    with Client.connect(config.hub_url, config) as client:
        report = audit(client.ledger, config.data_dir.expanduser(), witness_keys, min_witnesses)
    console = render.stdout_console()
    console.print(f"log       {report.origin}")
    console.print(f"entries   {report.size} (every signature and sequence number checked)")
    console.print(f"root      {report.root.hex()} (matches the signed checkpoint)")
    console.print(f"accounts  {report.accounts} replayed, supply {credits(report.supply_micro)}")
    if report.commitments:
        console.print(f"results   {report.commitments} commitments, each signed by its node")
    if report.previous_size is None:
        console.print("pinned    the log's key, on first use")
    else:
        console.print(f"extends   the last verified head of size {report.previous_size}")
    if witness_keys:
        count = f"{len(report.witnesses)} of {len(witness_keys)}"
        console.print(f"witnesses {count} cosigned: {', '.join(report.witnesses) or 'none'}")
    console.print("[bold green]ledger verified[/]")


@ledger_app.command("proof")
def proof(
    index: Annotated[int, typer.Argument(min=0, help="Leaf index in the log.")],
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Fetch and check the inclusion proof of one entry in the latest signed checkpoint."""
    config = _config(hub, data_dir)
    with Client.connect(config.hub_url, config) as client:
        checkpoint, leaf = prove_inclusion(client.ledger, config.data_dir.expanduser(), index)
    console = render.stdout_console()
    console.print(f"leaf      {index}: {leaf.decode('utf-8', 'replace')}")
    console.print(f"hash      {leaf_hash(leaf).hex()}")
    console.print(f"tree      size {checkpoint.size}, root {checkpoint.root.hex()}")
    console.print("[bold green]inclusion proof verified[/]")


def parse_credits(text: str) -> int:
    """Credits as typed ("1.5") to exact micro-credits (1_500_000), never through a float."""
    whole, _, fraction = text.strip().partition(".")
    if not whole.isdigit() and not (whole == "" and fraction.isdigit()):
        raise typer.BadParameter(f"{text!r} is not an amount of credits like 12 or 1.5")
    if fraction and (not fraction.isdigit() or len(fraction) > 6):
        raise typer.BadParameter(f"{text!r}: credits have at most 6 decimal places")
    micro = int(whole or "0") * MICRO_PER_CREDIT + int(fraction.ljust(6, "0") or "0")
    if micro <= 0:
        raise typer.BadParameter("the amount must be above zero")
    return micro


AmountArgument = Annotated[str, typer.Argument(help="Credits, e.g. 10 or 2.5.")]


@ledger_app.command("faucet")
def faucet(hub: HubOption = None, data_dir: DataDirOption = None) -> None:
    """Ask a demo hub's faucet for credits (a real hub has none)."""
    config = _config(hub, data_dir)
    with Client.connect(config.hub_url, config) as client:
        index = client.ledger.faucet()
        state = client.ledger.account(client.actor_id)
    render.stdout_console().print(
        f"minted at entry {index}; balance {credits(state.balance)} credits"
    )


@ledger_app.command("stake")
def stake(amount: AmountArgument, hub: HubOption = None, data_dir: DataDirOption = None) -> None:
    """Lock credits as a provider's stake (run with the node's --data-dir to stake as the node)."""
    _move_stake(amount, hub, data_dir, unstake=False)


@ledger_app.command("unstake")
def unstake(amount: AmountArgument, hub: HubOption = None, data_dir: DataDirOption = None) -> None:
    """Return stake to the balance; refused while the node holds a lease."""
    _move_stake(amount, hub, data_dir, unstake=True)


def _move_stake(amount: str, hub: str | None, data_dir: Path | None, *, unstake: bool) -> None:
    micro = parse_credits(amount)
    config = _config(hub, data_dir)
    with Client.connect(config.hub_url, config) as client:
        move = client.ledger.unstake if unstake else client.ledger.stake
        index = move(micro)
        state = client.ledger.account(client.actor_id)
    render.stdout_console().print(
        f"{'unstaked' if unstake else 'staked'} {credits(micro)} at entry {index}; "
        f"balance {credits(state.balance)}, staked {credits(state.staked)} credits"
    )


def account(
    actor: Annotated[str | None, typer.Argument(help="Actor id; default: your own.")] = None,
    entries: Annotated[
        int, typer.Option("--entries", min=0, max=100, help="How many recent entries to show.")
    ] = 20,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show an actor's balance as the hub's replay of its log has it, with its newest entries."""
    config = _config(hub, data_dir)
    with Client.connect(config.hub_url, config) as client:
        who = actor or client.actor_id
        state = client.ledger.account(who, entries=entries)
    console = render.stdout_console()
    console.print(f"actor     {who}")
    console.print(f"balance   {credits(state.balance)} credits")
    console.print(f"staked    {credits(state.staked)} credits")
    console.print(f"last seq  {state.last_seq}")
    if state.entries:
        console.print(render.account_entries(who, state.entries))
