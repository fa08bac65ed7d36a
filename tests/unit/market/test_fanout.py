"""Fan-out of a spec into tasks, and placeholders in commands."""

from __future__ import annotations

from typing import Any

import pytest
from factories import job

from lumbung.errors import Rejected
from lumbung.ids import is_object_id
from lumbung.market.fanout import render_command, tasks_for, validate_command_placeholders
from lumbung.market.model import TaskState
from lumbung.wire.spec import JobSpec, Scalar


def spec(**fields: Any) -> JobSpec:
    return job(**{"command": ["echo", "hi"], "grid": {}, "max_price_micro_per_hour": 1, **fields})


def test_one_queued_task_per_parameter_set_in_order() -> None:
    s = spec(command=["train", "--lr={lr}", "--seed={seed}"], grid={"lr": [0.1, 0.01], "seed": [1]})
    tasks = tasks_for("job_x", s, now=100.0)
    assert [t.index for t in tasks] == [0, 1]
    assert [t.params for t in tasks] == s.task_params()
    assert [t.params for t in tasks] == [{"lr": 0.1, "seed": 1}, {"lr": 0.01, "seed": 1}]
    for t in tasks:
        assert t.state is TaskState.QUEUED
        assert t.job_id == "job_x"
        assert t.queued_at == t.updated_at == 100.0
        assert t.attempt == 0
        assert t.failures == 0
        assert t.node_id is None


def test_count_repeats_the_grid() -> None:
    tasks = tasks_for("job_x", spec(count=3, grid={"a": [1, 2]}), now=0.0)
    assert len(tasks) == 6
    assert [t.index for t in tasks] == list(range(6))
    assert [t.params["a"] for t in tasks] == [1, 2, 1, 2, 1, 2]


def test_spec_without_grid_gives_one_task_with_no_params() -> None:
    tasks = tasks_for("job_x", spec(), now=0.0)
    assert len(tasks) == 1
    assert tasks[0].params == {}


def test_task_ids_are_fresh_task_ids() -> None:
    tasks = tasks_for("job_x", spec(count=50), now=0.0)
    assert all(is_object_id(t.id, "task") for t in tasks)
    assert len({t.id for t in tasks}) == 50


def test_task_params_are_independent_copies() -> None:
    tasks = tasks_for("job_x", spec(count=2, grid={"a": [1]}), now=0.0)
    tasks[0].params["a"] = 99
    assert tasks[1].params["a"] == 1


def test_tasks_for_rejects_a_spec_with_an_unknown_placeholder() -> None:
    with pytest.raises(Rejected) as info:
        tasks_for("job_x", spec(command=["run", "{nope}"]), now=0.0)
    assert info.value.field == "command"


def test_placeholders_are_replaced_with_the_string_of_the_value() -> None:
    cmd = ["python", "t.py", "--lr={lr}", "{name}", "--flag={flag}", "{n}{n}"]
    params: dict[str, Scalar] = {"lr": 0.001, "name": "bert", "flag": True, "n": 3}
    assert render_command(cmd, params) == [
        "python",
        "t.py",
        "--lr=0.001",
        "bert",
        "--flag=True",
        "33",
    ]


def test_command_without_placeholders_is_unchanged() -> None:
    assert render_command(["echo", "a b", "--x=1"], {"unused": 1}) == ["echo", "a b", "--x=1"]


def test_doubled_braces_are_literal_braces() -> None:
    cmd = ["awk", "{{print $1}}", "{{{a}}}", "{{a}}"]
    assert render_command(cmd, {"a": 7}) == ["awk", "{print $1}", "{7}", "{a}"]


def test_values_containing_braces_are_not_rendered_again() -> None:
    assert render_command(["{a}"], {"a": "{b}"}) == ["{b}"]


@pytest.mark.parametrize(
    "arg",
    [
        "{missing}",
        "--x={lr}{missing}",
        "{}",
        "{0}",
        "{lr.real}",
        "{lr[0]}",
        "{lr!r}",
        "{lr:>5}",
        "{ lr }",
        "awk {print $1}",
    ],
)
def test_unknown_or_non_name_placeholder_is_rejected_naming_command(arg: str) -> None:
    with pytest.raises(Rejected) as info:
        render_command(["run", arg], {"lr": 0.1})
    assert info.value.field == "command"
    assert "argument 1" in info.value.message
    assert "unknown placeholder" in info.value.message
    assert "lr" in info.value.message  # the known names are listed


@pytest.mark.parametrize("arg", ["{", "}", "a{b", "a}b", "{lr}}", "{{lr}"])
def test_stray_brace_is_rejected(arg: str) -> None:
    with pytest.raises(Rejected, match="unmatched") as info:
        render_command([arg], {"lr": 0.1})
    assert info.value.field == "command"


def test_validation_accepts_placeholders_the_grid_defines() -> None:
    validate_command_placeholders(
        spec(command=["t", "{lr}", "{{x}}", "{seed}"], grid={"lr": [1], "seed": [2]})
    )


def test_validation_rejects_placeholder_missing_from_grid() -> None:
    with pytest.raises(Rejected, match=r"\{seed\}") as info:
        validate_command_placeholders(spec(command=["t", "{lr}", "{seed}"], grid={"lr": [1]}))
    assert info.value.field == "command"


def test_validation_says_when_there_is_no_grid() -> None:
    with pytest.raises(Rejected, match="no grid"):
        validate_command_placeholders(spec(command=["t", "{lr}"]))


def test_entrypoint_specs_have_no_command_to_validate() -> None:
    validate_command_placeholders(spec(command=None, entrypoint="pkg.mod:main", grid={"a": [1]}))


def test_a_replicated_job_has_its_replicas_of_each_task_sharing_its_index() -> None:
    spec = job(grid={"x": [1, 2]}, verify={"mode": "replicate", "replicas": 3})
    tasks = tasks_for("job_x", spec, 0.0)
    assert [(t.index, t.replica, t.params) for t in tasks] == [
        (0, 0, {"x": 1}), (0, 1, {"x": 1}), (0, 2, {"x": 1}),
        (1, 0, {"x": 2}), (1, 1, {"x": 2}), (1, 2, {"x": 2}),
    ]  # fmt: skip
    assert len({t.id for t in tasks}) == 6
