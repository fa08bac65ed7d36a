"""The transparency log's HTTP API under /v1/ledger.

Reads are public and unsigned: anyone may audit the log. Writes are signed requests, but the
request's signer need not be an entry's author: each entry carries its author's own signature.

Entries are permanent and every start and audit replays them, so appending is not free: the kinds
reserved for later issues are refused, every author must hold money (a balance or a stake) after
its entries, and writes are rate-limited per signer and per author (``lumbung.hub.write_limits``).
Integer query parameters are bounded (422 naming them), so none reaches the database as an
integer it cannot hold.

Handlers are plain functions, run in the thread pool (``lumbung.hub.routes`` says why); reads take
a slot of the hub's capacity like signed requests do (``Log``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from lumbung.errors import Forbidden, LumbungError, NotFound, Rejected, Unavailable
from lumbung.hub import escrow
from lumbung.hub.auth import Admitted, Ctx, context
from lumbung.hub.context import HubContext
from lumbung.hub.cosign import accepted_witnesses, add_cosignature
from lumbung.hub.ledger import LogService
from lumbung.hub.write_limits import Writer, take_entries
from lumbung.ledger.balances import Ledger
from lumbung.ledger.entries import (
    RESERVED_KINDS,
    EscrowLock,
    ResultCommitment,
    SignedEntry,
    decode_leaf,
)
from lumbung.ledger.merkle import HASH_SIZE_BYTES

router = APIRouter(prefix="/v1/ledger")

MAX_APPEND_ENTRIES = 1000
MAX_READ_ENTRIES = 10_000
MAX_ACCOUNT_ENTRIES = 100
# Leaf indexes and tree sizes are stored as signed 64-bit integers.
MAX_INDEX = (1 << 63) - 1
Index = Annotated[int, Query(ge=0, le=MAX_INDEX)]
Size = Annotated[int, Query(ge=1, le=MAX_INDEX)]


async def _log(request: Request, _: Admitted) -> LogService:
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
    """Rules of the market on top of the ledger's own: result commitments come only from
    completion reports, the reserved kinds wait for the issues that define them (until then
    they would be free-form bytes kept for ever), escrow is locked only by submitting a job (so
    no lock exists without its job), and stake stays while its provider holds a lease
    (``lumbung.hub.escrow.refuse_leased_unstakes``)."""
    for position, signed in enumerate(entries):
        entry = signed.entry
        if isinstance(entry, ResultCommitment):
            raise Rejected(
                f"entry {position}: result_commitment entries are the hub's record of a node's "
                "completion report (POST /v1/tasks/{task_id}/complete), not appended here",
                field=f"entries.{position}.entry.kind",
            )
        if entry.kind in RESERVED_KINDS:
            raise Rejected(
                f"entry {position}: {entry.kind.value} entries are reserved for a later issue;"
                " this hub appends none yet",
                field=f"entries.{position}.entry.kind",
            )
        if isinstance(entry, EscrowLock):
            raise Rejected(
                "escrow is locked by submitting the job (POST /v1/jobs), not appended alone",
                field=f"entries.{position}.entry.kind",
            )
    escrow.refuse_leased_unstakes(ctx, entries)


def funded_authors(entries: list[SignedEntry]) -> Callable[[Ledger], None]:
    """The rule that every author holds a balance or a stake after its entries, for
    ``LogService.append`` to check against the ledger the batch would leave.

    Why this and not a fee: credits enter only through the treasury, so an author that must hold
    some is an author someone paid for, and a spammer cannot mint authors with free keys; its
    rate is then bounded per author (``entry_rate_per_s``). It keeps every real flow: a consumer
    pays from a funded balance, a node stakes from one, the hub's own entries are not appended
    here. The one thing it refuses is emptying an account through the API (keep 1 micro-credit).
    """
    first_entry: dict[str, int] = {}
    for position, signed in enumerate(entries):
        first_entry.setdefault(signed.entry.author, position)

    def check(ledger: Ledger) -> None:
        for author, position in first_entry.items():
            if ledger.balance(author) <= 0 and ledger.staked(author) <= 0:
                raise Rejected(
                    f"entry {position}: its author {author} would hold no balance and no stake"
                    " after this batch; only funded accounts append (keep at least 1"
                    " micro-credit)",
                    field=f"entries.{position}.entry.author",
                )

    return check


@router.post("/entries")
def append_entries(body: AppendRequest, _: Writer, ctx: Ctx, log: Log) -> dict[str, list[int]]:
    entries = decode_entries(body.entries)
    check_market_rules(ctx, entries)
    take_entries(ctx, entries)
    return {"indexes": escrow.append_keeping_stake(log, entries, funded_authors(entries))}


@router.post("/faucet")
def faucet(actor: Writer, ctx: Ctx, log: Log) -> dict[str, int]:
    amount = ctx.config.faucet_micro
    if amount <= 0:
        raise Forbidden("this hub has no faucet (faucet_micro is 0)")
    return {"index": log.mint(actor, amount), "amount": amount}


@router.get("/key")
def key(log: Log) -> dict[str, str]:
    return {"origin": log.origin, "vkey": log.vkey}


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(log: Log) -> PlainTextResponse:
    _, note = log.store.latest_checkpoint()
    return PlainTextResponse(note)


class CosignRequest(BaseModel):
    note: str  # the latest checkpoint note with the witness's cosignature/v1 line added
    vkey: str  # the witness's verifier key (type 0x04); must be the request signer's key


@router.post("/cosignatures")
def cosignatures(body: CosignRequest, actor: Writer, ctx: Ctx, log: Log) -> dict[str, str]:
    accepted = accepted_witnesses(ctx.config.witnesses)
    return {"note": add_cosignature(log, body.note, body.vkey, actor, accepted)}


@router.get("/entries")
def entries(log: Log, start: Index, end: Index) -> dict[str, object]:
    if end < start:
        raise Rejected("end must not be below start", field="end")
    if end - start > MAX_READ_ENTRIES:
        raise Rejected(f"at most {MAX_READ_ENTRIES} entries per request", field="end")
    leaves = log.store.leaves(start, end)
    return {"start": start, "entries": [base64.b64encode(leaf).decode() for leaf in leaves]}


@router.get("/proof/inclusion")
def inclusion(
    log: Log,
    size: Size,
    index: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
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
def consistency(log: Log, size1: Size, size2: Size) -> dict[str, object]:
    proof = log.tree.consistency_proof(size1, size2)
    return {"size1": size1, "size2": size2, "proof": [h.hex() for h in proof]}


@router.get("/balances")
def balances(log: Log) -> dict[str, object]:
    """Every actor's balance, stake and last sequence number at one size of the log."""
    size, accounts = log.balances()
    return {"size": size, "accounts": {actor: list(values) for actor, values in accounts.items()}}


@router.get("/accounts/{actor_id}")
def account(
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
