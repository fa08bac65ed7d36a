"""Checkpoints of the log (C2SP tlog-checkpoint) and witness cosignatures (C2SP tlog-cosignature).

A checkpoint is a signed note whose text is the log's tree head (https://c2sp.org/tlog-checkpoint)::

    <origin>
    <tree size, decimal, no leading zeroes>
    <base64 of the RFC 6962 / RFC 9162 Merkle tree root hash>
    [extension lines]

The log signs it with a plain Ed25519 note signature (type 0x01) under a key named after the origin.
Witnesses add cosignatures in the exact ``cosignature/v1`` format of https://c2sp.org/tlog-cosignature
(signature type 0x04): the signed message is ``cosignature/v1\\ntime <unix seconds>\\n`` followed by
the whole checkpoint text, and the signature line carries key ID || 8-byte big-endian timestamp ||
Ed25519 signature. A cosignature states that, at that time, this was the largest tree the witness
had seen for the log and that it is consistent with everything the witness saw before.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from lumbung.crypto.keys import SIGNATURE_BYTES, verify_signature
from lumbung.errors import ConfigError, Rejected, Unauthenticated
from lumbung.ledger.note import (
    Signer,
    decode_base64_strict,
    format_signature_line,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

ROOT_HASH_BYTES = 32
SIG_TYPE_COSIGNATURE_V1 = 0x04
# Tree sizes are uint64 in every log implementation; the cosignature timestamp is at most 2^63 - 1.
MAX_TREE_SIZE = (1 << 64) - 1
MAX_TIMESTAMP_S = (1 << 63) - 1
_TIMESTAMP_BYTES = 8
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class Checkpoint:
    """The tree head of one log: its origin, how many leaves, and the Merkle root over them.

    ``extensions`` are the optional opaque lines after the root (tlog-checkpoint discourages them;
    the hub writes none), kept so that a parsed body re-serialises byte for byte.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise Rejected("checkpoint origin must be one non-empty line", field="origin")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise Rejected(f"checkpoint size {self.size!r} is not a uint64", field="size")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_HASH_BYTES:
            raise Rejected(f"checkpoint root must be {ROOT_HASH_BYTES} bytes", field="root")
        if any(not line or "\n" in line for line in self.extensions):
            raise Rejected("checkpoint extension lines must be non-empty lines", field="extensions")

    def body(self) -> str:
        """The note text: origin, size, base64 root, any extension lines, each ending in newline."""
        root_b64 = base64.b64encode(self.root).decode("ascii")
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), root_b64, *self.extensions)
        )


@dataclass(frozen=True)
class Cosignature:
    """A witness cosignature that verified: who, and the POSIX time it says it signed at."""

    name: str
    timestamp_s: int


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a checkpoint note text strictly (tlog-checkpoint, "Note text"); ``Rejected`` if bad."""
    if not text.endswith("\n"):
        raise Rejected("checkpoint text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise Rejected("checkpoint text needs origin, size and root hash lines")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text):
        raise Rejected(f"checkpoint size {size_text!r} is not a decimal without leading zeroes")
    root = decode_base64_strict(root_text, what="checkpoint root hash")
    return Checkpoint(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))


def sign_checkpoint(cp: Checkpoint, identity: Signer, name: str | None = None) -> str:
    """The checkpoint as a note signed by the log, under a key named after its origin by default.

    tlog-checkpoint: "The log's key name in its signature line SHOULD match the origin line."
    """
    return sign_note(cp.body(), name if name is not None else cp.origin, identity)


def open_checkpoint(note: str, log_name: str, log_key: bytes) -> Checkpoint:
    """The checkpoint in ``note``, provided the log's own key (``log_name``, ``log_key``) signed it.

    Raises ``Unauthenticated`` when the log's signature is absent or does not verify, ``Rejected``
    when the note or its checkpoint text is malformed. Callers still compare the origin with the
    log they expect.
    """
    text, signers = open_note(note, {log_name: log_key})
    if log_name not in signers:
        raise Unauthenticated(f"checkpoint is not signed by the log key {log_name!r}")
    return parse_checkpoint_body(text)


def cosign(
    note: str, witness_name: str, witness_identity: Signer, *, timestamp_s: int | None = None
) -> str:
    """``note`` with a cosignature/v1 line by the witness appended (tlog-cosignature, "Format").

    Cosigning is the witness's promise; decide whether to make it (``witness_state.decide``) and
    check the log's signature (``open_checkpoint``) first. ``timestamp_s`` defaults to now.
    """
    text, _ = parse_note(note)
    parse_checkpoint_body(text)
    when_s = int(time.time()) if timestamp_s is None else timestamp_s
    if not 0 <= when_s <= MAX_TIMESTAMP_S:
        raise Rejected(f"cosignature timestamp {when_s} is out of range")
    signature = witness_identity.sign(_cosigned_message(text, when_s))
    kid = key_id(witness_name, SIG_TYPE_COSIGNATURE_V1, witness_identity.public_key_raw)
    payload = kid + when_s.to_bytes(_TIMESTAMP_BYTES, "big") + signature
    cosigned = note + format_signature_line(witness_name, payload)
    parse_note(cosigned)  # refuse to produce a note over the size or signature-count limits
    return cosigned


def verified_cosignatures(note: str, witness_keys: Mapping[str, bytes]) -> list[Cosignature]:
    """The cosignatures on ``note`` by known witnesses that verify, one per witness.

    ``witness_keys`` maps witness name to 32-byte Ed25519 public key. As signed-note requires,
    lines that do not match a known witness by both name and type-0x04 key ID are ignored (the
    log's own line among them), and a matching line that fails to verify raises
    ``Unauthenticated`` for the whole note.
    """
    text, lines = parse_note(note)
    expected_ids = {
        name: key_id(name, SIG_TYPE_COSIGNATURE_V1, key) for name, key in witness_keys.items()
    }
    found: dict[str, Cosignature] = {}
    for line in lines:
        if expected_ids.get(line.name) != line.key_id:
            continue
        timestamp_s = _verify_cosignature(text, line.name, witness_keys[line.name], line.payload)
        found.setdefault(line.name, Cosignature(name=line.name, timestamp_s=timestamp_s))
    return list(found.values())


def witnesses_that_signed(note: str, witness_keys: Mapping[str, bytes]) -> list[str]:
    """Names of the known witnesses whose cosignature on ``note`` verifies."""
    return [cosig.name for cosig in verified_cosignatures(note, witness_keys)]


def require_witnesses(note: str, witness_keys: Mapping[str, bytes], m: int) -> None:
    """Raise ``Unauthenticated`` unless at least ``m`` of the named witnesses cosigned ``note``.

    This is the client's M-of-N policy against a split view: a log that shows different histories
    to different clients cannot get M honest witnesses to cosign both. It does not check the log's
    own signature; ``open_checkpoint`` does. ``ConfigError`` if ``m`` is negative or larger than
    the number of witnesses, a policy nothing could satisfy.
    """
    if not 0 <= m <= len(witness_keys):
        raise ConfigError(
            f"witness quorum {m} is not between 0 and {len(witness_keys)}", field="witness_quorum"
        )
    signed = witnesses_that_signed(note, witness_keys)
    if len(signed) < m:
        raise Unauthenticated(
            f"checkpoint has {len(signed)} of the {m} witness cosignatures required"
            f" (valid: {', '.join(signed) or 'none'})"
        )


def _verify_cosignature(text: str, name: str, public_key: bytes, payload: bytes) -> int:
    """Check one timestamped_signature (tlog-cosignature); return its timestamp in seconds."""
    if len(payload) != _TIMESTAMP_BYTES + SIGNATURE_BYTES:
        raise Unauthenticated(f"cosignature of {name!r} has the wrong length")
    timestamp_s = int.from_bytes(payload[:_TIMESTAMP_BYTES], "big")
    if timestamp_s > MAX_TIMESTAMP_S:
        raise Unauthenticated(f"cosignature of {name!r} has a timestamp over 2^63 - 1")
    try:
        verify_signature(
            public_key, payload[_TIMESTAMP_BYTES:], _cosigned_message(text, timestamp_s)
        )
    except Unauthenticated as exc:
        raise Unauthenticated(f"cosignature of {name!r} does not verify") from exc
    return timestamp_s


def _cosigned_message(text: str, timestamp_s: int) -> bytes:
    # tlog-cosignature, "Ed25519 signed message": header line, time line, then the whole note text.
    return f"cosignature/v1\ntime {timestamp_s}\n{text}".encode()
