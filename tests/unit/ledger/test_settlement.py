"""Settlement's arithmetic: exact amounts, never paying twice, never overdrawing the escrow."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from lumbung.ledger.balances import EscrowState
from lumbung.ledger.settlement import KeptWork, Payout, earned_micro, payout

CONSUMER = "ak_consumer"


def escrow(locked: int, **fields: object) -> EscrowState:
    state = EscrowState(
        locked=locked, released=0, refunded=0, fees=0, remaining=locked, consumer=CONSUMER
    )
    return replace(state, **fields)  # type: ignore[arg-type]


def paid(state: EscrowState, pay: Payout) -> EscrowState:
    """The escrow after ``pay`` was appended, as the ledger's replay would leave it."""
    released_by = dict(state.released_by)
    for key, amount in pay.releases.items():
        released_by[key] = released_by.get(key, 0) + amount
    released = state.released + sum(pay.releases.values())
    return replace(
        state,
        released=released,
        fees=state.fees + pay.fee,
        refunded=state.refunded + pay.refund,
        remaining=state.remaining - pay.total,
        released_by=released_by,
    )


def test_kept_work_earns_its_price_and_the_fee_rounds_in_the_providers_favour() -> None:
    work = [KeptWork("t1", 1, "ak_a", 3_600_000, 1_234)]  # 1,000 micro a second
    pay = payout(work, escrow(10_000), task_budget_micro=10_000, fee_bps=250, final=False)
    assert earned_micro(1_234, 3_600_000) == 1_234
    assert pay == Payout(releases={("t1", "ak_a"): 1_234 - 30}, fee=30, refund=0)


def test_settling_again_pays_only_what_was_kept_since() -> None:
    first = [KeptWork("t1", 1, "ak_a", 3_600_000, 1_000)]
    state = escrow(10_000)
    state = paid(state, payout(first, state, task_budget_micro=10_000, fee_bps=0, final=False))
    later = [KeptWork("t1", 1, "ak_a", 3_600_000, 1_500)]
    pay = payout(later, state, task_budget_micro=10_000, fee_bps=0, final=True)
    assert pay == Payout(releases={("t1", "ak_a"): 500}, fee=0, refund=8_500)


def test_a_task_is_paid_at_most_its_budget_in_attempt_order() -> None:
    work = [
        KeptWork("t1", 2, "ak_b", 3_600_000, 900),
        KeptWork("t1", 1, "ak_a", 3_600_000, 800),
    ]
    pay = payout(work, escrow(1_000), task_budget_micro=1_000, fee_bps=0, final=True)
    assert pay.releases == {("t1", "ak_a"): 800, ("t1", "ak_b"): 200}
    assert pay.refund == 0


work_strategy = st.lists(
    st.builds(
        KeptWork,
        task_id=st.sampled_from(["t1", "t2", "t3"]),
        attempt=st.integers(1, 4),
        provider=st.sampled_from(["ak_a", "ak_b"]),
        price_micro_per_hour=st.integers(0, 10**9),
        kept_ms=st.integers(0, 10**7),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    work=work_strategy,
    budget=st.integers(0, 10**7),
    fee_bps=st.integers(0, 10_000),
    growth=st.lists(st.integers(0, 10**6), min_size=12, max_size=12),
)
def test_settling_in_steps_pays_the_same_as_once_and_never_overdraws(
    work: list[KeptWork], budget: int, fee_bps: int, growth: list[int]
) -> None:
    locked = 3 * budget
    # One record per attempt, as the store keeps them.
    work = list({(w.task_id, w.attempt): w for w in work}.values())
    # Part of the work first, as checkpoints arrive, then all of it at the end. Only each task's
    # newest attempt can still grow: the earlier ones ended before it was leased.
    newest = {w.task_id: max(v.attempt for v in work if v.task_id == w.task_id) for w in work}
    early = [
        replace(w, kept_ms=max(0, w.kept_ms - g)) if w.attempt == newest[w.task_id] else w
        for w, g in zip(work, growth, strict=False)
    ]
    state = escrow(locked) if locked else escrow(1)
    for step, final in ((early, False), (work, False), (work, True)):
        pay = payout(step, state, task_budget_micro=budget, fee_bps=fee_bps, final=final)
        assert pay.total <= state.remaining
        assert all(amount > 0 for amount in pay.releases.values())
        state = paid(state, pay)
    once = payout(work, escrow(state.locked), task_budget_micro=budget, fee_bps=fee_bps, final=True)
    assert state.released_by == {k: v for k, v in once.releases.items()}
    assert (state.fees, state.refunded, state.remaining) == (once.fee, once.refund, 0)
    assert state.locked == state.released + state.fees + state.refunded
    again = payout(work, state, task_budget_micro=budget, fee_bps=fee_bps, final=True)
    assert again.total == 0
