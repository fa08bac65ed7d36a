"""Ledger entries: field validation, the canonical encoding, signatures, and hostile leaf bytes."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from lumbung.crypto.keys import Identity
from lumbung.errors import Rejected, TooLarge, Unauthenticated
from lumbung.ledger.entries import (
    MAX_AMOUNT_MICRO,
    SIGNING_CONTEXT,
    Entry,
    EntryKind,
    EscrowLock,
    Fee,
    Grant,
    Mint,
    Refund,
    Release,
    ResultCommitment,
    SignedEntry,
    Slash,
    Stake,
    Transfer,
    Unstake,
    decode_leaf,
    encode,
    entry_from_dict,
    entry_to_dict,
    leaf_bytes,
    sign_entry,
    verify_entry,
)

# Fixed keys: test ids are built from them, and every pytest-xdist worker must see the same.
ALICE = Identity(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
BOB = Identity(Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32))
JOB = "job_aaaaaaaaaaaaaaaa"
TASK = "task_bbbbbbbbbbbbbbbb"
AT_MS = 1_700_000_000_000
BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def one_of_each_kind(author: str) -> list[Entry]:
    header: dict[str, Any] = {"author": author, "seq": 1, "at": AT_MS}
    to = BOB.actor_id
    return [
        Mint(**header, to=to, amount=5),
        Transfer(**header, to=to, amount=5),
        EscrowLock(**header, job_id=JOB, amount=5),
        Release(**header, job_id=JOB, to=to, amount=5, task_id=TASK, reason="task completed"),
        Refund(**header, job_id=JOB, to=to, amount=5),
        Fee(**header, job_id=JOB, amount=5),
        Stake(**header, amount=5),
        Unstake(**header, amount=5),
        Slash(**header, node=to, amount=5, reason="wrong result in replay"),
        Grant(**header, body={"dataset": "d1", "to": [to], "ε": 1}),
        ResultCommitment(**header, body={"v": 1, "task_id": "task_x", "outputs": {}}),
    ]


def test_every_kind_has_an_entry_class() -> None:
    kinds = {entry.kind for entry in one_of_each_kind(ALICE.actor_id)}

    assert kinds | {
        EntryKind.DATASET_REGISTRATION,
        EntryKind.REVOCATION,
    } == set(EntryKind)


def test_encoding_is_canonical_json_with_a_version() -> None:
    entry = Transfer(author=ALICE.actor_id, seq=7, at=AT_MS, to=BOB.actor_id, amount=250)

    assert (
        encode(entry)
        == (
            f'{{"amount":250,"at":{AT_MS},"author":"{ALICE.actor_id}","kind":"transfer",'
            f'"seq":7,"to":"{BOB.actor_id}","v":1}}'
        ).encode()
    )


@pytest.mark.parametrize("entry", one_of_each_kind(ALICE.actor_id), ids=lambda e: e.kind.value)
def test_every_kind_survives_dict_and_leaf_round_trips(entry: Entry) -> None:
    signed = sign_entry(entry, ALICE)

    assert entry_from_dict(json.loads(encode(entry))) == entry
    assert entry_from_dict(entry_to_dict(entry)) == entry
    assert decode_leaf(leaf_bytes(signed)) == signed
    verify_entry(decode_leaf(leaf_bytes(signed)))


def test_reserved_body_is_copied_so_later_changes_cannot_alter_a_signed_entry() -> None:
    body: dict[str, Any] = {"dataset": "d1"}
    entry = Grant(author=ALICE.actor_id, seq=1, at=AT_MS, body=body)
    before = encode(entry)

    body["dataset"] = "d2"

    assert encode(entry) == before


def test_reserved_body_must_be_canonical_json_naming_the_bad_field() -> None:
    with pytest.raises(Rejected, match="micro-units") as caught:
        Grant(author=ALICE.actor_id, seq=1, at=AT_MS, body={"budget": {"epsilon": 0.5}})

    assert caught.value.field == "body.budget.epsilon"


def test_oversized_reserved_body_is_refused() -> None:
    with pytest.raises(TooLarge):
        Grant(author=ALICE.actor_id, seq=1, at=AT_MS, body={"blob": "x" * 20_000})


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        (0, "between 1 and"),
        (-5, "between 1 and"),
        (MAX_AMOUNT_MICRO + 1, "between 1 and"),
        (1.5, "floats are not allowed"),
        (5.0, "floats are not allowed"),
        (True, "not bool"),
        ("5", "not str"),
        (None, "not NoneType"),
    ],
)
def test_amounts_must_be_positive_integers_within_the_limit(amount: Any, reason: str) -> None:
    with pytest.raises(Rejected, match=reason) as caught:
        Transfer(author=ALICE.actor_id, seq=1, at=AT_MS, to=BOB.actor_id, amount=amount)

    assert caught.value.field == "amount"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("author", "alice"),
        ("to", BOB.actor_id.upper()),
        ("seq", 0),
        ("seq", True),
        ("at", -1),
        ("job_id", "task_aaaaaaaaaaaaaaaa"),
        ("task_id", "job_aaaaaaaaaaaaaaaa"),
        ("reason", ""),
        ("reason", "x" * 201),
    ],
)
def test_malformed_fields_are_rejected_by_name(field: str, value: Any) -> None:
    fields: dict[str, Any] = {
        "author": ALICE.actor_id,
        "seq": 1,
        "at": AT_MS,
        "job_id": JOB,
        "to": BOB.actor_id,
        "amount": 5,
        "task_id": TASK,
        "reason": "checkpoint seq 3",
    }
    fields[field] = value

    with pytest.raises(Rejected) as caught:
        Release(**fields)

    assert caught.value.field == field


def test_signing_needs_the_authors_own_key() -> None:
    entry = Stake(author=ALICE.actor_id, seq=1, at=AT_MS, amount=5)

    with pytest.raises(Rejected) as caught:
        sign_entry(entry, BOB)

    assert caught.value.field == "author"


def test_the_signature_covers_the_context_and_the_canonical_encoding() -> None:
    entry = Stake(author=ALICE.actor_id, seq=1, at=AT_MS, amount=5)
    signed = sign_entry(entry, ALICE)
    bare = SignedEntry(entry, ALICE.sign(encode(entry)), ALICE.public_key_raw)

    verify_entry(signed)
    assert signed.signature == ALICE.sign(SIGNING_CONTEXT + encode(entry))
    with pytest.raises(Unauthenticated):
        verify_entry(bare)  # a signature without the context could be one over anything


def test_a_changed_entry_no_longer_verifies() -> None:
    stake = Stake(author=ALICE.actor_id, seq=1, at=AT_MS, amount=5)
    forged = replace(sign_entry(stake, ALICE), entry=replace(stake, amount=500))

    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_entry(forged)


def test_a_valid_signature_by_someone_else_is_not_the_authors() -> None:
    entry = Stake(author=ALICE.actor_id, seq=1, at=AT_MS, amount=5)
    mallory = SignedEntry(entry, BOB.sign(SIGNING_CONTEXT + encode(entry)), BOB.public_key_raw)

    with pytest.raises(Unauthenticated, match="author"):
        verify_entry(mallory)


def test_a_truncated_signature_is_refused() -> None:
    signed = sign_entry(Stake(author=ALICE.actor_id, seq=1, at=AT_MS, amount=5), ALICE)

    with pytest.raises(Unauthenticated):
        verify_entry(replace(signed, signature=signed.signature[:32]))


def _leaf_fields() -> dict[str, Any]:
    signed = sign_entry(Fee(author=ALICE.actor_id, seq=3, at=AT_MS, job_id=JOB, amount=9), ALICE)
    fields: dict[str, Any] = json.loads(leaf_bytes(signed))
    return fields


def _with(path: str, value: Any) -> bytes:
    fields = _leaf_fields()
    *parents, last = path.split(".")
    target = fields
    for name in parents:
        target = target[name]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("entry.amount", "9", "entry.amount"),
        ("entry.amount", _DELETE, "entry.amount"),
        ("entry.kind", "print_money", "entry.kind"),
        ("entry.v", 2, "entry.v"),
        ("entry.v", True, "entry.v"),
        ("entry.to", BOB.actor_id, "entry.to"),
        ("entry.job_id", ["job_aaaaaaaaaaaaaaaa"], "entry.job_id"),
        ("signature", "not base64!", "signature"),
        ("signature", base64.b64encode(b"short").decode(), "signature"),
        ("public_key", 12, "public_key"),
        ("public_key", _DELETE, "public_key"),
        ("witness", "extra", "witness"),
    ],
)
def test_malformed_leaves_are_rejected_naming_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(Rejected) as caught:
        decode_leaf(_with(path, value))

    assert caught.value.field == field


def test_a_leaf_that_is_valid_json_but_not_canonical_is_rejected() -> None:
    spaced = json.dumps(_leaf_fields(), sort_keys=True).encode()

    with pytest.raises(Rejected, match="canonical"):
        decode_leaf(spaced)


def test_base64_with_nonzero_padding_bits_is_not_a_second_encoding() -> None:
    fields = _leaf_fields()
    key = fields["public_key"]  # 32 bytes: 43 characters and "=", the last with 2 spare bits
    spare_bit_set = BASE64_ALPHABET[BASE64_ALPHABET.index(key[-2]) ^ 1]
    fields["public_key"] = key[:-2] + spare_bit_set + "="
    assert base64.b64decode(fields["public_key"]) == base64.b64decode(key)

    with pytest.raises(Rejected, match="canonical"):
        decode_leaf(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())


def test_oversized_leaves_are_refused_before_parsing() -> None:
    with pytest.raises(TooLarge):
        decode_leaf(b" " * 100_000)


@given(st.binary(max_size=400))
def test_random_bytes_never_decode_to_anything_but_rejected(data: bytes) -> None:
    with pytest.raises(Rejected):
        decode_leaf(data)


@given(st.data())
def test_mutated_leaves_decode_to_the_same_entry_or_are_rejected(data: st.DataObject) -> None:
    leaf = leaf_bytes(sign_entry(Stake(author=ALICE.actor_id, seq=2, at=AT_MS, amount=5), ALICE))
    position = data.draw(st.integers(0, len(leaf) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = leaf[:position] + bytes([byte]) + leaf[position + 1 :]

    try:
        decoded = decode_leaf(mutated)
    except Rejected:
        return
    # Canonical form means one entry has one leaf: a decodable mutation is a different leaf, so it
    # must carry a different entry, signature or key (and then fail verification).
    assert mutated == leaf or leaf_bytes(decoded) == mutated
    if mutated != leaf:
        with pytest.raises(Unauthenticated):
            verify_entry(decoded)
