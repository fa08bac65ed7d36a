"""Measured reliability: heard minutes over the minutes a node could have been heard."""

from __future__ import annotations

import pytest

from lumbung.market.reliability import DAY_S, reliability

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 60)  # the start of a clock minute


def test_node_first_seen_this_minute_is_fully_reliable() -> None:
    assert reliability(1, first_seen=T0 + 5, now=T0 + 50) == 1.0
    assert reliability(0, first_seen=T0 + 5, now=T0 + 50) == 1.0


def test_node_first_seen_after_now_by_clock_skew_is_fully_reliable() -> None:
    assert reliability(0, first_seen=T0 + 120, now=T0 + 10) == 1.0


def test_heard_every_minute_is_one() -> None:
    # Seen at minute 0, now in minute 9: ten clock minutes it could have been heard in.
    assert reliability(10, first_seen=T0, now=T0 + 9 * 60 + 30) == 1.0


def test_heard_half_the_minutes_is_one_half() -> None:
    assert reliability(5, first_seen=T0, now=T0 + 9 * 60 + 30) == pytest.approx(0.5)


def test_never_heard_after_the_first_minute_scores_low() -> None:
    assert reliability(1, first_seen=T0, now=T0 + 99 * 60) == pytest.approx(0.01)


def test_minutes_are_clock_minutes_not_elapsed_time() -> None:
    # 20 seconds elapsed but across a minute boundary: two minutes it could have been heard in.
    assert reliability(1, first_seen=T0 + 50, now=T0 + 70) == pytest.approx(0.5)


def test_only_the_window_counts_for_an_old_node() -> None:
    now = T0 + 30 * DAY_S
    expected = DAY_S / 60 + 1  # the window's minutes, the partial first one included
    assert reliability(720, first_seen=T0, now=now) == pytest.approx(720 / expected)


def test_custom_window() -> None:
    now = T0 + 3600
    assert reliability(5, first_seen=T0, now=now, window_s=600) == pytest.approx(5 / 11)


@pytest.mark.parametrize("heard", [0, -3])
def test_result_is_never_below_zero(heard: int) -> None:
    assert reliability(heard, first_seen=T0, now=T0 + 600) == 0.0


def test_result_is_clamped_to_one_when_counted_minutes_run_ahead() -> None:
    assert reliability(50, first_seen=T0, now=T0 + 600) == 1.0
