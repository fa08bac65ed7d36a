"""The store Protocol: everything the hub persists, and nothing about how.

Two implementations: ``SqlStore`` (SQLAlchemy; SQLite by default, PostgreSQL for many hubs) and
``MemoryStore`` (tests and simulation). Both raise ``NotFound`` for a missing object, ``StaleWrite``
when an update's ``version`` no longer matches what is stored (someone else wrote first), and
``Conflict`` when a unique key is taken. Updates bump ``version`` on the object passed in. A job
whose stored spec no longer validates raises ``UnreadableJob`` wherever it would be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lumbung.errors import Conflict
from lumbung.market.model import (
    CheckpointLink,
    Job,
    JobState,
    LogRecord,
    Node,
    Round,
    RoundUpdate,
    Task,
    TaskState,
    Work,
)
from lumbung.store.ledger import LedgerStore


class UnreadableJob(Conflict):
    """A stored job whose spec no longer validates (stored by an older, laxer hub, or written into
    the database by hand): nothing can act on it but ``Store.fail_job``. It carries what the row
    still says, so that the hub can tell its owner and settle its escrow."""

    def __init__(self, job_id: str, owner: str, state: JobState, reason: str) -> None:
        super().__init__(
            f"job {job_id} cannot be read back: its stored spec fails validation ({reason})",
            field="job_id",
        )
        self.job_id = job_id
        self.owner = owner
        self.state = state
        self.reason = reason

    @property
    def job_error(self) -> str:
        """What the job is failed with (``Store.fail_job``), for its owner to read."""
        return f"the hub cannot read it back: its stored spec fails validation ({self.reason})"


@dataclass
class Changes:
    """One unit of work, applied all or nothing by ``Store.apply``.

    Jobs, tasks and rounds are updates checked against their ``version``; new tasks (tasks added
    to a job already stored, such as one more replica), checkpoint links, new rounds and round
    updates are inserts (``Conflict`` if the key is taken: for a new task its id or its (job_id,
    index, replica), or if its job is not stored); work records are upserts keyed by (task_id,
    attempt). ``rejected_checkpoints`` are stored links, by (task_id, seq), whose ``rejected``
    reason is set (``NotFound`` if one is not stored); nothing else of a stored link ever changes.
    """

    jobs: list[Job] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    new_tasks: list[Task] = field(default_factory=list)
    checkpoints: list[CheckpointLink] = field(default_factory=list)
    rejected_checkpoints: list[CheckpointLink] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)
    new_rounds: list[Round] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    updates: list[RoundUpdate] = field(default_factory=list)


class Store(Protocol):
    @property
    def max_connections(self) -> int:
        """How many calls may hold a database connection at once; one more waits for a free one.
        The hub lets no more requests than this into its core (``lumbung.hub.capacity``)."""

    # --- actors and replay protection -----------------------------------------------------------
    def ensure_actor(self, actor_id: str, public_key: bytes, now: float) -> None:
        """Record an actor on its first signed request; a known id keeps its first key."""

    def use_nonce(self, actor_id: str, nonce: str, expires_at: float) -> None:
        """Remember a signature nonce; ``Conflict`` if this actor used it before (a replay)."""

    def purge_nonces(self, now: float) -> int:
        """Forget nonces whose signatures are too old to be accepted anyway; returns how many."""

    # --- nodes --------------------------------------------------------------------------------
    def put_node(self, node: Node) -> None:
        """Insert a node, or replace its registration (inventory, prices, slots) if it exists."""

    def get_node(self, node_id: str) -> Node: ...

    def list_nodes(self) -> list[Node]: ...

    def record_heartbeat(self, node_id: str, now: float, free_slots: int, draining: bool) -> None:
        """Set the node's last heartbeat and load, and mark the minute as heard (reliability)."""

    def heartbeat_minutes(self, since: float, node_id: str | None = None) -> dict[str, int]:
        """Per node (all, or the one named), how many distinct minutes since ``since`` (the minute
        containing it included) had at least one heartbeat; nodes never heard are left out."""

    def purge_heartbeat_minutes(self, before: float) -> int:
        """Forget the heartbeat minutes that end before ``before``; returns how many."""

    # --- nodes' streaks of valid results (adaptive replication) ---------------------------------
    def valid_streak(self, node_id: str, workload: str) -> int:
        """The node's count of consecutive valid results in ``workload``; 0 if never recorded."""

    def record_results(self, results: Sequence[tuple[str, str, bool]], now: float) -> None:
        """Per (node_id, workload, valid), in order and in one transaction: count one more, or 0."""

    def node_streaks(self, node_id: str) -> dict[str, int]:
        """The node's count of consecutive valid results per workload it has a record in."""

    # --- jobs and tasks -------------------------------------------------------------------------
    def create_job(self, job: Job, tasks: Sequence[Task]) -> None:
        """Insert a job and all its tasks in one transaction."""

    def get_job(self, job_id: str) -> Job: ...

    def list_jobs(self, owner: str) -> list[Job]:
        """The owner's jobs, newest first; one that is ``UnreadableJob`` is left out."""

    def fail_job(self, job_id: str, error: str, now: float) -> None:
        """Fail a job with ``error`` and cancel its queued and running tasks, in one transaction,
        without reading its spec (so it works on an ``UnreadableJob``); a job already over is left
        as it is. ``NotFound`` if there is no such job."""

    def get_task(self, task_id: str) -> Task: ...

    def list_tasks(self, job_id: str) -> list[Task]:
        """The job's tasks by index, then replica."""

    def list_replicas(self, job_id: str, index: int) -> list[Task]:
        """Every copy of the job's task ``index`` (none if there is no such task), by replica."""

    def task_state_counts(self, job_id: str, excluding: Sequence[str] = ()) -> dict[TaskState, int]:
        """How many of the job's tasks are in each state, leaving out the task ids ``excluding``."""

    def owner_task_counts(self, owner: str) -> dict[str, dict[TaskState, int]]:
        """Per job of ``owner`` that has tasks, how many are in each state (one read)."""

    def queued_tasks(self, limit: int, offset: int = 0) -> list[Task]:
        """Queued tasks, oldest ``queued_at`` first, then by job, index and replica."""

    def running_tasks(self, node_id: str | None = None) -> list[Task]:
        """Tasks holding a lease, all or one node's."""

    def expired_leases(self, now: float) -> list[Task]:
        """Running tasks whose lease expired before ``now``."""

    def apply(self, changes: Changes) -> None:
        """Write all of ``changes`` in one transaction, or nothing.

        ``StaleWrite`` (a ``Conflict``) if any job or task was updated since it was read (its
        version moved on); ``Conflict`` if an insert's key is taken (see ``Changes``). On success
        every job and task updated has its ``version`` bumped to the stored one; new tasks are
        stored with the version they carry.
        """

    # --- checkpoints, work, logs ----------------------------------------------------------------
    def list_checkpoints(self, task_id: str) -> list[CheckpointLink]:
        """The task's chain, by seq."""

    def list_job_checkpoints(self, job_id: str) -> list[CheckpointLink]:
        """Every chain of the job's tasks in one read: by task id, then seq."""

    def list_work(self, job_id: str) -> list[Work]: ...

    def get_work(self, task_id: str, attempt: int) -> Work:
        """The work record of one attempt; ``NotFound`` if it has none."""

    # --- training rounds -------------------------------------------------------------------------
    def get_round(self, job_id: str, index: int) -> Round: ...

    def latest_round(self, job_id: str) -> Round:
        """The job's round with the highest index; ``NotFound`` if it has none."""

    def list_rounds(self, job_id: str) -> list[Round]:
        """Every round of the job, in index order."""

    def rounds_due(self, now: float) -> list[Round]:
        """Open rounds whose deadline has passed, oldest deadline first."""

    def list_updates(self, job_id: str, round_index: int | None = None) -> list[RoundUpdate]:
        """The updates to one round (or, with None, to every round of the job), in the order
        they arrived."""

    def append_log(self, record: LogRecord) -> int:
        """Store a log chunk (its ``seq`` is ignored) and return the seq it was given."""

    def list_logs(self, job_id: str, after_seq: int, limit: int) -> list[LogRecord]:
        """Log chunks of the job with seq above ``after_seq``, in order."""

    def tail_logs(self, task_id: str, attempt: int, limit: int) -> list[LogRecord]:
        """The last ``limit`` log chunks of one attempt of a task, in order."""

    def ledger(self) -> LedgerStore:
        """The transparency log's store, in the same database as this store."""

    def close(self) -> None: ...
