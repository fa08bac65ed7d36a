"""Cheap screening of one round's training updates, before any is aggregated.

Each worker's decoded pseudo-gradient (a flat float32 array) is checked against the others of its
round, with limits learned from the round itself rather than fixed in advance:

- not finite, or all zeros: refused outright;
- a near-copy of an update reported earlier in the round (cosine above ``COPY_COSINE``, so a
  scaled copy counts too): a free rider;
- a norm far from the round's (its log more than ``NORM_Z`` robust deviations from the median
  log-norm, and at least ``NORM_RATIO`` times off): noise, or a scaled update;
- a direction unlike the others' (cosine to the mean of the other updates below a third of the
  round's median cosine): noise, or a sign flip.

Honest DiLoCo workers start from the same weights and descend the same loss on different shards,
so their pseudo-gradients point roughly the same way; where a round's updates do not (median
cosine under ``MIN_SHARED_COSINE``) the direction check cannot tell and is skipped. The learned
limits need at least ``MIN_LEARNING_UPDATES`` updates that are not copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Update = npt.NDArray[np.float32]
_Kept = list[tuple[str, Update, float]]  # worker, update, its norm

COPY_COSINE = 0.999
NORM_Z = 4.0
NORM_RATIO = 3.0
MIN_SHARED_COSINE = 0.05
MIN_LEARNING_UPDATES = 3
# 1.4826 * MAD estimates a standard deviation for normally distributed values.
_MAD_TO_SIGMA = 1.4826
# Products are summed in float64 a slice at a time: a float32 sum over tens of millions of
# values drifts by more than the copy check's margin, and a float64 copy of a whole update of a
# large model would double the hub's memory while it closes a round.
_SLICE = 1 << 20


@dataclass(frozen=True)
class Screened:
    worker: str
    reason: str | None  # None: passed

    @property
    def passed(self) -> bool:
        return self.reason is None


def screen(updates: Sequence[tuple[str, Update]]) -> list[Screened]:
    """One verdict per update, in the order given (the order they were reported)."""
    reasons: dict[str, str | None] = {}
    kept: _Kept = []
    for worker, update in updates:
        vector = np.asarray(update, dtype=np.float32).ravel()
        reasons[worker] = _alone(vector) or _copy_of(vector, kept)
        if reasons[worker] is None:
            kept.append((worker, vector, np.sqrt(_dot(vector, vector))))
    if len(kept) >= MIN_LEARNING_UPDATES:
        for worker, reason in _against_round(kept).items():
            reasons[worker] = reason
    return [Screened(worker, reasons[worker]) for worker, _ in updates]


def _dot(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    total = 0.0
    for start in range(0, a.size, _SLICE):
        stop = start + _SLICE
        total += float(a[start:stop].astype(np.float64) @ b[start:stop].astype(np.float64))
    return total


def _alone(vector: Update) -> str | None:
    if vector.size == 0:
        return "the update is empty"
    if not np.isfinite(vector).all():
        return "the update holds values that are not finite"
    if not vector.any():
        return "the update is all zeros"
    return None


def _copy_of(vector: Update, kept: _Kept) -> str | None:
    norm = np.sqrt(_dot(vector, vector))
    for other, previous, previous_norm in kept:
        same_size = previous.size == vector.size
        if same_size and _dot(vector, previous) / (norm * previous_norm) > COPY_COSINE:
            return f"the update is a copy of {other}'s"
    return None


def _against_round(kept: _Kept) -> dict[str, str]:
    flagged: dict[str, str] = {}
    log_norms = np.log([norm for _, _, norm in kept])
    centre = float(np.median(log_norms))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(log_norms - centre)))
    for (worker, _, _), log_norm in zip(kept, log_norms, strict=True):
        off = abs(float(log_norm) - centre)
        if off > np.log(NORM_RATIO) and off > NORM_Z * spread:
            times = float(np.exp(off))
            side = "larger" if log_norm > centre else "smaller"
            flagged[worker] = f"the update's norm is {times:.1f} times {side} than the round's"
    # The cosine of each update to the sum of the others, from its products with the round's
    # total: |total - v|^2 = |total|^2 - 2 v.total + |v|^2, with no per-update copy.
    total = np.zeros(kept[0][1].size, dtype=np.float32)
    for _, vector, _ in kept:
        total += vector
    total_sq = _dot(total, total)
    cosines = []
    for _, vector, norm in kept:
        with_total = _dot(vector, total)
        others_sq = max(total_sq - 2 * with_total + norm * norm, 0.0)
        denominator = norm * np.sqrt(others_sq)
        cosines.append((with_total - norm * norm) / denominator if denominator else 0.0)
    median_cosine = float(np.median(cosines))
    if median_cosine >= MIN_SHARED_COSINE:
        for (worker, _, _), cosine in zip(kept, cosines, strict=True):
            if cosine < median_cosine / 3 and worker not in flagged:
                flagged[worker] = (
                    f"the update points away from the round's (cosine {cosine:.2f} to the "
                    f"others, where the round's median is {median_cosine:.2f})"
                )
    return flagged
