"""No free spam: what an actor with keys but no standing can no longer write into the hub.

The adversary here is a spamming actor: throwaway witness keys filling the checkpoint's signature
lines, unfunded keys appending entries of the reserved kinds (15 KB each, kept and replayed for
ever), funded ones draining accounts or appending faster than anyone needs, and query parameters
too big for the database. Each is refused with the status and field the API promises, and a
legitimate caller (a listed witness, a funded consumer, a client that waits out a 429) still gets
through. The limiter's clock is a fake, so buckets refill only when a test says so.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lumbung.cli.main import app
from lumbung.client.auth import SignedAuth
from lumbung.client.ledger import LedgerClient
from lumbung.client.transport import RATE_LIMIT_RETRIES, HubTransport
from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import ConfigError, Forbidden, RateLimited, Unavailable
from lumbung.hub import cosign
from lumbung.hub.app import create_app
from lumbung.hub.context import HubContext
from lumbung.hub.ledger import LogService
from lumbung.hub.rate_limits import RateLimits
from lumbung.ledger.checkpoint import cosign as cosign_note
from lumbung.ledger.checkpoint import witnesses_that_signed
from lumbung.ledger.entries import (
    MAX_BODY_BYTES,
    MAX_LEAF_BYTES,
    RESERVED_KINDS,
    DatasetRegistration,
    Entry,
    Grant,
    ResultCommitment,
    Revocation,
    SignedEntry,
    Stake,
    Transfer,
    Unstake,
    leaf_bytes,
    sign_entry,
)
from lumbung.ledger.note import MAX_SIGNATURES, parse_note
from lumbung.store.blobs import MemoryBlobStore
from lumbung.store.memory import MemoryStore
from lumbung.store.protocol import Store
from lumbung.witness import COSIGNATURES_PATH, Witness, default_name

FAUCET_MICRO = 1_000_000
AT_MS = 1_800_000_000_000
HUB_URL = "http://testserver"
RESERVED = (DatasetRegistration, Grant, Revocation)


class Monotonic:
    """The rate limiter's clock, moved only by the test (or the client's waiting, below)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Hub:
    """A hub in-process on the real clock (the client transport signs with it)."""

    ctx: HubContext
    http: TestClient
    limiter_clock: Monotonic

    def call(self, who: Identity, method: str, path: str, json: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=json, auth=SignedAuth(who))

    def append(self, who: Identity, entries: list[SignedEntry]) -> httpx.Response:
        encoded = [base64.b64encode(leaf_bytes(e)).decode() for e in entries]
        return self.call(who, "POST", "/v1/ledger/entries", {"entries": encoded})

    def faucet(self, who: Identity) -> None:
        response = self.call(who, "POST", "/v1/ledger/faucet")
        assert response.status_code == 200, response.text

    def size(self) -> int:
        return self.ctx.store.ledger().ledger_size()

    def transport(self, who: Identity) -> HubTransport:
        """The real client transport, its requests handed to this in-process hub."""

        def forward(request: httpx.Request) -> httpx.Response:
            return self.http.request(
                request.method, str(request.url), headers=request.headers, content=request.content
            )

        return HubTransport(HUB_URL, who, transport=httpx.MockTransport(forward))

    def note(self) -> str:
        response = self.http.get("/v1/ledger/checkpoint")
        assert response.status_code == 200, response.text
        return response.text


def make_hub(store: Store, tmp_path: Path, **config: Any) -> Hub:
    fields: dict[str, Any] = {"data_dir": tmp_path, "faucet_micro": FAUCET_MICRO, **config}
    limiter_clock = Monotonic()
    ctx = HubContext(
        config=HubConfig(**fields),
        store=store,
        blobs=MemoryBlobStore(),
        rate_limits=RateLimits(clock=limiter_clock),
    )
    return Hub(ctx, TestClient(create_app(ctx, reaper=False)), limiter_clock)


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Hub:
    return make_hub(store, tmp_path)


def _signed(entry: Entry, author: Identity) -> SignedEntry:
    return sign_entry(entry, author)


def _transfer(payer: Identity, seq: int, amount: int, to: str | None = None) -> SignedEntry:
    to = to or Identity.generate().actor_id
    entry = Transfer(author=payer.actor_id, seq=seq, at=AT_MS, to=to, amount=amount)
    return _signed(entry, payer)


def _reserved(cls: type, author: Identity, seq: int, body_bytes: int = 100) -> SignedEntry:
    body = {"data": "x" * body_bytes}
    return _signed(cls(author=author.actor_id, seq=seq, at=AT_MS, body=body), author)


def _refused(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body.get("field") == field, body
    return body


# --- witnesses ----------------------------------------------------------------------------------


def _witness(tmp_path: Path, name: str) -> Witness:
    identity = Identity.generate()
    return Witness(identity, tmp_path / name, default_name(identity))


def test_a_cosignature_from_a_key_the_hub_does_not_list_is_refused_with_403_naming_vkey(
    hub: Hub, tmp_path: Path
) -> None:
    listed, stranger = _witness(tmp_path, "listed"), _witness(tmp_path, "stranger")
    hub.ctx.config = dataclasses.replace(hub.ctx.config, witnesses=listed.vkey)
    hub.ctx.log.mint(Identity.generate().actor_id, 1)  # type: ignore[union-attr]
    before = hub.note()
    with pytest.raises(Forbidden, match="not a witness this hub accepts") as caught:
        stranger.round(hub.transport(stranger.identity))
    assert caught.value.field == "vkey"
    assert "HTTP 403" in caught.value.message
    assert hub.note() == before


def test_a_hub_that_lists_no_witness_takes_no_cosignature(hub: Hub, tmp_path: Path) -> None:
    witness = _witness(tmp_path, "w")
    with pytest.raises(Forbidden):
        witness.round(hub.transport(witness.identity))
    assert len(parse_note(hub.note())[1]) == 1  # the hub's own signature only


def test_a_listed_witness_is_accepted_after_many_throwaway_keys_tried(
    hub: Hub, tmp_path: Path
) -> None:
    listed, other = _witness(tmp_path, "listed"), _witness(tmp_path, "other")
    hub.ctx.config = dataclasses.replace(
        hub.ctx.config, witnesses=f"{listed.vkey}, {other.vkey}"
    )  # comma and space: both separate keys
    hub.ctx.log.mint(Identity.generate().actor_id, 1)  # type: ignore[union-attr]
    for number in range(MAX_SIGNATURES):  # enough to fill every signature line the note has
        throwaway = _witness(tmp_path, f"t{number}")
        note = cosign_note(hub.note(), throwaway.name, throwaway.identity)
        body = {"note": note, "vkey": throwaway.vkey}
        _refused(hub.call(throwaway.identity, "POST", COSIGNATURES_PATH, body), 403, "vkey")
    listed.round(hub.transport(listed.identity))
    other.round(hub.transport(other.identity))
    keys = {w.name: w.identity.public_key_raw for w in (listed, other)}
    assert sorted(witnesses_that_signed(hub.note(), keys)) == sorted(keys)
    assert len(parse_note(hub.note())[1]) == 3  # the hub's line and the two listed


def test_lines_of_unlisted_keys_already_in_the_stored_note_are_dropped_at_the_next_merge(
    hub: Hub, tmp_path: Path
) -> None:
    # A hub from before the allowlist: throwaway cosignatures already fill its stored note.
    log = hub.ctx.log
    assert log is not None
    log.mint(Identity.generate().actor_id, 1)
    size, note = log.store.latest_checkpoint()
    for number in range(10):
        junk = Identity.generate()
        note = cosign_note(note, f"junk{number}", junk)
    log.store.put_checkpoint(size, note)
    listed = _witness(tmp_path, "listed")
    hub.ctx.config = dataclasses.replace(hub.ctx.config, witnesses=listed.vkey)
    listed.round(hub.transport(listed.identity))
    names = [line.name for line in parse_note(hub.note())[1]]
    assert names == [log.origin, listed.name]


def test_a_witness_list_that_is_not_verifier_keys_fails_naming_witnesses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        cosign.accepted_witnesses("lumbung.witness/x+00000000+AAAA")
    assert caught.value.field == "witnesses"
    result = CliRunner().invoke(
        app, ["hub", "serve", "--data-dir", str(tmp_path), "--port", "0", "--witness", "nope"]
    )
    assert result.exit_code == 1
    assert "witnesses" in result.stderr
    assert "Traceback" not in result.output


def test_hub_serve_takes_each_witness_flag_into_the_config() -> None:
    from lumbung.config import load

    one, two = (Witness(Identity.generate(), Path("."), f"w{i}").vkey for i in (1, 2))
    config = load(HubConfig, env={}, overrides={"witnesses": ",".join([one, two])})
    assert len(cosign.accepted_witnesses(config.witnesses)) == 2


# --- reserved kinds, funded authors, sizes ------------------------------------------------------


@pytest.mark.parametrize("cls", RESERVED, ids=lambda cls: cls.kind.value)
def test_entries_of_a_reserved_kind_are_refused_naming_the_kind(hub: Hub, cls: type) -> None:
    alice = Identity.generate()
    hub.faucet(alice)
    size = hub.size()
    body = _refused(hub.append(alice, [_reserved(cls, alice, 1)]), 422, "entries.0.entry.kind")
    assert "reserved for a later issue" in body["message"]
    batch = [_transfer(alice, 1, 5), _reserved(cls, alice, 2)]
    _refused(hub.append(alice, batch), 422, "entries.1.entry.kind")
    assert hub.size() == size
    assert {cls.kind for cls in RESERVED} == RESERVED_KINDS


def test_a_result_commitment_is_refused_from_anyone_but_the_hub(hub: Hub) -> None:
    # A provider forging "the node committed to X" records, or flooding them: only the hub
    # appends them, from a completion report it checked.
    alice = Identity.generate()
    hub.faucet(alice)
    size = hub.size()
    body = _refused(
        hub.append(alice, [_reserved(ResultCommitment, alice, 1)]), 422, "entries.0.entry.kind"
    )
    assert "completion report" in body["message"]
    assert hub.size() == size


def test_an_unfunded_actor_cannot_append_a_thousand_reserved_entries(hub: Hub) -> None:
    spammer = Identity.generate()
    # The attack that worked: 1,000 entries of 15 KB each, by a key that holds nothing, in
    # requests of 100 (each under the 4 MiB request limit).
    for first in range(1, 1001, 100):
        batch = [
            _reserved(DatasetRegistration, spammer, seq, 15_000)
            for seq in range(first, first + 100)
        ]
        _refused(hub.append(spammer, batch), 422, "entries.0.entry.kind")
    assert hub.size() == 0


def test_an_unfunded_actor_can_append_no_kind_at_all(hub: Hub) -> None:
    nobody = Identity.generate()
    for entry, field in (
        (_transfer(nobody, 1, 1), "entries.0.entry.amount"),
        (_signed(Stake(author=nobody.actor_id, seq=1, at=AT_MS, amount=1), nobody), None),
        (_signed(Unstake(author=nobody.actor_id, seq=1, at=AT_MS, amount=1), nobody), None),
    ):
        response = hub.append(nobody, [entry])
        assert response.status_code == 422, response.text
        assert field is None or response.json()["field"] == field
    assert hub.size() == 0


def test_an_author_must_hold_money_after_its_entries_but_real_flows_pass(hub: Hub) -> None:
    consumer, node = Identity.generate(), Identity.generate()
    hub.faucet(consumer)
    hub.faucet(node)
    # Emptying an account through the API is the one flow refused.
    drained = hub.append(consumer, [_transfer(consumer, 1, FAUCET_MICRO)])
    body = _refused(drained, 422, "entries.0.entry.author")
    assert "only funded accounts append" in body["message"]
    # A consumer's first transfer after the faucet, and a node staking all it has, pass.
    assert hub.append(consumer, [_transfer(consumer, 1, FAUCET_MICRO - 1)]).status_code == 200
    stake = _signed(Stake(author=node.actor_id, seq=1, at=AT_MS, amount=FAUCET_MICRO), node)
    assert hub.append(node, [stake]).status_code == 200
    unstake = _signed(Unstake(author=node.actor_id, seq=2, at=AT_MS, amount=FAUCET_MICRO), node)
    assert hub.append(node, [unstake]).status_code == 200


def test_a_hub_replaying_an_old_log_with_reserved_entries_still_starts(tmp_path: Path) -> None:
    store, key, author = MemoryStore(), Identity.generate(), Identity.generate()
    log = LogService(store.ledger(), key)
    log.mint(author.actor_id, 10)
    # Written before the API refused them: straight through the log, as an old hub did.
    log.append([_reserved(cls, author, seq) for seq, cls in enumerate(RESERVED, start=1)])
    again = LogService(store.ledger(), key)
    assert again.size == 1 + len(RESERVED)
    assert again.account(author.actor_id) == (10, 0, len(RESERVED))


def test_a_leaf_or_body_over_its_size_limit_is_refused_at_the_api(
    store: Store, tmp_path: Path
) -> None:
    hub = make_hub(store, tmp_path, max_body_bytes=200_000)
    alice = Identity.generate()
    hub.faucet(alice)
    size = hub.size()
    # The constructor refuses such a body, so the leaf is made by hand (the signature is never
    # reached: the body's size is checked first).
    small = leaf_bytes(_reserved(Grant, alice, 1, 10))
    oversized = small.replace(b"x" * 10, b"x" * (MAX_BODY_BYTES + 1))
    response = hub.call(
        alice, "POST", "/v1/ledger/entries", {"entries": [base64.b64encode(oversized).decode()]}
    )
    _refused(response, 413, "entries.0.entry.body")
    too_big_leaf = base64.b64encode(b"{" + b" " * MAX_LEAF_BYTES + b"}").decode()
    response = hub.call(alice, "POST", "/v1/ledger/entries", {"entries": [too_big_leaf]})
    _refused(response, 413, "entries.0")
    body = {"entries": [too_big_leaf] * 3}  # about 260 KB: over this hub's request limit
    _refused(hub.call(alice, "POST", "/v1/ledger/entries", body), 413, "body")
    assert hub.size() == size


# --- rate limits --------------------------------------------------------------------------------


def test_a_burst_of_writes_over_the_limit_gets_429_with_retry_after(
    store: Store, tmp_path: Path
) -> None:
    hub = make_hub(store, tmp_path, write_rate_per_s=0.5, write_burst=3)
    spammer = Identity.generate()
    for _ in range(3):
        hub.faucet(spammer)
    response = hub.call(spammer, "POST", "/v1/ledger/faucet")
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "2"  # one token at 0.5 a second
    body = response.json()
    assert body["error"] == "RateLimited"
    assert "at most 0.5 a second" in body["message"]
    assert hub.size() == 3
    # Other actors are not slowed by one actor's burst.
    hub.faucet(Identity.generate())
    hub.limiter_clock.now += 2.0
    hub.faucet(spammer)


def test_uploads_and_job_submits_share_the_write_limit(store: Store, tmp_path: Path) -> None:
    hub = make_hub(store, tmp_path, write_rate_per_s=1, write_burst=2)
    actor = Identity.generate()
    for data in (b"one", b"two"):
        path = f"/v1/blobs/{hashlib.sha256(data).hexdigest()}"
        response = hub.http.put(
            path, content=data, headers={"x-lumbung-streamed": "1"}, auth=SignedAuth(actor)
        )
        assert response.status_code == 201, response.text
    submit = hub.call(actor, "POST", "/v1/jobs", {"spec": {}, "escrow": ""})
    assert submit.status_code == 429, submit.text
    hub.limiter_clock.now += 1.0
    assert hub.call(actor, "POST", "/v1/jobs", {"spec": {}, "escrow": ""}).status_code == 422


def test_entries_are_limited_per_author_whoever_signs_the_request(
    store: Store, tmp_path: Path
) -> None:
    hub = make_hub(store, tmp_path, entry_rate_per_s=1, entry_burst=5)
    alice = Identity.generate()
    hub.faucet(alice)
    assert hub.append(alice, [_transfer(alice, seq, 1) for seq in (1, 2, 3, 4)]).status_code == 200
    # Fresh request keys are free; the author's bucket is what counts.
    response = hub.append(Identity.generate(), [_transfer(alice, seq, 1) for seq in (5, 6)])
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    hub.limiter_clock.now += 1.0
    assert hub.append(Identity.generate(), [_transfer(alice, 5, 1)]).status_code == 200


def test_the_client_waits_out_a_429_and_retries(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = make_hub(store, tmp_path, write_rate_per_s=0.25, write_burst=1)
    waited: list[float] = []

    def sleep(seconds: float) -> None:  # the client's wait, moving the limiter's clock
        waited.append(seconds)
        hub.limiter_clock.now += seconds

    monkeypatch.setattr("lumbung.client.transport.time.sleep", sleep)
    ledger = LedgerClient(hub.transport(Identity.generate()))
    ledger.faucet()
    ledger.faucet()  # refused once with Retry-After: 4, then taken
    assert waited == [4.0]
    assert hub.size() == 2


def test_a_client_still_refused_after_its_retries_raises_rate_limited_an_unavailable(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = make_hub(store, tmp_path, write_rate_per_s=0.1, write_burst=1)
    waited: list[float] = []
    monkeypatch.setattr("lumbung.client.transport.time.sleep", waited.append)  # time stands still
    transport = hub.transport(Identity.generate())
    transport.call("POST", "/v1/ledger/faucet")
    with pytest.raises(RateLimited) as caught:
        transport.call("POST", "/v1/ledger/faucet")
    assert isinstance(caught.value, Unavailable)  # what nodes and the CLI already retry
    assert caught.value.retry_after_s == 10.0
    assert "HTTP 429" in caught.value.message
    assert waited == [10.0] * RATE_LIMIT_RETRIES


def test_cosignatures_are_rate_limited_too(store: Store, tmp_path: Path) -> None:
    hub = make_hub(store, tmp_path, write_rate_per_s=1, write_burst=1)
    witness = _witness(tmp_path, "w")
    hub.ctx.config = dataclasses.replace(hub.ctx.config, witnesses=witness.vkey)
    transport = hub.transport(witness.identity)
    note = cosign_note(hub.note(), witness.name, witness.identity)
    transport.call("POST", COSIGNATURES_PATH, json={"note": note, "vkey": witness.vkey})
    response = hub.call(
        witness.identity, "POST", COSIGNATURES_PATH, {"note": note, "vkey": witness.vkey}
    )
    assert response.status_code == 429


# --- query parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/ledger/entries", {"start": 10**20, "end": 10**20}, "query.start"),
        ("/v1/ledger/entries", {"start": 0, "end": 2**63}, "query.end"),
        ("/v1/ledger/proof/inclusion", {"size": 10**20, "index": 0}, "query.size"),
        ("/v1/ledger/proof/inclusion", {"size": 1, "index": 2**64}, "query.index"),
        ("/v1/ledger/proof/consistency", {"size1": 1, "size2": 10**20}, "query.size2"),
        ("/v1/ledger/proof/consistency", {"size1": 2**70, "size2": 1}, "query.size1"),
    ],
)
def test_integer_query_parameters_beyond_64_bits_are_refused_naming_them(
    hub: Hub, path: str, params: dict[str, int], field: str
) -> None:
    response = hub.http.get(path, params=params)
    _refused(response, 422, field)
