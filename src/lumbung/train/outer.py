"""The DiLoCo outer step (Douillard et al. 2023, arXiv 2311.08105, Algorithm 1, lines 9-12).

Weights travel as one flat float32 vector: the model's parameters concatenated in their
``named_parameters`` order (``lumbung.train.inner.flat_weights``). A worker's pseudo-gradient
is ``theta_global - theta_worker``, the change its H inner steps made, signed like a gradient.
The outer optimizer is SGD with Nesterov momentum on the average of the pseudo-gradients that
arrived; the paper's defaults are learning rate 0.7 and momentum 0.9. With learning rate 1 and no
momentum the step is plain averaging of the workers' weights (FedAvg), which the tests pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lumbung.errors import Rejected


@dataclass(frozen=True)
class OuterConfig:
    lr: float = 0.7  # the paper's outer learning rate (Table 5 / section 3)
    momentum: float = 0.9  # Nesterov momentum; 0 turns the step into plain (scaled) averaging
    nesterov: bool = True


def average_pseudo_gradients(pseudo_gradients: Sequence[np.ndarray]) -> np.ndarray:
    """Algorithm 1 line 10: Delta = 1/k sum_i Delta_i over the k workers that reported."""
    if not pseudo_gradients:
        raise Rejected("a round needs at least one pseudo-gradient", field="updates")
    size = pseudo_gradients[0].size
    total = np.zeros(size, dtype=np.float64)  # float64 so the mean does not depend on the order
    for delta in pseudo_gradients:
        if delta.shape != (size,):
            raise Rejected(f"pseudo-gradient of shape {delta.shape}, want ({size},)", field="shape")
        total += delta
    return (total / len(pseudo_gradients)).astype(np.float32)


def outer_step(
    weights: np.ndarray, momentum: np.ndarray, delta: np.ndarray, config: OuterConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 line 12: theta <- OuterOpt(theta, Delta); returns (weights, momentum buffer).

    SGD with Nesterov momentum as ``torch.optim.SGD(nesterov=True)`` computes it, so that a worker
    and the hub agree to the last bit: b <- mu b + Delta; step = Delta + mu b (or b without
    Nesterov); theta <- theta - lr step. The buffer starts at zeros, as torch's first step does.
    """
    if not weights.shape == momentum.shape == delta.shape:
        raise Rejected(
            f"shapes differ: weights {weights.shape}, momentum {momentum.shape}, "
            f"delta {delta.shape}",
            field="shape",
        )
    if config.momentum == 0.0:
        return (weights - config.lr * delta).astype(np.float32), momentum
    buffer = (config.momentum * momentum + delta).astype(np.float32)
    step = delta + config.momentum * buffer if config.nesterov else buffer
    return (weights - config.lr * step).astype(np.float32), buffer
