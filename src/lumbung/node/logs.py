"""Shipping a task's stdout and stderr to the hub in batches, up to a byte budget per attempt."""

from __future__ import annotations

import codecs
import logging
import os
import threading
from collections.abc import Callable
from typing import IO

from lumbung.errors import LumbungError

log = logging.getLogger(__name__)

TRUNCATION_LINE = "[output truncated by node]\n"
# The hub accepts at most this many characters in one LogChunk.
_MAX_CHUNK_CHARS = 256 * 1024
_READ_BYTES = 64 * 1024

# (stream name, text) -> None; raises LumbungError when the hub refuses or cannot be reached.
SendLogs = Callable[[str, str], None]


class LogShipper:
    """Reads a task's pipes on their own threads and sends what they say every ``interval_s``.

    Reading never stops while the task runs, even past the budget, so a chatty task never blocks on
    a full pipe; what is over budget is dropped and marked by one truncation line.
    """

    def __init__(
        self,
        send: SendLogs,
        *,
        max_bytes: int,
        interval_s: float = 0.5,
        batch_bytes: int = 32 * 1024,
    ) -> None:
        self._send = send
        self._left_bytes = max_bytes
        self._interval_s = interval_s
        self._batch_bytes = batch_bytes
        self._pending: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._pending_bytes = 0
        self._truncated = False
        self._cond = threading.Condition()
        self._closing = False
        self._readers: list[threading.Thread] = []
        self._sender = threading.Thread(target=self._send_loop, name="log-sender", daemon=True)

    def start(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        for name, pipe in (("stdout", stdout), ("stderr", stderr)):
            reader = threading.Thread(
                target=self._read_loop, args=(name, pipe), name=f"log-{name}", daemon=True
            )
            reader.start()
            self._readers.append(reader)
        self._sender.start()

    def close(self, timeout_s: float) -> None:
        """Wait for both pipes to end (up to ``timeout_s``), then send what is left."""
        for reader in self._readers:
            reader.join(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._sender.is_alive():
            self._sender.join(timeout_s)

    def _read_loop(self, name: str, pipe: IO[bytes]) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                data = os.read(pipe.fileno(), _READ_BYTES)
                self._accept(name, decoder.decode(data, final=not data))
                if not data:
                    return
        except OSError as exc:
            log.warning("reading the task's %s failed: %s", name, exc)
        finally:
            pipe.close()

    def _accept(self, name: str, text: str) -> None:
        if not text:
            return
        with self._cond:
            if self._truncated:
                return
            encoded = text.encode()
            if len(encoded) > self._left_bytes:
                text = encoded[: self._left_bytes].decode(errors="ignore")
                if text and not text.endswith("\n"):
                    text += "\n"
                text += TRUNCATION_LINE
                self._truncated = True
            self._left_bytes -= min(len(encoded), self._left_bytes)
            self._pending[name].append(text)
            self._pending_bytes += len(encoded)
            if self._pending_bytes >= self._batch_bytes:
                self._cond.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                if not self._closing and self._pending_bytes < self._batch_bytes:
                    self._cond.wait(self._interval_s)
                batches = {name: "".join(parts) for name, parts in self._pending.items() if parts}
                for parts in self._pending.values():
                    parts.clear()
                self._pending_bytes = 0
                closing = self._closing
            for name, text in batches.items():
                self._send_text(name, text)
            if closing:
                return

    def _send_text(self, name: str, text: str) -> None:
        for start in range(0, len(text), _MAX_CHUNK_CHARS):
            try:
                self._send(name, text[start : start + _MAX_CHUNK_CHARS])
            except LumbungError as exc:
                log.warning("dropping %d characters of task %s: %s", len(text), name, exc)
                return
