"""The Llama-style character model: causal, tied, and flat weights that round-trip."""

from __future__ import annotations

import numpy as np
import torch

from lumbung.train.inner import build_model, flat_weights, load_flat_weights
from lumbung.train.spec import ModelConfig

CONFIG = ModelConfig(vocab_size=20, dim=16, n_layers=2, n_heads=2, context_length=12, mlp_hidden=32)


def test_a_later_character_never_changes_an_earlier_prediction() -> None:
    model = build_model(CONFIG, 0, torch.device("cpu")).eval()
    tokens = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 20
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-6)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_the_same_seed_builds_the_same_model_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = flat_weights(build_model(CONFIG, 5, torch.device("cpu")))
    assert torch.equal(torch.rand(1), expected)
    b = flat_weights(build_model(CONFIG, 5, torch.device("cpu")))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, flat_weights(build_model(CONFIG, 6, torch.device("cpu"))))


def test_flat_weights_round_trip_and_count_the_tied_embedding_once() -> None:
    model = build_model(CONFIG, 0, torch.device("cpu"))
    assert model.head.weight is model.embed.weight
    flat = flat_weights(model)
    assert flat.size == sum(p.numel() for p in model.parameters())
    load_flat_weights(model, flat * 2)
    assert np.array_equal(flat_weights(model), flat * 2)


def test_generation_extends_the_prompt() -> None:
    model = build_model(CONFIG, 0, torch.device("cpu"))
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 23)
    assert torch.equal(out[:, :3], prompt)
