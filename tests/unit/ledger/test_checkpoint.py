"""Checkpoints (C2SP tlog-checkpoint) and witness cosignatures (C2SP tlog-cosignature v1)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from lumbung.crypto.keys import Identity
from lumbung.errors import ConfigError, Rejected, Unauthenticated
from lumbung.ledger.checkpoint import (
    Checkpoint,
    Cosignature,
    cosign,
    open_checkpoint,
    parse_checkpoint_body,
    require_witnesses,
    sign_checkpoint,
    verified_cosignatures,
    witnesses_that_signed,
)
from lumbung.ledger.note import open_note, parse_note, sign_note

ORIGIN = "hub.lumbung.example/ledger"
ROOT = hashlib.sha256(b"some tree").digest()
CP = Checkpoint(origin=ORIGIN, size=20852163, root=ROOT)
EM_DASH = "\u2014"


@pytest.fixture(scope="module")
def log() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def witnesses() -> dict[str, Identity]:
    return {f"witness{i}.example": Identity.generate() for i in range(3)}


def _keys(identities: dict[str, Identity]) -> dict[str, bytes]:
    return {name: identity.public_key_raw for name, identity in identities.items()}


def test_body_is_origin_size_and_base64_root_one_per_line() -> None:
    assert CP.body() == f"{ORIGIN}\n20852163\n{base64.b64encode(ROOT).decode()}\n"


def test_body_parses_back_to_the_same_checkpoint_with_extensions() -> None:
    with_extensions = Checkpoint(origin=ORIGIN, size=0, root=ROOT, extensions=("ext one", "two"))
    for cp in (CP, with_extensions):
        assert parse_checkpoint_body(cp.body()) == cp
    assert with_extensions.body().endswith("\next one\ntwo\n")


def test_spec_example_checkpoint_body_parses() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = parse_checkpoint_body(body)
    assert (cp.origin, cp.size, len(cp.root)) == ("example.com/behind-the-sofa", 20852163, 32)
    assert cp.body() == body


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}", id="no-final-newline"),
        pytest.param(f"{ORIGIN}\n5\n", id="no-root-line"),
        pytest.param(f"\n5\n{base64.b64encode(ROOT).decode()}\n", id="empty-origin"),
        pytest.param(f"{ORIGIN}\n05\n{base64.b64encode(ROOT).decode()}\n", id="leading-zero"),
        pytest.param(f"{ORIGIN}\n00\n{base64.b64encode(ROOT).decode()}\n", id="double-zero"),
        pytest.param(f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n", id="negative-size"),
        pytest.param(f"{ORIGIN}\n+1\n{base64.b64encode(ROOT).decode()}\n", id="plus-size"),
        pytest.param(f"{ORIGIN}\n 1\n{base64.b64encode(ROOT).decode()}\n", id="space-in-size"),
        pytest.param(f"{ORIGIN}\n1_0\n{base64.b64encode(ROOT).decode()}\n", id="underscore-size"),
        pytest.param(f"{ORIGIN}\n\u0663\n{base64.b64encode(ROOT).decode()}\n", id="arabic-digit"),
        pytest.param(f"{ORIGIN}\n{1 << 64}\n{base64.b64encode(ROOT).decode()}\n", id="over-uint64"),
        pytest.param(f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", id="root-31-bytes"),
        pytest.param(f"{ORIGIN}\n5\n{base64.b64encode(ROOT + b'x').decode()}\n", id="root-33"),
        pytest.param(f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode().rstrip('=')}\n", id="unpad"),
        pytest.param(f"{ORIGIN}\n5\n{ROOT.hex()}\n", id="root-in-hex"),
        pytest.param(f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\n\n", id="empty-extension"),
    ],
)
def test_malformed_checkpoint_body_is_rejected(body: str) -> None:
    with pytest.raises(Rejected):
        parse_checkpoint_body(body)


@given(
    origin=st.text(alphabet=st.characters(min_codepoint=0x20, exclude_characters="\n"), min_size=1),
    size=st.integers(min_value=0, max_value=(1 << 64) - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_any_valid_checkpoint_survives_body_round_trip(origin: str, size: int, root: bytes) -> None:
    cp = Checkpoint(origin=origin, size=size, root=root)
    assert parse_checkpoint_body(cp.body()) == cp


def test_size_zero_is_the_one_size_that_may_start_with_zero() -> None:
    assert parse_checkpoint_body(f"{ORIGIN}\n0\n{base64.b64encode(ROOT).decode()}\n").size == 0


def test_checkpoint_refuses_impossible_fields() -> None:
    for bad in (
        {"origin": "", "size": 1, "root": ROOT},
        {"origin": "a\nb", "size": 1, "root": ROOT},
        {"origin": ORIGIN, "size": -1, "root": ROOT},
        {"origin": ORIGIN, "size": True, "root": ROOT},
        {"origin": ORIGIN, "size": 1, "root": ROOT[:16]},
    ):
        with pytest.raises(Rejected):
            Checkpoint(**bad)  # type: ignore[arg-type]


def test_signed_checkpoint_opens_with_the_logs_key(log: Identity) -> None:
    note = sign_checkpoint(CP, log)
    assert note.startswith(CP.body() + f"\n{EM_DASH} {ORIGIN} ")
    assert open_checkpoint(note, ORIGIN, log.public_key_raw) == CP


def test_checkpoint_may_be_signed_under_another_key_name(log: Identity) -> None:
    note = sign_checkpoint(CP, log, name="key.example")
    assert open_checkpoint(note, "key.example", log.public_key_raw) == CP
    with pytest.raises(Unauthenticated):
        open_checkpoint(note, ORIGIN, log.public_key_raw)


def test_checkpoint_signed_by_another_key_is_not_the_logs(log: Identity) -> None:
    impostor = Identity.generate()
    with pytest.raises(Unauthenticated, match="not signed by the log key"):
        open_checkpoint(sign_checkpoint(CP, impostor), ORIGIN, log.public_key_raw)


def test_tampered_checkpoint_fails_to_open(log: Identity) -> None:
    note = sign_checkpoint(CP, log)
    bigger = note.replace("\n20852163\n", "\n20852164\n")
    with pytest.raises(Unauthenticated):
        open_checkpoint(bigger, ORIGIN, log.public_key_raw)


def test_validly_signed_malformed_body_is_rejected(log: Identity) -> None:
    note = sign_note(f"{ORIGIN}\n007\n{base64.b64encode(ROOT).decode()}\n", ORIGIN, log)
    with pytest.raises(Rejected, match="leading zeroes"):
        open_checkpoint(note, ORIGIN, log.public_key_raw)


def test_cosignature_follows_tlog_cosignature_v1_exactly(log: Identity) -> None:
    witness = Identity.generate()
    note = cosign(sign_checkpoint(CP, log), "w.example", witness, timestamp_s=1679315147)
    _, lines = parse_note(note)
    line = lines[-1]
    # Key ID with signature type 0x04, then the big-endian u64 timestamp, then 64 signature bytes.
    kid = hashlib.sha256(b"w.example\n\x04" + witness.public_key_raw).digest()[:4]
    assert (line.name, line.key_id) == ("w.example", kid)
    assert line.payload[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + CP.body().encode()
    Ed25519PublicKey.from_public_bytes(witness.public_key_raw).verify(line.payload[8:], message)
    assert verified_cosignatures(note, {"w.example": witness.public_key_raw}) == [
        Cosignature(name="w.example", timestamp_s=1679315147)
    ]


def test_cosignature_is_not_a_plain_note_signature_and_vice_versa(log: Identity) -> None:
    witness = Identity.generate()
    note = cosign(sign_checkpoint(CP, log), "w.example", witness)
    # Type 0x04 and type 0x01 key IDs differ, so each verifier ignores the other kind of line.
    assert open_note(note, {"w.example": witness.public_key_raw})[1] == []
    assert witnesses_that_signed(note, {ORIGIN: log.public_key_raw}) == []
    assert open_checkpoint(note, ORIGIN, log.public_key_raw) == CP


def test_cosignature_covers_extension_lines(log: Identity) -> None:
    witness = Identity.generate()
    cp = Checkpoint(origin=ORIGIN, size=3, root=ROOT, extensions=("extension",))
    note = cosign(sign_checkpoint(cp, log), "w.example", witness)
    tampered = note.replace("extension", "extensioN")
    with pytest.raises(Unauthenticated):
        witnesses_that_signed(tampered, {"w.example": witness.public_key_raw})


def test_tampering_with_any_cosignature_byte_fails(log: Identity) -> None:
    witness = Identity.generate()
    note = cosign(sign_checkpoint(CP, log), "w.example", witness, timestamp_s=1700000000)
    head, encoded = note[:-1].rsplit(" ", 1)
    raw = base64.b64decode(encoded)
    keys = {"w.example": witness.public_key_raw}
    for position in range(len(raw)):
        flipped = raw[:position] + bytes([raw[position] ^ 0x01]) + raw[position + 1 :]
        tampered = f"{head} {base64.b64encode(flipped).decode()}\n"
        if position < 4:
            assert witnesses_that_signed(tampered, keys) == []
        else:
            with pytest.raises(Unauthenticated):
                witnesses_that_signed(tampered, keys)


def test_cosigning_refuses_a_note_that_is_not_a_checkpoint(log: Identity) -> None:
    with pytest.raises(Rejected):
        cosign(sign_note("not a checkpoint\n", ORIGIN, log), "w.example", Identity.generate())


def test_cosigning_refuses_a_timestamp_out_of_range(log: Identity) -> None:
    for timestamp_s in (-1, 1 << 63):
        with pytest.raises(Rejected):
            cosign(
                sign_checkpoint(CP, log), "w.example", Identity.generate(), timestamp_s=timestamp_s
            )


def test_m_of_n_witnesses_is_met_exactly_at_m(
    log: Identity, witnesses: dict[str, Identity]
) -> None:
    note = sign_checkpoint(CP, log)
    keys = _keys(witnesses)
    names = list(witnesses)
    for signed_count, name in enumerate(names[:2], start=1):
        note = cosign(note, name, witnesses[name])
        assert witnesses_that_signed(note, keys) == names[:signed_count]
    require_witnesses(note, keys, 2)
    with pytest.raises(Unauthenticated, match="2 of the 3"):
        require_witnesses(note, keys, 3)


def test_cosignatures_by_unknown_witnesses_do_not_count(
    log: Identity, witnesses: dict[str, Identity]
) -> None:
    note = sign_checkpoint(CP, log)
    for index in range(3):
        note = cosign(note, f"stranger{index}.example", Identity.generate())
    with pytest.raises(Unauthenticated, match="0 of the 1"):
        require_witnesses(note, _keys(witnesses), 1)


def test_the_same_witness_twice_counts_once(log: Identity, witnesses: dict[str, Identity]) -> None:
    name = next(iter(witnesses))
    note = cosign(cosign(sign_checkpoint(CP, log), name, witnesses[name]), name, witnesses[name])
    assert witnesses_that_signed(note, _keys(witnesses)) == [name]
    with pytest.raises(Unauthenticated):
        require_witnesses(note, _keys(witnesses), 2)


def test_a_forged_cosignature_of_a_known_witness_rejects_the_note(
    log: Identity, witnesses: dict[str, Identity]
) -> None:
    names = list(witnesses)
    other_cp = Checkpoint(origin=ORIGIN, size=CP.size + 1, root=ROOT)
    # A genuine cosignature by witness 1, but of another checkpoint, pasted under this one.
    stolen = cosign(sign_checkpoint(other_cp, log), names[1], witnesses[names[1]])
    stolen_line = stolen.split("\n\n")[-1].splitlines(keepends=True)[-1]
    note = cosign(sign_checkpoint(CP, log), names[0], witnesses[names[0]]) + stolen_line
    with pytest.raises(Unauthenticated, match=names[1].replace(".", r"\.")):
        require_witnesses(note, _keys(witnesses), 1)


def test_quorum_that_no_note_could_meet_is_a_config_error(
    log: Identity, witnesses: dict[str, Identity]
) -> None:
    note = sign_checkpoint(CP, log)
    require_witnesses(note, _keys(witnesses), 0)
    for m in (-1, len(witnesses) + 1):
        with pytest.raises(ConfigError):
            require_witnesses(note, _keys(witnesses), m)
