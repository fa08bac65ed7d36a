"""A small Llama-style character language model (Touvron et al. 2023, arXiv 2302.13971).

Read top to bottom like nanoGPT's ``model.py``: pre-norm blocks with RMSNorm (Zhang and Sennrich
2019), rotary position embeddings on queries and keys (Su et al. 2021, arXiv 2104.09864), causal
self-attention, and a SwiGLU MLP (Shazeer 2020, arXiv 2002.05202). No biases and no dropout, as in
Llama; the input embedding and the output head share their weights, which matters at this size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lumbung.train.spec import ModelConfig


class RMSNorm(nn.Module):
    """Scale by the root mean square: LayerNorm without the mean, cheaper and as good."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_tables(head_dim: int, context: int, base: float = 10_000.0) -> torch.Tensor:
    """cos and sin of position x frequency, shape (2, context, head_dim / 2)."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float32), freqs)
    return torch.stack([angles.cos(), angles.sin()])


def apply_rotary(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of ``x`` (batch, heads, time, head_dim) by its position's angle,
    so that a query-key dot product depends only on their distance."""
    time = x.shape[-2]
    cos, sin = tables[0, :time], tables[1, :time]
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        batch, time, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        # (batch, time, dim) -> (batch, heads, time, head_dim)
        q, k, v = (t.view(batch, time, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, tables), apply_rotary(k, tables)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.out(y.transpose(1, 2).reshape(batch, time, dim))
        return out


class SwiGLU(nn.Module):
    """silu(x W1) * (x W3), then W2: a gated MLP, better per parameter than GELU's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.dim, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.dim, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down(F.silu(self.gate(x)) * self.up(x))
        return out


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim)
        self.attention = Attention(config)
        self.mlp_norm = RMSNorm(config.dim)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), tables)
        out: torch.Tensor = x + self.mlp(self.mlp_norm(x))
        return out


class CharLlama(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.dim % config.n_heads or (config.dim // config.n_heads) % 2:
            raise ValueError("dim must be n_heads x an even head size")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied: one matrix reads and writes characters
        tables = rotary_tables(config.dim // config.n_heads, config.context_length)
        self.register_buffer("rotary", tables, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the stream stays bounded.
        for name, param in self.named_parameters():
            if name.endswith(("out.weight", "down.weight")):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the next character at every position, shape (batch, time, vocab)."""
        if tokens.shape[1] > self.config.context_length:
            raise ValueError(f"sequence of {tokens.shape[1]} exceeds the context")
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.rotary)
        logits: torch.Tensor = self.head(self.norm(x))
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
        """Sample ``new_tokens`` characters after ``prompt`` (1, time), one at a time."""
        return sample_tokens(
            self, prompt, new_tokens, self.config.context_length, temperature, generator
        )


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    context: int,
    temperature: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Autoregressive sampling from any model mapping tokens to next-token logits: each new
    character drawn from the softmax of the last position's logits over ``temperature``."""
    tokens = prompt
    for _ in range(new_tokens):
        logits = model(tokens[:, -context:])[:, -1].float()
        probs = F.softmax(logits / temperature, dim=-1)
        tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return tokens
