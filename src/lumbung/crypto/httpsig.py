"""Signed HTTP requests: the small part of RFC 9421 (HTTP Message Signatures) Lumbung needs.

A request carries three headers:

- ``Content-Digest: sha-256=:<base64>:`` (RFC 9530 section 2) when it has a body;
- ``Signature-Input: sig1=("@method" "@path" "@query" "content-digest");created=...;keyid="...";
  alg="ed25519";nonce="..."`` (RFC 9421 section 4.1);
- ``Signature: sig1=:<base64 Ed25519 signature>:`` (RFC 9421 section 4.2).

``keyid`` is the signer's raw public key in unpadded base64url, so a verifier needs no key registry:
the actor id follows from the key. Replay protection is the caller's: the hub remembers each
``(actor, nonce)`` for as long as a signature stays fresh.

Only the RFC 8941 structured-field syntax these headers use is parsed (one dictionary member, an
inner list of strings, integer and string parameters, a byte sequence); anything else is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lumbung.crypto.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from lumbung.errors import Rejected, Unauthenticated
from lumbung.ids import actor_id

LABEL = "sig1"
ALGORITHM = "ed25519"
DERIVED_COMPONENTS = ("@method", "@path", "@query")
# Signatures dated further ahead than this are refused: clocks drift, but not by minutes.
MAX_CLOCK_SKEW_S = 60
# Our own headers are a few hundred characters; anything much longer is abuse, not a signature.
MAX_HEADER_CHARS = 4096
MAX_NONCE_CHARS = 128

# RFC 8941 section 3.1.2 key, 3.3.1 integer (at most 15 digits), 3.3.5 byte sequence.
_KEY_RE = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER_RE = re.compile(r"-?[0-9]{1,15}")
_BYTES_RE = re.compile(r":([A-Za-z0-9+/]*={0,2}):")
_KEYID_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_KNOWN_PARAMS = {"created": int, "keyid": str, "alg": str, "nonce": str}


@dataclass(frozen=True)
class VerifiedRequest:
    """Who signed a request that verified, and the signature's nonce and time for replay checks."""

    actor_id: str
    public_key_raw: bytes
    nonce: str
    created: int


@dataclass(frozen=True)
class _SignatureInput:
    components: tuple[str, ...]
    params: tuple[tuple[str, int | str], ...]

    def param(self, name: str) -> int | str | None:
        return next((value for key, value in self.params if key == name), None)


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value of ``body`` (RFC 9530 section 2, ``sha-256``)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def keyid_of(public_key_raw: bytes) -> str:
    """The ``keyid`` parameter for a raw public key: unpadded base64url (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(public_key_raw).rstrip(b"=").decode()


def serialize_signature_params(
    components: Sequence[str], params: Sequence[tuple[str, int | str]]
) -> str:
    """An inner list of component names with parameters (RFC 9421 section 2.3, RFC 8941 4.1.1.1)."""
    names = " ".join(_serialize_string(name) for name in components)
    rendered = "".join(
        f";{key}={value}" if isinstance(value, int) else f";{key}={_serialize_string(value)}"
        for key, value in params
    )
    return f"({names}){rendered}"


def signature_base(components: Sequence[tuple[str, str]], signature_params: str) -> str:
    """The signature base of RFC 9421 section 2.5.

    One line ``"<name>": <value>`` per covered component in order, then ``"@signature-params":``
    with the serialized inner list, joined by LF with no trailing newline. A value holding a line
    break could forge extra lines, so it is refused with ``Rejected``.
    """
    lines = []
    for name, value in components:
        if "\n" in value or "\r" in value or "\n" in name:
            raise Rejected(f"component {name!r} holds a line break")
        lines.append(f"{_serialize_string(name)}: {value}")
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines)


def sign_request(
    identity: Identity,
    *,
    method: str,
    path: str,
    query: str,
    body: bytes | None,
    created: int,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign a request: ``Signature-Input``, ``Signature``, and ``Content-Digest``
    when ``body`` is not None.

    ``path`` is the percent-encoded target path and ``query`` the query string without its ``?``, as
    they appear on the request line. ``body=None`` leaves the body unsigned (streamed uploads, whose
    content is checked against its SHA-256 name instead).
    """
    values = _derived_values(method, path, query)
    headers: dict[str, str] = {}
    if body is not None:
        headers["Content-Digest"] = content_digest(body)
        values.append(("content-digest", headers["Content-Digest"]))
    params: list[tuple[str, int | str]] = [
        ("created", created),
        ("keyid", keyid_of(identity.public_key_raw)),
        ("alg", ALGORITHM),
        ("nonce", nonce if nonce is not None else secrets.token_urlsafe(16)),
    ]
    inner_list = serialize_signature_params([name for name, _ in values], params)
    signature = identity.sign(signature_base(values, inner_list).encode())
    headers["Signature-Input"] = f"{LABEL}={inner_list}"
    headers["Signature"] = f"{LABEL}=:{base64.b64encode(signature).decode()}:"
    return headers


def verify_request(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes | None,
    now: float,
    max_age_s: int,
) -> VerifiedRequest:
    """Check a request signed by ``sign_request`` (RFC 9421 section 3.2); who signed it.

    ``body`` is the received body, or None when the caller checks the content another way; with a
    body the signature must cover ``content-digest`` and the digest must match. Raises
    ``Unauthenticated`` whose message names the problem. Nonce reuse is not checked here.
    """
    fields = {key.lower(): value for key, value in headers.items()}
    if "signature" not in fields or "signature-input" not in fields:
        raise Unauthenticated("missing signature")
    signature_input = _parse_signature_input(fields["signature-input"])
    signature = _parse_signature(fields["signature"])
    public_key_raw, created = _check_params(signature_input)
    required = [*DERIVED_COMPONENTS, *(["content-digest"] if body is not None else [])]
    uncovered = [name for name in required if name not in signature_input.components]
    if uncovered:
        raise Unauthenticated(f"signature does not cover {', '.join(uncovered)}")
    nonce = signature_input.param("nonce")
    if not isinstance(nonce, str):
        raise Unauthenticated("missing nonce")
    _check_freshness(created, now, max_age_s)
    if body is not None:
        _check_digest(fields.get("content-digest"), body)
    values = _covered_values(signature_input.components, method, path, query, fields)
    inner_list = serialize_signature_params(signature_input.components, signature_input.params)
    try:
        verify_signature(public_key_raw, signature, signature_base(values, inner_list).encode())
    except Unauthenticated as exc:
        raise Unauthenticated("forged signature") from exc
    return VerifiedRequest(
        actor_id=actor_id(public_key_raw),
        public_key_raw=public_key_raw,
        nonce=nonce,
        created=created,
    )


def _derived_values(method: str, path: str, query: str) -> list[tuple[str, str]]:
    # RFC 9421 section 2.2.1: the method as sent, which for HTTP is upper case; 2.2.6: an empty
    # path is "/"; 2.2.7: the query with its leading "?", just "?" when there is none.
    return [("@method", method.upper()), ("@path", path or "/"), ("@query", f"?{query}")]


def _covered_values(
    components: Sequence[str], method: str, path: str, query: str, fields: Mapping[str, str]
) -> list[tuple[str, str]]:
    derived = dict(_derived_values(method, path, query))
    values = []
    for name in components:
        if name in derived:
            value = derived[name]
        elif name.startswith("@") or name not in fields:
            raise Unauthenticated(f"malformed signature: cannot resolve component {name!r}")
        else:
            # RFC 9421 section 2.1: a field's value with surrounding whitespace trimmed.
            value = fields[name].strip(" \t")
        if "\n" in value or "\r" in value:
            raise Unauthenticated(f"malformed signature: component {name!r} holds a line break")
        values.append((name, value))
    return values


def _check_params(signature_input: _SignatureInput) -> tuple[bytes, int]:
    """Check the parameters' shape; the signer's raw public key (from ``keyid``) and ``created``."""
    created = signature_input.param("created")
    if not isinstance(created, int):
        raise Unauthenticated("malformed signature: no integer 'created' parameter")
    alg = signature_input.param("alg")
    if alg != ALGORITHM:
        raise Unauthenticated(f"malformed signature: unsupported alg {alg!r}")
    nonce = signature_input.param("nonce")
    if isinstance(nonce, str) and not 0 < len(nonce) <= MAX_NONCE_CHARS:
        raise Unauthenticated("malformed signature: bad nonce length")
    keyid = signature_input.param("keyid")
    if not isinstance(keyid, str) or not _KEYID_RE.fullmatch(keyid):
        raise Unauthenticated("malformed signature: bad keyid")
    public_key_raw = base64.urlsafe_b64decode(keyid + "=")
    # 43 characters carry 258 bits; refuse the spare-bit variants so each key has one keyid.
    if len(public_key_raw) != PUBLIC_KEY_BYTES or keyid_of(public_key_raw) != keyid:
        raise Unauthenticated("malformed signature: bad keyid")
    return public_key_raw, created


def _check_freshness(created: int, now: float, max_age_s: int) -> None:
    # RFC 9421 section 3.2.1 leaves the window to the verifier; we take one from config.
    age_s = now - created
    if age_s > max_age_s:
        raise Unauthenticated(f"stale signature (created {int(age_s)} s ago; limit {max_age_s} s)")
    if -age_s > MAX_CLOCK_SKEW_S:
        raise Unauthenticated(
            f"stale signature (created {int(-age_s)} s in the future; limit {MAX_CLOCK_SKEW_S} s)"
        )


def _check_digest(field_value: str | None, body: bytes) -> None:
    """RFC 9530: the ``sha-256`` member of Content-Digest must match the body."""
    if field_value is None or len(field_value) > MAX_HEADER_CHARS:
        raise Unauthenticated("content digest does not match the body")
    members = [member.strip(" \t") for member in field_value.split(",")]
    expected = content_digest(body)
    if not any(hmac.compare_digest(member, expected) for member in members):
        raise Unauthenticated("content digest does not match the body")


def _parse_signature_input(field_value: str) -> _SignatureInput:
    """Parse ``sig1=("a" "b");k=v;...``: one dictionary member whose value is an inner list."""
    text = _member_value(field_value)
    try:
        components, pos = _parse_inner_list(text)
        params, pos = _parse_params(text, pos)
    except (IndexError, ValueError) as exc:
        raise Unauthenticated(f"malformed signature: Signature-Input: {exc}") from exc
    if pos != len(text):
        raise Unauthenticated("malformed signature: trailing data in Signature-Input")
    if len(set(components)) != len(components):
        raise Unauthenticated("malformed signature: a component is covered twice")
    return _SignatureInput(tuple(components), tuple(params))


def _parse_signature(field_value: str) -> bytes:
    """Parse ``sig1=:<base64>:``: one dictionary member whose value is a byte sequence."""
    match = _BYTES_RE.fullmatch(_member_value(field_value))
    if match is None:
        raise Unauthenticated("malformed signature: Signature is not a byte sequence")
    try:
        signature = base64.b64decode(match.group(1), validate=True)
    except binascii.Error as exc:
        raise Unauthenticated("malformed signature: bad base64 in Signature") from exc
    if len(signature) != SIGNATURE_BYTES:
        raise Unauthenticated(f"malformed signature: signature is not {SIGNATURE_BYTES} bytes")
    return signature


def _member_value(field_value: str) -> str:
    """The value text of the single dictionary member labelled ``sig1`` (RFC 8941 section 3.2)."""
    if len(field_value) > MAX_HEADER_CHARS:
        raise Unauthenticated(f"malformed signature: header over {MAX_HEADER_CHARS} characters")
    text = field_value.strip(" \t")
    key_match = _KEY_RE.match(text)
    if key_match is None or text[key_match.end() : key_match.end() + 1] != "=":
        raise Unauthenticated("malformed signature: not a dictionary member")
    if key_match.group() != LABEL:
        raise Unauthenticated(f"malformed signature: label {key_match.group()!r}, not {LABEL!r}")
    return text[key_match.end() + 1 :]


def _parse_inner_list(text: str, pos: int = 0) -> tuple[list[str], int]:
    # RFC 8941 section 4.2.1.2: "(" items separated by spaces ")".
    if text[pos] != "(":
        raise ValueError("expected '('")
    pos += 1
    items: list[str] = []
    while True:
        while text[pos] == " ":
            pos += 1
        if text[pos] == ")":
            return items, pos + 1
        if items and text[pos - 1] != " ":
            raise ValueError("items must be separated by spaces")
        item, pos = _parse_string(text, pos)
        items.append(item)


def _parse_params(text: str, pos: int) -> tuple[list[tuple[str, int | str]], int]:
    # RFC 8941 section 4.2.3.2: (";" key "=" bare-item)*; only the parameters we know.
    params: list[tuple[str, int | str]] = []
    while pos < len(text) and text[pos] == ";":
        key_match = _KEY_RE.match(text, pos + 1)
        if key_match is None or text[key_match.end() : key_match.end() + 1] != "=":
            raise ValueError("bad parameter")
        key, pos = key_match.group(), key_match.end() + 1
        if key not in _KNOWN_PARAMS or any(key == seen for seen, _ in params):
            raise ValueError(f"unknown or repeated parameter {key!r}")
        value: int | str
        if _KNOWN_PARAMS[key] is int:
            int_match = _INTEGER_RE.match(text, pos)
            if int_match is None:
                raise ValueError(f"parameter {key!r} is not an integer")
            value, pos = int(int_match.group()), int_match.end()
        else:
            value, pos = _parse_string(text, pos)
        params.append((key, value))
    return params, pos


def _parse_string(text: str, pos: int) -> tuple[str, int]:
    # RFC 8941 section 4.2.5: printable ASCII in quotes; only \" and \\ are escapes.
    if text[pos] != '"':
        raise ValueError("expected a quoted string")
    chars: list[str] = []
    pos += 1
    while True:
        char = text[pos]
        if char == "\\":
            if text[pos + 1] not in '"\\':
                raise ValueError("bad escape in string")
            chars.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(chars), pos + 1
        elif " " <= char <= "~":
            chars.append(char)
            pos += 1
        else:
            raise ValueError("non-printable character in string")


def _serialize_string(value: str) -> str:
    # RFC 8941 section 4.1.6.
    if any(not " " <= char <= "~" for char in value):
        raise Rejected(f"cannot serialize {value!r} as a structured-field string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
