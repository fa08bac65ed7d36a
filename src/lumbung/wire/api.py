"""Request and response models of the hub's HTTP API, version 1 (``/v1``).

These are the shapes on the wire, kept apart from the domain records (``lumbung.market.model``) and
the stored rows (``lumbung.store``). Times are Unix seconds (float); money is integer micro-credits.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lumbung.wire.spec import JobSpec, Scalar

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Progress = Annotated[float, Field(ge=0.0, le=1.0)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- nodes ------------------------------------------------------------------------------------


class GpuInfo(Model):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    memory_mib: Annotated[int, Field(ge=0)]
    driver: str = ""
    cuda_capability: str = ""


class Isolation(Model):
    runner: Literal["process", "container"] = "process"
    # "netns": tasks without network get a fresh network namespace; "none": they share the host's.
    network: Literal["netns", "none"] = "none"
    notes: list[str] = Field(default_factory=list)


class Inventory(Model):
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    cpus: Annotated[int, Field(ge=1, le=4096)]
    memory_mib: Annotated[int, Field(ge=0)]
    disk_free_mib: Annotated[int, Field(ge=0)]
    os: str = ""
    python: str = ""
    torch: str | None = None
    isolation: Isolation = Field(default_factory=Isolation)


class NodeRegister(Model):
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


class TaskReport(Model):
    task_id: str
    attempt: Annotated[int, Field(ge=1)]
    progress: Progress = 0.0


class HeartbeatRequest(Model):
    tasks: list[TaskReport] = Field(default_factory=list, max_length=256)
    free_slots: Annotated[int, Field(ge=0, le=256)] = 0
    draining: bool = False


class HeartbeatResponse(Model):
    renewed: list[str]
    # Tasks the node must stop now: cancelled, or no longer leased to it.
    cancel: list[str]
    lease_timeout_s: float


# --- tasks, from the node's side ------------------------------------------------------------------


class ClaimRequest(Model):
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
    resources: dict[str, object]
    max_runtime_s: int
    checkpoint_interval_s: int
    network: bool
    env: dict[str, str]
    # The checkpoint to restore before starting, when the task resumes after a failure.
    resume_from: Sha256 | None
    lease_expires_at: float


class ClaimResponse(Model):
    assignment: Assignment | None


class LogChunk(Model):
    attempt: Annotated[int, Field(ge=1)]
    stream: Literal["stdout", "stderr"]
    text: Annotated[str, Field(max_length=256 * 1024)]


class CheckpointReport(Model):
    attempt: Annotated[int, Field(ge=1)]
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=0)]
    # The hash of the checkpoint this one follows in the task's chain; None for the first.
    prev_sha256: Sha256 | None
    progress: Progress = 0.0
    # Seconds this attempt had run when the checkpoint was taken.
    runtime_s: Annotated[float, Field(ge=0.0)]


class TaskComplete(Model):
    attempt: Annotated[int, Field(ge=1)]
    exit_code: int
    outputs: dict[str, Sha256] = Field(default_factory=dict)
    runtime_s: Annotated[float, Field(ge=0.0)]
    # Why it failed, in the node's words (timeout, killed, missing output...); None on success.
    error: Annotated[str, Field(max_length=4000)] | None = None


class TaskRelease(Model):
    """The node gives a task back without blame (it is draining); the task requeues at once."""

    attempt: Annotated[int, Field(ge=1)]
    runtime_s: Annotated[float, Field(ge=0.0)]
    reason: Annotated[str, Field(max_length=1000)] = "node draining"


# --- jobs, from the consumer's side ---------------------------------------------------------------


class PlanRequest(Model):
    spec: JobSpec


class JobSubmit(Model):
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


class CheckpointView(Model):
    seq: int
    sha256: str
    prev_sha256: str | None
    node_id: str
    attempt: int
    progress: float
    kept_s: float
    created_at: float


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


class Results(Model):
    job_id: str
    state: str
    tasks: list[TaskResult]


class ErrorBody(Model):
    error: str
    message: str
    field: str | None = None
