"""Who is asking, and whether the hub has room for it: FastAPI dependencies every route takes.

Every request but the health check is signed (RFC 9421) by an actor's key. The signature is checked
first (missing, malformed, forged, stale: 401 naming which), then its nonce is spent in the store,
so a replayed request is refused even by another hub process sharing the database. Both run in the
thread pool (``signed_actor`` is a plain function), never on the event loop.

Before that a request takes a slot of the hub's capacity (``lumbung.hub.capacity``) and holds it
until its handler returns: 503 when the hub is full. Heartbeats take theirs as renewals, which are
never refused; a claim's long-poll and a streamed upload hold a slot only while their signature is
checked, not while they wait for work or for the bytes of the upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from lumbung.crypto.httpsig import verify_request
from lumbung.errors import Conflict, Unauthenticated
from lumbung.hub.capacity import Admission
from lumbung.hub.context import HubContext

# Nonces outlive the signature's accepted age by this margin, covering clock skew.
_NONCE_MARGIN_S = 120


def context(request: Request) -> HubContext:
    ctx: HubContext = request.app.state.ctx
    return ctx


async def hub_context(request: Request) -> HubContext:
    # A coroutine, so that FastAPI calls it on the loop rather than in a thread of its own.
    return context(request)


async def admitted(request: Request) -> AsyncIterator[None]:
    """A slot of the hub's capacity for the rest of the request's handler, or 503."""
    async with context(request).capacity.slot(Admission.REQUEST):
        yield


async def admitted_renewal(request: Request) -> AsyncIterator[None]:
    """A slot for a lease renewal: it may take one kept for renewals, and waits for one."""
    async with context(request).capacity.slot(Admission.RENEWAL):
        yield


async def request_body(request: Request) -> bytes:
    # Oversized bodies never get here: lumbung.hub.limits refuses them before they are read.
    return await request.body()


def signed_actor(request: Request, body: Annotated[bytes, Depends(request_body)]) -> str:
    """The actor id of a request whose body is covered by its signature."""
    return _verify(context(request), request, body)


Signed = Annotated[str, Depends(signed_actor)]
# "function": the slot is given back when the handler returns, before the response is sent.
Admitted = Annotated[None, Depends(admitted, scope="function")]
AdmittedRenewal = Annotated[None, Depends(admitted_renewal, scope="function")]


async def admitted_actor(_: Admitted, actor: Signed) -> str:
    """The signed actor of a request the hub has room for (in that order)."""
    return actor


async def renewing_actor(_: AdmittedRenewal, actor: Signed) -> str:
    """The signed actor of a heartbeat, which renews leases and so is never refused for room."""
    return actor


async def polling_actor(request: Request, body: Annotated[bytes, Depends(request_body)]) -> str:
    """The signed actor of a long-poll: it holds a slot while checked, not while it waits."""
    ctx = context(request)
    async with ctx.capacity.slot(Admission.POLL):
        return await run_in_threadpool(_verify, ctx, request, body)


async def signed_streamed_actor(request: Request) -> str:
    """The actor id of a streamed upload: the signature covers method and path, and the path
    names the content's SHA-256, which the blob store checks as the bytes arrive."""
    ctx = context(request)
    async with ctx.capacity.slot(Admission.REQUEST):
        return await run_in_threadpool(_verify, ctx, request, None)


Actor = Annotated[str, Depends(admitted_actor)]
RenewingActor = Annotated[str, Depends(renewing_actor)]
PollingActor = Annotated[str, Depends(polling_actor)]
Ctx = Annotated[HubContext, Depends(hub_context)]


def _verify(ctx: HubContext, request: Request, body: bytes | None) -> str:
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    verified = verify_request(
        method=request.method,
        path=raw_path.decode("latin-1"),
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=request.headers,
        body=body,
        now=ctx.clock(),
        max_age_s=ctx.config.signature_max_age_s,
    )
    expires_at = verified.created + ctx.config.signature_max_age_s + _NONCE_MARGIN_S
    try:
        ctx.store.use_nonce(verified.actor_id, verified.nonce, expires_at)
    except Conflict as exc:
        raise Unauthenticated("replayed signature: this nonce was already used") from exc
    if verified.actor_id not in ctx.known_actors:
        ctx.store.ensure_actor(verified.actor_id, verified.public_key_raw, ctx.clock())
        ctx.known_actors.add(verified.actor_id)
    return verified.actor_id
