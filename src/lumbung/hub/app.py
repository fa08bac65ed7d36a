"""The hub's FastAPI application: routes, error table, and the lease reaper.

The reaper is a coroutine on the event loop that only sleeps there: each pass runs in a thread,
and rounds it finds due close in the background (``lumbung.hub.background``), so that neither a
long settlement nor a big round holds up a request.
"""

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
_BACKGROUND_STOP_S = 60.0


async def _reap(ctx: HubContext) -> None:
    """Return expired leases to the queue, end leases past their job's time limit as timed-out
    failures (``expire_leases``), close rounds, and settle unpaid escrow, forever; one failure
    does not stop the reaper."""
    since_sweep = 0.0
    while True:
        await asyncio.sleep(ctx.config.reaper_interval_s)
        try:
            await asyncio.to_thread(reap_leases, ctx)
            since_sweep += ctx.config.reaper_interval_s
            if since_sweep >= _SWEEP_S:
                await asyncio.to_thread(sweep, ctx)
                await reconcile_in_turns(ctx)
                since_sweep = 0.0
        except Exception:
            log.exception("lease reaper failed; retrying")


def reap_leases(ctx: HubContext) -> None:
    """End the leases that ran out, and have the rounds that are now complete or due closed."""
    if expire_leases(ctx):
        # A dead or timed-out worker no longer holds its round.
        ctx.background.submit("close ready rounds", lambda: close_ready_rounds(ctx))
    ctx.background.submit("close due rounds", lambda: close_due_rounds(ctx))


def sweep(ctx: HubContext) -> None:
    """Forget nonces and heartbeat minutes too old to matter."""
    now = ctx.clock()
    ctx.store.purge_nonces(now)
    # Reliability counts a day of minutes; older ones would only slow that count.
    ctx.store.purge_heartbeat_minutes(now - DAY_S - 60)


async def reconcile_in_turns(ctx: HubContext) -> None:
    """``reconcile``, one job at a time, each in a thread: every running job's escrow is open,
    and settling hundreds in one go would hold the log's lock that every submission and every
    paid report waits for."""
    for job_id in await asyncio.to_thread(ledger_of(ctx).open_escrows):
        try:
            await asyncio.to_thread(reconcile_job, ctx, job_id)
        except Exception:
            log.exception("settling job %s failed; the next sweep retries", job_id)


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
            # A round being closed finishes (it is one transaction either way), so that the
            # store is not closed under it; a stuck one does not hold the hub's stop for ever.
            if not await asyncio.to_thread(ctx.background.wait_idle, _BACKGROUND_STOP_S):
                log.warning("stopped with background work unfinished; a restart redoes it")

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
