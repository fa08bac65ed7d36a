"""How often a node's results are checked: adaptive replication, as BOINC does it, with a floor.

Per (node, workload kind) the hub counts the node's consecutive valid results. Under
``TRUST_AFTER`` of them every result is checked; after that a result is checked with probability
``1 / count``, never less than ``CHECK_FLOOR``; one invalid result sets the count back to zero.

The floor is what catches a node that behaves for a while and then cheats now and then: BOINC's
``1 / count`` alone keeps falling as trust grows. The target is a node honest for 15 tasks and
then wrong in 20% of them, caught within 200 tasks at least 95% of the time: its 185 later
tasks hold about 37 wrong results, each checked with probability ``f``, so it escapes with
``(1 - f) ** 37``, which is under 5% for ``f >= 0.078``. ``f = 0.09`` escapes 3.1% of the time
(96.9% caught) and costs honest providers 9% extra node-time in steady state, inside the 10%
overhead budget. A check is either a replica on another node or the re-issue of an already
verified task to the node under test, which it cannot tell from real work.
"""

from __future__ import annotations

from dataclasses import dataclass

TRUST_AFTER = 10
CHECK_FLOOR = 0.09


@dataclass(frozen=True)
class CheckRate:
    trust_after: int = TRUST_AFTER
    floor: float = CHECK_FLOOR

    def probability(self, consecutive_valid: int) -> float:
        """The chance that the next result of a node with this count is checked."""
        if consecutive_valid < self.trust_after:
            return 1.0
        return max(self.floor, 1.0 / consecutive_valid)

    def should_check(self, consecutive_valid: int, draw: float) -> bool:
        """``draw``: uniform in [0, 1), from the hub's random source, never the node's."""
        return draw < self.probability(consecutive_valid)


def after_verdict(consecutive_valid: int, valid: bool) -> int:
    """The count after a checked result: one more when valid, zero when not."""
    return consecutive_valid + 1 if valid else 0
