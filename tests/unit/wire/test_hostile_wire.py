"""What arrives from outside cannot halt the market: every spec and every report the hub takes
refuses NaN, infinities, integers beyond the store's columns and NUL bytes, naming the field, and
inventories are bounded in size."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from lumbung.errors import Rejected
from lumbung.ledger.entries import MAX_AMOUNT_MICRO
from lumbung.market.plan import escrow_micro
from lumbung.wire.api import (
    CheckpointReport,
    ClaimRequest,
    HeartbeatRequest,
    LogChunk,
    NodeRegister,
    ResumeFailed,
    RoundUpdateReport,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.spec import MAX_ESCROW_MICRO, validate_spec

SHA = "a" * 64
NAN, INF = math.nan, math.inf


def spec_data(**change: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "j",
        "command": ["echo", "{x}"],
        "grid": {"x": [1]},
        "max_price_micro_per_hour": 10,
    }
    data.update(change)
    return data


def train_data(**train: Any) -> dict[str, Any]:
    section = {"rounds": 2, **train}
    return {"name": "lm", "kind": "train", "train": section, "max_price_micro_per_hour": 10}


def refused_field(data: dict[str, Any]) -> Rejected:
    with pytest.raises(Rejected) as caught:
        validate_spec(data)
    return caught.value


# --- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF, 10**20, -(2**63)])
def test_a_grid_value_that_cannot_be_stored_is_refused_by_its_position(bad: float) -> None:
    refused = refused_field(spec_data(grid={"x": [1, bad]}))
    assert refused.field == "grid.x.1", refused.message


@pytest.mark.parametrize("bad", [None, [2], {"a": 1}])
def test_a_grid_value_of_no_scalar_type_is_refused_once_at_its_position(bad: object) -> None:
    refused = refused_field(spec_data(grid={"x": [1, bad]}))
    assert refused.field == "grid.x.1"
    assert refused.message == "grid.x.1: must be a string, a number or a boolean"


def test_the_largest_64_bit_integer_is_a_grid_value_like_any_other() -> None:
    assert validate_spec(spec_data(grid={"x": [2**63 - 1]})).task_params() == [{"x": 2**63 - 1}]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "a\x00b"}, "name"),
        ({"command": ["echo", "a\x00"]}, "command.1"),
        ({"env": {"KEY": "v\x00"}}, "env.KEY"),
        ({"inputs": [{"name": "a\x00", "sha256": SHA}]}, "inputs.0.name"),
        ({"inputs": [{"name": "a", "path": "local\x00.py"}]}, "inputs.0.path"),
        ({"outputs": ["out\x00.txt"]}, "outputs.0"),
        ({"resources": {"gpu_models": ["A100\x00"]}}, "resources.gpu_models.0"),
        ({"grid": {"x": ["one\x00"]}}, "grid.x.0"),
        ({"entrypoint": "pkg.mod:run\x00", "command": None}, "entrypoint"),
    ],
)
def test_a_nul_byte_in_any_spec_string_is_refused_by_its_field(
    change: dict[str, Any], field: str
) -> None:
    refused = refused_field(spec_data(**change))
    assert refused.field == field, refused.message


def test_a_nul_byte_in_the_train_section_is_refused_by_its_field() -> None:
    data = train_data(dataset={"name": "text", "path": "corpus\x00.txt"})
    assert refused_field(data).field == "train.dataset.path"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resources": {"memory_gb": NAN}}, "resources.memory_gb"),
        ({"resources": {"disk_gb": INF}}, "resources.disk_gb"),
        ({"resources": {"gpu_memory_gb": NAN}}, "resources.gpu_memory_gb"),
        ({"max_runtime_s": 10**20}, "max_runtime_s"),
        ({"count": 10**20}, "count"),
    ],
)
def test_spec_numbers_beyond_their_range_are_refused(change: dict[str, Any], field: str) -> None:
    assert refused_field(spec_data(**change)).field == field


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"inner": {"lr": NAN}}, "train.inner.lr"),
        ({"outer": {"momentum": NAN}}, "train.outer.momentum"),
        ({"round_deadline_s": INF}, "train.round_deadline_s"),
        (
            {"dataset": {"name": "text", "sha256": SHA, "validation_fraction": NAN}},
            "train.dataset.validation_fraction",
        ),
        ({"inner": {"warmup_steps": 10**20}}, "train.inner.warmup_steps"),
        ({"seed": -1}, "train.seed"),
        ({"seed": 2**64}, "train.seed"),
    ],
)
def test_train_numbers_beyond_their_range_are_refused(train: dict[str, Any], field: str) -> None:
    refused = refused_field(train_data(**train))
    assert refused.field == field, refused.message


def test_a_token_budget_that_needs_more_rounds_than_the_store_counts_is_refused() -> None:
    data = train_data(rounds=None, token_budget=10**18)
    refused = refused_field(data)
    assert refused.field == "train.token_budget"
    assert "rounds" in refused.message


def test_a_price_of_zero_is_refused_saying_the_escrow_needs_a_micro_credit() -> None:
    refused = refused_field(spec_data(max_price_micro_per_hour=0))
    assert refused.field == "max_price_micro_per_hour"
    assert "escrow" in refused.message
    assert "at least one micro-credit" in refused.message


def test_the_smallest_price_locks_one_micro_credit() -> None:
    spec = validate_spec(spec_data(max_price_micro_per_hour=1, max_runtime_s=1))
    assert escrow_micro(spec) == 1


def test_the_spec_refuses_exactly_the_worst_cases_the_ledger_cannot_lock() -> None:
    assert MAX_ESCROW_MICRO == MAX_AMOUNT_MICRO
    # 1,000 tasks for an hour each: the price per hour is each task's budget.
    at_limit = spec_data(grid={"x": list(range(1000))}, max_runtime_s=3600)
    spec = validate_spec({**at_limit, "max_price_micro_per_hour": MAX_AMOUNT_MICRO // 1000})
    assert escrow_micro(spec) == MAX_AMOUNT_MICRO
    over = refused_field({**at_limit, "max_price_micro_per_hour": MAX_AMOUNT_MICRO // 1000 + 1})
    assert over.field == "max_price_micro_per_hour"
    assert str(MAX_AMOUNT_MICRO) in over.message


def test_a_train_job_over_the_ledger_limit_is_refused_too() -> None:
    data = train_data(workers={"wanted": 1024})
    data.update(max_price_micro_per_hour=10**15, max_runtime_s=3600)
    assert refused_field(data).field == "max_price_micro_per_hour"


# --- reports and registrations ----------------------------------------------------------------

REPORTS: dict[type[BaseModel], dict[str, Any]] = {
    CheckpointReport: {
        "attempt": 1,
        "sha256": SHA,
        "size_bytes": 1,
        "prev_sha256": None,
        "progress": 0.5,
        "runtime_s": 1.0,
    },
    TaskComplete: {"attempt": 1, "exit_code": 0, "outputs": {}, "runtime_s": 1.0},
    TaskRelease: {"attempt": 1, "runtime_s": 1.0},
    RoundUpdateReport: {
        "attempt": 1,
        "sha256": SHA,
        "base_sha": SHA,
        "tokens": 1,
        "inner_steps": 1,
        "train_loss": 1.0,
        "bytes_down": 0,
        "runtime_s": 1.0,
    },
    ResumeFailed: {"attempt": 1, "failed": [SHA], "resumed_from": None, "reason": "bad"},
    HeartbeatRequest: {"tasks": [{"task_id": "task_a", "attempt": 1, "progress": 0.5}]},
    ClaimRequest: {"wait_s": 1.0},
    LogChunk: {"attempt": 1, "stream": "stdout", "text": "hi"},
    NodeRegister: {
        "name": "n",
        "inventory": {
            "cpus": 1,
            "memory_mib": 1024,
            "disk_free_mib": 1024,
            "gpus": [{"model": "A100", "memory_mib": 81920}],
        },
        "price_micro_per_gpu_hour": 0,
        "price_micro_per_cpu_hour": 1,
    },
}


def refused_at(model: type[BaseModel], path: str, value: Any) -> str:
    """Set the dotted ``path`` of the model's good payload to ``value``; the dotted location of
    the error it then raises."""
    data = _with(REPORTS[model], path.split("."), value)
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return ".".join(str(p) for p in caught.value.errors()[0]["loc"])


def _with(data: Any, keys: list[str], value: Any) -> Any:
    if not keys:
        return value
    if isinstance(data, list):
        copy = list(data)
        copy[int(keys[0])] = _with(copy[int(keys[0])], keys[1:], value)
        return copy
    return {**data, keys[0]: _with(data.get(keys[0]), keys[1:], value)}


def test_the_good_payloads_are_accepted() -> None:
    for model, data in REPORTS.items():
        model.model_validate(data)


FLOATS = [
    (CheckpointReport, "progress"),
    (CheckpointReport, "runtime_s"),
    (TaskComplete, "runtime_s"),
    (TaskRelease, "runtime_s"),
    (RoundUpdateReport, "train_loss"),
    (RoundUpdateReport, "base_val_loss"),
    (RoundUpdateReport, "runtime_s"),
    (HeartbeatRequest, "tasks.0.progress"),
    (ClaimRequest, "wait_s"),
]


@pytest.mark.parametrize(("model", "path"), FLOATS)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_no_report_takes_a_number_that_is_not_finite(
    model: type[BaseModel], path: str, bad: float
) -> None:
    assert refused_at(model, path, bad) == path


@pytest.mark.parametrize("model", [CheckpointReport, TaskComplete, TaskRelease, RoundUpdateReport])
def test_a_reported_runtime_is_at_most_the_longest_time_limit_and_an_hour(
    model: type[BaseModel],
) -> None:
    assert refused_at(model, "runtime_s", 7 * 24 * 3600 + 3601.0) == "runtime_s"
    model.model_validate({**REPORTS[model], "runtime_s": 7 * 24 * 3600 + 3600.0})


@pytest.mark.parametrize(
    ("model", "path", "bad"),
    [
        (TaskComplete, "exit_code", 2**31),
        (TaskComplete, "exit_code", -(2**31) - 1),
        (TaskComplete, "exit_code", 10**20),
        (TaskComplete, "attempt", 2**31),
        (CheckpointReport, "size_bytes", 2**63),
        (CheckpointReport, "attempt", 10**20),
        (TaskRelease, "attempt", 2**31),
        (RoundUpdateReport, "attempt", 2**31),
        (ResumeFailed, "attempt", 2**31),
        (LogChunk, "attempt", 10**20),
        (HeartbeatRequest, "tasks.0.attempt", 10**20),
        (NodeRegister, "inventory.memory_mib", 10**20),
        (NodeRegister, "inventory.disk_free_mib", 10**20),
        (NodeRegister, "inventory.gpus.0.memory_mib", 10**20),
    ],
)
def test_integers_beyond_what_the_store_holds_are_refused_by_field(
    model: type[BaseModel], path: str, bad: int
) -> None:
    assert refused_at(model, path, bad) == path


def test_an_exit_code_inside_32_bits_is_taken_as_it_is() -> None:
    for code in (-(2**31), -9, 0, 255, 2**31 - 1):
        assert TaskComplete.model_validate({**REPORTS[TaskComplete], "exit_code": code})


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (TaskComplete, "error"),
        (TaskRelease, "reason"),
        (ResumeFailed, "reason"),
        (NodeRegister, "name"),
        (NodeRegister, "inventory.os"),
        (NodeRegister, "inventory.python"),
        (NodeRegister, "inventory.torch"),
        (NodeRegister, "inventory.gpus.0.model"),
        (NodeRegister, "inventory.gpus.0.driver"),
        (HeartbeatRequest, "tasks.0.task_id"),
    ],
)
def test_a_nul_byte_in_any_report_text_is_refused_by_its_field(
    model: type[BaseModel], path: str
) -> None:
    assert refused_at(model, path, "a\x00b") == path


def test_a_nul_byte_in_an_isolation_note_is_refused_by_its_position() -> None:
    path = "inventory.isolation"
    assert refused_at(NodeRegister, path, {"notes": ["ok", "a\x00"]}) == f"{path}.notes.1"


def test_a_nul_byte_in_an_output_name_is_refused() -> None:
    loc = refused_at(TaskComplete, "outputs", {"out\x00": SHA})
    assert loc.startswith("outputs.out\x00")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("inventory.os", "x" * 3_900_000),
        ("inventory.python", "x" * 101),
        ("inventory.torch", "x" * 101),
        ("inventory.gpus.0.driver", "x" * 101),
        ("inventory.gpus.0.cuda_capability", "x" * 17),
        ("inventory.gpus", [{"model": "A100", "memory_mib": 1}] * 65),
        ("inventory.isolation", {"notes": ["n"] * 17}),
        ("name", "x" * 101),
    ],
)
def test_an_inventory_is_bounded_in_every_string_and_list(path: str, value: Any) -> None:
    assert refused_at(NodeRegister, path, value).startswith(path)


def test_task_output_keeps_its_nul_bytes_as_replacement_characters() -> None:
    chunk = LogChunk.model_validate({**REPORTS[LogChunk], "text": "a\x00b\x00"})
    assert chunk.text == "a\ufffdb\ufffd"
