"""Identifiers: actor ids derived from public keys, random ids for jobs and tasks.

An actor's id is a hash of its Ed25519 public key, so anyone holding the key can check the id and
nobody can claim an id without the key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

ACTOR_PREFIX = "ak_"
_ACTOR_ID_RE = re.compile(r"^ak_[a-z2-7]{32}$")
_OBJECT_ID_RE = re.compile(r"^(job|task|node)_[a-z2-7]{16}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def actor_id(public_key_raw: bytes) -> str:
    """The id of the actor holding this raw 32-byte Ed25519 public key."""
    digest = hashlib.sha256(b"lumbung-actor-v1\x00" + public_key_raw).digest()
    return ACTOR_PREFIX + base64.b32encode(digest[:20]).decode().lower()


def is_actor_id(value: str) -> bool:
    return bool(_ACTOR_ID_RE.match(value))


def new_id(kind: str) -> str:
    """A fresh random id such as ``job_k3v...``; 80 random bits."""
    return f"{kind}_{base64.b32encode(secrets.token_bytes(10)).decode().lower()}"


def is_object_id(value: str, kind: str) -> bool:
    return bool(_OBJECT_ID_RE.match(value)) and value.startswith(kind + "_")


def is_sha256_hex(value: str) -> bool:
    return bool(SHA256_RE.match(value))
