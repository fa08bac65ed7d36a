"""The node's one way of calling a hub that may be away for a while.

A hub restarts, sits behind a load balancer that drops a connection, or is cut off for minutes;
none of that is the task's fault. Every call the node makes to the hub goes through ``call_hub``:
retried while the hub is ``Unavailable``, the delay doubling up to a cap, for as long as the
caller's patience allows; any other answer (a refusal, a conflict) is the caller's to handle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from lumbung.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0


def call_hub(call: Callable[[], T], *, patience_s: float, what: str = "hub call") -> T:
    """``call()``, retried while it raises ``Unavailable``, until ``patience_s`` have passed."""
    deadline = time.monotonic() + patience_s
    delay_s = FIRST_DELAY_S
    warned = False
    while True:
        try:
            return call()
        except Unavailable as exc:
            if time.monotonic() + delay_s > deadline:
                raise
            # One warning per outage, the retries at debug level.
            log.log(logging.DEBUG if warned else logging.WARNING, "%s: %s; retrying", what, exc)
            warned = True
            time.sleep(delay_s)
            delay_s = min(2 * delay_s, MAX_DELAY_S)
