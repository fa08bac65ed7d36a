"""Work the hub does off the request path, in a thread of its own, one piece at a time.

Closing a training round decodes every update, takes the outer step and writes the next weights:
seconds for a large model with many workers. The request that completed the round only asks for
it to be closed (``submit``) and is answered at once; neither it nor any other request waits, and
the event loop never runs it. The reaper asks the same for rounds at their deadline.

Work is keyed: asking again for work that has not started yet asks once (it would do the same),
while work asked for during its own run runs again after it (what it read may have changed). The
thread starts when there is work and ends when there is none, so an idle hub holds none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("lumbung.hub.background")


class Background:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._queued: dict[str, Callable[[], object]] = {}  # in the order asked
        self._working = False

    def submit(self, key: str, work: Callable[[], object]) -> None:
        """Run ``work`` soon, after what was asked before; once, if ``key`` is already queued."""
        with self._changed:
            self._queued.setdefault(key, work)
            if not self._working:
                self._working = True
                threading.Thread(target=self._run, name="lumbung-background", daemon=True).start()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Until nothing is queued or running (True), or ``timeout_s`` passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._working, timeout_s)

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._queued:
                    self._working = False
                    self._changed.notify_all()
                    return
                key = next(iter(self._queued))
                work = self._queued.pop(key)
            try:
                work()
            except Exception:  # one failure must not stop the work after it
                log.exception("background work %r failed", key)
