"""Ed25519 identities: key files on disk, signing and verifying."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lumbung.crypto.keys import Identity, verify_signature
from lumbung.errors import ConfigError, Unauthenticated
from lumbung.ids import is_actor_id


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_identity_has_a_valid_actor_id_and_32_byte_key() -> None:
    identity = Identity.generate()
    assert len(identity.public_key_raw) == 32
    assert is_actor_id(identity.actor_id)
    assert identity.actor_id != Identity.generate().actor_id


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_key_file_is_created_owner_only_in_an_owner_only_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "node"
    Identity.load_or_create(data_dir)
    assert _mode(data_dir / "key.pem") == 0o600
    assert _mode(data_dir) == 0o700


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_key_file_is_created_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        Identity.load_or_create(tmp_path)
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "key.pem") == 0o600


def test_reloading_a_key_file_gives_the_same_actor_id(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path)
    second = Identity.load_or_create(tmp_path)
    assert second.actor_id == first.actor_id
    assert second.public_key_raw == first.public_key_raw
    assert not list(tmp_path.glob(".key.pem.*")), "temporary files are cleaned up"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_open_to_group_or_others_is_refused_naming_the_path(
    tmp_path: Path, mode: int
) -> None:
    Identity.load_or_create(tmp_path)
    key_path = tmp_path / "key.pem"
    key_path.chmod(mode)
    with pytest.raises(ConfigError, match=str(key_path)):
        Identity.load_or_create(tmp_path)


def test_corrupt_key_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    key_path = tmp_path / "key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="corrupt") as caught:
        Identity.load_or_create(tmp_path)
    assert str(key_path) in caught.value.message


def test_key_file_holding_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(tmp_path / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pem)
    os.close(fd)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        Identity.load_or_create(tmp_path)


def test_signature_verifies_with_the_signers_public_key() -> None:
    identity = Identity.generate()
    verify_signature(identity.public_key_raw, identity.sign(b"hello"), b"hello")


def test_signature_over_other_data_is_rejected() -> None:
    identity = Identity.generate()
    with pytest.raises(Unauthenticated):
        verify_signature(identity.public_key_raw, identity.sign(b"hello"), b"hellO")


def test_signature_from_another_key_is_rejected() -> None:
    signer, other = Identity.generate(), Identity.generate()
    with pytest.raises(Unauthenticated):
        verify_signature(other.public_key_raw, signer.sign(b"hello"), b"hello")


@pytest.mark.parametrize("length", [0, 31, 33])
def test_public_key_of_wrong_length_is_rejected(length: int) -> None:
    identity = Identity.generate()
    with pytest.raises(Unauthenticated, match="32 bytes"):
        verify_signature(b"\x01" * length, identity.sign(b"x"), b"x")


def test_identity_repr_shows_no_key_material() -> None:
    identity = Identity.generate()
    assert repr(identity) == f"Identity(actor_id={identity.actor_id!r})"
