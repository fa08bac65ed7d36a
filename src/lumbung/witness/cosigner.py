"""A witness: watch a hub's log, cosign its checkpoints, and refuse loudly if its history forks.

Each round the witness reads the hub's checkpoint, opens it with the pinned hub key (trust on first
use, as ``lumbung.client.audit`` pins it), asks for a consistency proof from the checkpoint it last
cosigned, and lets ``lumbung.ledger.witness_state.decide`` judge. Its state for a log lives in
``<data_dir>/witness/<origin>.json`` and is written atomically (temporary file, fsync, rename)
BEFORE the cosignature leaves the process: after a crash the witness remembers at least what it
vouched for, so it can never cosign two inconsistent checkpoints (C2SP tlog-witness).

A fork is remembered in ``<data_dir>/witness/<origin>.fork``: a log that showed two histories is
never cosigned again by this witness, whatever it shows next.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lumbung.client.audit import Pin, open_signed, pin_path, save_pin, trusted_key
from lumbung.client.ledger import LedgerClient
from lumbung.client.transport import HubTransport
from lumbung.crypto.keys import Identity
from lumbung.errors import Conflict, LumbungError
from lumbung.ledger.checkpoint import SIG_TYPE_COSIGNATURE_V1, cosign
from lumbung.ledger.note import vkey
from lumbung.ledger.witness_state import (
    Fork,
    WitnessState,
    decide,
    state_from_json,
    state_to_json,
)

COSIGNATURES_PATH = "/v1/ledger/cosignatures"


class Rollback(Conflict):
    """The log showed a smaller tree than the witness already cosigned."""


def default_name(identity: Identity) -> str:
    """The witness's key name when none is given: ``lumbung.witness/<actor id>``."""
    return f"lumbung.witness/{identity.actor_id}"


def state_path(data_dir: Path, origin: str) -> Path:
    # Origins contain '/', which a file name cannot: it becomes '_' (actor ids have none).
    return data_dir / "witness" / f"{origin.replace('/', '_')}.json"


def load_state(path: Path) -> WitnessState | None:
    """The stored state, or None before the first cosignature of this log."""
    if not path.exists():
        return None
    return state_from_json(path.read_text())


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory entry is flushed too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class Witness:
    """One witness: its key, the name it signs under, and where it keeps its state."""

    identity: Identity
    data_dir: Path
    name: str

    @property
    def vkey(self) -> str:
        """The verifier key clients pass to ``lumbung ledger verify --witness``."""
        return vkey(self.name, self.identity.public_key_raw, SIG_TYPE_COSIGNATURE_V1)

    def round(self, hub: HubTransport) -> WitnessState:
        """Check the hub's latest checkpoint and cosign it; returns the state now cosigned.

        Raises ``Fork`` (the log showed two histories; remembered, so every later round raises it
        too), ``Rollback`` (the log showed an older tree), ``Unauthenticated`` (the hub's key
        changed or a signature is bad), and whatever the hub answers.
        """
        ledger = LedgerClient(hub)
        log = trusted_key(ledger, self.data_dir)
        self._refuse_known_fork(log.origin)
        note = ledger.checkpoint()
        cp = open_signed(note, log.origin, log.key)
        path = state_path(self.data_dir, log.origin)
        state = load_state(path)
        proof: list[bytes] = []
        if state is not None and 0 < state.size < cp.size:
            proof = ledger.consistency_proof(state.size, cp.size)
        try:
            new_state = decide(state, cp, proof)
        except Fork as exc:
            write_atomically(_fork_path(path), exc.message + "\n")
            raise
        except Conflict as exc:
            raise Rollback(exc.message) from exc
        write_atomically(path, state_to_json(new_state) + "\n")
        save_pin(pin_path(self.data_dir, log.origin), Pin(log.origin, log.vkey, cp.size, cp.root))
        cosigned = cosign(note, self.name, self.identity)
        hub.call("POST", COSIGNATURES_PATH, json={"note": cosigned, "vkey": self.vkey})
        return new_state

    def _refuse_known_fork(self, origin: str) -> None:
        fork_path = _fork_path(state_path(self.data_dir, origin))
        if fork_path.exists():
            raise Fork(f"{fork_path.read_text().strip()} (recorded in {fork_path})")

    def watch(
        self,
        hub: HubTransport,
        interval_s: float,
        stop: threading.Event,
        report: Callable[[WitnessState | LumbungError], None],
    ) -> None:
        """Run rounds every ``interval_s`` until ``stop`` is set, reporting each outcome.

        A failed round (hub down, fork, rollback) is reported and the loop goes on: the witness
        keeps watching, and keeps refusing to cosign a forked log.
        """
        while not stop.is_set():
            try:
                report(self.round(hub))
            except LumbungError as exc:
                report(exc)
            stop.wait(interval_s)


def _fork_path(state_file: Path) -> Path:
    return state_file.with_suffix(".fork")
