"""Which signed writes are rate-limited, and how: FastAPI dependencies over ``RateLimits``.

Limited, per request signer (``HubConfig.write_rate_per_s`` and ``write_burst``): job submits,
artifact uploads, ledger appends, the faucet and cosignatures: what fills the store, the blob
store or the log. Reads, and a node's claims, heartbeats and reports, are not: a node's work is
bounded by the leases it holds, and slowing it would slow the jobs it runs.

Ledger appends are limited a second time per entry author (``entry_rate_per_s``, ``entry_burst``):
the signer of the request need not be the author, and keys are free, while an author must hold
money (``lumbung.hub.ledger_routes``), so the author is what a spammer cannot multiply for free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

from lumbung.hub.auth import Actor, context, signed_streamed_actor
from lumbung.hub.context import HubContext
from lumbung.ledger.entries import SignedEntry

WRITES = "writes"
ENTRIES = "ledger entries"


def take_write(ctx: HubContext, actor: str) -> None:
    """One write by ``actor``, or ``RateLimited``."""
    config = ctx.config
    ctx.rate_limits.take(actor, WRITES, 1, config.write_rate_per_s, config.write_burst)


def take_entries(ctx: HubContext, entries: Sequence[SignedEntry]) -> None:
    """Each author's share of ``entries``, from that author's bucket, or ``RateLimited``."""
    config = ctx.config
    for author, count in Counter(signed.entry.author for signed in entries).items():
        ctx.rate_limits.take(author, ENTRIES, count, config.entry_rate_per_s, config.entry_burst)


# A bucket is a few arithmetic operations under a lock (``RateLimits`` is thread-safe): taken on
# the event loop, between the signature check and the handler, each in the thread pool.
async def writing_actor(request: Request, actor: Actor) -> str:
    """The signed actor of a rate-limited write (admitted to the hub's capacity)."""
    take_write(context(request), actor)
    return actor


async def streaming_actor(
    request: Request, actor: Annotated[str, Depends(signed_streamed_actor)]
) -> str:
    """The signed actor of a rate-limited streamed upload."""
    take_write(context(request), actor)
    return actor


Writer = Annotated[str, Depends(writing_actor)]
StreamWriter = Annotated[str, Depends(streaming_actor)]
