"""The ``train`` section of a job spec: defaults from the paper, refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from factories import train_job

from lumbung.errors import Rejected
from lumbung.train.codec import CodecConfig
from lumbung.train.outer import OuterConfig
from lumbung.train.spec import codec_config, model_config, outer_config
from lumbung.wire.spec import validate_spec
from lumbung.wire.train import TrainSpec


def validate_train_spec(data: dict[str, Any]) -> TrainSpec:
    """The train section as a job spec carries it."""
    train = validate_spec(train_job(data)).train
    assert train is not None
    return train


def _refused(data: dict[str, Any]) -> Rejected:
    with pytest.raises(Rejected) as info:
        validate_train_spec(data)
    return info.value


def test_defaults_are_the_papers_outer_optimiser_and_int8_compression() -> None:
    spec = validate_train_spec({"rounds": 10})
    assert outer_config(spec.outer) == OuterConfig(lr=0.7, momentum=0.9, nesterov=True)
    assert codec_config(spec.compression) == CodecConfig("int8", 256)
    assert spec.inner.kind == "adamw"
    assert spec.inner_steps == 50
    assert model_config(spec.model, 84).vocab_size == 84


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"rounds": 10, "inner_steps": 0}, "train.inner_steps"),
        ({"rounds": 10, "inner": {"lr": -0.1}}, "train.inner.lr"),
        ({"rounds": 10, "outer": {"lr": -0.7}}, "train.outer.lr"),
        ({"rounds": 10, "model": {"kind": "gpt-5"}}, "train.model.kind"),
        ({"rounds": 10, "dataset": {"name": "wikipedia"}}, "train.dataset.name"),
        ({"rounds": 10, "dataset": {"sharding": "random"}}, "train.dataset.sharding"),
        ({"rounds": 10, "compression": {"codec": "int4"}}, "train.compression.codec"),
        ({"rounds": 10, "workers": {"wanted": 2, "minimum": 3}}, "train.workers"),
        ({"rounds": 10, "model": {"dim": 100, "heads": 3}}, "train.model"),
        ({"rounds": 10, "round_deadline_s": 0}, "train.round_deadline_s"),
        ({"rounds": 10, "colour": "blue"}, "train.colour"),
        ({}, "train"),
        ({"rounds": 10, "token_budget": 1000}, "train"),
    ],
)
def test_bad_train_sections_are_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    error = _refused(data)
    assert error.field == field
    assert error.message.startswith(field)


def test_unknown_model_error_lists_the_built_in_ones() -> None:
    assert "llama-char" in _refused({"rounds": 1, "model": {"kind": "gpt-5"}}).message


def test_a_token_budget_becomes_whole_rounds() -> None:
    spec = validate_train_spec(
        {
            "token_budget": 1_000_000,
            "workers": {"wanted": 4},
            "inner_steps": 50,
            "inner": {"batch_size": 16},
            "model": {"context": 64},
        }
    )
    assert spec.tokens_per_round() == 4 * 50 * 16 * 64
    assert spec.total_rounds() == 5  # 1e6 / 204,800 rounded up
