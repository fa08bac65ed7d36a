"""Replicas of one task and the quorum that settles its result.

A replicated task runs on distinct providers. Two replicas agree when every output has the same
hash, or, when they ran in different execution classes, when the job's comparator says their
outputs agree (``lumbung.verify.compare``); within one class an honest task is bit for bit
reproducible, so a different hash there is a disagreement. Replicas that agree form a group; a
group of ``quorum`` replicas settles the canonical result, and every replica outside it is a
proven wrong result. Without a quorum another replica is asked for, up to ``max_replicas``; a
task that reaches that bound undecided blames nobody (an honest provider is never slashed on a
tie), and its job is told the task could not be verified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

# Outputs of two replicas from different execution classes: do they agree? The hub answers it
# with the job's comparator over the output blobs.
CrossClassAgreement = Callable[["Replica", "Replica"], bool]


@dataclass(frozen=True)
class Replica:
    """One provider's committed result of a task."""

    node_id: str
    execution_class: str  # a digest of device, library versions, dtype, threads, flags
    outputs: Mapping[str, str]  # output name -> SHA-256


@dataclass(frozen=True)
class QuorumVerdict:
    state: Literal["agreed", "pending", "undecided"]
    canonical: Replica | None = None  # agreed: the result the job keeps
    agreeing: tuple[str, ...] = ()  # agreed: the nodes whose results are the canonical one
    wrong: tuple[str, ...] = ()  # agreed: nodes proven to have returned a wrong result
    more_needed: int = 0  # pending: replicas still to run before a quorum can be reached

    def explain(self) -> str:
        if self.state == "agreed":
            text = f"verified by a quorum of {len(self.agreeing)}"
            if self.wrong:
                text += f"; {len(self.wrong)} disagreeing result(s) proven wrong"
            return text
        if self.state == "pending":
            return f"waiting for {self.more_needed} more replica(s)"
        return "replicas did not agree and no more may run: not verified, nobody blamed"


def agree(a: Replica, b: Replica, across_classes: CrossClassAgreement) -> bool:
    if a.outputs.keys() != b.outputs.keys():
        return False
    if dict(a.outputs) == dict(b.outputs):
        return True
    if a.execution_class == b.execution_class:
        return False
    return across_classes(a, b)


def decide(
    replicas: Sequence[Replica],
    *,
    quorum: int,
    max_replicas: int,
    across_classes: CrossClassAgreement,
) -> QuorumVerdict:
    """The verdict on a task's replicas so far, in the order they were reported."""
    if quorum < 1 or max_replicas < quorum:
        raise ValueError("need 1 <= quorum <= max_replicas")
    if len({r.node_id for r in replicas}) != len(replicas):
        raise ValueError("each replica must come from a distinct node")
    groups: list[list[Replica]] = []
    for replica in replicas:
        for group in groups:
            if agree(group[0], replica, across_classes):
                group.append(replica)
                break
        else:
            groups.append([replica])
    groups.sort(key=len, reverse=True)  # stable: among equals, the group reported first leads
    largest = groups[0] if groups else []
    # Two groups as large as each other settle nothing, whatever the quorum: who is wrong?
    tied = len(groups) > 1 and len(groups[1]) == len(largest)
    if len(largest) >= quorum and not tied:
        wrong = tuple(r.node_id for g in groups if g is not largest for r in g)
        return QuorumVerdict(
            "agreed",
            canonical=largest[0],
            agreeing=tuple(r.node_id for r in largest),
            wrong=wrong,
        )
    room = max_replicas - len(replicas)
    needed = max(quorum - len(largest), 1 if tied else 0)
    if needed > room:
        return QuorumVerdict("undecided")
    return QuorumVerdict("pending", more_needed=needed)
