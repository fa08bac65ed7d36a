"""Task and job state machines, declared as tables.

Every legal task transition is one row of ``TASK_TRANSITIONS``; anything not in the table is a
``Conflict``. A job's state is not stored as a machine of its own: it is derived from its tasks (and
whether the consumer cancelled it) by ``job_state``, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from enum import StrEnum
from types import MappingProxyType

from lumbung.errors import Conflict
from lumbung.market.model import JobState, Task, TaskState


class TaskEvent(StrEnum):
    CLAIM = "claim"  # a node took the task under a lease
    SUCCEED = "succeed"  # the attempt finished with its outputs
    FAIL_RETRY = "fail_retry"  # the attempt failed and the task has retries left
    FAIL_FINAL = "fail_final"  # the attempt failed and the retries are used up
    LEASE_LOST = "lease_lost"  # no heartbeat renewed the lease in time
    RELEASE = "release"  # the node gave the task back without blame (draining)
    CANCEL = "cancel"  # the consumer cancelled the job


_Q, _R = TaskState.QUEUED, TaskState.RUNNING

# The whole task machine. Losing a lease and releasing requeue the task without counting a failure:
# neither is the task's fault, and the last checkpoint lets the next node resume it.
TASK_TRANSITIONS: Mapping[tuple[TaskState, TaskEvent], TaskState] = MappingProxyType(
    {
        (_Q, TaskEvent.CLAIM): TaskState.RUNNING,
        (_R, TaskEvent.SUCCEED): TaskState.SUCCEEDED,
        (_R, TaskEvent.FAIL_RETRY): TaskState.QUEUED,
        (_R, TaskEvent.FAIL_FINAL): TaskState.FAILED,
        (_R, TaskEvent.LEASE_LOST): TaskState.QUEUED,
        (_R, TaskEvent.RELEASE): TaskState.QUEUED,
        (_Q, TaskEvent.CANCEL): TaskState.CANCELLED,
        (_R, TaskEvent.CANCEL): TaskState.CANCELLED,
    }
)

# States no event leaves: derived from the table so the two cannot drift apart.
TERMINAL_TASK_STATES: frozenset[TaskState] = frozenset(
    s for s in TaskState if not any(state == s for state, _ in TASK_TRANSITIONS)
)
TERMINAL_JOB_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


def next_task_state(state: TaskState, event: TaskEvent) -> TaskState:
    """The state ``event`` moves a task in ``state`` to; ``Conflict`` when the table has no row."""
    try:
        return TASK_TRANSITIONS[(state, event)]
    except KeyError:
        raise Conflict(f"task is {state}; cannot {event}") from None


def fail_event(task: Task, retries: int) -> TaskEvent:
    """Which failure event to apply when the running attempt of ``task`` has just failed.

    ``task.failures`` counts the failures recorded *before* this one, so this failure is number
    ``task.failures + 1``. A job allowing ``retries`` retries runs at most ``retries + 1`` attempts
    that fail: failures 1..retries requeue the task (``FAIL_RETRY``), failure ``retries + 1`` ends
    it (``FAIL_FINAL``). With ``retries == 0`` the first failure is final. The caller counts the
    failure in ``task.failures`` whichever event it applies.
    """
    return TaskEvent.FAIL_RETRY if task.failures + 1 <= retries else TaskEvent.FAIL_FINAL


def job_state(tasks: Sequence[Task], cancelled: bool) -> JobState:
    """The state of a job, derived from its tasks' states.

    In order of precedence: a cancelled job is CANCELLED whatever its tasks say; one failed task
    fails the job (its result would be incomplete); all tasks succeeded is SUCCEEDED; any task
    running or already done means the job is under way (RUNNING); otherwise it waits (QUEUED).
    A job with no tasks cannot be submitted, so the empty case is simply QUEUED.
    """
    return job_state_of({t.state for t in tasks}, cancelled)


def job_state_of(states: AbstractSet[TaskState], cancelled: bool) -> JobState:
    """``job_state`` from the set of states its tasks are in (the store can count those)."""
    if cancelled:
        return JobState.CANCELLED
    if TaskState.FAILED in states:
        return JobState.FAILED
    if states == {TaskState.SUCCEEDED}:
        return JobState.SUCCEEDED
    if states & {TaskState.RUNNING, TaskState.SUCCEEDED}:
        return JobState.RUNNING
    return JobState.QUEUED
