from __future__ import annotations

import pytest

from lumbung.market.reputation import FAILURE_WEIGHT, HALF_LIFE_S, Reputation

NOW = 1_800_000_000.0


def after(results: list[bool], start: Reputation | None = None) -> Reputation:
    rep = start or Reputation(as_of=NOW)
    for valid in results:
        rep = rep.record(valid, NOW)
    return rep


def test_a_new_node_scores_one_half_with_no_confidence() -> None:
    rep = Reputation(as_of=NOW)
    assert rep.score(NOW) == 0.5
    assert rep.confidence(NOW) == 0.0


def test_reputation_is_slow_to_earn_and_quick_to_lose() -> None:
    earned = after([True] * 50)
    assert earned.score(NOW) > 0.98
    lost = after([False], earned)
    assert lost.score(NOW) < 0.75
    # Back to where it was only after about FAILURE_WEIGHT more verified results than before.
    assert after([True] * int(FAILURE_WEIGHT), lost).score(NOW) < earned.score(NOW)


def test_evidence_fades_with_its_half_life() -> None:
    rep = after([True] * 40)
    later = rep.at(NOW + HALF_LIFE_S)
    assert later.verified == pytest.approx(20.0)
    assert rep.confidence(NOW + HALF_LIFE_S) < rep.confidence(NOW)
    assert rep.score(NOW + 10 * HALF_LIFE_S) == pytest.approx(0.5, abs=0.02)


def test_a_clock_that_goes_back_never_brightens_old_evidence() -> None:
    rep = after([True] * 10)
    assert rep.at(NOW - 1e6) == rep
