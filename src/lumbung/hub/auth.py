"""Who is asking: every request but the health check is signed (RFC 9421) by an actor's key.

The signature is checked first (missing, malformed, forged, stale: 401 naming which), then its
nonce is spent in the store, so a replayed request is refused even by another hub process sharing
the database.
"""

from __future__ import annotations

from fastapi import Request

from lumbung.crypto.httpsig import verify_request
from lumbung.errors import Conflict, Unauthenticated
from lumbung.hub.context import HubContext

# Nonces outlive the signature's accepted age by this margin, covering clock skew.
_NONCE_MARGIN_S = 120


def context(request: Request) -> HubContext:
    ctx: HubContext = request.app.state.ctx
    return ctx


async def signed_actor(request: Request) -> str:
    """The actor id of a request whose body is covered by its signature."""
    # Oversized bodies never get here: lumbung.hub.limits refuses them before they are read.
    return _verify(context(request), request, await request.body())


async def signed_streamed_actor(request: Request) -> str:
    """The actor id of a streamed upload: the signature covers method and path, and the path
    names the content's SHA-256, which the blob store checks as the bytes arrive."""
    return _verify(context(request), request, None)


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
