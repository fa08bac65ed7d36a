"""Slashing: a result a quorum proved wrong costs its node part of its stake.

``lumbung.verify.stake.slash_micro`` says how much: ``SLASH_MULTIPLE`` times the task's budget,
or the whole stake when that is less, so that with checks at the adaptive floor's rate cheating
loses more than it earns. Only a ``wrong`` verdict slashes: a tie (``unverified``) blames
nobody, and an honest provider, whose results agree with the other honest replicas, never loses
stake. The hub appends one ``slash`` entry per wrong result, naming the task, which moves the
stake to the treasury, and at once a ``transfer`` of half of it from the treasury to the job's
consumer, who was served the wrong result and waited for its check.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from lumbung.hub.context import HubContext
from lumbung.hub.ledger import Draft
from lumbung.ledger.balances import Ledger
from lumbung.ledger.entries import Slash, Transfer
from lumbung.market.model import Job, Task
from lumbung.market.plan import task_budget_micro
from lumbung.verify.stake import slash_micro

log = logging.getLogger("lumbung.hub.slashing")

CONSUMER_SHARE = 2  # the consumer gets 1/CONSUMER_SHARE of each slash


def slash_wrong(ctx: HubContext, job: Job, wrong: Sequence[Task]) -> None:
    """Append a slash for each of ``wrong`` (results just proven wrong) whose node has stake.
    After the verdicts are stored; a failure is logged, not raised."""
    if not wrong or ctx.log is None:
        return
    budget = task_budget_micro(job.spec)

    def decide(ledger: Ledger) -> list[Draft]:
        left: dict[str, int] = {}
        drafts: list[Draft] = []
        for task in wrong:
            node = task.node_id
            if node is None:
                continue
            stake = left.get(node, ledger.staked(node))
            amount = slash_micro(stake, budget)
            if amount <= 0:
                continue
            left[node] = stake - amount
            reason = f"wrong result for task {task.id} of job {job.id}: outvoted by a quorum"
            drafts.append(functools.partial(Slash, node=node, amount=amount, reason=reason))
            share = amount // CONSUMER_SHARE
            if share:
                drafts.append(functools.partial(Transfer, to=job.owner, amount=share))
        return drafts

    try:
        ctx.log.append_as_hub(decide)
    except Exception:
        log.exception("job %s: slashing %d wrong result(s) failed", job.id, len(wrong))
