"""Money in the job flow: the escrow locked at submit, paid out for kept work, refunded at the end.

Submitting a job appends the consumer's own signed ``escrow_lock`` of the job's worst case
(``lumbung.market.plan.escrow_micro``) before the job is stored; a short balance refuses the
submission and stores nothing. After every report that keeps work (a checkpoint, a completion)
and every change that may end a job (failure, cancel), ``settle`` appends what
``lumbung.ledger.settlement.payout`` says is owed: releases to providers, the hub's fee, and the
refund once the job is over.

The ledger and the job store are two transactions, so a hub can stop between them. Settlement is
idempotent (it pays what kept work earned minus what was already released), and ``reconcile``
settles every escrow that still holds money: at start-up and every minute, so a crash only
delays a payment. A lock whose job was never stored is refunded once it is old enough that its
submission cannot still be on its way.

A provider's stake is what a cheat caught during its work would lose, so it stays while the
provider holds a lease: an ``unstake`` is refused then (``refuse_leased_unstakes`` names the
entry), and checked again in the append's own transaction (``append_keeping_stake``), where no
lease granted meanwhile, by any hub, can slip past.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import Callable

from lumbung.errors import Conflict, LumbungError, NotFound, Rejected
from lumbung.hub import replication
from lumbung.hub.bookkeeping import recount_job
from lumbung.hub.context import HubContext
from lumbung.hub.ledger import Draft, LogService
from lumbung.ledger.balances import EscrowState, Ledger
from lumbung.ledger.entries import (
    EscrowLock,
    Fee,
    Refund,
    Release,
    SignedEntry,
    Unstake,
    decode_leaf,
)
from lumbung.ledger.settlement import KeptWork, Payout, payout
from lumbung.market.model import Job
from lumbung.market.plan import escrow_micro, format_credits, task_budget_micro
from lumbung.market.states import TERMINAL_JOB_STATES
from lumbung.store.ledger import HoldsLease
from lumbung.store.protocol import UnreadableJob
from lumbung.wire.spec import JobSpec

log = logging.getLogger("lumbung.hub.escrow")

# A lock with no stored job is refunded after this long: far beyond any submit request's life.
ORPHAN_LOCK_AGE_S = 300.0


def ledger_of(ctx: HubContext) -> LogService:
    if ctx.log is None:  # create_app always makes one; only a hand-built context lacks it
        raise AssertionError("the hub context has no ledger")
    return ctx.log


def decode_escrow(text: str) -> SignedEntry:
    """Parse the submission's hostile base64 escrow leaf; errors name the field under escrow."""
    try:
        leaf = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected("not valid base64", field="escrow") from exc
    try:
        return decode_leaf(leaf)
    except LumbungError as exc:
        raise type(exc)(exc.message, field=_escrow_field(exc.field, "")) from exc


def lock(ctx: HubContext, owner: str, spec: JobSpec, signed: SignedEntry) -> str:
    """Check the consumer's escrow entry for ``spec`` and append it; returns the job id.

    Errors name the field under ``escrow`` and leave the log unchanged.
    """
    entry = signed.entry
    if not isinstance(entry, EscrowLock):
        raise Rejected(f"must be an escrow_lock entry, not {entry.kind}", field="escrow.entry.kind")
    if entry.author != owner:
        raise Rejected(
            f"the escrow is signed by {entry.author}, not by the submitter {owner}",
            field="escrow.entry.author",
        )
    expected = escrow_micro(spec)
    if entry.amount != expected:
        raise Rejected(
            f"must lock the job's worst case at its price limit, {expected} micro-credits "
            f"({format_credits(expected)}), not {entry.amount}",
            field="escrow.entry.amount",
        )
    _require_new_job(ctx, entry.job_id)
    try:
        ledger_of(ctx).append([signed])
    except LumbungError as exc:
        raise type(exc)(exc.message, field=_escrow_field(exc.field)) from exc
    return entry.job_id


def undo_lock(ctx: HubContext, job_id: str) -> None:
    """Refund a lock whose job could not be stored (the submission failed after the lock)."""
    try:
        ctx.store.get_job(job_id)
    except NotFound:
        pass
    else:
        return  # stored after all (the error came after the commit): settle it like any job
    try:
        settle(ctx, job_id, final=True)
    except LumbungError:
        log.exception("refund of job %s's escrow failed; reconcile will retry", job_id)


def settle(ctx: HubContext, job_id: str, *, final: bool | None = None) -> None:
    """Append what the job's escrow owes now, and the refund once the job is over.

    ``final`` overrides "over" for a lock whose job was never stored (refund it all).
    """

    def decide(ledger: Ledger) -> list[Draft]:
        try:
            escrow = ledger.escrow(job_id)
        except NotFound:
            return []
        work, budget, over = _terms(ctx, job_id, escrow, final)
        pay = payout(work, escrow, task_budget_micro=budget, fee_bps=ctx.config.fee_bps, final=over)
        return _drafts(job_id, escrow, pay, work)

    ledger_of(ctx).append_as_hub(decide)


def _terms(
    ctx: HubContext, job_id: str, escrow: EscrowState, final: bool | None
) -> tuple[list[KeptWork], int, bool]:
    """What the escrow settles against: the job's kept work, each task's budget, and whether
    the job is over."""
    spec: JobSpec | None = None
    try:
        job: Job = ctx.store.get_job(job_id)
    except NotFound:
        return [], 0, bool(final)  # a lock whose job was never stored: nothing was earned
    except UnreadableJob as exc:
        # Its spec no longer reads; the lock was its task count times each task's budget (times
        # its runs, for a replicated job, whose rows are fewer until all have run), so the
        # budget is at most this, settlement never pays past the lock, and kept work is paid.
        tasks = sum(ctx.store.task_state_counts(job_id).values())
        budget, state = escrow.locked // max(tasks, 1), exc.state
    else:
        spec = job.spec
        budget, state = task_budget_micro(job.spec), job.state
    over = state in TERMINAL_JOB_STATES if final is None else final
    return _kept_work(ctx, job_id, spec), budget, over


def settle_quietly(ctx: HubContext, job_id: str) -> None:
    """``settle`` after a store change that already committed: a failure here must not fail the
    node's report (it would retry a report the store already holds); ``reconcile`` pays later."""
    try:
        settle(ctx, job_id)
    except Exception:
        log.exception("settling job %s failed; reconcile will retry", job_id)


def reconcile(ctx: HubContext) -> int:
    """Settle every escrow that still holds money; returns how many entries that appended."""
    return sum(reconcile_job(ctx, job_id) for job_id in ledger_of(ctx).open_escrows())


def reconcile_job(ctx: HubContext, job_id: str) -> int:
    """Settle one job's escrow; a lock whose job was never stored is refunded once it is old
    enough that its submission cannot still be storing the job. Returns the entries appended."""
    service = ledger_of(ctx)
    before = service.size
    try:
        ctx.store.get_job(job_id)
    except UnreadableJob as exc:
        # Nothing can act on it: fail it, so that its escrow settles as over (it is refunded).
        ctx.store.fail_job(job_id, exc.job_error, ctx.clock())
        settle(ctx, job_id)
    except NotFound:
        opened_ms = service.escrow(job_id).opened_at
        if int(ctx.clock() * 1000) - opened_ms < ORPHAN_LOCK_AGE_S * 1000:
            return 0  # its submission may still be storing the job
        settle(ctx, job_id, final=True)
    else:
        # A hub that stopped between a task's commit and its judgement or its recount.
        replication.judge_waiting(ctx, ctx.store.get_job(job_id))
        recount_job(ctx, job_id)
        settle(ctx, job_id)
    return service.size - before


def refuse_leased_unstakes(ctx: HubContext, entries: list[SignedEntry]) -> None:
    """Refuse the batch if an ``unstake`` in it is by a provider that holds a lease (409, naming
    the entry)."""
    for actor, position in _unstakers(entries).items():
        held = len(ctx.store.running_tasks(node_id=actor))
        if held:
            raise _holds_lease(actor, held, position)


def append_keeping_stake(
    log: LogService, entries: list[SignedEntry], rules: Callable[[Ledger], None]
) -> list[int]:
    """Append ``entries`` under ``rules``, refusing them all if a provider unstaking in them was
    leased a task since ``refuse_leased_unstakes`` looked; returns their indexes."""
    unstaking = _unstakers(entries)
    try:
        return log.append(entries, rules, list(unstaking))
    except HoldsLease as exc:
        raise _holds_lease(exc.actor, exc.leases, unstaking[exc.actor]) from exc


def _unstakers(entries: list[SignedEntry]) -> dict[str, int]:
    """Each author of an unstake and the position of its first."""
    found: dict[str, int] = {}
    for position, signed in enumerate(entries):
        if isinstance(signed.entry, Unstake):
            found.setdefault(signed.entry.author, position)
    return found


def _holds_lease(actor: str, leases: int, position: int) -> Conflict:
    return Conflict(
        f"{actor} holds {leases} lease(s) or result(s) waiting for their check; unstake once "
        "they end",
        field=f"entries.{position}.entry.kind",
    )


def _require_new_job(ctx: HubContext, job_id: str) -> None:
    try:
        ctx.store.get_job(job_id)
    except NotFound:
        pass
    else:
        raise Conflict(f"job {job_id} already exists", field="escrow.entry.job_id")
    try:
        ledger_of(ctx).escrow(job_id)
    except NotFound:
        return
    raise Conflict(f"job id {job_id} already has an escrow", field="escrow.entry.job_id")


def _kept_work(ctx: HubContext, job_id: str, spec: JobSpec | None) -> list[KeptWork]:
    """The job's kept work; of a replicated job, only the work of replicas the quorum agreed
    with or that were trusted unchecked (``lumbung.hub.replication``): a wrong or unverified
    result earns nothing, and one waiting for its check nothing yet."""
    paid: set[str] | None = None
    if spec is None or spec.verify.replicated:
        tasks = ctx.store.list_tasks(job_id)
        # A job whose spec no longer reads is known to be replicated by its rows.
        if spec is not None or any(t.replica > 0 for t in tasks):
            paid = {t.id for t in tasks if t.verdict in replication.PAID}
    return [
        KeptWork(
            task_id=w.task_id,
            attempt=w.attempt,
            provider=w.node_id,
            price_micro_per_hour=w.price_micro_per_hour,
            # Whole milliseconds, as the job view counts them, so both show the same cost.
            kept_ms=int(w.kept_s * 1000),
        )
        for w in ctx.store.list_work(job_id)
        if w.kept_s > 0 and (paid is None or w.task_id in paid)
    ]


def _drafts(job_id: str, escrow: EscrowState, pay: Payout, work: list[KeptWork]) -> list[Draft]:
    kept_ms: dict[tuple[str, str], int] = {}
    for w in work:
        key = (w.task_id, w.provider)
        kept_ms[key] = kept_ms.get(key, 0) + w.kept_ms
    drafts: list[Draft] = [
        functools.partial(
            Release,
            job_id=job_id,
            to=provider,
            amount=amount,
            task_id=task_id,
            reason=f"kept work: {kept_ms.get((task_id, provider), 0) / 1000:.3f} s in total",
        )
        for (task_id, provider), amount in sorted(pay.releases.items())
    ]
    if pay.fee:
        drafts.append(functools.partial(Fee, job_id=job_id, amount=pay.fee))
    if pay.refund:
        drafts.append(
            functools.partial(Refund, job_id=job_id, to=escrow.consumer, amount=pay.refund)
        )
    return drafts


def _escrow_field(field: str | None, prefix: str = "entries.0") -> str:
    # The log names fields of a batch (entries.0.entry.amount); a submission has one entry.
    if field is None:
        return "escrow"
    if prefix and field.startswith(prefix):
        return "escrow" + field[len(prefix) :]
    return f"escrow.{field}"
