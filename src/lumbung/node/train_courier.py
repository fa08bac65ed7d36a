"""The node's half of a DiLoCo worker: carries weights and updates between the hub and the trainer.

A train task runs ``lumbung.train.trainer`` in the sandbox, without network or key (it may run a
consumer's own model code). This courier, a thread of the node beside it, does the talking: each
round it asks the hub what to do, fetches the round's weights (the compressed change when it
holds the round before, the full weights otherwise), hands them to the trainer as files, and
sends the trainer's pseudo-gradient back. The file exchange is described in
``lumbung.train.trainer``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from lumbung.client.node_session import NodeSession
from lumbung.errors import Conflict, LumbungError
from lumbung.node import workfiles
from lumbung.node.retry import call_hub
from lumbung.train.codec import decode, encode, peek_numel
from lumbung.train.rounds import FULL_WEIGHTS
from lumbung.wire.api import RoundInfo, RoundUpdateReport

log = logging.getLogger("lumbung.node.train")

# How often the courier asks the hub while the trainer trains or the round is not yet open.
POLL_S = 0.3
# A hub that does not answer (restarting, a network blip) is waited for this long.
HUB_PATIENCE_S = 120.0
# The trainer's files are read as the hostile files they may be (the trainer may run a consumer's
# code): through ``workfiles``, never past a link, never more than these sizes.
_REPORT_MAX_BYTES = 64 * 1024
_WEIGHTS_MAX_BYTES = 4 * 1024**3
ROUNDS = "rounds"
T = TypeVar("T")


@dataclass
class Held:
    """The global weights this worker holds, exactly as the hub published them."""

    weights: np.ndarray
    sha256: str  # of their full encoding: the hub names weights by this


class Courier:
    def __init__(
        self,
        session: NodeSession,
        task_id: str,
        attempt: int,
        workdir: Path,
        runtime_s: Callable[[], float],
    ) -> None:
        self.session, self.task_id, self.attempt = session, task_id, attempt
        self.workdir = workdir  # the exchange is in its rounds/ (see lumbung.train.trainer)
        self.runtime_s = runtime_s
        self.held: Held | None = None
        self.handed: int | None = None  # the round whose weights the trainer has
        self.bytes_down = 0

    def run(self, stop: threading.Event) -> None:
        """Until training is over (then tell the trainer) or ``stop`` (the trainer ended)."""
        try:
            self._loop(stop)
        except Exception as exc:  # the trainer must not wait for ever on a courier that died
            log.exception("task %s: the training courier failed", self.task_id)
            with contextlib.suppress(OSError, LumbungError):  # the trainer may have gone too
                self._write("abort", str(exc).encode())

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            info = self._hub(lambda: self.session.round_info(self.task_id, self.attempt))
            if info.state == "done":
                self._write("done", b"")
                return
            if info.state == "open" and info.round != self.handed:
                self._hand(info)
            elif self.handed is not None and self._exists(f"{self.handed}.update.json"):
                self._send(self.handed)
            stop.wait(POLL_S)

    def _hand(self, info: RoundInfo) -> None:
        """Give the trainer the round's starting weights."""
        if info.base_sha is None:
            self.bytes_down = 0  # round 0, no weights yet: the trainer starts from the seed
        else:
            self.held, self.bytes_down = self._fetch(info)
            self._write(f"{info.round}.base.bin", encode(self.held.weights, FULL_WEIGHTS))
        start = {"round": info.round, "base": info.base_sha is not None}
        self._write(f"{info.round}.start.json", json.dumps(start).encode())
        self.handed = info.round

    def _send(self, index: int) -> None:
        report = json.loads(self._read(f"{index}.update.json", _REPORT_MAX_BYTES))
        initial_sha = None
        if self._exists(f"{index}.initial.bin"):  # round 0 had no weights: the trainer's seeded
            initial = self._read(f"{index}.initial.bin", _WEIGHTS_MAX_BYTES)
            initial_sha = self._hub(lambda: self.session.upload_bytes(initial))
            self.held = Held(decode(initial, peek_numel(initial)), initial_sha)
        if self.held is None:
            raise AssertionError("an update without the weights it was trained from")
        blob = self._read(f"{index}.update.bin", _WEIGHTS_MAX_BYTES)
        update = RoundUpdateReport(
            attempt=self.attempt,
            sha256=self._hub(lambda: self.session.upload_bytes(blob)),
            base_sha=self.held.sha256,
            initial_sha=initial_sha,
            tokens=report["tokens"],
            inner_steps=report["inner_steps"],
            train_loss=report["train_loss"],
            base_val_loss=report["base_val_loss"],
            bytes_down=self.bytes_down,
            runtime_s=self.runtime_s(),
            device=report["device"],
        )
        self.handed = None  # sent (or refused): the next open round is handed afresh
        try:
            self._hub(lambda: self.session.send_update(self.task_id, index, update))
        except Conflict as exc:
            # The round closed while the trainer trained (its deadline): on to the next one.
            log.info("task %s: round %d update not taken: %s", self.task_id, index, exc.message)

    def _fetch(self, info: RoundInfo) -> tuple[Held, int]:
        """The round's weights, and the bytes downloaded for them."""
        assert info.base_sha is not None
        held = self.held
        if held is not None and held.sha256 == info.base_sha:
            return held, 0  # this worker sent round 0's initial weights itself
        if (
            held is not None
            and info.change_sha is not None
            and held.sha256 == info.previous_base_sha
        ):
            change = self._download(info.change_sha)
            weights = held.weights + decode(change, held.weights.size)
            if _full_sha(weights) == info.base_sha:  # the same float32 sums as the hub's
                return Held(weights, info.base_sha), len(change)
        full = self._download(info.base_sha)
        return Held(decode(full, peek_numel(full)), info.base_sha), len(full)

    def _read(self, name: str, max_bytes: int) -> bytes:
        return workfiles.read_file(self.workdir, f"{ROUNDS}/{name}", max_bytes)

    def _exists(self, name: str) -> bool:
        return workfiles.exists(self.workdir, f"{ROUNDS}/{name}")

    def _write(self, name: str, data: bytes) -> None:
        workfiles.write_file(self.workdir, f"{ROUNDS}/{name}", data)

    def _download(self, sha256: str) -> bytes:
        # Into a directory of the node's own, not the trainer's: nothing there to trip over.
        with tempfile.TemporaryDirectory(prefix="lumbung-courier-") as tmp:
            dest = Path(tmp) / sha256
            self._hub(lambda: self.session.download(sha256, dest))
            return dest.read_bytes()

    def _hub(self, call: Callable[[], T]) -> T:
        """``call`` the hub, waiting out a hub that is down (a restart keeps its rounds)."""
        return call_hub(call, patience_s=HUB_PATIENCE_S, what=f"task {self.task_id}")


def _full_sha(weights: np.ndarray) -> str:
    return hashlib.sha256(encode(weights, FULL_WEIGHTS)).hexdigest()
