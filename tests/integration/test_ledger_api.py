"""The hub's transparency log over HTTP, in-process, on every store.

Entries are built and signed here as a wallet would; the hub must append only what replays
cleanly, and everything it serves must verify against its signed checkpoints.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hubkit import FakeClock

from lumbung.client.auth import SignedAuth
from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import ConfigError, LumbungError, StaleWrite
from lumbung.hub.app import create_app
from lumbung.hub.context import HubContext
from lumbung.hub.ledger import LogService
from lumbung.ledger import signatures
from lumbung.ledger.checkpoint import Checkpoint, open_checkpoint
from lumbung.ledger.entries import Mint, SignedEntry, Transfer, leaf_bytes, sign_entry
from lumbung.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from lumbung.ledger.note import parse_vkey
from lumbung.ledger.tree import NodeKey
from lumbung.store.blobs import MemoryBlobStore
from lumbung.store.ledger import LedgerStore
from lumbung.store.protocol import Store
from lumbung.store.sql import SqlStore

FAUCET_MICRO = 5_000_000
AT_MS = 1_800_000_000_000


@dataclass
class Hub:
    ctx: HubContext
    http: TestClient
    clock: FakeClock

    def call(self, who: Identity, method: str, path: str, json: Any = None) -> Any:
        auth = SignedAuth(who, clock=self.clock)
        return self.http.request(method, path, json=json, auth=auth)

    def faucet(self, who: Identity) -> int:
        response = self.call(who, "POST", "/v1/ledger/faucet")
        assert response.status_code == 200, response.text
        return int(response.json()["index"])

    def append(self, who: Identity, entries: list[SignedEntry], expect: int = 200) -> Any:
        encoded = [base64.b64encode(leaf_bytes(e)).decode() for e in entries]
        response = self.call(who, "POST", "/v1/ledger/entries", {"entries": encoded})
        assert response.status_code == expect, response.text
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def size(self) -> int:
        return self.checkpoint().size

    def checkpoint(self) -> Checkpoint:
        response = self.http.get("/v1/ledger/checkpoint")
        assert response.status_code == 200, response.text
        name, key = parse_vkey(self.get("/v1/ledger/key")["vkey"])
        assert self.ctx.log is not None
        assert name == self.ctx.log.origin
        return open_checkpoint(response.text, name, key)

    def account(self, actor: str) -> dict[str, int]:
        return dict(self.get(f"/v1/ledger/accounts/{actor}"))


def _make_hub(store: Store, data_dir: Path) -> Hub:
    clock = FakeClock()
    config = HubConfig(data_dir=data_dir, faucet_micro=FAUCET_MICRO)
    ctx = HubContext(config=config, store=store, blobs=MemoryBlobStore(), clock=clock)
    return Hub(ctx, TestClient(create_app(ctx, reaper=False)), clock)


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Hub:
    return _make_hub(store, tmp_path)


def _transfer(payer: Identity, to: str, amount: int, seq: int) -> SignedEntry:
    entry = Transfer(author=payer.actor_id, seq=seq, at=AT_MS, to=to, amount=amount)
    return sign_entry(entry, payer)


def test_faucet_mint_then_a_signed_transfer_is_appended(hub: Hub) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    assert hub.faucet(alice) == 0
    body = hub.append(bob, [_transfer(alice, bob.actor_id, 1_500_000, seq=1)])
    assert body == {"indexes": [1]}
    assert hub.account(alice.actor_id) == {"balance": 3_500_000, "staked": 0, "last_seq": 1}
    assert hub.account(bob.actor_id)["balance"] == 1_500_000
    assert hub.size() == 2


def _refused(hub: Hub, entries: list[SignedEntry], status: int, field: str) -> str:
    size_before = hub.size()
    body = hub.append(Identity.generate(), entries, expect=status)
    assert body["field"] == field, body
    assert hub.size() == size_before
    assert hub.ctx.store.ledger().ledger_size() == size_before
    return str(body["message"])


def test_forged_replayed_overspending_and_unauthorised_entries_change_nothing(hub: Hub) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    hub.faucet(alice)
    good = _transfer(alice, bob.actor_id, 1_000, seq=1)
    forged = SignedEntry(
        entry=Transfer(author=alice.actor_id, seq=1, at=AT_MS, to=bob.actor_id, amount=4_000_000),
        signature=good.signature,
        public_key=good.public_key,
    )
    assert "signature" in _refused(hub, [forged], 422, "entries.0.signature")
    # A valid entry first, then a bad one: the whole batch is refused.
    overspend = _transfer(alice, bob.actor_id, 9_000_000, seq=2)
    message = _refused(hub, [good, overspend], 422, "entries.1.entry.amount")
    assert "insufficient funds" in message
    hub.append(bob, [good])
    assert "replayed" in _refused(hub, [good], 409, "entries.0.entry.seq")
    mallory = Identity.generate()
    mint = sign_entry(
        Mint(author=mallory.actor_id, seq=1, at=AT_MS, to=mallory.actor_id, amount=10), mallory
    )
    assert "treasury" in _refused(hub, [mint], 403, "entries.0.entry.author")
    assert hub.account(alice.actor_id)["balance"] == FAUCET_MICRO - 1_000


def test_malformed_leaves_are_refused_naming_the_field(hub: Hub) -> None:
    alice = Identity.generate()
    leaf = leaf_bytes(_transfer(alice, Identity.generate().actor_id, 5, seq=1))
    bad = leaf.replace(b'"amount":5', b'"amount":-5')
    encoded = [base64.b64encode(leaf).decode(), base64.b64encode(bad).decode()]
    response = hub.call(alice, "POST", "/v1/ledger/entries", {"entries": encoded})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "entries.1.entry.amount"
    response = hub.call(alice, "POST", "/v1/ledger/entries", {"entries": ["not base64!"]})
    assert response.json()["field"] == "entries.0"
    too_many = {"entries": [encoded[0]] * 1001}
    response = hub.call(alice, "POST", "/v1/ledger/entries", too_many)
    assert response.status_code == 422
    assert response.json()["field"] == "entries"
    assert hub.size() == 0


def test_served_inclusion_proofs_verify_against_the_signed_checkpoint(hub: Hub) -> None:
    actors = [Identity.generate() for _ in range(7)]
    for actor in actors:
        hub.faucet(actor)
    checkpoint = hub.checkpoint()
    assert checkpoint.size == 7
    leaves = [base64.b64decode(e) for e in hub.get("/v1/ledger/entries", start=0, end=7)["entries"]]
    assert len(leaves) == 7
    for index, leaf in enumerate(leaves):
        body = hub.get("/v1/ledger/proof/inclusion", index=index, size=7)
        proof = [bytes.fromhex(h) for h in body["proof"]]
        verify_inclusion(leaf_hash(leaf), index, 7, proof, checkpoint.root)
    by_hash = hub.get("/v1/ledger/proof/inclusion", leaf_hash=leaf_hash(leaves[4]).hex(), size=7)
    assert by_hash["index"] == 4
    both = {"index": 1, "leaf_hash": leaf_hash(leaves[4]).hex(), "size": 7}
    response = hub.http.get("/v1/ledger/proof/inclusion", params=both)
    assert response.status_code == 422
    assert response.json()["field"] == "index"


def test_consistency_between_two_checkpoints_verifies(hub: Hub) -> None:
    for _ in range(3):
        hub.faucet(Identity.generate())
    old = hub.checkpoint()
    for _ in range(6):
        hub.faucet(Identity.generate())
    new = hub.checkpoint()
    body = hub.get("/v1/ledger/proof/consistency", size1=old.size, size2=new.size)
    proof = [bytes.fromhex(h) for h in body["proof"]]
    verify_consistency(old.size, new.size, old.root, new.root, proof)


def test_faucet_is_off_by_default(store: Store, tmp_path: Path) -> None:
    config = HubConfig(data_dir=tmp_path)
    clock = FakeClock()
    ctx = HubContext(config=config, store=store, blobs=MemoryBlobStore(), clock=clock)
    http = TestClient(create_app(ctx, reaper=False))
    response = http.post("/v1/ledger/faucet", auth=SignedAuth(Identity.generate(), clock=clock))
    assert response.status_code == 403, response.text


def test_a_hub_restarted_on_the_same_sqlite_file_rebuilds_the_same_balances(
    sqlite_url: str, tmp_path: Path
) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    first = SqlStore.open(sqlite_url)
    hub = _make_hub(first, tmp_path)
    hub.faucet(alice)
    hub.faucet(bob)
    hub.append(bob, [_transfer(alice, bob.actor_id, 700, seq=1)])
    before = (hub.account(alice.actor_id), hub.account(bob.actor_id), hub.checkpoint())
    first.close()
    second = SqlStore.open(sqlite_url)
    try:
        again = _make_hub(second, tmp_path)
        after = (again.account(alice.actor_id), again.account(bob.actor_id), again.checkpoint())
        assert after == before
        assert again.ctx.log is not None
        assert again.account(again.ctx.log.treasury)["last_seq"] == 2  # two faucet mints
    finally:
        second.close()


def test_a_hub_with_another_key_refuses_to_start_on_a_signed_ledger(
    sqlite_url: str, tmp_path: Path
) -> None:
    first = SqlStore.open(sqlite_url)
    try:
        LogService(first.ledger(), Identity.generate())
        with pytest.raises(ConfigError, match="share the hub key"):
            LogService(first.ledger(), Identity.generate())
    finally:
        first.close()


def test_hubs_sharing_a_database_and_key_append_after_each_other(sqlite_url: str) -> None:
    key, alice = Identity.generate(), Identity.generate()
    one, two = SqlStore.open(sqlite_url), SqlStore.open(sqlite_url)
    try:
        hub_one = LogService(one.ledger(), key)
        hub_two = LogService(_LosesFirstRace(two.ledger()), key)
        assert hub_one.mint(alice.actor_id, 100) == 0
        assert hub_two.account(alice.actor_id) == (100, 0, 0)
        # hub_two's first write is refused as stale: it replays the tail and tries once more.
        assert hub_two.mint(alice.actor_id, 50) == 1
        assert hub_one.account(alice.actor_id) == (150, 0, 0)
        assert hub_one.tree.root() == hub_two.tree.root()
    finally:
        one.close()
        two.close()


class _LosesFirstRace:
    """A LedgerStore whose first append fails as if another hub had appended just before."""

    def __init__(self, inner: LedgerStore) -> None:
        self._inner = inner
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def append(
        self,
        leaves: Sequence[bytes],
        nodes: Mapping[NodeKey, bytes],
        expected_size: int,
        unleased: Sequence[str] = (),
    ) -> None:
        if not self.lost:
            self.lost = True
            raise StaleWrite("lost the race")
        self._inner.append(leaves, nodes, expected_size, unleased)


@pytest.mark.parametrize("parallel", [False, True])
def test_a_hub_starting_on_a_log_with_a_forged_leaf_refuses_to_start(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    if parallel:  # as on a big log: signatures checked in worker processes
        monkeypatch.setattr(signatures, "PARALLEL_MIN_LEAVES", 2)
        monkeypatch.setattr(signatures.os, "cpu_count", lambda: 2)
    key = Identity.generate()
    store = SqlStore.open(sqlite_url)
    try:
        log = LogService(store.ledger(), key)
        for _ in range(6):
            log.mint(Identity.generate().actor_id, 5)
        assert LogService(store.ledger(), key).size == 6  # an honest log replays
        with store.engine.begin() as conn:  # a leaf's signature edited behind the hub's back
            leaf = conn.execute(sa.text("SELECT leaf FROM ledger_leaves WHERE idx = 4")).scalar()
            forged = leaf.replace(b'"signature":"', b'"signature":"AAAA', 1)[: len(leaf)]
            conn.execute(
                sa.text("UPDATE ledger_leaves SET leaf = :leaf WHERE idx = 4"), {"leaf": forged}
            )
        with pytest.raises(LumbungError, match="leaf 4"):
            LogService(store.ledger(), key)
    finally:
        store.close()
