"""What a witness decides when a log shows it a new checkpoint: cosign, or refuse because of a fork.

A witness remembers, per log, the latest checkpoint it cosigned. It cosigns a new one only if the
log proves that the new tree extends the remembered one (an RFC 9162 section 2.1.4 consistency
proof). Two checkpoints that no proof can join are a fork: the log has shown two histories, which is
exactly what witnesses exist to catch (C2SP tlog-witness; tlog-checkpoint "Signatures": a log MUST
NOT sign inconsistent checkpoints). The decision is a pure function; the witness process persists
the returned state (``state_to_json``) atomically before it releases the cosignature, so that a
crash can never let it cosign two inconsistent checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from lumbung.errors import Conflict, ProofError, Rejected
from lumbung.ledger.checkpoint import Checkpoint
from lumbung.ledger.merkle import EMPTY_ROOT, verify_consistency


class Fork(Conflict):
    """The log showed two checkpoints that cannot both be true: its history forked."""


@dataclass(frozen=True)
class WitnessState:
    """The latest checkpoint the witness cosigned for one log (its origin, size and root)."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        # Same rules as a checkpoint's tree head; building one checks them and says what is wrong.
        Checkpoint(origin=self.origin, size=self.size, root=self.root)


def decide(
    state: WitnessState | None, new: Checkpoint, consistency_proof: Sequence[bytes]
) -> WitnessState:
    """The witness's state after accepting ``new``, or an error saying why it must not cosign.

    - No state yet: trust on first use. The first checkpoint seen for a log is accepted as it is,
      since there is nothing to be consistent with; a witness that must not trust blindly is
      started with a state taken from a checkpoint it trusts instead.
    - Smaller than the cosigned size: ``Conflict`` (a rollback; cosigning would vouch for an
      older tree as the latest).
    - Same size: the same root is a no-op; another root is a ``Fork``.
    - Larger: ``consistency_proof`` must prove, by RFC 9162 section 2.1.4.2, that the new tree
      extends the cosigned one; if it does not, ``Fork``.

    Raises ``Rejected`` for a checkpoint of another log or an impossible empty tree.
    """
    if new.size == 0 and new.root != EMPTY_ROOT:
        raise Rejected("checkpoint of the empty tree must have the empty root, SHA-256()")
    if state is None:
        return WitnessState(origin=new.origin, size=new.size, root=new.root)
    if new.origin != state.origin:
        raise Rejected(f"checkpoint is for log {new.origin!r}, this state is for {state.origin!r}")
    if new.size < state.size:
        raise Conflict(
            f"log {state.origin} rolled back: checkpoint of size {new.size} is older than the"
            f" cosigned size {state.size}"
        )
    if new.size == state.size and new.root == state.root:
        return state
    if new.size == state.size:
        raise _fork(state, new)
    _check_extends(state, new, consistency_proof)
    return WitnessState(origin=new.origin, size=new.size, root=new.root)


def _check_extends(state: WitnessState, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Raise ``Fork`` unless ``proof`` shows the tree of ``new`` extends the cosigned one."""
    if state.size == 0:
        # Every tree extends the empty one; RFC 9162 defines no proof for it, so none may be sent.
        if proof:
            raise Rejected(f"consistency proof from the empty tree must be empty, has {len(proof)}")
        return
    try:
        verify_consistency(state.size, new.size, state.root, new.root, proof)
    except ProofError as exc:
        raise _fork(state, new) from exc


def _fork(state: WitnessState, new: Checkpoint) -> Fork:
    return Fork(
        f"log {state.origin} forked: checkpoint of size {new.size} with root {_b64(new.root)}"
        f" does not extend cosigned size {state.size} root {_b64(state.root)}"
    )


def state_to_json(state: WitnessState) -> str:
    """The state as one JSON object (root in base64), for the witness to write atomically."""
    body = {"origin": state.origin, "size": state.size, "root": _b64(state.root)}
    return json.dumps(body, sort_keys=True)


def state_from_json(text: str) -> WitnessState:
    """The state ``state_to_json`` wrote; ``Rejected`` if the text is not exactly such a state."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected(f"witness state is not JSON: {exc}") from exc
    if not isinstance(body, dict) or set(body) != {"origin", "size", "root"}:
        raise Rejected("witness state must be an object with exactly origin, size and root")
    origin, size, root_b64 = body["origin"], body["size"], body["root"]
    if not isinstance(origin, str) or type(size) is not int or not isinstance(root_b64, str):
        raise Rejected("witness state origin and root must be strings and size an integer")
    try:
        root = base64.b64decode(root_b64, validate=True)
    except binascii.Error as exc:
        raise Rejected("witness state root is not base64") from exc
    return WitnessState(origin=origin, size=size, root=root)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
