"""What a provider's stake covers: unverified work paid out, and what a proven wrong result costs.

A result that is not checked is paid on completion, but only while the node's paid-out work not
yet verified stays within its stake; beyond that its results wait for a verdict before payment.
So a node can never walk away with more unverified money than it stands to lose.

A proven wrong result is not paid, and costs the node ``SLASH_MULTIPLE`` times the task's budget
from its stake (all of it when the stake is smaller). With results checked at a rate of at least
``f`` (``lumbung.verify.adaptive.CHECK_FLOOR``), a wrong result gains its pay ``B`` with
probability ``1 - f`` and loses the slash with probability ``f``: cheating pays nothing while
``f * SLASH_MULTIPLE > 1 - f``, that is a multiple above 10.1 at ``f = 0.09``. Twelve leaves room.
"""

from __future__ import annotations

SLASH_MULTIPLE = 12


def payable_before_verdict(unverified_paid_micro: int, amount_micro: int, stake_micro: int) -> bool:
    """Whether ``amount_micro`` may be paid now, before anyone checked the work it pays for."""
    if min(unverified_paid_micro, amount_micro, stake_micro) < 0:
        raise ValueError("amounts are never negative")
    return unverified_paid_micro + amount_micro <= stake_micro


def slash_micro(stake_micro: int, task_budget_micro: int) -> int:
    """What a proven wrong result takes from the stake."""
    if stake_micro < 0 or task_budget_micro < 0:
        raise ValueError("amounts are never negative")
    return min(stake_micro, SLASH_MULTIPLE * task_budget_micro)
