"""How many requests the hub works on at once, and what it answers when that is too many.

Handlers run in a thread pool and call the store, which holds a database connection per call. A
request holds one of the hub's slots while it is in that core (``lumbung.hub.auth`` admits it);
there are as many slots as the store has connections to spare, so that a thread never waits for
a connection (SQLAlchemy's pool would block it, and blocked threads stall every request). A
request that finds every slot taken waits in line, on the event loop, holding no thread; one that
finds the line full as well is answered 503 (``Unavailable``), which clients and nodes retry.

Lease renewals (heartbeats) have slots that nothing else may take, and are never refused: a
refused heartbeat can cost a healthy node its leases. A claim's long-poll is not refused either:
it waits for a slot as it waits for work, within its deadline.

Safe to use from any thread and any event loop: a slot freed in one is handed to a waiter on its
own loop (``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from enum import StrEnum

from lumbung.errors import Unavailable

# Connections the hub's own threads may hold beside its requests: the reaper, the background
# closer of rounds (lumbung.hub.background) and the log's writer lock (PostgreSQL).
_BACKGROUND_CONNECTIONS = 3
# A quarter of the slots are kept for lease renewals.
_RENEWAL_SHARE = 4


class Admission(StrEnum):
    REQUEST = "request"  # waits while the line is short, else 503
    POLL = "poll"  # a long-poll: waits, within its deadline
    RENEWAL = "renewal"  # a heartbeat: may take a kept slot, and waits


class _Waiter:
    def __init__(self, admission: Admission, future: asyncio.Future[None]) -> None:
        self.admission = admission
        self.future = future


class Capacity:
    """``slots`` requests at once, ``renewal_slots`` of them kept for renewals; up to ``line``
    requests wait beyond them (long-polls and renewals wait whatever the line)."""

    def __init__(self, slots: int, renewal_slots: int, line: int) -> None:
        if not 0 < renewal_slots < slots or line < 0:
            raise ValueError(f"bad capacity: {slots} slots, {renewal_slots} kept, line {line}")
        self.slots = slots
        self.renewal_slots = renewal_slots
        self.line = line
        self._lock = threading.Lock()
        self._busy = 0
        self._waiting: deque[_Waiter] = deque()

    @classmethod
    def for_connections(cls, connections: int) -> Capacity:
        """Sized to a store that holds at most ``connections`` at once."""
        slots = max(2, connections - _BACKGROUND_CONNECTIONS)
        return cls(slots, renewal_slots=max(1, slots // _RENEWAL_SHARE), line=slots)

    @property
    def busy(self) -> int:
        """Slots held now."""
        with self._lock:
            return self._busy

    @contextlib.asynccontextmanager
    async def slot(self, admission: Admission = Admission.REQUEST) -> AsyncIterator[None]:
        """Hold a slot for the block; ``Unavailable`` (503) for a request that finds it full."""
        await self.enter(admission)
        try:
            yield
        finally:
            self.leave()

    async def enter(self, admission: Admission, wait_s: float | None = None) -> bool:
        """Take a slot, waiting in line if need be: True once taken, False if ``wait_s`` passed
        first. A ``REQUEST`` that finds the line full raises ``Unavailable`` instead."""
        with self._lock:
            if self._fits(admission):
                self._busy += 1
                return True
            if admission is Admission.REQUEST and self._requests_waiting() >= self.line:
                raise Unavailable(
                    f"the hub is busy: {self._busy} requests in progress and {self.line} "
                    "waiting; try again shortly"
                )
            waiter = _Waiter(admission, asyncio.get_running_loop().create_future())
            self._waiting.append(waiter)
        try:
            await asyncio.wait({waiter.future}, timeout=wait_s)
        except BaseException:  # cancelled (a client gone): a slot handed meanwhile goes on
            if not self._withdraw(waiter):
                self.leave()
            raise
        # Handed a slot, or timed out (and perhaps handed one just now: then it is taken).
        return not self._withdraw(waiter)

    def leave(self) -> None:
        """Give a slot back; the first waiter it fits gets it."""
        with self._lock:
            self._busy -= 1
            self._hand_over()

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Leave the line; False if the waiter is no longer in it (it was handed a slot)."""
        with self._lock:
            if waiter not in self._waiting:
                return False
            self._waiting.remove(waiter)
            return True

    def _fits(self, admission: Admission) -> bool:
        if admission is Admission.RENEWAL:
            return self._busy < self.slots
        return self._busy < self.slots - self.renewal_slots

    def _requests_waiting(self) -> int:
        return sum(1 for w in self._waiting if w.admission is Admission.REQUEST)

    def _hand_over(self) -> None:
        # Called with the lock held. In order, except that a renewal may pass requests waiting
        # for a slot that only renewals may take.
        while True:
            waiter = next((w for w in self._waiting if self._fits(w.admission)), None)
            if waiter is None:
                return
            self._waiting.remove(waiter)
            self._busy += 1
            try:
                waiter.future.get_loop().call_soon_threadsafe(_wake, waiter.future)
            except RuntimeError:  # its loop is closed: nobody is waiting there any more
                self._busy -= 1


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
