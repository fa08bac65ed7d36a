"""The hub's transparency log from the client side: read, prove, append, and the faucet.

Nothing here trusts the hub: ``checkpoint`` returns the signed note for the caller to open with a
key it pinned, and proofs come back as plain hashes for ``lumbung.ledger.merkle`` to verify.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from lumbung.client.transport import HubTransport
from lumbung.errors import Rejected
from lumbung.ledger.entries import SignedEntry, leaf_bytes


@dataclass(frozen=True)
class Account:
    """An actor's state as the hub's replay of its log has it, in micro-credits."""

    balance: int
    staked: int
    last_seq: int


@dataclass(frozen=True)
class InclusionProof:
    index: int
    size: int
    proof: list[bytes]


class LedgerClient:
    """Calls to ``/v1/ledger`` over one signed hub session."""

    def __init__(self, hub: HubTransport) -> None:
        self._hub = hub

    def key(self) -> tuple[str, str]:
        """(origin, verifier key) the hub says sign its checkpoints; pin it, do not re-fetch it."""
        body = self._hub.call("GET", "/v1/ledger/key")
        return str(body["origin"]), str(body["vkey"])

    def checkpoint(self) -> str:
        """The latest signed checkpoint note (C2SP tlog-checkpoint), unverified."""
        return self._hub.get_text("/v1/ledger/checkpoint")

    def entries(self, start: int, end: int) -> list[bytes]:
        """The raw leaves [start, end) (the hub caps one call at 10,000)."""
        body = self._hub.call("GET", "/v1/ledger/entries", params={"start": start, "end": end})
        return [_b64(text, "entries") for text in body["entries"]]

    def inclusion_proof(
        self, size: int, *, index: int | None = None, leaf_hash: bytes | None = None
    ) -> InclusionProof:
        """PATH for leaf ``index`` (or the leaf with ``leaf_hash``) in the tree of ``size``."""
        params: dict[str, object] = {"size": size}
        if index is not None:
            params["index"] = index
        if leaf_hash is not None:
            params["leaf_hash"] = leaf_hash.hex()
        body = self._hub.call("GET", "/v1/ledger/proof/inclusion", params=params)
        return InclusionProof(int(body["index"]), int(body["size"]), _hashes(body["proof"]))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        params = {"size1": size1, "size2": size2}
        return _hashes(
            self._hub.call("GET", "/v1/ledger/proof/consistency", params=params)["proof"]
        )

    def account(self, actor: str) -> Account:
        body = self._hub.call("GET", f"/v1/ledger/accounts/{actor}")
        return Account(int(body["balance"]), int(body["staked"]), int(body["last_seq"]))

    def faucet(self) -> int:
        """Ask the hub's faucet for credits (demo hubs only); returns the mint's leaf index."""
        return int(self._hub.call("POST", "/v1/ledger/faucet")["index"])

    def append(self, entries: Sequence[SignedEntry]) -> list[int]:
        """Append signed entries, all or none; returns their leaf indexes."""
        encoded = [base64.b64encode(leaf_bytes(signed)).decode("ascii") for signed in entries]
        body = self._hub.call("POST", "/v1/ledger/entries", json={"entries": encoded})
        return [int(index) for index in body["indexes"]]


def _hashes(hex_list: object) -> list[bytes]:
    if not isinstance(hex_list, list):
        raise Rejected("proof must be a list of hex hashes", field="proof")
    try:
        return [bytes.fromhex(str(h)) for h in hex_list]
    except ValueError as exc:
        raise Rejected("proof hash is not hex", field="proof") from exc


def _b64(text: object, field: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError as exc:
        raise Rejected(f"{field} holds a value that is not base64", field=field) from exc
