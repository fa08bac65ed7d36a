from __future__ import annotations

import pytest

from lumbung.verify.adaptive import CHECK_FLOOR
from lumbung.verify.stake import SLASH_MULTIPLE, payable_before_verdict, slash_micro


def test_unverified_pay_may_reach_the_stake_and_not_pass_it() -> None:
    assert payable_before_verdict(900, 100, 1000)
    assert not payable_before_verdict(901, 100, 1000)
    assert not payable_before_verdict(0, 1, 0)


def test_a_slash_is_a_multiple_of_the_task_budget_capped_by_the_stake() -> None:
    assert slash_micro(10**9, 1000) == SLASH_MULTIPLE * 1000
    assert slash_micro(5000, 1000) == 5000
    assert slash_micro(0, 1000) == 0


def test_a_wrong_result_checked_at_the_floor_rate_loses_money_on_average() -> None:
    budget = 1_000_000
    expected_gain = (1 - CHECK_FLOOR) * budget - CHECK_FLOOR * slash_micro(10**12, budget)
    assert expected_gain < 0


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="never negative"):
        payable_before_verdict(-1, 1, 1)
    with pytest.raises(ValueError, match="never negative"):
        slash_micro(1, -1)
