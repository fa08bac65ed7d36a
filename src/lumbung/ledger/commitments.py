"""Checking a ``result_commitment`` entry's body: the node's key and its signature over the rest.

The body is what the node signed (``lumbung.wire.commitment.commitment_body``) plus its raw
Ed25519 ``public_key`` and ``signature`` in hex. It holds when the key's actor id is the body's
``node`` and the signature covers the rest of the body: the hub checks it before appending, and an
auditor checks it again, so a hub cannot put words in a node's mouth.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

from lumbung.crypto.keys import verify_signature
from lumbung.errors import Rejected, Unauthenticated
from lumbung.ids import actor_id
from lumbung.wire.commitment import signed_bytes

SIGNATURE_FIELDS = ("public_key", "signature")


def verify_commitment(body: Mapping[str, Any]) -> None:
    """Raise ``Rejected`` naming ``public_key`` or ``signature`` unless ``body`` holds."""
    try:
        public_key = bytes.fromhex(str(body.get("public_key", "")))
        signature = bytes.fromhex(str(body.get("signature", "")))
    except (ValueError, binascii.Error) as exc:
        raise Rejected("the key and signature must be hex", field="signature") from exc
    if actor_id(public_key) != body.get("node"):
        raise Rejected("is not the key of the node the commitment names", field="public_key")
    signed = {k: v for k, v in body.items() if k not in SIGNATURE_FIELDS}
    try:
        verify_signature(public_key, signature, signed_bytes(signed))
    except Unauthenticated as exc:
        raise Rejected(
            "does not sign this result (its job, task, attempt, outputs and execution class)",
            field="signature",
        ) from exc
