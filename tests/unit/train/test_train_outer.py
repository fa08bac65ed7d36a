"""The DiLoCo outer step and the hub's round bookkeeping, on numpy alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lumbung.errors import Rejected
from lumbung.train.codec import CodecConfig, decode, encode
from lumbung.train.outer import OuterConfig, average_pseudo_gradients, outer_step
from lumbung.train.rounds import GlobalState, close_round, full_weights


def test_outer_step_matches_torch_sgd_with_nesterov_momentum() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=50).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(weights.copy()))
    sgd = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    momentum = np.zeros_like(weights)
    for _ in range(5):
        delta = rng.normal(size=50).astype(np.float32)
        weights, momentum = outer_step(weights, momentum, delta, OuterConfig(0.7, 0.9))
        param.grad = torch.from_numpy(delta)
        sgd.step()
    np.testing.assert_allclose(weights, param.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_outer_step_with_lr_one_and_no_momentum_averages_the_workers_weights() -> None:
    rng = np.random.default_rng(1)
    start = rng.normal(size=20).astype(np.float32)
    workers = [start - rng.normal(size=20).astype(np.float32) for _ in range(3)]
    delta = average_pseudo_gradients([start - w for w in workers])
    weights, _ = outer_step(start, np.zeros_like(start), delta, OuterConfig(1.0, 0.0))
    np.testing.assert_allclose(weights, np.mean(workers, axis=0), atol=1e-6)


def test_pseudo_gradients_of_different_shapes_are_refused() -> None:
    with pytest.raises(Rejected) as info:
        average_pseudo_gradients([np.zeros(3, np.float32), np.zeros(4, np.float32)])
    assert info.value.field == "shape"
    with pytest.raises(Rejected):
        average_pseudo_gradients([])


def test_a_bad_update_refuses_the_round_and_leaves_it_unharmed() -> None:
    state = GlobalState.start(np.ones(300, dtype=np.float32))
    good = encode(np.full(300, 0.1, np.float32), CodecConfig("int8"))
    wrong_shape = encode(np.zeros(299, np.float32), CodecConfig("int8"))
    with pytest.raises(Rejected) as info:
        close_round(state, [good, wrong_shape], OuterConfig(), CodecConfig("int8"))
    assert info.value.field == "shape"
    assert state.round_index == 0
    assert np.all(state.weights == 1.0)
    closed = close_round(state, [good], OuterConfig(), CodecConfig("int8"))
    assert closed.state.round_index == 1
    assert closed.participants == 1


def test_workers_applying_the_broadcast_changes_hold_what_the_hub_published() -> None:
    rng = np.random.default_rng(2)
    state = GlobalState.start(rng.normal(size=1000).astype(np.float32))
    held = decode(full_weights(state), state.numel)
    for _ in range(10):
        updates = [
            encode(rng.normal(scale=0.01, size=1000).astype(np.float32), CodecConfig("int8"))
            for _ in range(3)
        ]
        closed = close_round(state, updates, OuterConfig(), CodecConfig("int8"))
        held = held + decode(closed.change, state.numel)
        state = closed.state
        assert np.array_equal(held, state.published)
        # Hub-side error feedback: the workers' copy is off by at most one round's quantisation.
        change_bound = np.abs(state.weights - state.published).max()
        assert change_bound <= 0.01 * np.abs(state.weights).max()


def test_the_torch_free_modules_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import lumbung.train, lumbung.train.outer, lumbung.train.codec\n"
        "import lumbung.train.rounds, lumbung.train.spec, lumbung.train.data\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_hubs_round_state_survives_its_bytes_exactly_and_writes_the_same_bytes() -> None:
    rng = np.random.default_rng(7)
    start = GlobalState.start(rng.standard_normal(513).astype(np.float32))
    update = encode(rng.standard_normal(513).astype(np.float32) * 0.01, CodecConfig("int8"))
    state = close_round(start, [update], OuterConfig(), CodecConfig("int8")).state
    blob = state.to_bytes()
    again = GlobalState.from_bytes(blob)
    assert again.round_index == state.round_index == 1
    for name in ("weights", "published", "momentum"):
        assert np.array_equal(getattr(again, name), getattr(state, name)), name
    assert again.to_bytes() == blob  # content-addressed: the same state, the same blob
