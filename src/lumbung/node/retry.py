"""The node's one way of calling a hub that may be away for a while.

A hub restarts, sits behind a load balancer that drops a connection, or is cut off for minutes;
none of that is the task's fault. Every call the node makes to the hub goes through ``call_hub``:
retried while the hub is ``Unavailable``, for as long as the caller's patience allows; any other
answer (a refusal, a conflict) is the caller's to handle. The claim loop, which never gives up,
waits by the same ``Backoff``: the delay doubles up to a cap, and is never shorter than what a
rate-limited hub asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from lumbung.errors import RateLimited, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0


class Backoff:
    """How long to wait before the next try: ``FIRST_DELAY_S``, doubling up to ``MAX_DELAY_S``,
    at least a ``RateLimited`` answer's ``retry_after_s``; back to the first after a success."""

    def __init__(self) -> None:
        self._next_s = FIRST_DELAY_S

    def delay_s(self, exc: Unavailable) -> float:
        delay_s = max(self._next_s, exc.retry_after_s if isinstance(exc, RateLimited) else 0.0)
        self._next_s = min(2 * self._next_s, MAX_DELAY_S)
        return delay_s

    def reset(self) -> None:
        self._next_s = FIRST_DELAY_S


def call_hub(call: Callable[[], T], *, patience_s: float, what: str = "hub call") -> T:
    """``call()``, retried while it raises ``Unavailable``, until ``patience_s`` have passed."""
    deadline = time.monotonic() + patience_s
    backoff = Backoff()
    warned = False
    while True:
        try:
            return call()
        except Unavailable as exc:
            delay_s = backoff.delay_s(exc)
            if time.monotonic() + delay_s > deadline:
                raise
            # One warning per outage, the retries at debug level.
            log.log(logging.DEBUG if warned else logging.WARNING, "%s: %s; retrying", what, exc)
            warned = True
            time.sleep(delay_s)
