"""The ``train`` section of a job spec: the model, the data, the workers, the two optimisers.

A ``train`` job trains one model across many providers with DiLoCo (Douillard et al. 2023,
arXiv 2311.08105): each worker takes ``inner_steps`` (H) optimiser steps alone on its shard, then
sends only its pseudo-gradient; the hub averages them and takes an outer Nesterov step. Shapes
only: ``lumbung.train`` turns them into models, codecs and optimisers. Every refusal names the
dotted field under ``train`` (``train.inner_steps``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from lumbung.ids import is_object_id
from lumbung.wire.fields import INT64_MAX, Strict, entry_point, refusal, sha256_hex

MODELS = ("llama-char", "custom")
# Rounds a job may train for, given as rounds or reached through token_budget: round indices are
# the store's 32-bit integers, and no real run comes near this.
MAX_ROUNDS = 100_000
DATASETS = ("shakespeare", "text")


class ModelSpec(Strict):
    """The built-in Llama-style character model (RMSNorm, rotary positions, SwiGLU), or ``custom``:
    ``factory`` names ``module:function`` in the job's inputs, called as
    ``function(vocab_size=..., context=...)``, returning a torch module that maps (batch, time)
    token ids to (batch, time, vocab) logits. Sizes other than ``context`` apply to the built-in
    model only."""

    kind: str = Field(default="llama-char", description="'llama-char' or 'custom'")
    factory: str | None = Field(default=None, description="kind custom: module:function")
    dim: Annotated[int, Field(ge=8, le=4096)] = 128
    layers: Annotated[int, Field(ge=1, le=64)] = 2
    heads: Annotated[int, Field(ge=1, le=64)] = 4
    context: Annotated[int, Field(ge=2, le=8192)] = 64
    mlp_hidden: Annotated[int, Field(ge=8, le=65536)] = 256

    @field_validator("kind")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown model {v!r}; built in: {', '.join(MODELS)}")
        return v

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, v: str | None) -> str | None:
        return entry_point(v)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelSpec:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError("dim must be heads x an even head size (rotary pairs)")
        if (self.kind == "custom") != (self.factory is not None):
            raise ValueError("a custom model needs factory (module:function), and only it")
        return self


class DatasetSpec(Strict):
    """The built-in Shakespeare, or ``text``: your own UTF-8 text file, uploaded as an artifact
    (``sha256``), its last ``validation_fraction`` held out for validation."""

    name: str = Field(default="shakespeare", description="'shakespeare' or 'text'")
    sharding: Literal["iid", "play"] = "iid"  # contiguous chunks of the stream, or whole plays
    validation_plays: Annotated[int, Field(ge=1, le=10)] = 2
    sha256: str | None = Field(default=None, description="name 'text': the text artifact")
    path: str | None = Field(default=None, description="name 'text': a local file to upload")
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; built in: {', '.join(DATASETS)}")
        return v

    @field_validator("sha256")
    @classmethod
    def _hash_form(cls, v: str | None) -> str | None:
        return sha256_hex(v)

    @model_validator(mode="after")
    def _text_has_its_file(self) -> DatasetSpec:
        given = self.sha256 is not None or self.path is not None
        if (self.name == "text") != given or (self.sha256 is not None and self.path is not None):
            raise ValueError("dataset 'text' needs exactly one of path and sha256, and only it")
        if self.name == "text" and self.sharding == "play":
            raise ValueError("a text file has no plays: use sharding 'iid'")
        return self


class WorkersSpec(Strict):
    wanted: Annotated[int, Field(ge=1, le=1024)] = 4
    minimum: Annotated[int, Field(ge=1, le=1024)] = 1  # a round closes at its deadline with these

    @model_validator(mode="after")
    def _minimum_fits(self) -> WorkersSpec:
        if self.minimum > self.wanted:
            raise ValueError("minimum must not exceed wanted")
        return self


class InnerSpec(Strict):
    """Each worker's optimiser. AdamW as in the paper; SGD makes DiLoCo with H=1 equal data
    parallelism exactly (averaging AdamW steps is not AdamW on averaged gradients)."""

    kind: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0, le=10)] = 3e-3
    warmup_steps: Annotated[int, Field(ge=0, le=10**9)] = 50  # linear warm-up from 0, then constant
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.1
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 16


class OuterSpec(Strict):
    """The hub's optimiser on the averaged pseudo-gradient; the paper's defaults."""

    lr: Annotated[float, Field(gt=0, le=10)] = 0.7
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True


class CompressionSpec(Strict):
    """How pseudo-gradients (up) and weight changes (down) travel."""

    codec: Literal["none", "fp16", "int8"] = "int8"
    block_size: Annotated[int, Field(ge=1, le=1 << 20)] = 256


class TrainSpec(Strict):
    model: ModelSpec = Field(default_factory=lambda: ModelSpec())
    dataset: DatasetSpec = Field(default_factory=lambda: DatasetSpec())
    workers: WorkersSpec = Field(default_factory=lambda: WorkersSpec())
    inner_steps: Annotated[int, Field(ge=1, le=100_000, description="H")] = 50
    inner: InnerSpec = Field(default_factory=lambda: InnerSpec())
    outer: OuterSpec = Field(default_factory=lambda: OuterSpec())
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] | None = None
    token_budget: Annotated[int, Field(ge=1)] | None = None  # tokens over all workers
    compression: CompressionSpec = Field(default_factory=lambda: CompressionSpec())
    round_deadline_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    seed: Annotated[int, Field(ge=0, le=INT64_MAX)] = 0  # numpy's generators take no negative
    # Start from where an earlier train job of yours stopped (its last weights and outer
    # momentum): a cancelled or failed job resumed as a new one. Same model and dataset.
    resume_from: str | None = None

    @field_validator("resume_from")
    @classmethod
    def _job_id(cls, v: str | None) -> str | None:
        if v is not None and not is_object_id(v, "job"):
            raise ValueError("must be a job id (job_...)")
        return v

    @model_validator(mode="after")
    def _one_stopping_rule(self) -> TrainSpec:
        if (self.rounds is None) == (self.token_budget is None):
            raise ValueError("give exactly one of rounds and token_budget")
        if self.total_rounds() > MAX_ROUNDS:
            raise refusal(
                ("token_budget",),
                f"gives {self.total_rounds()} rounds of {self.tokens_per_round()} tokens; "
                f"at most {MAX_ROUNDS}",
                self.token_budget,
            )
        return self

    def tokens_per_round(self) -> int:
        per_step = self.inner.batch_size * self.model.context
        return self.workers.wanted * self.inner_steps * per_step

    def total_rounds(self) -> int:
        if self.rounds is not None:
            return self.rounds
        assert self.token_budget is not None  # the validator holds one of the two
        return max(1, -(-self.token_budget // self.tokens_per_round()))
