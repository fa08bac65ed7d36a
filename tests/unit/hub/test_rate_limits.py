"""Token buckets per actor: a burst, then the sustained rate, and how long to wait when over."""

from __future__ import annotations

from typing import Any

import pytest

from lumbung.config import HubConfig
from lumbung.errors import ConfigError, RateLimited, Unavailable
from lumbung.hub.rate_limits import RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_next_write_waits_for_one_token() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    for _ in range(3):
        limits.take("ak_a", "writes", 1, rate_per_s=2.0, burst=3)
    with pytest.raises(RateLimited) as caught:
        limits.take("ak_a", "writes", 1, rate_per_s=2.0, burst=3)
    assert caught.value.retry_after_s == pytest.approx(0.5)
    assert isinstance(caught.value, Unavailable)
    clock.now += 0.5
    limits.take("ak_a", "writes", 1, rate_per_s=2.0, burst=3)


def test_buckets_are_per_actor_and_per_kind() -> None:
    limits = RateLimits(Clock())
    limits.take("ak_a", "writes", 1, rate_per_s=1.0, burst=1)
    limits.take("ak_b", "writes", 1, rate_per_s=1.0, burst=1)
    limits.take("ak_a", "entries", 1, rate_per_s=1.0, burst=1)
    with pytest.raises(RateLimited, match="too many writes from ak_a"):
        limits.take("ak_a", "writes", 1, rate_per_s=1.0, burst=1)


def test_a_refused_write_takes_nothing_and_an_idle_bucket_refills_only_to_its_size() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    limits.take("ak_a", "entries", 8, rate_per_s=1.0, burst=10)
    with pytest.raises(RateLimited):
        limits.take("ak_a", "entries", 5, rate_per_s=1.0, burst=10)
    limits.take("ak_a", "entries", 2, rate_per_s=1.0, burst=10)  # the refusal took nothing
    clock.now += 1_000.0
    limits.take("ak_a", "entries", 10, rate_per_s=1.0, burst=10)
    with pytest.raises(RateLimited):
        limits.take("ak_a", "entries", 1, rate_per_s=1.0, burst=10)


def test_a_cost_above_the_burst_waits_for_a_full_bucket_and_a_zero_rate_is_no_limit() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    limits.take("ak_a", "entries", 5_000, rate_per_s=100.0, burst=2_000)  # counts as 2,000
    with pytest.raises(RateLimited) as caught:
        limits.take("ak_a", "entries", 5_000, rate_per_s=100.0, burst=2_000)
    assert caught.value.retry_after_s == pytest.approx(20.0)
    for _ in range(1_000):
        limits.take("ak_a", "writes", 1, rate_per_s=0.0, burst=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("write_rate_per_s", -1.0),
        ("entry_rate_per_s", -0.5),
        ("write_burst", 0),
        ("entry_burst", 0),
    ],
)
def test_a_negative_rate_or_an_empty_bucket_fails_naming_the_key(field: str, value: float) -> None:
    overrides: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError) as caught:
        HubConfig(**overrides)
    assert caught.value.field == field
