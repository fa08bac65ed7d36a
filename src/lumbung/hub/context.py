"""What every hub request handler shares: config, store, blob store, clock, and the work signal.

Handlers run in a thread pool, many at once, so everything here is safe to use from any thread:
the caches below take a lock, the work signal may be set from any thread and waited on from any
event loop.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.hub.background import Background
from lumbung.hub.capacity import Capacity
from lumbung.hub.ledger import LogService
from lumbung.hub.rate_limits import RateLimits
from lumbung.market.matching import NodeSnapshot
from lumbung.market.model import Node
from lumbung.market.reliability import DAY_S, reliability
from lumbung.store.blobs import BlobStore
from lumbung.store.protocol import Store, UnreadableJob
from lumbung.wire.spec import JobSpec

# Node snapshots (online, load) are reused this long.
_SNAPSHOT_TTL_S = 1.0
# Reliability is the share of a day's minutes heard: it moves by at most 1/1440 a minute, but
# counting them reads every node's day of minutes (1.4 million rows for 1,000 nodes), so the
# counts are reused for a minute.
_HEARD_TTL_S = 60.0
_DRAW_STEPS = 1 << 53  # draws in [0, 1) with a float's whole precision
# Job specs kept parsed; the cache starts over when full (specs are cheap to re-read).
_SPEC_CACHE_SIZE = 10_000


class WorkSignal:
    """Wakes long-polling claims in this process when work may have appeared.

    ``notify`` is called from handlers in the thread pool; each waiting claim is woken on its own
    event loop. A claim reads ``generation`` before it looks for work and waits ``since`` it, so a
    notification that came while it looked is not missed.

    Other hub processes sharing the database are not signalled; claims also re-check on a short
    timer, so they see that work within a poll interval.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0  # notifications so far
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def notify(self) -> None:
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, set()
        for future in waiters:
            try:
                future.get_loop().call_soon_threadsafe(_wake, future)
            except RuntimeError:  # its loop is closed: nobody is waiting there any more
                continue

    async def wait(self, timeout_s: float, since: int | None = None) -> None:
        """Until the next notification (at once if there was one after generation ``since``),
        or ``timeout_s``."""
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if since is not None and since != self._generation:
                return
            self._waiters.add(future)
        try:
            await asyncio.wait({future}, timeout=max(timeout_s, 0.0))
        finally:
            with self._lock:
                self._waiters.discard(future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _uniform() -> float:
    return secrets.randbelow(_DRAW_STEPS) / _DRAW_STEPS


@dataclass
class HubContext:
    config: HubConfig
    store: Store
    blobs: BlobStore
    clock: Callable[[], float] = time.time
    # Uniform in [0, 1), from the operating system's generator: which results are checked
    # (lumbung.hub.replication) must not be predictable from outside the hub.
    draw: Callable[[], float] = field(default=_uniform)
    work: WorkSignal = field(default_factory=WorkSignal)
    known_actors: set[str] = field(default_factory=set)
    # The hub's own key: it signs the log's checkpoints and is the ledger's treasury for now.
    identity: Identity | None = None
    # The transparency log; create_app makes it (from ``identity``) when it is not given.
    log: LogService | None = None
    # Every actor's write buckets in this process (lumbung.hub.write_limits says which writes).
    rate_limits: RateLimits = field(default_factory=RateLimits)
    # Requests let into the core at once (lumbung.hub.capacity), sized to the store's pool.
    capacity: Capacity = field(init=False)
    # Work off the request path: closing training rounds (lumbung.hub.background).
    background: Background = field(default_factory=Background)
    _snapshots: list[NodeSnapshot] = field(default_factory=list)
    _snapshots_at: float = float("-inf")
    _heard: dict[str, int] = field(default_factory=dict)
    _heard_at: float = float("-inf")
    # Held while the snapshots are rebuilt: claims arriving meanwhile wait for that one rebuild.
    _snapshots_lock: threading.Lock = field(default_factory=threading.Lock)
    _specs: dict[str, JobSpec] = field(default_factory=dict)
    _specs_lock: threading.Lock = field(default_factory=threading.Lock)
    # Held while a claim chooses and leases a task (lumbung.hub.leases.claim).
    claim_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.capacity = Capacity.for_connections(self.store.max_connections)

    def snapshots(self, *, fresh: bool = False) -> list[NodeSnapshot]:
        """Every registered node with whether it is online and its measured reliability."""
        with self._snapshots_lock:
            now = self.clock()
            if fresh or now - self._snapshots_at > _SNAPSHOT_TTL_S:
                if fresh or now - self._heard_at > _HEARD_TTL_S:
                    self._heard = self.store.heartbeat_minutes(now - DAY_S)
                    self._heard_at = now
                heard, at = self._heard, self._heard_at
                self._snapshots = [
                    self.snapshot(node, heard.get(node.id, 0), counted_at=at)
                    for node in self.store.list_nodes()
                ]
                self._snapshots_at = now
            return self._snapshots

    def snapshot(
        self, node: Node, heard_minutes: int, counted_at: float | None = None
    ) -> NodeSnapshot:
        """``heard_minutes`` were counted at ``counted_at`` (now if None): reliability is taken
        as of then, so the minutes it expects are those the count could have seen, and a node
        registered since scores as a new one, not as one never heard."""
        now = self.clock()
        online = node.last_heartbeat_at is not None and (
            now - node.last_heartbeat_at <= self.config.node_online_s
        )
        at = now if counted_at is None else counted_at
        return NodeSnapshot(
            node=node,
            online=online,
            reliability=reliability(heard_minutes, node.registered_at, at),
        )

    def node_snapshot(self, node_id: str) -> NodeSnapshot:
        """One node's snapshot, read now (not from the cache)."""
        since = self.clock() - DAY_S
        heard = self.store.heartbeat_minutes(since, node_id=node_id)
        return self.snapshot(self.store.get_node(node_id), heard.get(node_id, 0))

    def spec_of(self, job_id: str) -> JobSpec:
        """A job's spec; specs never change, so they are parsed once and kept.

        A job whose stored spec no longer reads is failed on the spot (its tasks cancelled), then
        ``UnreadableJob`` raised: the claims, renewals and expiries that read specs then meet it
        once, not for ever. Its escrow settles at the caller (lumbung.hub.unreadable) or at the
        next reconcile.
        """
        with self._specs_lock:
            spec = self._specs.get(job_id)
        if spec is not None:
            return spec
        try:
            job = self.store.get_job(job_id)  # outside the lock: other specs need not wait
        except UnreadableJob as exc:
            self.store.fail_job(job_id, exc.job_error, self.clock())
            raise
        with self._specs_lock:
            if len(self._specs) >= _SPEC_CACHE_SIZE:
                self._specs.clear()
            self._specs[job_id] = job.spec
        return job.spec
