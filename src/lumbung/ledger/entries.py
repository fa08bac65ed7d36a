"""Ledger entries: typed records, their one canonical encoding, and their authors' signatures.

An entry says who (``author``, an actor id), which of the author's entries it is (``seq``, 1, 2, 3,
... with no gaps, so a replayed or dropped entry is visible), when (``at``, unix milliseconds), and
what (the kind and its body). It is encoded once, as RFC 8785 canonical JSON of its fields plus a
version ``v``; the author signs ``SIGNING_CONTEXT + encode(entry)`` with Ed25519 (RFC 8032). A
signed entry becomes a Merkle leaf (RFC 9162 section 2.1.1) as the canonical JSON of the entry,
signature and public key, so the log commits to who signed, not only to what was said.

Amounts are integer micro-credits in (0, MAX_AMOUNT_MICRO]; every constructor validates its fields
and raises ``Rejected`` naming the field, so a malformed entry cannot exist as an object.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, get_args

from lumbung.crypto.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from lumbung.errors import Rejected, TooLarge, Unauthenticated
from lumbung.ids import actor_id, is_actor_id, is_object_id
from lumbung.wire.canonical import FLOAT_REFUSED, MAX_SAFE_INTEGER, canonical_json, parse_json

ENTRY_VERSION = 1
MAX_AMOUNT_MICRO = 10**15  # one billion credits: far above any real payment, far below 2**53
MAX_REASON_CHARS = 200
MAX_BODY_BYTES = 16 * 1024
MAX_LEAF_BYTES = 64 * 1024
# Domain separation: the same key also signs HTTP requests (RFC 9421), so a ledger signature must
# never be mistakable for a signature over anything else.
SIGNING_CONTEXT = b"lumbung-ledger-entry-v1\x00"
_HEADER_FIELDS = ("v", "kind", "author", "seq", "at")


class EntryKind(StrEnum):
    MINT = "mint"
    TRANSFER = "transfer"
    ESCROW_LOCK = "escrow_lock"
    RELEASE = "release"
    REFUND = "refund"
    FEE = "fee"
    STAKE = "stake"
    UNSTAKE = "unstake"
    SLASH = "slash"
    # A node's signed claim about a result, appended by the hub (lumbung.wire.commitment).
    RESULT_COMMITMENT = "result_commitment"
    # Reserved for later issues; their bodies are free-form canonical JSON until then.
    DATASET_REGISTRATION = "dataset_registration"
    GRANT = "grant"
    REVOCATION = "revocation"


# Kinds whose meaning a later issue defines: a log that holds some still replays (they only
# advance their author's sequence number), but the hub's API appends none until then.
RESERVED_KINDS = frozenset(
    {
        EntryKind.DATASET_REGISTRATION,
        EntryKind.GRANT,
        EntryKind.REVOCATION,
    }
)


@dataclass(frozen=True, slots=True)
class _Header:
    """Fields every entry has. ``BODY`` names the kind-specific fields, in encoding order."""

    kind: ClassVar[EntryKind]
    BODY: ClassVar[tuple[str, ...]]

    author: str
    seq: int
    at: int  # unix milliseconds

    def __post_init__(self) -> None:
        _check_actor("author", self.author)
        _check_int("seq", self.seq, 1, MAX_SAFE_INTEGER)
        _check_int("at", self.at, 0, MAX_SAFE_INTEGER)
        self._check_body()

    def _check_body(self) -> None:
        raise NotImplementedError  # every concrete kind checks its own body


@dataclass(frozen=True, slots=True)
class Mint(_Header):
    """The treasury creates ``amount`` new credits in ``to``'s balance."""

    kind: ClassVar[EntryKind] = EntryKind.MINT
    BODY: ClassVar[tuple[str, ...]] = ("to", "amount")
    to: str
    amount: int

    def _check_body(self) -> None:
        _check_actor("to", self.to)
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class Transfer(_Header):
    """The author (the payer) moves ``amount`` of its available balance to ``to``."""

    kind: ClassVar[EntryKind] = EntryKind.TRANSFER
    BODY: ClassVar[tuple[str, ...]] = ("to", "amount")
    to: str
    amount: int

    def _check_body(self) -> None:
        _check_actor("to", self.to)
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class EscrowLock(_Header):
    """The author (a consumer) locks ``amount`` of its own balance as escrow for ``job_id``."""

    kind: ClassVar[EntryKind] = EntryKind.ESCROW_LOCK
    BODY: ClassVar[tuple[str, ...]] = ("job_id", "amount")
    job_id: str
    amount: int

    def _check_body(self) -> None:
        _check_object_id("job_id", self.job_id, "job")
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class Release(_Header):
    """The hub pays ``amount`` of a job's escrow to provider ``to`` for verified work on a task."""

    kind: ClassVar[EntryKind] = EntryKind.RELEASE
    BODY: ClassVar[tuple[str, ...]] = ("job_id", "to", "amount", "task_id", "reason")
    job_id: str
    to: str
    amount: int
    task_id: str
    reason: str  # e.g. "checkpoint seq 3", "task completed"

    def _check_body(self) -> None:
        _check_object_id("job_id", self.job_id, "job")
        _check_actor("to", self.to)
        _check_amount(self.amount)
        _check_object_id("task_id", self.task_id, "task")
        _check_reason(self.reason)


@dataclass(frozen=True, slots=True)
class Refund(_Header):
    """The hub returns ``amount`` of a job's escrow to the job's consumer ``to``."""

    kind: ClassVar[EntryKind] = EntryKind.REFUND
    BODY: ClassVar[tuple[str, ...]] = ("job_id", "to", "amount")
    job_id: str
    to: str
    amount: int

    def _check_body(self) -> None:
        _check_object_id("job_id", self.job_id, "job")
        _check_actor("to", self.to)
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class Fee(_Header):
    """The hub takes ``amount`` of a job's escrow as the platform fee, paid to the treasury."""

    kind: ClassVar[EntryKind] = EntryKind.FEE
    BODY: ClassVar[tuple[str, ...]] = ("job_id", "amount")
    job_id: str
    amount: int

    def _check_body(self) -> None:
        _check_object_id("job_id", self.job_id, "job")
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class Stake(_Header):
    """The author (a provider) locks ``amount`` of its own balance as stake."""

    kind: ClassVar[EntryKind] = EntryKind.STAKE
    BODY: ClassVar[tuple[str, ...]] = ("amount",)
    amount: int

    def _check_body(self) -> None:
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class Unstake(_Header):
    """The author returns ``amount`` of its stake to its available balance."""

    kind: ClassVar[EntryKind] = EntryKind.UNSTAKE
    BODY: ClassVar[tuple[str, ...]] = ("amount",)
    amount: int

    def _check_body(self) -> None:
        _check_amount(self.amount)


@dataclass(frozen=True, slots=True)
class Slash(_Header):
    """The hub takes ``amount`` of ``node``'s stake (to the treasury) for a proven fault."""

    kind: ClassVar[EntryKind] = EntryKind.SLASH
    BODY: ClassVar[tuple[str, ...]] = ("node", "amount", "reason")
    node: str  # the provider's actor id, whose stake this is
    amount: int
    reason: str

    def _check_body(self) -> None:
        _check_actor("node", self.node)
        _check_amount(self.amount)
        _check_reason(self.reason)


@dataclass(frozen=True, slots=True)
class _Reserved(_Header):
    """A kind whose body later issues will define; for now any canonical JSON object."""

    BODY: ClassVar[tuple[str, ...]] = ("body",)
    body: Mapping[str, Any]

    def _check_body(self) -> None:
        if type(self.body) is not dict:
            raise Rejected("must be a JSON object", field="body")
        encoded = _encode_field("body", self.body)
        if len(encoded) > MAX_BODY_BYTES:
            raise TooLarge(f"body is {len(encoded)} bytes, over {MAX_BODY_BYTES}", field="body")
        # Keep a private copy, so changing the caller's dict later cannot change a signed entry.
        object.__setattr__(self, "body", json.loads(encoded))


@dataclass(frozen=True, slots=True)
class DatasetRegistration(_Reserved):
    kind: ClassVar[EntryKind] = EntryKind.DATASET_REGISTRATION


@dataclass(frozen=True, slots=True)
class Grant(_Reserved):
    kind: ClassVar[EntryKind] = EntryKind.GRANT


@dataclass(frozen=True, slots=True)
class Revocation(_Reserved):
    kind: ClassVar[EntryKind] = EntryKind.REVOCATION


@dataclass(frozen=True, slots=True)
class ResultCommitment(_Reserved):
    kind: ClassVar[EntryKind] = EntryKind.RESULT_COMMITMENT


Entry = (
    Mint
    | Transfer
    | EscrowLock
    | Release
    | Refund
    | Fee
    | Stake
    | Unstake
    | Slash
    | DatasetRegistration
    | Grant
    | Revocation
    | ResultCommitment
)
_CLASS_BY_KIND: dict[str, type[_Header]] = {cls.kind.value: cls for cls in get_args(Entry)}


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """An entry with its author's Ed25519 signature and the raw 32-byte public key that made it."""

    entry: Entry
    signature: bytes
    public_key: bytes


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    """The entry as a plain JSON object: header fields, ``v``, then the kind's body fields."""
    fields: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "kind": entry.kind.value,
        "author": entry.author,
        "seq": entry.seq,
        "at": entry.at,
    }
    for name in entry.BODY:
        fields[name] = getattr(entry, name)
    return fields


def entry_from_dict(fields: object) -> Entry:
    """Build an entry from a parsed JSON object; ``Rejected`` names the field if malformed."""
    if type(fields) is not dict:
        raise Rejected("entry must be a JSON object")
    if fields.get("v") != ENTRY_VERSION or type(fields.get("v")) is not int:
        raise Rejected(f"unsupported entry version {fields.get('v')!r}", field="v")
    kind = fields.get("kind")
    cls = _CLASS_BY_KIND.get(kind) if type(kind) is str else None
    if cls is None:
        raise Rejected(f"unknown entry kind {kind!r}", field="kind")
    _check_exact_keys(fields, _HEADER_FIELDS + cls.BODY)
    values = {name: fields[name] for name in ("author", "seq", "at", *cls.BODY)}
    return cls(**values)  # type: ignore[return-value]


def encode(entry: Entry) -> bytes:
    """The entry's one canonical encoding (RFC 8785), which its author signs."""
    return canonical_json(entry_to_dict(entry))


def signing_bytes(entry: Entry) -> bytes:
    """Exactly the bytes an author signs: the domain-separation context, then ``encode(entry)``."""
    return SIGNING_CONTEXT + encode(entry)


def sign_entry(entry: Entry, identity: Identity) -> SignedEntry:
    """Sign ``entry`` as ``identity``, which must be the entry's author."""
    if entry.author != identity.actor_id:
        raise Rejected(
            f"entry author {entry.author} is not the signer {identity.actor_id}", field="author"
        )
    signature = identity.sign(signing_bytes(entry))
    return SignedEntry(entry=entry, signature=signature, public_key=identity.public_key_raw)


def verify_entry(signed: SignedEntry) -> None:
    """Check that the author signed this entry; ``Unauthenticated`` if key or signature is bad."""
    if type(signed.public_key) is not bytes or type(signed.signature) is not bytes:
        raise Unauthenticated("public key and signature must be bytes")
    if _actor_id_of(signed.public_key) != signed.entry.author:
        raise Unauthenticated(
            f"the public key is not the key of the entry's author {signed.entry.author}"
        )
    verify_signature(signed.public_key, signed.signature, signing_bytes(signed.entry))


def leaf_bytes(signed: SignedEntry) -> bytes:
    """The Merkle leaf data (RFC 9162 section 2.1.1): canonical JSON of entry, signature, key.

    Binary values are standard base64 with padding (RFC 4648 section 4).
    """
    return canonical_json(
        {
            "entry": entry_to_dict(signed.entry),
            "signature": base64.b64encode(signed.signature).decode("ascii"),
            "public_key": base64.b64encode(signed.public_key).decode("ascii"),
        }
    )


def decode_leaf(data: bytes) -> SignedEntry:
    """Parse untrusted leaf bytes back into a ``SignedEntry``, checking every field.

    ``Rejected`` (naming the field) for anything malformed, including bytes that are valid but not
    canonical: each entry has exactly one leaf encoding, so one Merkle leaf hash. The signature is
    not checked here; ``verify_entry`` does that.
    """
    if len(data) > MAX_LEAF_BYTES:
        raise TooLarge(f"leaf is {len(data)} bytes, over {MAX_LEAF_BYTES}")
    fields = parse_json(data)
    if type(fields) is not dict:
        raise Rejected("leaf must be a JSON object")
    _check_exact_keys(fields, ("entry", "signature", "public_key"))
    try:
        entry = entry_from_dict(fields["entry"])
    except Rejected as exc:
        field = "entry" if exc.field is None else f"entry.{exc.field}"
        raise type(exc)(exc.message, field=field) from exc
    signed = SignedEntry(
        entry=entry,
        signature=_base64_field(fields, "signature", SIGNATURE_BYTES),
        public_key=_base64_field(fields, "public_key", PUBLIC_KEY_BYTES),
    )
    if leaf_bytes(signed) != data:
        raise Rejected("leaf is not in canonical form (RFC 8785)")
    return signed


@functools.lru_cache(maxsize=4096)
def _actor_id_of(public_key_raw: bytes) -> str:
    # A ledger has few authors and many entries; hashing each author's key once saves a SHA-256
    # per entry on the verification path.
    return actor_id(public_key_raw)


def _encode_field(field: str, value: object) -> bytes:
    try:
        return canonical_json(value)
    except Rejected as exc:
        path = field if exc.field is None else f"{field}.{exc.field}"
        raise type(exc)(exc.message, field=path) from exc


def _check_exact_keys(fields: dict[str, Any], expected: tuple[str, ...]) -> None:
    for name in expected:
        if name not in fields:
            raise Rejected("missing", field=name)
    if len(fields) != len(expected):
        extra = sorted(set(fields) - set(expected))
        raise Rejected("unknown field", field=extra[0])


def _base64_field(fields: dict[str, Any], name: str, size_bytes: int) -> bytes:
    text = fields[name]
    if type(text) is not str:
        raise Rejected("must be a base64 string", field=name)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(f"not valid base64: {exc}", field=name) from exc
    if len(raw) != size_bytes:
        raise Rejected(f"must be {size_bytes} bytes, not {len(raw)}", field=name)
    return raw


def _check_int(field: str, value: object, low: int, high: int) -> None:
    # type() rather than isinstance: True is an int to Python but never a number to us.
    if type(value) is not int:
        if isinstance(value, float):
            raise Rejected(f"must be an integer, not a float ({value!r})", field=field)
        raise Rejected(f"must be an integer, not {type(value).__name__}", field=field)
    if not low <= value <= high:
        raise Rejected(f"must be between {low} and {high}, got {value}", field=field)


def _check_amount(value: object) -> None:
    if isinstance(value, float):
        raise Rejected(FLOAT_REFUSED, field="amount")
    _check_int("amount", value, 1, MAX_AMOUNT_MICRO)


def _check_actor(field: str, value: object) -> None:
    if type(value) is not str or not is_actor_id(value):
        raise Rejected(f"must be an actor id (ak_...), got {value!r:.80}", field=field)


def _check_object_id(field: str, value: object, kind: str) -> None:
    if type(value) is not str or not is_object_id(value, kind):
        raise Rejected(f"must be a {kind} id ({kind}_...), got {value!r:.80}", field=field)


def _check_reason(value: object) -> None:
    if type(value) is not str or not 0 < len(value) <= MAX_REASON_CHARS:
        raise Rejected(f"must be a string of 1 to {MAX_REASON_CHARS} characters", field="reason")
