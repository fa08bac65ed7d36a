"""A worker's inner loop (DiLoCo Algorithm 1, lines 4-8): H optimiser steps alone on its shard.

The worker keeps its model, its optimiser state (AdamW moments persist across rounds, as in the
paper) and its batch sampler; each round it loads the global weights it was sent, takes H steps and
returns its new weights as one flat float32 vector, the form the hub's numpy code works on. CUDA
with bf16 autocast when there is a GPU, the CPU in float32 otherwise; ``device`` says which ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lumbung.train.custom import CustomModel
from lumbung.train.data import BatchSampler
from lumbung.train.model import CharLlama
from lumbung.train.spec import ModelConfig
from lumbung.wire.train import InnerSpec


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on a GPU that supports it; nothing (float32) elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(config: ModelConfig, seed: int, device: torch.device) -> CharLlama:
    """The model with initial weights drawn from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CharLlama(config)
    return model.to(device)


def flat_weights(model: torch.nn.Module) -> np.ndarray:
    """Parameters concatenated in ``named_parameters`` order (tied weights once) as float32."""
    with torch.no_grad():
        flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    return flat.cpu().numpy().astype(np.float32, copy=True)


def load_flat_weights(model: torch.nn.Module, flat: np.ndarray) -> None:
    numel = sum(p.numel() for p in model.parameters())
    if flat.shape != (numel,):
        raise ValueError(f"flat weights have shape {flat.shape}, the model has ({numel},)")
    source = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(source[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def make_optimizer(model: torch.nn.Module, inner: InnerSpec) -> torch.optim.Optimizer:
    if inner.kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=inner.lr, weight_decay=inner.weight_decay)
    return torch.optim.AdamW(
        model.parameters(), lr=inner.lr, betas=(0.9, 0.95), weight_decay=inner.weight_decay
    )


def learning_rate(inner: InnerSpec, step: int) -> float:
    """Linear warm-up over ``warmup_steps`` (counted over the worker's whole life), then flat."""
    if inner.warmup_steps == 0:
        return inner.lr
    return inner.lr * min(1.0, (step + 1) / inner.warmup_steps)


@dataclass(frozen=True)
class InnerResult:
    weights: np.ndarray  # theta after the H steps, flat float32
    mean_loss: float  # training loss averaged over the H steps
    steps: int
    tokens: int
    device: str  # where the steps ran: "cpu", "cuda" (bf16 autocast) ...


class Worker:
    """One DiLoCo worker: a model, its optimiser and its shard's sampler."""

    def __init__(
        self,
        config: ModelConfig,
        inner: InnerSpec,
        sampler: BatchSampler,
        device: torch.device,
        model: CustomModel | None = None,
    ) -> None:
        self.inner = inner
        self.sampler = sampler
        self.device = device
        # Any module with loss(inputs, targets); weights are replaced every round.
        self.model: CharLlama | CustomModel = (
            build_model(config, 0, device) if model is None else model.to(device)
        )
        self.optimizer = make_optimizer(self.model, inner)
        self.steps_done = 0

    def train(self, start: np.ndarray, steps: int) -> InnerResult:
        """Load ``start``, take ``steps`` optimiser steps, return the new flat weights."""
        load_flat_weights(self.model, start)
        self.model.train()
        losses = [self.step() for _ in range(steps)]
        tokens = steps * self.sampler.batch_size * self.sampler.context
        return InnerResult(
            flat_weights(self.model), float(np.mean(losses)), steps, tokens, self.device.type
        )

    def step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.inner, self.steps_done)
        inputs, targets = batch_tensors(self.sampler, self.device)
        with autocast(self.device):
            loss = self.model.loss(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's stub leaves it untyped
        self.optimizer.step()
        self.steps_done += 1
        return float(loss.detach())


def batch_tensors(sampler: BatchSampler, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = sampler.next()
    return torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)


def evaluate(
    model: CharLlama | CustomModel, weights: np.ndarray, windows: np.ndarray, batch_size: int = 64
) -> float:
    """Mean cross-entropy (nats per character) of ``weights`` on fixed validation windows."""
    load_flat_weights(model, weights)
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in _chunks(windows, batch_size):
            tokens = torch.from_numpy(chunk).to(device)
            with autocast(device):
                loss = model.loss(tokens[:, :-1], tokens[:, 1:])
            total += float(loss) * len(chunk)
            count += len(chunk)
    return total / count


def _chunks(windows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(windows), size):
        yield windows[start : start + size]
