from __future__ import annotations

import random

from lumbung.verify.adaptive import CHECK_FLOOR, TRUST_AFTER, CheckRate, after_verdict


def test_a_new_node_is_always_checked_and_a_trusted_one_at_one_over_its_count() -> None:
    rate = CheckRate()
    assert [rate.probability(n) for n in range(TRUST_AFTER)] == [1.0] * TRUST_AFTER
    assert rate.probability(10) == 0.1
    assert rate.probability(1000) == CHECK_FLOOR


def test_one_invalid_result_resets_the_count() -> None:
    assert after_verdict(57, valid=True) == 58
    assert after_verdict(57, valid=False) == 0


def test_the_draw_decides_below_the_probability() -> None:
    rate = CheckRate()
    assert rate.should_check(1000, draw=CHECK_FLOOR - 1e-9)
    assert not rate.should_check(1000, draw=CHECK_FLOOR)


def caught_within(tasks: int, rate: CheckRate, rng: random.Random) -> bool:
    """A node honest for 15 tasks, then wrong in 20% of them: is a wrong result ever checked?"""
    count = 0
    for task in range(tasks):
        wrong = task >= 15 and rng.random() < 0.2
        if rate.should_check(count, rng.random()):
            if wrong:
                return True
            count = after_verdict(count, valid=True)
    return False


def test_the_floor_catches_the_intermittent_cheater_within_200_tasks_95_percent_of_the_time() -> (
    None
):
    rng = random.Random(7)
    caught = sum(caught_within(200, CheckRate(), rng) for _ in range(4000)) / 4000
    assert caught >= 0.95
    # BOINC's 1/count alone, without the floor, misses the target (about 91% here).
    rng = random.Random(7)
    boinc = sum(caught_within(200, CheckRate(floor=0.0), rng) for _ in range(4000)) / 4000
    assert boinc < 0.95


def test_the_floor_costs_honest_nodes_under_ten_percent_extra_work_in_steady_state() -> None:
    rate = CheckRate()
    assert rate.probability(10**6) <= 0.10
