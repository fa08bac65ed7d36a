"""Request and response models of the hub's HTTP API, version 1 (``/v1``).

These are the shapes on the wire, kept apart from the domain records (``lumbung.market.model``) and
the stored rows (``lumbung.store``). Times are Unix seconds (float); money is integer micro-credits.

What the hub takes in (registrations, reports, specs) is ``Inbound``: no NUL byte, non-finite
number or integer beyond 64 bits gets past it, times and counts are bounded by what they mean, and
a node's inventory (served to everyone) is bounded in every string and list, so nothing a node or
consumer sends can fail in the store. What the hub sends out is ``Model``: a client parses it
ignoring fields it does not know, so an older client keeps working against a newer hub.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import ExtraValues

from lumbung.wire.commitment import ExecutionClass
from lumbung.wire.fields import INT32_MAX, Inbound
from lumbung.wire.spec import MAX_RUNTIME_S, JobSpec, Resources, Scalar
from lumbung.wire.train import TrainSpec

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Progress = Annotated[float, Field(ge=0.0, le=1.0)]
# Attempts are the store's 32-bit integers; no task gets near this many.
Attempt = Annotated[int, Field(ge=1, le=INT32_MAX)]
# Seconds into an attempt, as a node reports them: never beyond the longest time limit a job may
# set, plus an hour for a node's own limit and its report to arrive.
RuntimeS = Annotated[float, Field(ge=0.0, le=MAX_RUNTIME_S + 3600)]
# Memory and disk in MiB: an exbibyte is beyond any machine.
Mib = Annotated[int, Field(ge=0, le=2**40)]
TaskId = Annotated[str, Field(min_length=1, max_length=64)]


class Model(BaseModel):
    """A shape the hub sends: a view or a response.

    Parsing one ignores fields this version does not know, at every depth: in the model itself
    and in what it nests, request shapes included (a view's job spec, a node's inventory, an
    assignment's resources), so a hub may add a field without breaking an older client or node.
    Requests stay ``Inbound`` and refuse unknown fields: a hub never guesses at what a client
    meant. The schema says the same (no ``additionalProperties: false`` on a response).
    """

    model_config = ConfigDict(extra="ignore")

    # Validation-time ``extra`` reaches nested models too, where their own config would not.
    @classmethod
    def model_validate(
        cls,
        obj: Any,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = "ignore",
        from_attributes: bool | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        return super().model_validate(
            obj,
            strict=strict,
            extra=extra,
            from_attributes=from_attributes,
            context=context,
            by_alias=by_alias,
            by_name=by_name,
        )

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = "ignore",
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        return super().model_validate_json(
            json_data,
            strict=strict,
            extra=extra,
            context=context,
            by_alias=by_alias,
            by_name=by_name,
        )


# --- nodes ------------------------------------------------------------------------------------


class GpuInfo(Inbound):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    memory_mib: Mib
    driver: Annotated[str, Field(max_length=100)] = ""
    cuda_capability: Annotated[str, Field(max_length=16)] = ""


# How far a node keeps a task from the rest of its machine, weakest first (see the threat model):
# "process": a process group under resource limits, seeing the host's files as the node's user;
# "sandbox": namespaces of its own (bubblewrap or a container): only its own files, no host
# sockets, no other task, a fresh /proc, nothing outliving it.
IsolationLevel = Literal["process", "sandbox"]
ISOLATION_RANK: dict[str, int] = {"process": 0, "sandbox": 1}


class Isolation(Inbound):
    runner: Literal["process", "container"] = "process"
    level: IsolationLevel = "process"
    # "netns": tasks without network get a fresh network namespace; "none": they share the host's.
    network: Literal["netns", "none"] = "none"
    notes: list[Annotated[str, Field(max_length=500)]] = Field(default_factory=list, max_length=16)


JobKind = Literal["run", "train"]
_RUN_ONLY: tuple[JobKind, ...] = ("run",)


class Inventory(Inbound):
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    cpus: Annotated[int, Field(ge=1, le=4096)]
    memory_mib: Mib
    disk_free_mib: Mib
    os: Annotated[str, Field(max_length=200)] = ""
    python: Annotated[str, Field(max_length=100)] = ""
    torch: Annotated[str, Field(max_length=100)] | None = None
    isolation: Isolation = Field(default_factory=Isolation)
    # The job kinds this node can run; a node offers "train" once it has a training runner.
    kinds: list[JobKind] = Field(default_factory=lambda: list(_RUN_ONLY), max_length=2)


class NodeRegister(Inbound):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    inventory: Inventory
    price_micro_per_gpu_hour: Annotated[int, Field(ge=0, le=10**15)]
    price_micro_per_cpu_hour: Annotated[int, Field(ge=0, le=10**15)]
    slots: Annotated[int, Field(ge=1, le=256)] = 1


class NodeView(Model):
    id: str
    name: str
    inventory: Inventory
    price_micro_per_gpu_hour: int
    price_micro_per_cpu_hour: int
    slots: int
    online: bool
    reliability: float
    last_heartbeat_at: float | None
    draining: bool = False
    # Per kind of work ("run:cpu", "run:gpu"): results in a row a check found valid, which
    # adaptive verification reads (under 10, every result is checked).
    valid_streaks: dict[str, int] = Field(default_factory=dict)


class TaskReport(Inbound):
    task_id: TaskId
    attempt: Attempt
    progress: Progress = 0.0


class HeartbeatRequest(Inbound):
    tasks: list[TaskReport] = Field(default_factory=list, max_length=256)
    free_slots: Annotated[int, Field(ge=0, le=256)] = 0
    draining: bool = False


class HeartbeatResponse(Model):
    renewed: list[str]
    # Tasks the node must stop now: cancelled, or no longer leased to it.
    cancel: list[str]
    lease_timeout_s: float


# --- tasks, from the node's side ------------------------------------------------------------------


class ClaimRequest(Inbound):
    wait_s: Annotated[float, Field(ge=0.0, le=120.0)] = 10.0


class Assignment(Model):
    task_id: str
    job_id: str
    attempt: int
    index: int
    params: dict[str, Scalar]
    command: list[str] | None
    entrypoint: str | None
    inputs: dict[str, Sha256]
    outputs: list[str]
    resources: Resources  # the job spec's, as the consumer gave them
    max_runtime_s: int
    checkpoint_interval_s: int
    network: bool
    env: dict[str, str]
    # The checkpoint to restore before starting, when the task resumes after a failure.
    resume_from: Sha256 | None
    # Earlier links of the task's checkpoint chain, newest first: what the node falls back to,
    # in order, when resume_from does not restore (see ResumeFailed).
    resume_chain: list[Sha256] = Field(default_factory=list, max_length=8)
    lease_expires_at: float
    kind: JobKind = "run"
    train: TrainSpec | None = None  # kind train: what the worker trains (its shard is params)


class ClaimResponse(Model):
    assignment: Assignment | None


class LogChunk(Inbound):
    attempt: Attempt
    stream: Literal["stdout", "stderr"]
    text: Annotated[str, Field(max_length=256 * 1024)]

    @field_validator("text", mode="before")
    @classmethod
    def _replace_nul(cls, text: object) -> object:
        # A task may print anything; what the store keeps (PostgreSQL text cannot hold NUL) and
        # what readers see is its output with each NUL as U+FFFD, not a refused chunk.
        return text.replace("\x00", "\ufffd") if isinstance(text, str) else text


class CheckpointReport(Inbound):
    attempt: Attempt
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=0)]
    # The hash of the checkpoint this one follows in the task's chain; None for the first.
    prev_sha256: Sha256 | None
    progress: Progress = 0.0
    # Seconds this attempt had run when the checkpoint was taken.
    runtime_s: RuntimeS


class ResumeFailed(Inbound):
    """The node could not restore ``failed`` (a checkpoint of the task's chain) and resumed from
    ``resumed_from`` instead: an earlier link of the chain, or None for a fresh start. The hub
    moves the chain's end back to ``resumed_from`` and does not pay the time the failed links
    claimed to keep (``POST /v1/tasks/{id}/resume-failed``)."""

    attempt: Attempt
    failed: list[Sha256] = Field(min_length=1, max_length=9)
    resumed_from: Sha256 | None
    reason: Annotated[str, Field(max_length=1000)]


class RoundInfo(Model):
    """What a train task's worker does next (``GET /v1/tasks/{id}/round``)."""

    round: int
    # open: train from base and send an update; submitted: this task's update is in, wait for
    # the next round; done: training is over, complete the task.
    state: Literal["open", "submitted", "done"]
    rounds_total: int
    deadline_at: float
    # The full weights to start from (codec "none"); None only in round 0 before any worker sent
    # the initial weights: then initialise from the job's seed and send them as initial_sha.
    base_sha: Sha256 | None
    # The compressed change from the previous round's base: a worker holding that base (named
    # in previous_base_sha) downloads this instead of the full weights.
    change_sha: Sha256 | None
    previous_base_sha: Sha256 | None


class RoundUpdateReport(Inbound):
    """A worker's pseudo-gradient for a round, uploaded as a blob first (lumbung.train.codec)."""

    attempt: Attempt
    sha256: Sha256
    base_sha: Sha256  # the full weights it trained from; must be the round's base
    initial_sha: Sha256 | None = None  # round 0 only: the seeded initial weights it started from
    tokens: Annotated[int, Field(ge=0, le=10**15)]
    inner_steps: Annotated[int, Field(ge=1, le=10**7)]
    train_loss: float
    base_val_loss: float | None = None
    bytes_down: Annotated[int, Field(ge=0, le=10**15)]
    runtime_s: RuntimeS
    device: Annotated[str, Field(pattern=r"^[a-z0-9:_-]{1,32}$")] = "cpu"  # where it trained


class ScreenedUpdate(Model):
    """An update a round left out of its aggregate, and why."""

    task_id: str
    node_id: str
    reason: str


class RoundView(Model):
    index: int
    state: str
    participants: int
    opened_at: float
    closed_at: float | None
    base_sha: str | None
    # train_loss, base_val_loss (of the weights the round started from), tokens, bytes_up,
    # bytes_down, duration_s
    metrics: dict[str, float]
    devices: list[str] = Field(default_factory=list)  # where each update's inner steps ran
    screened_out: list[ScreenedUpdate] = Field(default_factory=list)


class ResultCommitmentReport(Inbound):
    """A node's signature over what it claims (``lumbung.wire.commitment``): the hub rebuilds
    the signed body from the task, the attempt and the report's outputs, and checks it."""

    execution_class: ExecutionClass
    public_key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # raw Ed25519 key, hex
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]  # Ed25519, hex


class TaskComplete(Inbound):
    attempt: Attempt
    # Stored in a 32-bit column; a process's status (or minus its signal) is far inside it.
    exit_code: Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
    outputs: dict[str, Sha256] = Field(default_factory=dict)
    runtime_s: RuntimeS
    # Why it failed, in the node's words (timeout, killed, missing output...); None on success.
    error: Annotated[str, Field(max_length=4000)] | None = None
    # On success: the node's signed claim about its outputs. A replicated task needs one.
    commitment: ResultCommitmentReport | None = None


class TaskRelease(Inbound):
    """The node gives a task back without blame (it is draining); the task requeues at once."""

    attempt: Attempt
    runtime_s: RuntimeS
    reason: Annotated[str, Field(max_length=1000)] = "node draining"


# --- jobs, from the consumer's side ---------------------------------------------------------------


class PlanRequest(Inbound):
    spec: JobSpec


class JobSubmit(Inbound):
    spec: JobSpec
    # Standard base64 of the consumer's signed escrow_lock leaf (lumbung.ledger.entries.leaf_bytes)
    # for the job's worst case; its job_id becomes the job's id.
    escrow: str


class PlanNode(Model):
    node_id: str
    name: str
    online: bool
    reliability: float
    price_micro_per_hour: int
    # What every task would cost at this node's price if each ran to its time limit.
    max_cost_micro: int


class Plan(Model):
    task_count: int
    fits: list[PlanNode]
    # constraint name -> how many nodes it excluded (a node can be excluded by several)
    excluded: dict[str, int]
    nodes_considered: int
    # The job's worst case at its own price limit: what the ledger issue will lock in escrow.
    max_cost_micro: int
    explanation: list[str]
    # What verify: adds when the replicas agree: node-hours at the time limit, and credits at
    # the cheapest fitting node's price (the job's limit when none fits).
    verification_extra_node_hours: float = 0.0
    verification_extra_micro: int = 0


class CheckpointView(Model):
    seq: int
    sha256: str
    prev_sha256: str | None
    node_id: str
    attempt: int
    progress: float
    kept_s: float
    created_at: float
    # Why a later node could not restore it; a rejected link is off the chain and unpaid.
    rejected: str | None = None


class TaskView(Model):
    id: str
    index: int
    params: dict[str, Scalar]
    state: str
    attempt: int
    node_id: str | None
    progress: float
    exit_code: int | None
    outputs: dict[str, str]
    error: str | None
    checkpoints: list[CheckpointView]
    updated_at: float
    # verify.mode replicate or adaptive: which copy of task ``index`` this is, and what was found
    # ("agreed", "trusted", "wrong", "unverified"; "pending" while its check runs; None before
    # it finished, and when not verified).
    replica: int = 0
    verdict: str | None = None


class WorkView(Model):
    """Work a node did for a job: kept (checkpointed or completed) and lost (after the last
    checkpoint of an attempt that did not complete)."""

    node_id: str
    node_name: str
    price_micro_per_hour: int
    kept_s: float
    lost_s: float
    kept_cost_micro: int
    lost_cost_micro: int


class EscrowView(Model):
    """The job's escrow in the ledger, in micro-credits: locked = released + fees + refunded +
    remaining, where released went to providers and fees to the hub."""

    locked_micro: int
    released_micro: int
    fees_micro: int
    refunded_micro: int
    remaining_micro: int


class JobView(Model):
    id: str
    owner: str
    name: str
    state: str
    spec: JobSpec
    created_at: float
    updated_at: float
    tasks: list[TaskView]
    waiting_reason: str | None
    error: str | None
    work: list[WorkView]
    escrow: EscrowView | None = None
    rounds: list[RoundView] = Field(default_factory=list)  # kind train
    # kind train: the trained model's flat float32 weights (lumbung.train.codec, codec "none")
    model_sha256: str | None = None


class JobSummary(Model):
    id: str
    name: str
    state: str
    created_at: float
    task_states: dict[str, int]


class SubmitResponse(Model):
    job: JobView
    plan: Plan


class LogLine(Model):
    seq: int
    task_id: str
    attempt: int
    stream: str
    text: str
    at: float


class TaskResult(Model):
    task_id: str
    index: int
    params: dict[str, Scalar]
    state: str
    node_id: str | None
    exit_code: int | None
    outputs: dict[str, str]
    replica: int = 0  # as TaskView's
    verdict: str | None = None


class Results(Model):
    job_id: str
    state: str
    tasks: list[TaskResult]


class ErrorBody(Model):
    error: str
    message: str
    field: str | None = None
