"""Settlement: what a job's escrow owes its providers for kept work, the hub's fee, and the refund.

Pure arithmetic on plain values, so the same function decides every payment whether it runs after
a checkpoint, at a job's end, or when a restarted hub catches up on work it never paid. It never
pays twice: it computes what kept work has earned in total and subtracts what the escrow already
released (``EscrowState.released_by``), so running it again after a crash pays only what is owed.

The rules, all in integer micro-credits:

- An attempt's kept work earns ``kept_ms * price_micro_per_hour // 3_600_000`` (whole
  milliseconds, rounded down). Lost work (since the last checkpoint of an attempt that crashed)
  earns nothing: it is never recorded as kept.
- A task earns at most its budget (its share of the escrow) over all its attempts, in attempt
  order; a resumed task therefore cannot cost more than one that ran once at the price limit.
- From what each provider earned on each task, the hub keeps ``fee_bps`` basis points (rounded
  down, in the provider's favour) and releases the rest to the provider.
- When the job is over, whatever the escrow still holds goes back to the consumer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lumbung.ledger.balances import EscrowState

MS_PER_HOUR = 3_600_000
BPS = 10_000  # basis points in a whole


@dataclass(frozen=True, slots=True)
class KeptWork:
    """One attempt of one task on one provider, and how much of it was kept."""

    task_id: str
    attempt: int
    provider: str  # the node's actor id, who is paid
    price_micro_per_hour: int
    kept_ms: int


@dataclass(frozen=True, slots=True)
class Payout:
    """The entries settlement should append now; all zero when nothing is owed."""

    # (task_id, provider) -> micro-credits to release to the provider
    releases: dict[tuple[str, str], int] = field(default_factory=dict)
    fee: int = 0
    refund: int = 0

    @property
    def total(self) -> int:
        return sum(self.releases.values()) + self.fee + self.refund


def earned_micro(kept_ms: int, price_micro_per_hour: int) -> int:
    """What ``kept_ms`` of work earns at an hourly price, rounded down."""
    return kept_ms * price_micro_per_hour // MS_PER_HOUR


def fee_of(earned: int, fee_bps: int) -> int:
    return earned * fee_bps // BPS


def payout(
    work: Iterable[KeptWork],
    escrow: EscrowState,
    *,
    task_budget_micro: int,
    fee_bps: int,
    final: bool,
) -> Payout:
    """What to pay now so that the escrow has paid exactly what ``work`` earned (and, when
    ``final``, refunded the rest). Never more than the escrow holds."""
    earned = _earned_by_task_and_provider(work, task_budget_micro)
    releases: dict[tuple[str, str], int] = {}
    fees_owed = 0
    for key, gross in sorted(earned.items()):
        fee = fee_of(gross, fee_bps)
        fees_owed += fee
        due = gross - fee - escrow.released_by.get(key, 0)
        if due > 0:
            releases[key] = due
    available = escrow.remaining
    # Only a configuration change between runs (a lower fee) could make this bind; the escrow
    # is never overdrawn either way, and the ledger would refuse it.
    for key in sorted(releases):
        releases[key] = min(releases[key], available)
        available -= releases[key]
    fee = min(max(0, fees_owed - escrow.fees), available)
    available -= fee
    return Payout(
        releases={key: amount for key, amount in releases.items() if amount > 0},
        fee=fee,
        refund=available if final else 0,
    )


def _earned_by_task_and_provider(
    work: Iterable[KeptWork], task_budget_micro: int
) -> dict[tuple[str, str], int]:
    earned: dict[tuple[str, str], int] = {}
    used_by_task: dict[str, int] = {}
    for attempt in sorted(work, key=lambda w: (w.task_id, w.attempt)):
        used = used_by_task.get(attempt.task_id, 0)
        gross = min(
            earned_micro(attempt.kept_ms, attempt.price_micro_per_hour), task_budget_micro - used
        )
        if gross <= 0:
            continue
        used_by_task[attempt.task_id] = used + gross
        key = (attempt.task_id, attempt.provider)
        earned[key] = earned.get(key, 0) + gross
    return earned
