"""The job spec: valid specs parse, and every bad field is refused by its dotted name."""

from __future__ import annotations

import pytest
from factories import train_job

from lumbung.errors import Rejected
from lumbung.wire.spec import parse_spec, validate_spec

GOOD = """
name: sweep
command: ["python", "inputs/train.py", "--lr", "{lr}"]
inputs:
  - {name: train.py, path: train.py}
outputs: [result.json]
grid: {lr: [0.1, 0.01], depth: [2, 3, 4]}
count: 2
resources: {cpus: 2, memory_gb: 4, gpus: 1, gpu_models: [A100]}
max_price_micro_per_hour: 500000
"""


def test_a_yaml_spec_fans_out_into_count_times_the_grid() -> None:
    spec = parse_spec(GOOD)
    assert spec.task_count() == 12
    params = spec.task_params()
    assert len(params) == 12
    assert params[0] == {"depth": 2, "lr": 0.1}
    assert params[:6] == params[6:]  # count repeats the whole grid


def test_json_is_yaml_too() -> None:
    spec = parse_spec('{"name": "j", "entrypoint": "pkg.mod:run", "max_price_micro_per_hour": 1}')
    assert spec.entrypoint == "pkg.mod:run"
    assert spec.task_count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resources": {"cpus": 0}}, "resources.cpus"),
        ({"resources": {"gpus": -1}}, "resources.gpus"),
        ({"resources": {"memory_gb": "lots"}}, "resources.memory_gb"),
        ({"max_price_micro_per_hour": -5}, "max_price_micro_per_hour"),
        ({"max_price_micro_per_hour": 1.5}, "max_price_micro_per_hour"),
        ({"max_runtime_s": 0}, "max_runtime_s"),
        ({"retries": 99}, "retries"),
        ({"outputs": ["../../etc/passwd"]}, "outputs"),
        ({"inputs": [{"name": "/abs", "sha256": "0" * 64}]}, "inputs.0.name"),
        ({"inputs": [{"name": "a", "sha256": "XYZ"}]}, "inputs.0.sha256"),
        ({"env": {"LUMBUNG_TASK_ID": "x"}}, "env"),
        ({"grid": {"lr": []}}, "grid"),
        ({"kind": "mine-bitcoin"}, "kind"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_each_bad_field_is_refused_by_name(change: dict[str, object], field: str) -> None:
    data: dict[str, object] = {"name": "j", "command": ["true"], "max_price_micro_per_hour": 10}
    data.update(change)
    with pytest.raises(Rejected) as caught:
        validate_spec(data)
    assert caught.value.field == field, caught.value.message
    assert caught.value.message.startswith(field)


def test_command_and_entrypoint_are_exclusive() -> None:
    both = {"name": "j", "command": ["true"], "entrypoint": "m:f", "max_price_micro_per_hour": 1}
    with pytest.raises(Rejected, match="exactly one of 'command' or 'entrypoint'"):
        validate_spec(both)


def test_too_many_tasks_are_refused() -> None:
    huge = {
        "name": "j",
        "command": ["true"],
        "max_price_micro_per_hour": 1,
        "count": 10_000,
        "grid": {"x": [1, 2]},
    }
    with pytest.raises(Rejected, match="more than 10000 tasks"):
        validate_spec(huge)


@pytest.mark.parametrize("text", ["- just\n- a list\n", "name: [unclosed", ""])
def test_text_that_is_not_a_mapping_is_refused(text: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse_spec(text)
    assert caught.value.field == "spec"


def _train(**train: object) -> dict[str, object]:
    return train_job({"rounds": 3, **train}, max_price_micro_per_hour=10**6)


def test_a_train_job_has_one_task_per_wanted_worker_each_with_its_shard() -> None:
    spec = validate_spec(_train(workers={"wanted": 3, "minimum": 2}))
    assert spec.task_count() == 3
    assert spec.task_params() == [{"shard": 0}, {"shard": 1}, {"shard": 2}]
    assert spec.train is not None
    assert spec.train.total_rounds() == 3


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"inner_steps": 0}, "train.inner_steps"),
        ({"inner": {"lr": -0.1}}, "train.inner.lr"),
        ({"model": {"kind": "gpt-9"}}, "train.model.kind"),
        ({"dataset": {"name": "wikipedia"}}, "train.dataset.name"),
        ({"workers": {"wanted": 2, "minimum": 3}}, "train.workers"),
        ({"outer": {"momentum": 1.0}}, "train.outer.momentum"),
        ({"compression": {"codec": "zip"}}, "train.compression.codec"),
    ],
)
def test_a_bad_train_section_is_refused_naming_the_field(
    train: dict[str, object], field: str
) -> None:
    with pytest.raises(Rejected) as caught:
        validate_spec(_train(**train))
    assert caught.value.field == field


def test_train_and_run_fields_do_not_mix() -> None:
    with pytest.raises(Rejected, match="needs a 'train' section"):
        validate_spec({"name": "lm", "kind": "train", "max_price_micro_per_hour": 1})
    with pytest.raises(Rejected, match="no command or entrypoint"):
        validate_spec({**_train(), "command": ["python", "x.py"]})
    with pytest.raises(Rejected, match="needs kind: train"):
        validate_spec({**_train(), "kind": "run", "command": ["true"]})
    with pytest.raises(Rejected, match="exactly one of rounds and token_budget"):
        validate_spec(_train(token_budget=1000))


@pytest.mark.parametrize(
    ("verify", "field"),
    [
        ({"mode": "replicate", "replicas": 1}, "verify.replicas"),
        ({"mode": "replicate", "replicas": 17}, "verify.replicas"),
        ({"mode": "replicate", "quorum": 3}, "verify.quorum"),
        ({"mode": "replicate", "replicas": 4, "max_replicas": 3}, "verify.max_replicas"),
        ({"replicas": 3}, "verify.replicas"),
        ({"mode": "none", "compare": "numeric"}, "verify.compare"),
        ({"mode": "replicate", "atol": 0.5}, "verify.atol"),
        ({"mode": "replicate", "compare": "numeric", "rtol": -1}, "verify.rtol"),
        ({"mode": "replicate", "compare": "numeric", "atol": float("nan")}, "verify.atol"),
        ({"mode": "replicate", "compare": "md5"}, "verify.compare"),
        ({"mode": "replicate", "quota": 2}, "verify.quota"),
    ],
)
def test_a_verify_section_that_does_not_hold_is_refused_by_name(
    verify: dict[str, object], field: str
) -> None:
    data = {"name": "j", "command": ["true"], "max_price_micro_per_hour": 10, "verify": verify}
    with pytest.raises(Rejected) as caught:
        validate_spec(data)
    assert caught.value.field == field, caught.value.message


def test_replication_counts_every_run_against_the_task_limit() -> None:
    spec = {
        "name": "j",
        "command": ["true"],
        "max_price_micro_per_hour": 1,
        "count": 5_000,
        "verify": {"mode": "replicate"},
    }
    with pytest.raises(Rejected) as caught:
        validate_spec(spec)  # 5,000 tasks x 3 runs each
    assert caught.value.field == "verify.max_replicas"
    ok = validate_spec({**spec, "verify": {"mode": "replicate", "max_replicas": 2}})
    assert ok.verify.runs_per_task() == 2


def test_a_train_job_is_screened_not_replicated() -> None:
    with pytest.raises(Rejected) as caught:
        validate_spec(train_job(verify={"mode": "replicate"}))
    assert caught.value.field == "verify.mode"
    assert validate_spec(train_job(verify={"mode": "none"})).verify.mode == "none"


def test_adaptive_runs_each_task_once_and_locks_a_check_and_a_tie_break() -> None:
    base = {"name": "j", "command": ["true"], "max_price_micro_per_hour": 10}
    spec = validate_spec({**base, "verify": {"mode": "adaptive"}})
    assert (spec.verify.first_replicas(), spec.verify.quorum_of()) == (1, 2)
    assert spec.verify.runs_per_task() == 3
    with pytest.raises(Rejected) as caught:
        validate_spec({**base, "verify": {"mode": "adaptive", "quorum": 3}})
    assert caught.value.field == "verify.quorum"  # adaptive's quorum is its check: always two
