"""Ed25519 identities: generate, keep on disk, sign, verify.

Every actor (hub, node, consumer, data owner, witness) is one Ed25519 key; its id is derived from
the public key by ``lumbung.ids.actor_id``. The private key lives in ``<data_dir>/key.pem`` as an
unencrypted PKCS#8 PEM file that only its owner may read, as OpenSSH insists for its own keys.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lumbung.errors import ConfigError, Unauthenticated
from lumbung.ids import actor_id

KEY_FILE_NAME = "key.pem"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# Any group or other permission on the key file is refused: readable leaks the key, writable lets
# someone swap in a key of their choosing.
_FOREIGN_ACCESS_MODE = stat.S_IRWXG | stat.S_IRWXO


class Identity:
    """One actor's Ed25519 private key and what follows from it (public key, actor id)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_key_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._actor_id = actor_id(self._public_key_raw)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> Identity:
        """Load an unencrypted PKCS#8 PEM Ed25519 key; ``ValueError`` if it is anything else."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"not an Ed25519 key but {type(key).__name__}")
        return cls(key)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """The identity kept in ``data_dir/key.pem``, created (mode 0600) on first use.

        Raises ``ConfigError`` naming the path if the file is readable or writable by group or
        others, or if it does not hold an Ed25519 private key.
        """
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = data_dir / KEY_FILE_NAME
        if not key_path.exists():
            created = _create_key_file(key_path)
            if created is not None:
                return created
        return _load_key_file(key_path)

    @property
    def actor_id(self) -> str:
        return self._actor_id

    @property
    def public_key_raw(self) -> bytes:
        """The 32-byte raw Ed25519 public key (RFC 8032 encoding)."""
        return self._public_key_raw

    def private_key_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        # Never show key material, even by accident in a log line.
        return f"Identity(actor_id={self._actor_id!r})"


def verify_signature(public_key_raw: bytes, signature: bytes, data: bytes) -> None:
    """Check an Ed25519 signature; raises ``Unauthenticated`` if the key or signature is bad."""
    if len(public_key_raw) != PUBLIC_KEY_BYTES:
        raise Unauthenticated(
            f"public key must be {PUBLIC_KEY_BYTES} bytes, not {len(public_key_raw)}"
        )
    try:
        public_key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        public_key.verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise Unauthenticated("signature does not verify") from exc


def _create_key_file(key_path: Path) -> Identity | None:
    """Write a fresh key to ``key_path``; None if another process created the file first.

    The key is written to a private temporary file (created 0600, so never readable by others even
    for a moment) and then hard-linked into place, which fails if the name exists. So two processes
    starting at once agree on one key and nobody ever reads a half-written file.
    """
    identity = Identity.generate()
    tmp_path = key_path.with_name(f".{KEY_FILE_NAME}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.private_key_pem())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp_path, key_path)
        except FileExistsError:
            return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
    return identity


def _load_key_file(key_path: Path) -> Identity:
    try:
        mode = key_path.stat().st_mode
        # POSIX permissions mean nothing on Windows, where the file's ACL decides instead.
        if os.name == "posix" and mode & _FOREIGN_ACCESS_MODE:
            raise ConfigError(
                f"key file {key_path} is accessible by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); run: chmod 600 {key_path}",
                field="data_dir",
            )
        pem = key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {key_path}: {exc}", field="data_dir") from exc
    try:
        return Identity.from_pem(pem)
    except ValueError as exc:
        raise ConfigError(f"key file {key_path} is corrupt: {exc}", field="data_dir") from exc
