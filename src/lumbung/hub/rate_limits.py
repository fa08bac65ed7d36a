"""Token buckets per actor: how many writes an actor may make, in one hub process.

Each (actor, kind of write) has a bucket of ``burst`` tokens that refills at ``rate_per_s``; a write
takes its cost from it, or is refused with ``RateLimited`` saying when enough will be back. The
buckets are this process's: several hubs behind a load balancer each allow the rate, which is
fine for a limit that is there to make spam slow, not to meter use exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lumbung.errors import RateLimited

# Buckets kept before full (idle) ones are forgotten: a full bucket is what a new one would be.
_MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    at: float  # when ``tokens`` was counted, on the limiter's clock


class RateLimits:
    """Every actor's buckets in this process; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, actor: str, kind: str, cost: float, rate_per_s: float, burst: float) -> None:
        """Take ``cost`` tokens from ``actor``'s ``kind`` bucket, or raise ``RateLimited``.

        A rate of 0 turns the limit off. A cost above ``burst`` counts as ``burst``: the biggest
        write allowed at all waits for a full bucket instead of never passing.
        """
        if rate_per_s <= 0:
            return
        cost = min(cost, burst)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get((actor, kind))
            if bucket is None:
                if len(self._buckets) >= _MAX_BUCKETS:
                    self._forget_full(now, rate_per_s, burst)
                bucket = self._buckets[(actor, kind)] = _Bucket(burst, now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate_per_s)
            bucket.at = now
            if bucket.tokens < cost:
                wait_s = (cost - bucket.tokens) / rate_per_s
                raise RateLimited(
                    f"too many {kind} from {actor}: at most {rate_per_s:g} a second "
                    f"(bursts of {burst:g}); retry in {wait_s:.2f} s",
                    retry_after_s=wait_s,
                )
            bucket.tokens -= cost

    def _forget_full(self, now: float, rate_per_s: float, burst: float) -> None:
        # Rates differ per kind, so this is approximate; an actor forgotten early only gains.
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.at) * rate_per_s < burst
        }
