"""The job spec: what a consumer asks for, in YAML or JSON, validated with pydantic.

Every error names the field (a dotted path such as ``resources.gpus``) and the reason, so a user can
find the mistake in the file they wrote. See the README's job spec reference.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from lumbung.errors import Rejected
from lumbung.wire import task_env
from lumbung.wire.fields import Strict, entry_point, refusal, sha256_hex
from lumbung.wire.train import TrainSpec

MAX_TASKS_PER_JOB = 10_000
MAX_REPLICAS = 16  # the most runs of one task verify.max_replicas may ask for
# An adaptive check is one replica that must agree with the result it checks.
ADAPTIVE_QUORUM = 2
MAX_RUNTIME_S = 7 * 24 * 3600  # the longest max_runtime_s a job may ask for
# The ledger's largest amount (lumbung.ledger.entries.MAX_AMOUNT_MICRO, which the wire cannot
# import; a test holds the two equal): a job whose worst case is more could never be locked.
MAX_ESCROW_MICRO = 10**15
_SECONDS_PER_HOUR = 3600
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Scalar = str | int | float | bool
_SCALAR_MEMBERS = ("str", "int", "float", "bool")


def _safe_relative(path: str, what: str) -> str:
    """Reject absolute paths and ``..`` so a task can never name a file outside its directory."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or "\x00" in path:
        raise ValueError(f"{what} must be a relative path without '..', got {path!r}")
    return str(p)


class Resources(Strict):
    gpus: Annotated[int, Field(ge=0, le=64, description="GPUs per task")] = 0
    gpu_models: list[str] = Field(default_factory=list, description="allowed models; empty = any")
    gpu_memory_gb: Annotated[float, Field(ge=0, le=4096)] = 0.0
    cpus: Annotated[int, Field(ge=1, le=1024)] = 1
    memory_gb: Annotated[float, Field(gt=0, le=16384)] = 1.0
    disk_gb: Annotated[float, Field(gt=0, le=1_000_000)] = 1.0
    # The least isolation a node must give the task (lumbung.wire.api.IsolationLevel): "sandbox"
    # keeps its files from the other tasks on the node; "process" accepts any node.
    isolation: Literal["process", "sandbox"] = "process"

    @field_validator("gpu_models")
    @classmethod
    def _models_named(cls, models: list[str]) -> list[str]:
        for m in models:
            if not m.strip():
                raise ValueError("GPU model names must not be empty")
        return models


class InputSpec(Strict):
    """An input artifact: a local file (uploaded by the client at submit) or a known hash."""

    name: str = Field(description="file name under the task's inputs/ directory")
    path: str | None = Field(default=None, description="local file; the client uploads it")
    sha256: str | None = Field(default=None, description="hash of an artifact already uploaded")

    @field_validator("name")
    @classmethod
    def _name_safe(cls, v: str) -> str:
        return _safe_relative(v, "input name")

    @field_validator("sha256")
    @classmethod
    def _hash_form(cls, v: str | None) -> str | None:
        return sha256_hex(v)

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if (self.path is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'path' or 'sha256'")
        return self


class VerifySpec(Strict):
    """How a ``run`` job's results are checked before its providers are paid.

    ``none`` pays each task's provider on its word. ``replicate`` runs each task on ``replicas``
    distinct nodes and keeps the result a ``quorum`` of them agree on; while they disagree more
    run, up to ``max_replicas`` (default one more than ``replicas``). ``adaptive`` runs each task
    once and checks the result with a replica on another node as often as its node has earned
    (``lumbung.verify.adaptive``: always under 10 consecutive valid results, then with
    probability 1/count but never under 9%); a check that disagrees takes a third run (up to
    ``max_replicas``, default 3) to settle which is wrong. Only results a quorum agrees on, or
    that were not drawn for a check, are paid. Outputs are compared by SHA-256, or with
    ``compare: numeric`` value by value (JSON, CSV and ``.npy``) within ``rtol`` and ``atol``.
    """

    mode: Literal["none", "replicate", "adaptive"] = "none"
    replicas: Annotated[int, Field(ge=2, le=MAX_REPLICAS)] = 2
    quorum: Annotated[int, Field(ge=2, le=MAX_REPLICAS)] = 2
    max_replicas: Annotated[int, Field(ge=2, le=MAX_REPLICAS)] | None = None
    compare: Literal["sha256", "numeric"] = "sha256"
    rtol: Annotated[float, Field(ge=0, le=1)] = 1e-5
    atol: Annotated[float, Field(ge=0)] = 1e-8

    @model_validator(mode="after")
    def _consistent(self) -> VerifySpec:
        # By value, not by which fields were given: the store writes every field back.
        if self.mode != "replicate":
            for name in ("replicas", "quorum"):
                if self._changed(name):
                    raise refusal((name,), "only for mode: replicate", getattr(self, name))
        if self.mode == "none":
            for name in ("max_replicas", "compare"):
                if self._changed(name):
                    raise refusal(
                        (name,), "only for mode: replicate or adaptive", getattr(self, name)
                    )
        if self.compare != "numeric":
            for name in ("rtol", "atol"):
                if self._changed(name):
                    raise refusal((name,), "only for compare: numeric", getattr(self, name))
        if self.quorum > self.replicas:
            raise refusal(
                ("quorum",),
                f"cannot be more than replicas ({self.replicas}): a quorum needs that many "
                "results that agree",
                self.quorum,
            )
        least = self.replicas if self.mode == "replicate" else ADAPTIVE_QUORUM
        if self.max_replicas is not None and self.max_replicas < least:
            raise refusal(
                ("max_replicas",),
                f"must be at least {least}: "
                + ("replicas" if self.mode == "replicate" else "a checked result and its check"),
                self.max_replicas,
            )
        return self

    def _changed(self, name: str) -> bool:
        return bool(getattr(self, name) != type(self).model_fields[name].default)

    @property
    def replicated(self) -> bool:
        """Whether tasks may run as several replicas whose results a quorum compares."""
        return self.mode != "none"

    def first_replicas(self) -> int:
        """Replicas of each task queued at submit (adaptive adds its checks later)."""
        return self.replicas if self.mode == "replicate" else 1

    def quorum_of(self) -> int:
        return self.quorum if self.mode == "replicate" else ADAPTIVE_QUORUM

    def runs_per_task(self) -> int:
        """The most runs one task may take to verify: what its escrow must cover."""
        if self.mode == "none":
            return 1
        if self.mode == "adaptive":
            return self.max_replicas or ADAPTIVE_QUORUM + 1
        return self.max_replicas or min(self.replicas + 1, MAX_REPLICAS)


class JobSpec(Strict):
    """A job: ``run`` (a command or a Python entry point, fanned out into tasks) or ``train`` (one
    model trained across ``train.workers.wanted`` workers, one task each)."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    kind: Literal["run", "train"] = "run"
    train: TrainSpec | None = Field(default=None, description="the training job (kind: train)")
    command: list[str] | None = Field(
        default=None, description="argv; '{param}' is replaced by the task's grid value"
    )
    entrypoint: str | None = Field(
        default=None, description="'module:function', called with params"
    )
    inputs: list[InputSpec] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list, description="files the task leaves behind")
    resources: Resources = Field(default_factory=Resources)
    max_price_micro_per_hour: Annotated[int, Field(le=10**15)] = Field(
        description="the most one task may cost per hour, in micro-credits"
    )
    max_runtime_s: Annotated[int, Field(ge=1, le=MAX_RUNTIME_S)] = 3600
    retries: Annotated[int, Field(ge=0, le=20)] = 2
    checkpoint_interval_s: Annotated[int, Field(ge=1, le=24 * 3600)] = 30
    count: Annotated[int, Field(ge=1, le=MAX_TASKS_PER_JOB)] = 1
    grid: dict[str, list[Scalar]] = Field(default_factory=dict)
    network: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    verify: VerifySpec = Field(default_factory=VerifySpec)

    @field_validator("command")
    @classmethod
    def _command_nonempty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not v[0].strip()):
            raise ValueError("must name a program")
        return v

    @field_validator("max_price_micro_per_hour")
    @classmethod
    def _lockable_price(cls, v: int) -> int:
        if v < 1:
            raise ValueError(
                "must be at least 1: submitting locks the job's worst case at this price in "
                "escrow, and the ledger locks at least one micro-credit"
            )
        return v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, v: str | None) -> str | None:
        return entry_point(v)

    @field_validator("outputs")
    @classmethod
    def _outputs_safe(cls, v: list[str]) -> list[str]:
        return [_safe_relative(p, "output path") for p in v]

    @field_validator("grid", mode="wrap")
    @classmethod
    def _grid_values(
        cls, grid: object, handler: ValidatorFunctionWrapHandler
    ) -> dict[str, list[Scalar]]:
        try:
            values: dict[str, list[Scalar]] = handler(grid)
        except ValidationError as exc:
            # A value of no scalar type fails each member of the union (grid.x.0.str, .int...):
            # said once, at the value. Only a failure pays for this; a big grid is read often.
            first = exc.errors()[0]
            loc = first["loc"]
            if len(loc) == 3 and loc[-1] in _SCALAR_MEMBERS:
                message = "must be a string, a number or a boolean"
                raise refusal(loc[:2], message, first["input"]) from exc
            raise
        return values

    @field_validator("grid")
    @classmethod
    def _grid_form(cls, grid: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for key, values in grid.items():
            if not _PARAM_RE.match(key):
                raise ValueError(f"parameter name {key!r} must be an identifier")
            if not values:
                raise ValueError(f"parameter {key!r} has no values")
        return grid

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not _ENV_KEY_RE.match(key) or key.startswith(task_env.RESERVED_PREFIX):
                raise ValueError(f"environment key {key!r} is not allowed")
        return env

    @model_validator(mode="after")
    def _whole(self) -> JobSpec:
        if self.kind == "train":
            self._check_train()
        elif self.train is not None:
            raise ValueError("a 'train' section needs kind: train")
        elif (self.command is None) == (self.entrypoint is None):
            raise ValueError("give exactly one of 'command' or 'entrypoint'")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        if self.task_count() > MAX_TASKS_PER_JOB:
            raise ValueError(f"count x grid gives more than {MAX_TASKS_PER_JOB} tasks")
        runs = self.task_count() * self.verify.runs_per_task()
        if runs > MAX_TASKS_PER_JOB:
            raise refusal(
                ("verify", "max_replicas"),
                f"{self.task_count()} task(s) x {self.verify.runs_per_task()} runs each is more "
                f"than {MAX_TASKS_PER_JOB} runs",
                self.verify.max_replicas,
            )
        self._check_lockable()
        return self

    def _check_lockable(self) -> None:
        """The escrow locks every task at the price limit for its whole time limit, rounded up
        per task (as ``lumbung.market.plan.escrow_micro`` counts it); the ledger cannot hold an
        amount beyond ``MAX_ESCROW_MICRO``."""
        per_task = -(-self.max_price_micro_per_hour * self.max_runtime_s // _SECONDS_PER_HOUR)
        runs = self.task_count() * self.verify.runs_per_task()
        worst = runs * per_task
        if worst > MAX_ESCROW_MICRO:
            raise refusal(
                ("max_price_micro_per_hour",),
                f"the job's worst case, {runs} run(s) x {self.max_runtime_s} s at "
                f"{self.max_price_micro_per_hour} micro-credits/hour = {worst}, is more than "
                f"the ledger can lock ({MAX_ESCROW_MICRO}): lower the price, the time limit or "
                "the task count",
                self.max_price_micro_per_hour,
            )

    def _check_train(self) -> None:
        if self.train is None:
            raise ValueError("kind: train needs a 'train' section")
        if self.command is not None or self.entrypoint is not None:
            raise ValueError("a train job runs the built-in worker: no command or entrypoint")
        if self.grid or self.count != 1:
            raise ValueError("a train job has one task per worker (train.workers.wanted)")
        if self.verify.mode != "none":
            raise refusal(
                ("verify", "mode"),
                "a train job's updates are screened in each round, not replicated: leave "
                "verify out",
                self.verify.mode,
            )

    def task_count(self) -> int:
        if self.train is not None:
            return self.train.workers.wanted
        return self.count * math.prod(len(v) for v in self.grid.values())

    def task_params(self) -> list[dict[str, Scalar]]:
        """The parameters of each task, in a stable order: the grid's product, ``count`` times;
        for a train job, each worker's shard."""
        if self.train is not None:
            return [{"shard": i} for i in range(self.train.workers.wanted)]
        keys = sorted(self.grid)
        combos = [
            dict(zip(keys, vals, strict=True))
            for vals in itertools.product(*(self.grid[k] for k in keys))
        ]
        return [dict(c) for _ in range(self.count) for c in combos]


def parse_spec(text: str) -> JobSpec:
    """Parse YAML or JSON text into a validated spec, raising ``Rejected`` naming the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Rejected(f"spec is not valid YAML or JSON: {exc}", field="spec") from exc
    if not isinstance(data, dict):
        raise Rejected("spec must be a mapping of fields", field="spec")
    return validate_spec(data)


def validate_spec(data: object) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise rejected_from_validation(exc) from exc


def rejected_from_validation(exc: ValidationError) -> Rejected:
    """The first pydantic error as a ``Rejected`` naming its dotted field path."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "spec"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    return Rejected(f"{loc}: {msg}{more}", field=loc)


def spec_json(spec: JobSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)
