"""A node's reputation for one kind of work: earned slowly by verified results, lost quickly.

The hub feeds in verdicts (``verify``'s, as plain booleans); matching and plans read the score.
Evidence fades with a half-life of ``HALF_LIFE_S``, so a node idle for months is trusted less
than one checked last week, and one proven wrong result weighs as much as ``FAILURE_WEIGHT``
verified ones: a node that cheats once needs that many more good results to be back where it was.

The score is the mean of a Beta distribution over "the next result is valid", starting from one
valid and one invalid pseudo-result (a new node scores 0.5), with failures weighted;
``confidence`` says how much evidence stands behind it, from 0 (none) towards 1.
"""

from __future__ import annotations

from dataclasses import dataclass

HALF_LIFE_S = 30 * 86_400.0
FAILURE_WEIGHT = 20.0
# Decayed results at which confidence reaches one half.
CONFIDENCE_HALF = 10.0


@dataclass(frozen=True)
class Reputation:
    verified: float = 0.0  # decayed count of results verified valid, as of ``as_of``
    failed: float = 0.0  # decayed count of results proven wrong (or failed hardware proofs)
    as_of: float = 0.0  # Unix seconds

    def at(self, now: float) -> Reputation:
        """The same evidence, faded to ``now`` (never brightened by a clock that went back)."""
        elapsed = max(0.0, now - self.as_of)
        fade = 0.5 ** (elapsed / HALF_LIFE_S)
        return Reputation(self.verified * fade, self.failed * fade, max(now, self.as_of))

    def record(self, valid: bool, now: float) -> Reputation:
        faded = self.at(now)
        if valid:
            return Reputation(faded.verified + 1.0, faded.failed, faded.as_of)
        return Reputation(faded.verified, faded.failed + 1.0, faded.as_of)

    def score(self, now: float) -> float:
        faded = self.at(now)
        good = faded.verified + 1.0
        return good / (good + FAILURE_WEIGHT * faded.failed + 1.0)

    def confidence(self, now: float) -> float:
        faded = self.at(now)
        evidence = faded.verified + faded.failed
        return evidence / (evidence + CONFIDENCE_HALF)
