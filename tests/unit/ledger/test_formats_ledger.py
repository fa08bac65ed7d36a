"""The ledger's frozen formats (docs/formats.md), pinned by the vectors in tests/data/ledger/.

Both ways: fixed keys, times and entries encode, sign and hash to exactly the stored bytes, and
the stored bytes decode to those entries and verify. Ed25519 (RFC 8032) signatures are
deterministic, so a signature is as fixed as a hash. A failure here means a format changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from golden import check_golden, json_bytes, read_golden

from lumbung.crypto.keys import Identity
from lumbung.hub.ledger import origin_of
from lumbung.ledger import merkle
from lumbung.ledger.checkpoint import (
    SIG_TYPE_COSIGNATURE_V1,
    Checkpoint,
    Cosignature,
    cosign,
    open_checkpoint,
    sign_checkpoint,
    verified_cosignatures,
)
from lumbung.ledger.entries import (
    SIGNING_CONTEXT,
    Entry,
    EscrowLock,
    Fee,
    Grant,
    Mint,
    Refund,
    Release,
    Slash,
    Stake,
    Transfer,
    Unstake,
    decode_leaf,
    encode,
    entry_to_dict,
    leaf_bytes,
    sign_entry,
    verify_entry,
)
from lumbung.ledger.note import parse_vkey, vkey

SEEDS = {"hub": 0x11, "consumer": 0x22, "provider": 0x33, "witness": 0x44}
KEYS = {
    name: Identity(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))
    for name, seed in SEEDS.items()
}
HUB, CONSUMER, PROVIDER, WITNESS = (KEYS[name] for name in SEEDS)
JOB = "job_aaaaaaaaaaaaaaaa"
TASK = "task_bbbbbbbbbbbbbbbb"
AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
COSIGNED_AT_S = 1_767_225_660
WITNESS_NAME = f"lumbung.witness/{WITNESS.actor_id}"
ORIGIN = f"lumbung.hub/{HUB.actor_id}"
# Keys that sort differently by UTF-16 code units (RFC 8785) than by code points, and a string
# with every kind of escape, in the body of a kind whose body is free-form for now.
GRANT_BODY: dict[str, Any] = {
    "dataset": "climate-sensors",
    "note": 'tab\there, "quoted", back\\slash, unit separator \x1f, ε',
    "\ue000": None,
    "\U0001f600": True,
    "ε": 1,
}


def _entries() -> list[tuple[str, Entry]]:
    """(signer, entry): one job's life in the log, one entry of every kind."""
    hub, consumer, provider = HUB.actor_id, CONSUMER.actor_id, PROVIDER.actor_id

    def at(seconds: int) -> int:
        return AT_MS + seconds * 1000

    return [
        ("hub", Mint(author=hub, seq=1, at=at(0), to=consumer, amount=100_000_000)),
        ("hub", Mint(author=hub, seq=2, at=at(1), to=provider, amount=2_000_000)),
        ("provider", Stake(author=provider, seq=1, at=at(2), amount=1_000_000)),
        ("consumer", EscrowLock(author=consumer, seq=1, at=at(3), job_id=JOB, amount=3_600_000)),
        (
            "hub",
            Release(
                author=hub,
                seq=3,
                at=at(60),
                job_id=JOB,
                to=provider,
                amount=950_000,
                task_id=TASK,
                reason="checkpoint seq 1",
            ),
        ),
        ("hub", Fee(author=hub, seq=4, at=at(60), job_id=JOB, amount=50_000)),
        ("hub", Refund(author=hub, seq=5, at=at(61), job_id=JOB, to=consumer, amount=2_600_000)),
        ("consumer", Transfer(author=consumer, seq=2, at=at(62), to=provider, amount=1_000)),
        ("provider", Unstake(author=provider, seq=2, at=at(63), amount=500_000)),
        (
            "hub",
            Slash(author=hub, seq=6, at=at(64), node=provider, amount=100_000, reason="replay"),
        ),
        ("consumer", Grant(author=consumer, seq=3, at=at(65), body=GRANT_BODY)),
    ]


def _leaves() -> list[bytes]:
    return [leaf_bytes(sign_entry(entry, KEYS[signer])) for signer, entry in _entries()]


def _stored_leaves() -> list[bytes]:
    return read_golden("ledger/leaves.jsonl").splitlines()


def _stored(name: str) -> Any:
    return json.loads(read_golden(name))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_fixed_keys_give_the_stored_public_keys_and_actor_ids() -> None:
    keys = {
        name: {
            "seed": (bytes([seed]) * 32).hex(),
            "public_key": _b64(KEYS[name].public_key_raw),
            "actor_id": KEYS[name].actor_id,
        }
        for name, seed in SEEDS.items()
    }
    check_golden("ledger/keys.json", json_bytes(keys))


def test_entries_encode_and_sign_to_the_stored_bytes() -> None:
    vectors = []
    for (signer, entry), leaf in zip(_entries(), _leaves(), strict=True):
        signed = sign_entry(entry, KEYS[signer])
        vectors.append(
            {
                "signer": signer,
                "entry": entry_to_dict(entry),
                "encoding": encode(entry).decode(),
                "signature": _b64(signed.signature),
                "leaf_hash": merkle.leaf_hash(leaf).hex(),
            }
        )
    check_golden("ledger/entries.json", json_bytes(vectors))
    check_golden("ledger/leaves.jsonl", b"".join(leaf + b"\n" for leaf in _leaves()))


def test_stored_leaves_decode_to_the_entries_and_verify() -> None:
    vectors = _stored("ledger/entries.json")
    stored = _stored_leaves()
    assert len(stored) == len(vectors) == len(_entries())
    for (signer, entry), vector, leaf in zip(_entries(), vectors, stored, strict=True):
        signed = decode_leaf(leaf)
        verify_entry(signed)
        assert signed.entry == entry
        assert signed.public_key == KEYS[signer].public_key_raw
        assert json.loads(vector["encoding"]) == vector["entry"] == entry_to_dict(entry)


def test_a_stored_signature_is_ed25519_over_the_context_and_the_encoding() -> None:
    # Checked with the cryptography library alone: what another implementation must do.
    for vector, leaf in zip(_stored("ledger/entries.json"), _stored_leaves(), strict=True):
        public_key = Ed25519PublicKey.from_public_bytes(KEYS[vector["signer"]].public_key_raw)
        message = b"lumbung-ledger-entry-v1\x00" + vector["encoding"].encode()
        public_key.verify(base64.b64decode(vector["signature"]), message)
        assert message.startswith(SIGNING_CONTEXT)
        assert hashlib.sha256(b"\x00" + leaf).hexdigest() == vector["leaf_hash"]


def test_canonical_json_sorts_keys_by_utf16_and_escapes_only_what_it_must() -> None:
    grant = _stored("ledger/entries.json")[-1]["encoding"]
    body = grant[grant.index('"body":') :]
    assert body.startswith('"body":{"dataset":"climate-sensors","note":"tab\\there, \\"quoted\\"')
    assert "unit separator \\u001f, ε" in body
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, which sorts before U+E000 and U+03B5
    # sorts before both: by code points U+E000 would come first.
    assert body.index('"ε"') < body.index('"\U0001f600"') < body.index('"\ue000"')


def test_the_tree_over_the_stored_leaves_has_the_stored_roots_and_proofs() -> None:
    hashes = [merkle.leaf_hash(leaf) for leaf in _leaves()]
    size = len(hashes)
    tree = {
        "empty_root": merkle.EMPTY_ROOT.hex(),
        "roots": [merkle.root(hashes[:n]).hex() for n in range(1, size + 1)],
        "inclusion": [
            {
                "index": i,
                "size": size,
                "proof": [h.hex() for h in merkle.inclusion_proof(hashes, i)],
            }
            for i in (0, 5, size - 1)
        ],
        "consistency": [
            {
                "size1": m,
                "size2": size,
                "proof": [h.hex() for h in merkle.consistency_proof(hashes, m)],
            }
            for m in (1, 4, 7)
        ],
    }
    check_golden("ledger/tree.json", json_bytes(tree))


def test_the_stored_proofs_verify_against_the_stored_roots() -> None:
    tree = _stored("ledger/tree.json")
    hashes = [merkle.leaf_hash(leaf) for leaf in _stored_leaves()]
    roots = [bytes.fromhex(r) for r in tree["roots"]]
    assert bytes.fromhex(tree["empty_root"]) == hashlib.sha256(b"").digest()
    for proof in tree["inclusion"]:
        path = [bytes.fromhex(h) for h in proof["proof"]]
        index, size = proof["index"], proof["size"]
        merkle.verify_inclusion(hashes[index], index, size, path, roots[size - 1])
    for proof in tree["consistency"]:
        path = [bytes.fromhex(h) for h in proof["proof"]]
        size1, size2 = proof["size1"], proof["size2"]
        merkle.verify_consistency(size1, size2, roots[size1 - 1], roots[size2 - 1], path)


def _checkpoint() -> Checkpoint:
    hashes = [merkle.leaf_hash(leaf) for leaf in _leaves()]
    return Checkpoint(origin=ORIGIN, size=len(hashes), root=merkle.root(hashes))


def test_the_cosigned_checkpoint_note_is_the_stored_one() -> None:
    note = sign_checkpoint(_checkpoint(), HUB)
    cosigned = cosign(note, WITNESS_NAME, WITNESS, timestamp_s=COSIGNED_AT_S)
    check_golden("ledger/checkpoint.note", cosigned.encode())
    vkeys = {
        "log": vkey(ORIGIN, HUB.public_key_raw),
        "witness": vkey(WITNESS_NAME, WITNESS.public_key_raw, SIG_TYPE_COSIGNATURE_V1),
    }
    check_golden("ledger/vkeys.json", json_bytes(vkeys))


def test_the_stored_note_opens_with_the_stored_verifier_keys() -> None:
    note = read_golden("ledger/checkpoint.note").decode()
    vkeys = _stored("ledger/vkeys.json")
    origin, log_key = parse_vkey(vkeys["log"])
    witness_name, witness_key = parse_vkey(vkeys["witness"], SIG_TYPE_COSIGNATURE_V1)
    assert origin == ORIGIN == origin_of(HUB)
    assert open_checkpoint(note, origin, log_key) == _checkpoint()
    assert verified_cosignatures(note, {witness_name: witness_key}) == [
        Cosignature(WITNESS_NAME, COSIGNED_AT_S)
    ]


def test_the_stored_note_signatures_verify_without_our_parser() -> None:
    note = read_golden("ledger/checkpoint.note").decode()
    text, block = note.split("\n\n")
    assert text.splitlines() == [ORIGIN, "11", _b64(_checkpoint().root)]
    log_line, witness_line = block.splitlines()
    assert log_line.startswith(f"\u2014 {ORIGIN} ")
    assert witness_line.startswith(f"\u2014 {WITNESS_NAME} ")
    log_sig = base64.b64decode(log_line.rsplit(" ", 1)[1])
    log_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + HUB.public_key_raw).digest()[:4]
    assert log_sig[:4] == log_id
    log_public = Ed25519PublicKey.from_public_bytes(HUB.public_key_raw)
    log_public.verify(log_sig[4:], (text + "\n").encode())
    cosig = base64.b64decode(witness_line.rsplit(" ", 1)[1])
    witness_id = hashlib.sha256(WITNESS_NAME.encode() + b"\n\x04" + WITNESS.public_key_raw)
    assert cosig[:4] == witness_id.digest()[:4]
    assert int.from_bytes(cosig[4:12], "big") == COSIGNED_AT_S
    signed = f"cosignature/v1\ntime {COSIGNED_AT_S}\n{text}\n".encode()
    Ed25519PublicKey.from_public_bytes(WITNESS.public_key_raw).verify(cosig[12:], signed)
