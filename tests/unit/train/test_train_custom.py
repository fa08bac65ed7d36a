"""A consumer's own model (train.model.kind custom): loaded, checked, trained like the built-in."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from factories import train_job

from lumbung.errors import Rejected
from lumbung.train.custom import build_custom
from lumbung.wire.spec import validate_spec

MODULE = """
from torch import nn

class Bigram(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, tokens):
        return self.table(tokens)

def build(vocab_size, context):
    return Bigram(vocab_size)

def wrong_shape(vocab_size, context):
    return Bigram(vocab_size + 1)

def not_a_module(vocab_size, context):
    return "a string"
"""


@pytest.fixture
def code_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "consumer_bigram.py").write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("consumer_bigram", None)


def test_a_custom_model_is_seeded_the_same_everywhere_and_learns(code_dir: Path) -> None:
    first = build_custom("consumer_bigram:build", vocab_size=5, context=8, seed=3)
    again = build_custom("consumer_bigram:build", vocab_size=5, context=8, seed=3)
    assert torch.equal(first.inner.table.weight, again.inner.table.weight)
    tokens = torch.tensor([[0, 1, 2, 3]])
    before = float(first.loss(tokens[:, :-1], tokens[:, 1:]).detach())
    optimiser = torch.optim.SGD(first.parameters(), lr=1.0)
    for _ in range(20):
        optimiser.zero_grad()
        first.loss(tokens[:, :-1], tokens[:, 1:]).backward()
        optimiser.step()
    assert float(first.loss(tokens[:, :-1], tokens[:, 1:]).detach()) < before
    assert first.generate(tokens, 3).shape == (1, 7)


@pytest.mark.parametrize(
    ("factory", "why"),
    [
        ("consumer_bigram:wrong_shape", "logits of shape"),
        ("consumer_bigram:not_a_module", "not a torch module"),
        ("consumer_bigram:missing", "cannot load"),
        ("no_such_module:build", "cannot load"),
    ],
)
def test_a_custom_model_that_cannot_work_is_refused_naming_the_factory(
    code_dir: Path, factory: str, why: str
) -> None:
    with pytest.raises(Rejected, match=why) as caught:  # noqa: PT012 - building or calling refuses
        model = build_custom(factory, vocab_size=5, context=8, seed=0)
        model(torch.tensor([[0, 1]]))
    assert caught.value.field == "train.model.factory"


def test_a_custom_model_names_its_factory_and_only_a_custom_model_does() -> None:
    ok = validate_spec(
        train_job({"rounds": 1, "model": {"kind": "custom", "factory": "my.models:tiny"}})
    )
    assert ok.train is not None
    assert ok.train.model.factory == "my.models:tiny"
    for bad, field in (
        ({"kind": "custom"}, "train.model"),
        ({"factory": "my.models:tiny"}, "train.model"),
        ({"kind": "custom", "factory": "no colon"}, "train.model.factory"),
    ):
        with pytest.raises(Rejected) as caught:
            validate_spec(train_job({"rounds": 1, "model": bad}))
        assert caught.value.field == field
