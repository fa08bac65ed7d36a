"""From a job's ``train`` section (``lumbung.wire.train``) to the configs the training code uses.

The section itself is a wire shape, validated where every job spec is; this module only turns its
parts into the plain configs of the model, the outer optimiser and the codec. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from lumbung.train.codec import CodecConfig
from lumbung.train.outer import OuterConfig
from lumbung.wire.train import CompressionSpec, ModelSpec, OuterSpec


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-style character model's size (``lumbung.train.model.CharLlama``)."""

    vocab_size: int
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    context_length: int = 64
    mlp_hidden: int = 256  # SwiGLU hidden width


def model_config(spec: ModelSpec, vocab_size: int) -> ModelConfig:
    """The model ``spec`` describes, over a vocabulary of ``vocab_size`` characters."""
    return ModelConfig(vocab_size, spec.dim, spec.layers, spec.heads, spec.context, spec.mlp_hidden)


def outer_config(spec: OuterSpec) -> OuterConfig:
    return OuterConfig(spec.lr, spec.momentum, spec.nesterov)


def codec_config(spec: CompressionSpec) -> CodecConfig:
    return CodecConfig(spec.codec, spec.block_size)
