"""Jobs the hub cannot read back: one bad row stops its own job, never the market.

A job whose stored spec no longer validates (stored by an older, laxer hub, or written into the
database by hand) raises ``UnreadableJob`` wherever it is read. Whoever meets it first isolates it:
the job fails with the reason, its unfinished tasks are cancelled, and its escrow settles (kept
work paid, the rest refunded), so that claims for every other job go on. ``HubContext.spec_of``
and the escrow's reconcile do the same for the paths that go through them.
"""

from __future__ import annotations

import logging

from lumbung.hub import escrow
from lumbung.hub.context import HubContext
from lumbung.market.states import TERMINAL_JOB_STATES
from lumbung.store.protocol import UnreadableJob
from lumbung.wire.spec import JobSpec

log = logging.getLogger("lumbung.hub.unreadable")


def isolate(ctx: HubContext, exc: UnreadableJob) -> None:
    """Fail the job ``exc`` names (unless it is over), cancel its unfinished tasks and settle
    its escrow; settling again is harmless, so meeting the job twice is too."""
    if exc.state not in TERMINAL_JOB_STATES:
        log.warning("job %s cannot be read back (%s): failing it", exc.job_id, exc.reason)
        ctx.store.fail_job(exc.job_id, exc.job_error, ctx.clock())
    escrow.settle_quietly(ctx, exc.job_id)


def readable_spec(ctx: HubContext, job_id: str) -> JobSpec | None:
    """The job's spec, or None for a job that cannot be read back (isolated now)."""
    try:
        return ctx.spec_of(job_id)
    except UnreadableJob as exc:
        isolate(ctx, exc)
        return None
