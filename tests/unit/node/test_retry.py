"""The node's one retry policy: how long it waits for a hub that is away, and when it gives up."""

from __future__ import annotations

import pytest

from lumbung.errors import Conflict, RateLimited, Unavailable
from lumbung.node import retry
from lumbung.node.retry import Backoff, call_hub


def test_the_wait_doubles_to_its_cap_and_starts_again_after_a_success() -> None:
    backoff = Backoff()
    down = Unavailable("hub down")
    assert [backoff.delay_s(down) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.delay_s(down) == 0.5


def test_a_rate_limited_hub_is_given_the_time_it_asked_for() -> None:
    backoff = Backoff()
    assert backoff.delay_s(RateLimited("slow down", retry_after_s=3.0)) == 3.0
    assert backoff.delay_s(Unavailable("down")) == 1.0  # the doubling went on meanwhile


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", waits.append)
    return waits


def test_a_call_is_retried_while_the_hub_is_away_and_returns_its_answer(
    slept: list[float],
) -> None:
    answers: list[Exception | str] = [Unavailable("down"), Unavailable("down"), "claimed"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call_hub(call, patience_s=60.0) == "claimed"
    assert slept == [0.5, 1.0]


def test_a_call_gives_up_when_the_next_wait_would_outlast_its_patience(
    slept: list[float],
) -> None:
    def call() -> None:
        raise Unavailable("down for good")

    with pytest.raises(Unavailable, match="down for good"):
        call_hub(call, patience_s=0.2)
    assert slept == []


def test_a_refusal_is_the_callers_to_handle_and_is_not_retried(slept: list[float]) -> None:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise Conflict("the lease is gone")

    with pytest.raises(Conflict):
        call_hub(call, patience_s=60.0)
    assert calls == [1]
    assert slept == []
