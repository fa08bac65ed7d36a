"""The hub's FastAPI application: routes, error table, and the lease reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from lumbung.crypto.keys import Identity
from lumbung.hub.context import HubContext
from lumbung.hub.errors import install_error_handlers
from lumbung.hub.escrow import ledger_of, reconcile, reconcile_job
from lumbung.hub.leases import expire_leases, grace_after_restart
from lumbung.hub.ledger import LogService
from lumbung.hub.ledger_routes import router as ledger_router
from lumbung.hub.limits import BodyLimit
from lumbung.hub.rounds import close_due_rounds, close_ready_rounds
from lumbung.hub.routes import router
from lumbung.market.reliability import DAY_S

log = logging.getLogger("lumbung.hub")

# Nonces and heartbeat minutes too old to matter are swept this often.
_SWEEP_S = 60.0


async def _reap(ctx: HubContext) -> None:
    """Return expired leases to the queue, end leases past their job's time limit as timed-out
    failures (``expire_leases``), and settle unpaid escrow, forever; one failure does not stop
    the reaper."""
    since_sweep = 0.0
    while True:
        await asyncio.sleep(ctx.config.reaper_interval_s)
        try:
            if expire_leases(ctx):
                close_ready_rounds(ctx)  # a dead or timed-out worker no longer holds its round
            close_due_rounds(ctx)
            since_sweep += ctx.config.reaper_interval_s
            if since_sweep >= _SWEEP_S:
                now = ctx.clock()
                ctx.store.purge_nonces(now)
                # Reliability counts a day of minutes; older ones would only slow that count.
                ctx.store.purge_heartbeat_minutes(now - DAY_S - 60)
                await reconcile_in_turns(ctx)
                since_sweep = 0.0
        except Exception:
            log.exception("lease reaper failed; retrying")


async def reconcile_in_turns(ctx: HubContext) -> None:
    """``reconcile``, one job at a time with the event loop's other work in between: every
    running job's escrow is open, and settling hundreds in one go would stall every request."""
    for job_id in ledger_of(ctx).open_escrows():
        try:
            reconcile_job(ctx, job_id)
        except Exception:
            log.exception("settling job %s failed; the next sweep retries", job_id)
        await asyncio.sleep(0)


def create_app(ctx: HubContext, *, reaper: bool = True) -> FastAPI:
    if ctx.identity is None:
        ctx.identity = Identity.load_or_create(ctx.config.data_dir)
    if ctx.log is None:
        ctx.log = LogService(ctx.store.ledger(), ctx.identity, ctx.clock)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        extended = grace_after_restart(ctx)
        if extended:
            log.info("gave %d running lease(s) one lease period to be renewed", extended)
        settled = reconcile(ctx)
        if settled:
            log.info("settled %d ledger entries left unpaid by an earlier stop", settled)
        task = asyncio.create_task(_reap(ctx)) if reaper else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="Lumbung hub",
        version="1",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.add_middleware(BodyLimit, max_body_bytes=ctx.config.max_body_bytes)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(ledger_router)
    return app
