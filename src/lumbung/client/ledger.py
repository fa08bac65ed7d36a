"""The hub's transparency log from the client side: read, prove, append, and the faucet.

Nothing here trusts the hub: ``checkpoint`` returns the signed note for the caller to open with a
key it pinned, and proofs come back as plain hashes for ``lumbung.ledger.merkle`` to verify.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from lumbung.client.transport import HubTransport
from lumbung.errors import Conflict, Rejected
from lumbung.ledger.entries import (
    Entry,
    SignedEntry,
    Stake,
    Unstake,
    decode_leaf,
    leaf_bytes,
    sign_entry,
    verify_entry,
)

# An entry missing only its header (author=, seq=, at=), e.g. functools.partial(Stake, amount=5).
Draft = Callable[..., Entry]
T = TypeVar("T")
# Another process signing with the same key may take our sequence number first; then we retry.
SEQ_ATTEMPTS = 3


@dataclass(frozen=True)
class Account:
    """An actor's state as the hub's replay of its log has it, in micro-credits."""

    balance: int
    staked: int
    last_seq: int
    # The newest entries that concern the actor, newest first, as (leaf index, entry) when asked.
    entries: list[tuple[int, SignedEntry]] = field(default_factory=list)


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

    def account(self, actor: str, entries: int = 0) -> Account:
        """``actor``'s balance and stake, and its newest ``entries`` entries (decoded, their
        signatures checked; ``lumbung ledger verify`` checks they are in the log)."""
        params = {"entries": entries} if entries else None
        body = self._hub.call("GET", f"/v1/ledger/accounts/{actor}", params=params)
        recent = []
        for item in body.get("entries", []):
            signed = decode_leaf(_b64(item["entry"], "entries"))
            verify_entry(signed)
            recent.append((int(item["index"]), signed))
        return Account(int(body["balance"]), int(body["staked"]), int(body["last_seq"]), recent)

    def balances(self) -> tuple[int, dict[str, Account]]:
        """The hub's (size, actor -> account) for every actor, at one size of its log."""
        body = self._hub.call("GET", "/v1/ledger/balances")
        accounts = body.get("accounts")
        if not isinstance(accounts, dict):
            raise Rejected("balances must be an object", field="accounts")
        try:
            return int(body["size"]), {
                str(actor): Account(int(v[0]), int(v[1]), int(v[2]))
                for actor, v in accounts.items()
            }
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise Rejected(f"malformed balances: {exc}", field="accounts") from exc

    def faucet(self) -> int:
        """Ask the hub's faucet for credits (demo hubs only); returns the mint's leaf index."""
        return int(self._hub.call("POST", "/v1/ledger/faucet")["index"])

    def sign(self, draft: Draft) -> SignedEntry:
        """Complete ``draft`` as this session's next entry (sequence number from the hub) and sign
        it. The hub's answer is only a hint: a wrong sequence number makes the entry refused."""
        identity = self._hub.identity
        seq = self.account(identity.actor_id).last_seq + 1
        entry = draft(author=identity.actor_id, seq=seq, at=int(time.time() * 1000))
        return sign_entry(entry, identity)

    def with_next_seq(self, draft: Draft, send: Callable[[SignedEntry], T], seq_field: str) -> T:
        """Sign ``draft`` and ``send`` it, signing again with a fresh sequence number while the
        hub answers that another entry of ours took it (``Conflict`` on ``seq_field``)."""
        for attempt in range(SEQ_ATTEMPTS):
            try:
                return send(self.sign(draft))
            except Conflict as exc:
                if exc.field != seq_field or attempt + 1 == SEQ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stake(self, amount_micro: int) -> int:
        """Lock ``amount_micro`` of this actor's balance as stake; returns the leaf index."""
        return self._author(functools.partial(Stake, amount=amount_micro))

    def unstake(self, amount_micro: int) -> int:
        """Return stake to the balance; refused while this actor's node holds a lease."""
        return self._author(functools.partial(Unstake, amount=amount_micro))

    def _author(self, draft: Draft) -> int:
        return self.with_next_seq(draft, lambda s: self.append([s])[0], "entries.0.entry.seq")

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
