"""Signed notes (C2SP signed-note): signing, strict parsing, verification, verifier keys."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lumbung.crypto.keys import Identity
from lumbung.errors import Rejected, TooLarge, Unauthenticated
from lumbung.ledger.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    add_signature,
    key_id,
    open_note,
    parse_vkey,
    sign_note,
    vkey,
)

TEXT = "example.com/log\n42\nline with a blank line after it\n\nand more text\n"
EM_DASH = "\u2014"


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


def test_signed_note_opens_to_its_text_and_signer(alice: Identity) -> None:
    note = sign_note(TEXT, "alice.example", alice)
    assert note.startswith(TEXT + "\n" + EM_DASH + " alice.example ")
    assert open_note(note, {"alice.example": alice.public_key_raw}) == (TEXT, ["alice.example"])


def test_key_id_is_the_first_four_bytes_of_sha256_of_name_newline_type_and_key(
    alice: Identity,
) -> None:
    expected = hashlib.sha256(b"alice.example\n\x01" + alice.public_key_raw).digest()[:4]
    assert key_id("alice.example", 0x01, alice.public_key_raw) == expected
    note = sign_note(TEXT, "alice.example", alice)
    encoded = note.rsplit(" ", 1)[1].rstrip("\n")
    raw = base64.b64decode(encoded)
    assert raw[:4] == expected
    assert len(raw) == 4 + 64


# The example of golang.org/x/mod/sumdb/note (package doc and note_test.go): Ed25519 is
# deterministic, so signing the same text with the same key must give the same note, byte for byte.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n"
    + EM_DASH
    + " PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_signing_reproduces_the_go_sumdb_note_example_byte_for_byte() -> None:
    seed = base64.b64decode(GO_SIGNER_KEY.split("+", 4)[4])[1:]
    peter = Identity(Ed25519PrivateKey.from_private_bytes(seed))
    assert sign_note(GO_TEXT, "PeterNeumann", peter) == GO_NOTE
    assert vkey("PeterNeumann", peter.public_key_raw) == GO_VERIFIER_KEY


def test_go_sumdb_note_example_opens_with_its_verifier_key() -> None:
    name, public_key = parse_vkey(GO_VERIFIER_KEY)
    assert open_note(GO_NOTE, {name: public_key}) == (GO_TEXT, ["PeterNeumann"])
    with pytest.raises(Unauthenticated):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), {name: public_key})


def test_cosigner_is_added_and_both_verify(alice: Identity, bob: Identity) -> None:
    note = add_signature(sign_note(TEXT, "alice.example", alice), "bob.example", bob)
    keys = {"alice.example": alice.public_key_raw, "bob.example": bob.public_key_raw}
    assert open_note(note, keys) == (TEXT, ["alice.example", "bob.example"])


def test_note_signed_by_an_unknown_key_is_reported_unsigned_by_known_keys(
    alice: Identity, bob: Identity
) -> None:
    note = sign_note(TEXT, "mallory.example", bob)
    assert open_note(note, {"alice.example": alice.public_key_raw}) == (TEXT, [])


def test_known_name_with_another_keys_id_is_ignored_not_failed(
    alice: Identity, bob: Identity
) -> None:
    # signed-note: signatures sharing a name but not the key ID with a known key are ignored.
    note = sign_note(TEXT, "alice.example", bob)
    assert open_note(note, {"alice.example": alice.public_key_raw}) == (TEXT, [])


def test_every_byte_of_the_text_is_covered_by_the_signature(alice: Identity) -> None:
    note = sign_note(TEXT, "alice.example", alice)
    keys = {"alice.example": alice.public_key_raw}
    for position in range(len(TEXT)):
        if TEXT[position] == "\n":
            continue
        tampered = note[:position] + chr(ord(note[position]) ^ 1) + note[position + 1 :]
        with pytest.raises(Unauthenticated):
            open_note(tampered, keys)


def test_tampering_with_any_signature_byte_loses_the_signature(alice: Identity) -> None:
    note = sign_note(TEXT, "alice.example", alice)
    head, encoded = note[:-1].rsplit(" ", 1)
    raw = base64.b64decode(encoded)
    keys = {"alice.example": alice.public_key_raw}
    for position in range(len(raw)):
        flipped = raw[:position] + bytes([raw[position] ^ 0x01]) + raw[position + 1 :]
        tampered = f"{head} {base64.b64encode(flipped).decode()}\n"
        if position < 4:
            # A changed key ID no longer names alice's key: the line is ignored, not trusted.
            assert open_note(tampered, keys) == (TEXT, [])
        else:
            with pytest.raises(Unauthenticated):
                open_note(tampered, keys)


def test_one_bad_signature_from_a_known_key_rejects_the_whole_note(
    alice: Identity, bob: Identity
) -> None:
    good = sign_note(TEXT, "alice.example", alice)
    forged_line = sign_note("other text\n", "bob.example", bob).split("\n\n")[-1]
    keys = {"alice.example": alice.public_key_raw, "bob.example": bob.public_key_raw}
    with pytest.raises(Unauthenticated, match=r"bob\.example"):
        open_note(good + forged_line, keys)


def test_repeated_signature_lists_the_signer_once(alice: Identity) -> None:
    note = sign_note(TEXT, "alice.example", alice)
    doubled = note + note.split("\n\n")[-1]
    assert open_note(doubled, {"alice.example": alice.public_key_raw})[1] == ["alice.example"]


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(f"text\n{EM_DASH} a AAAAAAA=\n", id="no-blank-line"),
        pytest.param("text\n\n", id="no-signature-lines"),
        pytest.param(f"text\n\n{EM_DASH} a AAAAAAA=", id="last-line-without-newline"),
        pytest.param("text\n\n-- a AAAAAAA=\n", id="ascii-dashes-instead-of-em-dash"),
        pytest.param(f"text\n\n{EM_DASH}a AAAAAAA=\n", id="no-space-after-dash"),
        pytest.param(f"text\n\n{EM_DASH}  AAAAAAA=\n", id="empty-name"),
        pytest.param(f"text\n\n{EM_DASH} a+b AAAAAAA=\n", id="plus-in-name"),
        pytest.param(f"text\n\n{EM_DASH} a\u00a0b AAAAAAA=\n", id="unicode-space-in-name"),
        pytest.param(f"text\n\n{EM_DASH} a \n", id="empty-signature"),
        pytest.param(f"text\n\n{EM_DASH} a AAAA\n", id="signature-shorter-than-key-id"),
        pytest.param(f"text\n\n{EM_DASH} a AAAAAAA\n", id="base64-without-padding"),
        pytest.param(f"text\n\n{EM_DASH} a AAAAAAB=\n", id="base64-non-canonical-bits"),
        pytest.param(f"text\n\n{EM_DASH} a AAAA AAA=\n", id="space-in-signature"),
        pytest.param(f"text\n\n{EM_DASH} a AAAAAAA=\n\n", id="blank-line-after-signatures"),
        pytest.param(f"te\txt\n\n{EM_DASH} a AAAAAAA=\n", id="control-character"),
        pytest.param(f"te\ud800xt\n\n{EM_DASH} a AAAAAAA=\n", id="lone-surrogate"),
    ],
)
def test_malformed_note_is_rejected(note: str) -> None:
    with pytest.raises(Rejected):
        open_note(note, {})


def test_well_formed_unsigned_by_anyone_known_parses() -> None:
    # The counterpart of the malformed cases: the same shape, well formed, opens with no signer.
    assert open_note(f"text\n\n{EM_DASH} a AAAAAAA=\n", {}) == ("text\n", [])


def test_note_with_too_many_signatures_is_rejected(alice: Identity) -> None:
    line = sign_note(TEXT, "alice.example", alice).split("\n\n")[-1]
    keys = {"alice.example": alice.public_key_raw}
    assert open_note(TEXT + "\n" + line * MAX_SIGNATURES, keys)[1] == ["alice.example"]
    with pytest.raises(TooLarge):
        open_note(TEXT + "\n" + line * (MAX_SIGNATURES + 1), keys)


def test_note_over_one_mebibyte_is_rejected(alice: Identity) -> None:
    with pytest.raises(TooLarge):
        open_note("x" * MAX_NOTE_BYTES + f"\n\n{EM_DASH} a AAAAAAA=\n", {})
    with pytest.raises(TooLarge):
        sign_note("x" * MAX_NOTE_BYTES + "\n", "alice.example", alice)


@pytest.mark.parametrize("text", ["", "no final newline", "tab\there\n"])
def test_signing_refuses_text_the_format_cannot_carry(alice: Identity, text: str) -> None:
    with pytest.raises(Rejected):
        sign_note(text, "alice.example", alice)


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\tname", "nl\nname"])
def test_signing_refuses_invalid_key_names(alice: Identity, name: str) -> None:
    with pytest.raises(Rejected):
        sign_note(TEXT, name, alice)


def test_vkey_round_trips(alice: Identity) -> None:
    text = vkey("alice.example/log", alice.public_key_raw)
    name, kid_hex, _ = text.split("+", 2)
    assert kid_hex == key_id(name, 0x01, alice.public_key_raw).hex()
    assert parse_vkey(text) == ("alice.example/log", alice.public_key_raw)


def test_vkey_with_another_signature_type_round_trips_only_as_that_type(alice: Identity) -> None:
    text = vkey("witness.example", alice.public_key_raw, signature_type=0x04)
    assert parse_vkey(text, signature_type=0x04) == ("witness.example", alice.public_key_raw)
    with pytest.raises(Rejected, match="signature type"):
        parse_vkey(text)


def test_vkey_with_a_wrong_key_id_or_shape_is_rejected(alice: Identity, bob: Identity) -> None:
    good = vkey("alice.example", alice.public_key_raw)
    name, kid_hex, material = good.split("+", 2)
    bobs_material = vkey("alice.example", bob.public_key_raw).split("+", 2)[2]
    short_key = base64.b64encode(b"\x01" + alice.public_key_raw[:31]).decode()
    other_kid = f"{int(kid_hex, 16) ^ 1:08x}"
    # A key id of digits only has no upper case: force a letter so the case check always runs.
    letters = kid_hex[:-1] + "a" if kid_hex.isdigit() else kid_hex
    bad = [
        f"{name}+{kid_hex}+{bobs_material}",
        f"{name}+{other_kid}+{material}",
        f"{name}+{letters.upper()}+{material}",
        f"{name}+{kid_hex}",
        f"{name}+{kid_hex}+{material}+extra",
        f"{name}+{kid_hex}+{short_key}",
    ]
    for text in bad:
        with pytest.raises(Rejected):
            parse_vkey(text)
