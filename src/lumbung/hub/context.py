"""What every hub request handler shares: config, store, blob store, clock, and the work signal."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lumbung.config import HubConfig
from lumbung.market.matching import NodeSnapshot
from lumbung.market.reliability import reliability
from lumbung.store.blobs import BlobStore
from lumbung.store.protocol import Store

# Node snapshots (online, reliability) are reused this long; computing reliability reads the store.
_SNAPSHOT_TTL_S = 1.0
_DAY_S = 86400.0


class WorkSignal:
    """Wakes long-polling claims in this process when work may have appeared.

    Other hub processes sharing the database are not signalled; claims also re-check on a short
    timer, so they see that work within a poll interval.
    """

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def _current(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        event, self._event = self._current(), asyncio.Event()
        event.set()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._current().wait(), timeout=max(timeout_s, 0.0))


@dataclass
class HubContext:
    config: HubConfig
    store: Store
    blobs: BlobStore
    clock: Callable[[], float] = time.time
    work: WorkSignal = field(default_factory=WorkSignal)
    known_actors: set[str] = field(default_factory=set)
    _snapshots: list[NodeSnapshot] = field(default_factory=list)
    _snapshots_at: float = float("-inf")

    def snapshots(self, *, fresh: bool = False) -> list[NodeSnapshot]:
        """Every registered node with whether it is online and its measured reliability."""
        now = self.clock()
        if fresh or now - self._snapshots_at > _SNAPSHOT_TTL_S:
            self._snapshots = [
                NodeSnapshot(
                    node=node,
                    online=node.last_heartbeat_at is not None
                    and now - node.last_heartbeat_at <= self.config.node_online_s,
                    reliability=reliability(
                        self.store.heartbeat_minutes(node.id, now - _DAY_S), node.registered_at, now
                    ),
                )
                for node in self.store.list_nodes()
            ]
            self._snapshots_at = now
        return self._snapshots

    def forget_snapshots(self) -> None:
        self._snapshots_at = float("-inf")
