"""A consumer's own model: ``module:function`` from the job's inputs, trained like the built-in one.

The function is called as ``function(vocab_size=..., context=...)`` and returns a torch module
mapping (batch, time) token ids to (batch, time, vocab) logits. It runs only inside the node's
sandbox (``lumbung.train.trainer``), never beside the node's key or network.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from lumbung.errors import Rejected
from lumbung.train.model import sample_tokens


class CustomModel(nn.Module):
    """The consumer's module with the loss and sampling the built-in model has."""

    def __init__(self, inner: nn.Module, vocab_size: int, context: int) -> None:
        super().__init__()
        self.inner = inner
        self.vocab_size = vocab_size
        self.context = context

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.inner(tokens)
        if logits.shape != (*tokens.shape, self.vocab_size):
            raise Rejected(
                f"the model returned logits of shape {tuple(logits.shape)}, expected "
                f"{(*tokens.shape, self.vocab_size)}",
                field="train.model.factory",
            )
        return logits

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def generate(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        temperature: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return sample_tokens(self, prompt, new_tokens, self.context, temperature, generator)


def build_custom(factory: str, vocab_size: int, context: int, seed: int) -> CustomModel:
    """Import and call ``factory`` with the job's seed, on the CPU (same bits on every node)."""
    module_name, _, function_name = factory.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise Rejected(
            f"cannot load {factory} from the job's inputs: {exc}", field="train.model.factory"
        ) from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inner = function(vocab_size=vocab_size, context=context)
    if not isinstance(inner, nn.Module):
        raise Rejected(f"{factory} returned {type(inner).__name__}, not a torch module",
                       field="train.model.factory")  # fmt: skip
    return CustomModel(inner, vocab_size, context)
