"""Domain records: the plain objects the market reasons about and the store persists.

They are not wire shapes (``lumbung.wire.api``) and not SQL rows (``lumbung.store``): the hub turns
them into views, the store into rows. ``version`` is bumped by the store on every update so that a
write based on a stale read fails with ``Conflict`` (optimistic concurrency, safe across hubs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from lumbung.wire.api import Inventory
from lumbung.wire.spec import JobSpec, Scalar


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A replicated task's result waits for its verdict: not paid yet, and its node may not unstake.
PENDING_VERDICT = "pending"


@dataclass
class Node:
    id: str  # the node's actor id: a node is an actor
    name: str
    inventory: Inventory
    price_micro_per_gpu_hour: int
    price_micro_per_cpu_hour: int
    slots: int
    free_slots: int
    draining: bool
    registered_at: float
    last_heartbeat_at: float | None
    version: int = 0


@dataclass
class Job:
    id: str
    owner: str  # the consumer's actor id
    name: str
    spec: JobSpec
    state: JobState
    created_at: float
    updated_at: float
    error: str | None = None
    waiting_reason: str | None = None
    version: int = 0


@dataclass
class Task:
    id: str
    job_id: str
    index: int
    params: dict[str, Scalar]
    state: TaskState
    queued_at: float
    updated_at: float
    attempt: int = 0  # attempts started so far; the current one while running
    failures: int = 0  # attempts that ended in the task's own failure (retries count these)
    node_id: str | None = None  # lease holder while running; last runner afterwards
    lease_expires_at: float | None = None
    started_at: float | None = None  # when the current attempt was leased
    progress: float = 0.0
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    last_checkpoint_sha: str | None = None
    log_bytes: int = 0  # log bytes stored for the current attempt
    # Which copy of the logical task (job_id, index) this is: a replicated task runs on several
    # distinct nodes so that their results can be compared; 0 for the first (or only) copy.
    replica: int = 0
    # What the quorum found of this replica's result ("agreed", "wrong", "unverified"), or
    # "trusted" (adaptive: not drawn for a check); PENDING_VERDICT from its completion until
    # then; None for a task that is not replicated (or not finished).
    verdict: str | None = None
    # The digest of the execution class the node committed to with its result (lumbung.wire.
    # commitment): replicas of one class must match bit for bit.
    execution_class: str | None = None
    version: int = 0


@dataclass(frozen=True)
class CheckpointLink:
    """One link of a task's checkpoint chain: each names the hash of the one before it.

    A link a later node could not restore is ``rejected`` (the reason): it leaves the chain, and
    the time it kept is no longer paid for (``lumbung.hub.reports.resume_failed``).
    """

    task_id: str
    seq: int
    sha256: str
    prev_sha256: str | None
    node_id: str
    attempt: int
    progress: float
    runtime_s: float  # seconds into the attempt when taken, as the hub counts them
    kept_s: float  # seconds of work this link saved beyond the previous link of the same attempt
    created_at: float
    rejected: str | None = None


@dataclass
class Work:
    """What one node did on one attempt of a task: kept work is paid, lost work is not."""

    job_id: str
    task_id: str
    attempt: int
    node_id: str
    price_micro_per_hour: int
    kept_s: float = 0.0
    lost_s: float = 0.0


@dataclass(frozen=True)
class LogRecord:
    seq: int
    job_id: str
    task_id: str
    attempt: int
    stream: str
    text: str
    at: float


class RoundState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class Round:
    """One synchronisation of a training job: the weights its workers start from, its deadline,
    and, once closed, who took part and what it measured.

    Blobs hold the numbers: ``base_sha`` the full weights the round's workers start from,
    ``change_sha`` the compressed change from the previous round's weights (what a worker that
    holds them downloads instead), ``state_sha`` the hub's exact outer state at the round's
    start (weights, what the workers hold, outer momentum), so a restarted hub resumes it.
    """

    job_id: str
    index: int
    state: RoundState
    opened_at: float
    deadline_at: float
    base_sha: str | None = None  # None only for round 0 before a worker sent the initial weights
    change_sha: str | None = None
    state_sha: str | None = None
    closed_at: float | None = None
    participants: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # Updates left out of the round's aggregate by screening: task id -> why.
    screened: dict[str, str] = field(default_factory=dict)
    version: int = 0


@dataclass(frozen=True)
class RoundUpdate:
    """One worker's pseudo-gradient for a round: the blob it uploaded and what it reported."""

    job_id: str
    round_index: int
    task_id: str
    node_id: str
    attempt: int
    sha256: str  # the encoded pseudo-gradient (lumbung.train.codec)
    size_bytes: int
    tokens: int
    inner_steps: int
    train_loss: float
    base_val_loss: float | None  # validation loss of the weights the worker started from
    bytes_down: int  # what the worker downloaded to start the round (full weights or a change)
    device: str  # where its inner steps ran: "cpu", "cuda" (bf16 autocast), ...
    created_at: float
    # Seconds into the attempt when it was reported, by the hub's clock: the work it keeps,
    # once screening lets the update into the round.
    runtime_s: float = 0.0
