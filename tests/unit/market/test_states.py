"""The task state machine table, failure accounting, and job states derived from tasks."""

from __future__ import annotations

import itertools

import pytest

from lumbung.errors import Conflict
from lumbung.market.model import JobState, Task, TaskState
from lumbung.market.states import (
    TASK_TRANSITIONS,
    TERMINAL_JOB_STATES,
    TERMINAL_TASK_STATES,
    TaskEvent,
    fail_event,
    job_state,
    next_task_state,
)

EXPECTED_TRANSITIONS = {
    (TaskState.QUEUED, TaskEvent.CLAIM): TaskState.RUNNING,
    (TaskState.RUNNING, TaskEvent.SUCCEED): TaskState.SUCCEEDED,
    (TaskState.RUNNING, TaskEvent.FAIL_RETRY): TaskState.QUEUED,
    (TaskState.RUNNING, TaskEvent.FAIL_FINAL): TaskState.FAILED,
    (TaskState.RUNNING, TaskEvent.LEASE_LOST): TaskState.QUEUED,
    (TaskState.RUNNING, TaskEvent.RELEASE): TaskState.QUEUED,
    (TaskState.QUEUED, TaskEvent.CANCEL): TaskState.CANCELLED,
    (TaskState.RUNNING, TaskEvent.CANCEL): TaskState.CANCELLED,
}
ALL_PAIRS = list(itertools.product(TaskState, TaskEvent))


def task(state: TaskState = TaskState.QUEUED, failures: int = 0) -> Task:
    return Task(
        id="task_a",
        job_id="job_a",
        index=0,
        params={},
        state=state,
        queued_at=0.0,
        updated_at=0.0,
        failures=failures,
    )


def test_transition_table_is_exactly_the_declared_machine() -> None:
    assert dict(TASK_TRANSITIONS) == EXPECTED_TRANSITIONS


def test_transition_table_cannot_be_mutated() -> None:
    with pytest.raises(TypeError):
        TASK_TRANSITIONS[(TaskState.FAILED, TaskEvent.CLAIM)] = TaskState.RUNNING  # type: ignore[index]


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_every_state_event_pair_moves_as_declared_or_conflicts(
    state: TaskState, event: TaskEvent
) -> None:
    if (state, event) in EXPECTED_TRANSITIONS:
        assert next_task_state(state, event) is EXPECTED_TRANSITIONS[(state, event)]
    else:
        with pytest.raises(Conflict) as info:
            next_task_state(state, event)
        assert info.value.message == f"task is {state.value}; cannot {event.value}"


def test_illegal_transition_message_names_state_and_event() -> None:
    with pytest.raises(Conflict, match="task is succeeded; cannot cancel"):
        next_task_state(TaskState.SUCCEEDED, TaskEvent.CANCEL)


def test_terminal_task_states_are_those_no_event_leaves() -> None:
    assert {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED} == TERMINAL_TASK_STATES
    for state, event in ALL_PAIRS:
        if state in TERMINAL_TASK_STATES:
            with pytest.raises(Conflict):
                next_task_state(state, event)


def test_terminal_job_states_are_succeeded_failed_cancelled() -> None:
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED} == TERMINAL_JOB_STATES


def test_every_non_terminal_task_state_is_reachable_and_can_end() -> None:
    targets = set(TASK_TRANSITIONS.values())
    sources = {state for state, _ in TASK_TRANSITIONS}
    assert sources == set(TaskState) - TERMINAL_TASK_STATES
    assert targets >= TERMINAL_TASK_STATES


@pytest.mark.parametrize(
    ("failures_before", "retries", "expected"),
    [
        (0, 0, TaskEvent.FAIL_FINAL),  # no retries: the first failure is final
        (0, 1, TaskEvent.FAIL_RETRY),
        (1, 1, TaskEvent.FAIL_FINAL),
        (0, 2, TaskEvent.FAIL_RETRY),
        (1, 2, TaskEvent.FAIL_RETRY),
        (2, 2, TaskEvent.FAIL_FINAL),
        (5, 2, TaskEvent.FAIL_FINAL),
    ],
)
def test_failure_requeues_while_retries_remain_then_is_final(
    failures_before: int, retries: int, expected: TaskEvent
) -> None:
    assert fail_event(task(TaskState.RUNNING, failures=failures_before), retries) is expected


def test_retries_two_allows_exactly_three_failed_attempts() -> None:
    t = task(TaskState.RUNNING)
    events = []
    for _ in range(3):
        event = fail_event(t, retries=2)
        events.append(event)
        t.state = next_task_state(t.state, event)
        t.failures += 1
        if t.state is TaskState.QUEUED:
            t.state = next_task_state(t.state, TaskEvent.CLAIM)
    assert events == [TaskEvent.FAIL_RETRY, TaskEvent.FAIL_RETRY, TaskEvent.FAIL_FINAL]
    assert t.state is TaskState.FAILED


def tasks(*states: TaskState) -> list[Task]:
    return [task(s) for s in states]


Q, R, S, F, C = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.CANCELLED,
)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((Q, Q), JobState.QUEUED),
        ((Q, R), JobState.RUNNING),
        ((Q, S), JobState.RUNNING),  # part done, the rest waiting: still in progress
        ((S, S), JobState.SUCCEEDED),
        ((S,), JobState.SUCCEEDED),
        ((S, F), JobState.FAILED),
        ((R, F), JobState.FAILED),
        ((Q, F), JobState.FAILED),
        ((), JobState.QUEUED),
    ],
)
def test_job_state_is_derived_from_task_states(
    states: tuple[TaskState, ...], expected: JobState
) -> None:
    assert job_state(tasks(*states), cancelled=False) is expected


@pytest.mark.parametrize("states", [(Q, R), (S, S), (F, S), (C, C), ()])
def test_cancelled_job_is_cancelled_whatever_its_tasks(states: tuple[TaskState, ...]) -> None:
    assert job_state(tasks(*states), cancelled=True) is JobState.CANCELLED


def test_one_failed_task_fails_the_job_even_when_others_still_run() -> None:
    assert job_state(tasks(R, R, F, S), cancelled=False) is JobState.FAILED
