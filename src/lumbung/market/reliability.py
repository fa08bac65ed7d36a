"""A node's measured reliability: how much of the time it has been around it was heard from.

The hub counts the distinct clock minutes (``floor(t / 60)``) in which a node's heartbeat arrived
(``heard_minutes``) over a sliding window. Dividing by the minutes it *could* have been heard in
gives a number a consumer can trust more than any claim the provider makes about itself; the matcher
uses it to break price ties.
"""

from __future__ import annotations

import math

DAY_S = 86_400.0
MINUTE_S = 60.0


def reliability(
    heard_minutes: int, first_seen: float, now: float, window_s: float = DAY_S
) -> float:
    """Fraction of the expected minutes in which a heartbeat arrived, in [0, 1].

    The expected minutes are the clock minutes from the later of ``first_seen`` and
    ``now - window_s`` up to and including the current one, never fewer than one. A node first seen
    this minute (or, with hubs' clocks slightly apart, "in the future") scores 1.0: it registered,
    so it has been heard in every minute it could have been. The result is clamped because
    ``heard_minutes`` is counted elsewhere and may, at a window's edge, run one ahead.
    """
    now_minute = math.floor(now / MINUTE_S)
    if math.floor(first_seen / MINUTE_S) >= now_minute:
        return 1.0
    start_minute = math.floor(max(first_seen, now - window_s) / MINUTE_S)
    expected_minutes = max(1, now_minute - start_minute + 1)
    return min(1.0, max(0.0, heard_minutes / expected_minutes))
