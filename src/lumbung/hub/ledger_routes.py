"""The transparency log's HTTP API under /v1/ledger.

Reads are public and unsigned: anyone may audit the log. Writes are signed requests, but the
request's signer need not be an entry's author: each entry carries its author's own signature.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from lumbung.errors import Conflict, Forbidden, LumbungError, NotFound, Rejected, Unavailable
from lumbung.hub.auth import context, signed_actor
from lumbung.hub.context import HubContext
from lumbung.hub.cosign import add_cosignature
from lumbung.hub.ledger import LogService
from lumbung.ledger.entries import EscrowLock, SignedEntry, Unstake, decode_leaf
from lumbung.ledger.merkle import HASH_SIZE_BYTES

router = APIRouter(prefix="/v1/ledger")
Actor = Annotated[str, Depends(signed_actor)]
Ctx = Annotated[HubContext, Depends(context)]

MAX_APPEND_ENTRIES = 1000
MAX_READ_ENTRIES = 10_000
MAX_ACCOUNT_ENTRIES = 100


def _log(request: Request) -> LogService:
    log = context(request).log
    if log is None:
        raise Unavailable("this hub keeps no ledger")
    return log


Log = Annotated[LogService, Depends(_log)]


class AppendRequest(BaseModel):
    entries: list[str]  # standard base64 of each leaf (lumbung.ledger.entries.leaf_bytes)


def decode_entries(encoded: list[str]) -> list[SignedEntry]:
    """Parse hostile base64 leaves; an error names the entry and field (``entries.2.entry.at``)."""
    if not encoded:
        raise Rejected("no entries to append", field="entries")
    if len(encoded) > MAX_APPEND_ENTRIES:
        raise Rejected(f"at most {MAX_APPEND_ENTRIES} entries per request", field="entries")
    parsed: list[SignedEntry] = []
    for position, text in enumerate(encoded):
        try:
            leaf = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Rejected(f"entry {position} is not base64", field=f"entries.{position}") from exc
        try:
            parsed.append(decode_leaf(leaf))
        except LumbungError as exc:
            where = f"entries.{position}" + (f".{exc.field}" if exc.field else "")
            raise type(exc)(f"entry {position}: {exc.message}", field=where) from exc
    return parsed


def check_market_rules(ctx: HubContext, entries: list[SignedEntry]) -> None:
    """Rules of the market on top of the ledger's own: escrow is locked only by submitting a job
    (so no lock exists without its job), and stake stays while its provider holds a lease (it is
    what a cheat caught during that work would lose)."""
    for position, signed in enumerate(entries):
        entry = signed.entry
        if isinstance(entry, EscrowLock):
            raise Rejected(
                "escrow is locked by submitting the job (POST /v1/jobs), not appended alone",
                field=f"entries.{position}.entry.kind",
            )
        if isinstance(entry, Unstake):
            held = len(ctx.store.running_tasks(node_id=entry.author))
            if held:
                raise Conflict(
                    f"{entry.author} holds {held} lease(s); unstake once they end",
                    field=f"entries.{position}.entry.kind",
                )


@router.post("/entries")
async def append_entries(body: AppendRequest, _: Actor, ctx: Ctx, log: Log) -> dict[str, list[int]]:
    entries = decode_entries(body.entries)
    check_market_rules(ctx, entries)
    return {"indexes": log.append(entries)}


@router.post("/faucet")
async def faucet(actor: Actor, ctx: Ctx, log: Log) -> dict[str, int]:
    amount = ctx.config.faucet_micro
    if amount <= 0:
        raise Forbidden("this hub has no faucet (faucet_micro is 0)")
    return {"index": log.mint(actor, amount), "amount": amount}


@router.get("/key")
async def key(log: Log) -> dict[str, str]:
    return {"origin": log.origin, "vkey": log.vkey}


@router.get("/checkpoint", response_class=PlainTextResponse)
async def checkpoint(log: Log) -> PlainTextResponse:
    _, note = log.store.latest_checkpoint()
    return PlainTextResponse(note)


class CosignRequest(BaseModel):
    note: str  # the latest checkpoint note with the witness's cosignature/v1 line added
    vkey: str  # the witness's verifier key (type 0x04); must be the request signer's key


@router.post("/cosignatures")
async def cosignatures(body: CosignRequest, actor: Actor, log: Log) -> dict[str, str]:
    return {"note": add_cosignature(log, body.note, body.vkey, actor)}


@router.get("/entries")
async def entries(
    log: Log, start: Annotated[int, Query(ge=0)], end: Annotated[int, Query(ge=0)]
) -> dict[str, object]:
    if end < start:
        raise Rejected("end must not be below start", field="end")
    if end - start > MAX_READ_ENTRIES:
        raise Rejected(f"at most {MAX_READ_ENTRIES} entries per request", field="end")
    leaves = log.store.leaves(start, end)
    return {"start": start, "entries": [base64.b64encode(leaf).decode() for leaf in leaves]}


@router.get("/proof/inclusion")
async def inclusion(
    log: Log,
    size: Annotated[int, Query(ge=1)],
    index: Annotated[int | None, Query(ge=0)] = None,
    leaf_hash: str | None = None,
) -> dict[str, object]:
    if leaf_hash is not None and index is None:
        index = log.store.index_of(_hash_from_hex(leaf_hash))
    elif index is None or leaf_hash is not None:
        raise Rejected("give exactly one of index and leaf_hash", field="index")
    if index >= size:
        raise NotFound(f"leaf {index} is not in the tree of size {size}", field="index")
    proof = log.tree.inclusion_proof(index, size)
    return {"index": index, "size": size, "proof": [h.hex() for h in proof]}


@router.get("/proof/consistency")
async def consistency(
    log: Log, size1: Annotated[int, Query(ge=1)], size2: Annotated[int, Query(ge=1)]
) -> dict[str, object]:
    proof = log.tree.consistency_proof(size1, size2)
    return {"size1": size1, "size2": size2, "proof": [h.hex() for h in proof]}


@router.get("/balances")
async def balances(log: Log) -> dict[str, object]:
    """Every actor's balance, stake and last sequence number at one size of the log."""
    size, accounts = log.balances()
    return {"size": size, "accounts": {actor: list(values) for actor, values in accounts.items()}}


@router.get("/accounts/{actor_id}")
async def account(
    actor_id: str,
    log: Log,
    entries: Annotated[int, Query(ge=0, le=MAX_ACCOUNT_ENTRIES)] = 0,
) -> dict[str, object]:
    """The actor's replayed balance, stake and last sequence number, and with ``entries=N`` its
    newest N entries (index and base64 leaf, newest first), to check against the log."""
    balance, staked, last_seq = log.account(actor_id)
    body: dict[str, object] = {"balance": balance, "staked": staked, "last_seq": last_seq}
    if entries:
        indexes = log.entries_of(actor_id, entries)
        body["entries"] = [
            {"index": i, "entry": base64.b64encode(log.store.leaves(i, i + 1)[0]).decode()}
            for i in indexes
        ]
    return body


def _hash_from_hex(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise Rejected("leaf_hash is not hex", field="leaf_hash") from exc
    if len(value) != HASH_SIZE_BYTES:
        raise Rejected(f"leaf_hash must be {HASH_SIZE_BYTES} bytes", field="leaf_hash")
    return value
