"""Signed notes (C2SP signed-note, https://c2sp.org/signed-note): text signed by one or more keys.

A note is UTF-8 text ending in a newline, then a blank line, then one signature line per key::

    example.com/log
    42
    <base64 root hash>

    — example.com/log <base64(4-byte key ID || Ed25519 signature)>

The key ID names the key without trusting it: SHA-256(name || 0x0A || type || public key)[:4]. A
verifier knows each key by (name, key ID) and, as the spec says, ignores any line that matches only
one of the two, verifies every line that matches both, and rejects the whole note when such a line
fails. This module implements Ed25519 signatures (type 0x01) and exposes the structural parser so
that other signature types (the timestamped witness cosignatures of ``checkpoint``) reuse it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lumbung.crypto.keys import PUBLIC_KEY_BYTES, verify_signature
from lumbung.errors import Rejected, TooLarge, Unauthenticated

SIG_TYPE_ED25519 = 0x01
KEY_ID_BYTES = 4
# Limits the spec asks verifiers to apply (it requires at least 16 signatures to be accepted); these
# match Go's golang.org/x/mod/sumdb/note, so a note one accepts the other accepts too.
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100
# Em dash (U+2014) then a space opens every signature line.
_SIG_PREFIX = "\u2014 "


class Signer(Protocol):
    """What signing needs of a key: ``lumbung.crypto.keys.Identity`` is one."""

    @property
    def public_key_raw(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class SignatureLine:
    """A parsed, unverified signature line: the key it claims and the bytes after the key ID."""

    name: str
    key_id: bytes
    payload: bytes


def key_id(name: str, signature_type: int, public_key_raw: bytes) -> bytes:
    """The 4-byte key ID: SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    check_key_name(name)
    material = name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key_raw
    return hashlib.sha256(material).digest()[:KEY_ID_BYTES]


def check_key_name(name: str) -> None:
    """Key names are non-empty, printable, and contain no Unicode space and no '+' (signed-note)."""
    if not name:
        raise Rejected("key name must not be empty")
    if any(char.isspace() for char in name) or "+" in name or not name.isprintable():
        raise Rejected(f"key name {name!r} must be printable, without spaces or '+'")


def sign_note(text: str, name: str, identity: Signer) -> str:
    """A new note carrying ``text`` and one Ed25519 signature by ``identity`` under ``name``."""
    _check_text(text)
    note = text + "\n" + signature_line(text, name, identity)
    _check_size(note)
    return note


def add_signature(note: str, name: str, identity: Signer) -> str:
    """``note`` with one more Ed25519 signature line (a cosignature) over the same text.

    The existing signatures are kept as they are and not verified: adding a signature says nothing
    about them.
    """
    text, _ = parse_note(note)
    extended = note + signature_line(text, name, identity)
    _check_size(extended)
    return extended


def signature_line(text: str, name: str, identity: Signer) -> str:
    """The Ed25519 signature line of ``identity`` over ``text``, ending in a newline."""
    kid = key_id(name, SIG_TYPE_ED25519, identity.public_key_raw)
    return format_signature_line(name, kid + identity.sign(text.encode("utf-8")))


def format_signature_line(name: str, key_id_and_signature: bytes) -> str:
    """``— <name> <base64(key ID || signature)>`` and a newline."""
    check_key_name(name)
    encoded = base64.b64encode(key_id_and_signature).decode("ascii")
    return f"{_SIG_PREFIX}{name} {encoded}\n"


def open_note(note: str, verifiers: Mapping[str, bytes]) -> tuple[str, list[str]]:
    """The note's text and the names of the known keys whose Ed25519 signature on it verifies.

    ``verifiers`` maps key name to 32-byte raw Ed25519 public key. Signature lines of unknown keys
    (other name, or same name with another key ID) are ignored, as the spec requires. A line whose
    name and key ID match a known key but whose signature does not verify raises
    ``Unauthenticated``: the spec says to reject the whole note. An empty list means no known key
    signed; the spec says such a note MUST then be rejected, which is the caller's decision because
    only it knows whose signature it needs (see ``checkpoint.open_checkpoint``). Each name is listed
    once, in the order of its first line. Malformed notes raise ``Rejected`` (``TooLarge`` over the
    size or signature limits).
    """
    text, lines = parse_note(note)
    message = text.encode("utf-8")
    expected_ids = {
        name: key_id(name, SIG_TYPE_ED25519, public_key) for name, public_key in verifiers.items()
    }
    verified: list[str] = []
    for line in lines:
        if expected_ids.get(line.name) != line.key_id:
            continue
        try:
            verify_signature(verifiers[line.name], line.payload, message)
        except Unauthenticated as exc:
            raise Unauthenticated(
                f"signature of {line.name!r} on the note does not verify"
            ) from exc
        if line.name not in verified:
            verified.append(line.name)
    return text, verified


def parse_note(note: str) -> tuple[str, list[SignatureLine]]:
    """Split a note into its text and signature lines, checking the format but no signature.

    The text is everything up to and including the newline before the LAST blank line (the text may
    itself contain blank lines). Raises ``Rejected`` for anything the format does not allow.
    """
    _check_size(note)
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise Rejected("note has no blank line between text and signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise Rejected("note's signature block is empty or does not end in a newline")
    raw_lines = block[:-1].split("\n")
    if len(raw_lines) > MAX_SIGNATURES:
        raise TooLarge(f"note has {len(raw_lines)} signatures; at most {MAX_SIGNATURES} allowed")
    return text, [_parse_signature_line(raw) for raw in raw_lines]


def _parse_signature_line(raw: str) -> SignatureLine:
    if not raw.startswith(_SIG_PREFIX):
        raise Rejected(f"signature line does not start with an em dash and a space: {raw[:40]!r}")
    name, _, encoded = raw[len(_SIG_PREFIX) :].partition(" ")
    check_key_name(name)
    decoded = decode_base64_strict(encoded, what="signature")
    if len(decoded) <= KEY_ID_BYTES:
        raise Rejected(f"signature of {name!r} is too short to hold a key ID and a signature")
    return SignatureLine(name=name, key_id=decoded[:KEY_ID_BYTES], payload=decoded[KEY_ID_BYTES:])


def decode_base64_strict(encoded: str, *, what: str) -> bytes:
    """Standard padded base64 (RFC 4648 section 4), in its one canonical spelling only.

    Decoders normally accept non-zero padding bits, so several strings decode to the same bytes; a
    note is compared and relayed as text, so only the canonical one is accepted.
    """
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(f"{what} is not valid base64") from exc
    if not encoded or base64.b64encode(decoded).decode("ascii") != encoded:
        raise Rejected(f"{what} is not canonical base64")
    return decoded


def vkey(name: str, public_key_raw: bytes, signature_type: int = SIG_TYPE_ED25519) -> str:
    """The verifier key text ``<name>+<hex key ID>+<base64(type || public key)>``."""
    _check_public_key(public_key_raw)
    kid = key_id(name, signature_type, public_key_raw)
    material = base64.b64encode(bytes([signature_type]) + public_key_raw).decode("ascii")
    return f"{name}+{kid.hex()}+{material}"


def parse_vkey(text: str, signature_type: int = SIG_TYPE_ED25519) -> tuple[str, bytes]:
    """(name, 32-byte public key) from a verifier key of ``signature_type``; ``Rejected`` if not.

    The key ID written in the text must be the one the name and key give, so a vkey whose parts
    were mixed up or mistyped is refused instead of silently verifying nothing.
    """
    # Only the first two '+' separate parts: the base64 key may itself contain '+'.
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise Rejected("verifier key must be <name>+<key ID>+<key>")
    name, kid_hex, encoded = parts
    check_key_name(name)
    material = decode_base64_strict(encoded, what="verifier key")
    if not material or material[0] != signature_type:
        raise Rejected(f"verifier key is not of signature type 0x{signature_type:02x}")
    public_key = material[1:]
    _check_public_key(public_key)
    if kid_hex != key_id(name, signature_type, public_key).hex():
        raise Rejected(f"verifier key ID {kid_hex!r} does not match its name and key")
    return name, public_key


def _check_public_key(public_key_raw: bytes) -> None:
    if len(public_key_raw) != PUBLIC_KEY_BYTES:
        raise Rejected(f"public key must be {PUBLIC_KEY_BYTES} bytes, not {len(public_key_raw)}")


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise Rejected("note text must be non-empty and end in a newline")
    _check_characters(text)


def _check_characters(note: str) -> None:
    """Valid UTF-8 with no ASCII control character but newline (signed-note, Format)."""
    bad = next((char for char in note if char < " " and char != "\n"), None)
    if bad is not None:
        raise Rejected(f"note contains control character U+{ord(bad):04X}")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A Python str may hold lone surrogates, which no UTF-8 byte string can.
        raise Rejected("note is not valid UTF-8") from exc


def _check_size(note: str) -> None:
    # Characters never outnumber bytes, so the cheap check first spares encoding a huge string.
    if len(note) > MAX_NOTE_BYTES or len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise TooLarge(f"note is over {MAX_NOTE_BYTES} bytes")
