"""N workers in one process: DiLoCo rounds through the hub's real code, and the baselines.

DiLoCo arms go through exactly what a deployment runs: ``Worker.train`` for the inner steps,
``codec.encode_with_feedback`` for the upload, ``rounds.close_round`` for the hub's outer step and
the compressed broadcast. Bytes are counted as the lengths of the encoded messages. The baselines
(one worker; synchronous data parallelism, gradients averaged every step) use the same model,
initial weights, inner optimiser and per-worker batch streams, so arms differ only in how workers
synchronise. Data parallelism is counted as a parameter server would move it: each worker uploads
its float32 gradient and downloads the averaged one every step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lumbung.train.codec import CodecConfig, decode, encode_with_feedback, encoded_size_bytes
from lumbung.train.data import BatchSampler
from lumbung.train.inner import (
    Worker,
    autocast,
    batch_tensors,
    build_model,
    evaluate,
    flat_weights,
    learning_rate,
    make_optimizer,
)
from lumbung.train.outer import OuterConfig
from lumbung.train.rounds import FULL_WEIGHTS, GlobalState, close_round, full_weights
from lumbung.train.spec import ModelConfig
from lumbung.wire.train import InnerSpec


@dataclass(frozen=True)
class Setup:
    """What every arm shares."""

    model: ModelConfig
    inner: InnerSpec
    shards: Sequence[np.ndarray]  # one token array per worker
    validation: np.ndarray  # fixed windows of context + 1 tokens
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_every_steps: int = 0  # also evaluate every this many inner steps per worker (0: at end)

    def sampler(self, worker: int, tokens: np.ndarray | None = None) -> BatchSampler:
        source = self.shards[worker] if tokens is None else tokens
        return BatchSampler(
            source, self.inner.batch_size, self.model.context_length, seed=(self.seed, worker)
        )


@dataclass(frozen=True)
class DilocoSettings:
    workers: int
    inner_steps: int  # H
    rounds: int
    outer: OuterConfig = field(default_factory=OuterConfig)
    uplink: CodecConfig = field(default_factory=lambda: CodecConfig("none"))  # worker -> hub
    downlink: CodecConfig = field(default_factory=lambda: CodecConfig("none"))  # hub -> workers
    drop_fraction: float = 0.0  # each update is lost with this probability


@dataclass
class ArmResult:
    name: str
    weights: np.ndarray
    validation_loss: float
    bytes_up: int = 0
    bytes_down: int = 0
    inner_steps_per_worker: int = 0
    updates_dropped: int = 0
    wall_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # DiLoCo: one row per round
    curve: list[tuple[int, float]] = field(default_factory=list)  # (steps, validation loss)


class Evaluator:
    """Validation loss of flat weights, in a model of its own so training state is untouched."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.model = build_model(setup.model, setup.seed, setup.device)

    def __call__(self, weights: np.ndarray) -> float:
        return evaluate(self.model, weights, self.setup.validation)

    def due(self, steps: int) -> bool:
        every = self.setup.eval_every_steps
        return every > 0 and steps % every == 0


def initial_weights(setup: Setup) -> np.ndarray:
    return flat_weights(build_model(setup.model, setup.seed, setup.device))


def run_diloco(setup: Setup, settings: DilocoSettings, name: str = "diloco") -> ArmResult:
    started = time.monotonic()
    numel = initial_weights(setup).size
    state = GlobalState.start(initial_weights(setup))
    workers = [
        Worker(setup.model, setup.inner, setup.sampler(i), setup.device)
        for i in range(settings.workers)
    ]
    residuals = [np.zeros(numel, dtype=np.float32) for _ in workers]
    held = decode(full_weights(state), numel)  # what every worker holds (they agree bit for bit)
    result = ArmResult(name, state.weights, 0.0)
    result.bytes_down += settings.workers * len(full_weights(state))
    drops = np.random.default_rng((setup.seed, 1_000_003))
    evaluator = Evaluator(setup)
    for round_index in range(settings.rounds):
        updates, losses = [], []
        for i, worker in enumerate(workers):
            inner = worker.train(held, settings.inner_steps)
            losses.append(inner.mean_loss)
            delta = held - inner.weights  # the pseudo-gradient, against the weights it started from
            blob, residuals[i] = encode_with_feedback(delta, residuals[i], settings.uplink)
            if drops.random() < settings.drop_fraction:
                # Lost on the way: the worker cannot know, so its residual moves on regardless.
                result.updates_dropped += 1
                continue
            updates.append(blob)
            result.bytes_up += len(blob)
        if updates:  # a round where every update was lost leaves the model where it was
            closed = close_round(state, updates, settings.outer, settings.downlink)
            state = closed.state
            held = held + decode(closed.change, numel)
            result.bytes_down += settings.workers * len(closed.change)
        steps = (round_index + 1) * settings.inner_steps
        result.history.append(
            {
                "round": round_index + 1,
                "train_loss": float(np.mean(losses)),
                "participants": len(updates),
            }
        )
        if evaluator.due(steps):
            result.curve.append((steps, evaluator(held)))
    result.weights = held
    result.inner_steps_per_worker = settings.rounds * settings.inner_steps
    return _finish(setup, result, started)


def run_data_parallel(
    setup: Setup, workers: int, steps: int, name: str = "data_parallel"
) -> ArmResult:
    """``workers`` batch streams, gradients averaged before every optimiser step."""
    started = time.monotonic()
    result = ArmResult(name, np.zeros(0, np.float32), 0.0, inner_steps_per_worker=steps)
    model = build_model(setup.model, setup.seed, setup.device)
    model.train()
    optimizer = make_optimizer(model, setup.inner)
    samplers = [setup.sampler(i) for i in range(workers)]
    evaluator = Evaluator(setup)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(setup.inner, step)
        optimizer.zero_grad(set_to_none=True)
        for sampler in samplers:
            inputs, targets = batch_tensors(sampler, setup.device)
            with autocast(setup.device):
                loss = model.loss(inputs, targets)
            # The gradients add up to their mean; torch's stub leaves backward untyped.
            (loss / workers).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if evaluator.due(step + 1):
            result.curve.append((step + 1, evaluator(flat_weights(model))))
    message_bytes = encoded_size_bytes(sum(p.numel() for p in model.parameters()), FULL_WEIGHTS)
    result.weights = flat_weights(model)
    result.bytes_up = workers * steps * message_bytes
    result.bytes_down = workers * (steps + 1) * message_bytes  # +1: the initial weights
    return _finish(setup, result, started)


def run_single(setup: Setup, steps: int, name: str = "one_worker") -> ArmResult:
    """One worker on all the training data, no communication."""
    started = time.monotonic()
    worker = Worker(
        setup.model, setup.inner, setup.sampler(0, np.concatenate(setup.shards)), setup.device
    )
    result = ArmResult(name, initial_weights(setup), 0.0, inner_steps_per_worker=steps)
    evaluator = Evaluator(setup)
    chunk = setup.eval_every_steps or steps
    for done in range(0, steps, chunk):
        result.weights = worker.train(result.weights, min(chunk, steps - done)).weights
        if evaluator.due(done + chunk):
            result.curve.append((done + chunk, evaluator(result.weights)))
    return _finish(setup, result, started)


def _finish(setup: Setup, result: ArmResult, started: float) -> ArmResult:
    result.validation_loss = Evaluator(setup)(result.weights)
    result.wall_s = time.monotonic() - started
    return result
