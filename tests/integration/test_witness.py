"""Witnesses against an in-process hub, on every store: cosign what extends, refuse what forks.

The witness talks to the hub through the real client transport, whose requests are handed to the
hub's ASGI app by a ``TestClient``: signing, routing and error mapping are all the real ones.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lumbung.cli import witness as witness_cli
from lumbung.cli.main import app
from lumbung.client import Client
from lumbung.client.audit import audit
from lumbung.client.ledger import LedgerClient
from lumbung.client.transport import HubTransport
from lumbung.config import ClientConfig, HubConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import Conflict, Forbidden, LumbungError, Unauthenticated
from lumbung.hub.app import create_app
from lumbung.hub.context import HubContext
from lumbung.ledger.checkpoint import cosign, require_witnesses, witnesses_that_signed
from lumbung.ledger.note import parse_note
from lumbung.ledger.witness_state import Fork, WitnessState, state_to_json
from lumbung.store.blobs import MemoryBlobStore
from lumbung.store.memory import MemoryStore
from lumbung.store.protocol import Store
from lumbung.witness import COSIGNATURES_PATH, Rollback, Witness, default_name, state_path

HUB_URL = "http://testserver"


@dataclass
class Hub:
    ctx: HubContext
    http: TestClient

    def transport(self, who: Identity) -> HubTransport:
        """A signed client session whose requests go to this in-process hub."""
        return HubTransport(HUB_URL, who, transport=self.mock_transport())

    def mock_transport(self) -> httpx.MockTransport:
        def forward(request: httpx.Request) -> httpx.Response:
            return self.http.request(
                request.method, str(request.url), headers=request.headers, content=request.content
            )

        return httpx.MockTransport(forward)

    def mint(self, count: int) -> None:
        assert self.ctx.log is not None
        for _ in range(count):
            self.ctx.log.mint(Identity.generate().actor_id, 1)

    def note(self) -> str:
        response = self.http.get("/v1/ledger/checkpoint")
        assert response.status_code == 200, response.text
        return response.text

    def accept(self, *witnesses: Witness) -> None:
        """Take cosignatures from these witnesses (HubConfig.witnesses, as hub serve --witness)."""
        vkeys = ",".join(w.vkey for w in witnesses)
        self.ctx.config = dataclasses.replace(self.ctx.config, witnesses=vkeys)


def _make_hub(store: Store, identity: Identity, tmp_path: Path) -> Hub:
    # The real clock: the client transport signs requests with it.
    config = HubConfig(data_dir=tmp_path)
    ctx = HubContext(config=config, store=store, blobs=MemoryBlobStore(), identity=identity)
    return Hub(ctx, TestClient(create_app(ctx, reaper=False)))


@pytest.fixture
def hub_key() -> Identity:
    return Identity.generate()


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    identity = Identity.generate()
    return Witness(identity=identity, data_dir=tmp_path / "witness", name=default_name(identity))


@pytest.fixture
def hub(store: Store, hub_key: Identity, witness: Witness, tmp_path: Path) -> Hub:
    made = _make_hub(store, hub_key, tmp_path / "hub")
    made.accept(witness)
    return made


def _keys(*witnesses: Witness) -> dict[str, bytes]:
    return {w.name: w.identity.public_key_raw for w in witnesses}


def test_witness_cosigns_the_first_checkpoint_then_a_consistent_extension(
    hub: Hub, witness: Witness
) -> None:
    hub.mint(3)
    first = witness.round(hub.transport(witness.identity))
    assert (first.size, hub.ctx.log is not None) == (3, True)
    require_witnesses(hub.note(), _keys(witness), 1)

    hub.mint(4)
    assert witnesses_that_signed(hub.note(), _keys(witness)) == []  # a new size, not yet cosigned
    second = witness.round(hub.transport(witness.identity))
    assert second.size == 7
    note = hub.note()
    require_witnesses(note, _keys(witness), 1)
    assert state_path(witness.data_dir, second.origin).read_text().strip() == state_to_json(second)


def test_the_hub_keeps_its_signature_first_and_one_line_per_witness(
    hub: Hub, witness: Witness, tmp_path: Path
) -> None:
    other_key = Identity.generate()
    other = Witness(other_key, tmp_path / "other", "second.witness")
    hub.accept(witness, other)
    hub.mint(2)
    for who in (witness, other, witness):  # the same witness twice: its newer line replaces it
        who.round(hub.transport(who.identity))
    _, lines = parse_note(hub.note())
    assert hub.ctx.log is not None
    assert [line.name for line in lines] == [hub.ctx.log.origin, other.name, witness.name]
    require_witnesses(hub.note(), _keys(witness, other), 2)


def test_a_forked_history_under_the_same_hub_key_is_refused_loudly_and_not_cosigned(
    hub: Hub, hub_key: Identity, witness: Witness, tmp_path: Path
) -> None:
    hub.mint(3)
    witness.round(hub.transport(witness.identity))
    fork = _make_hub(MemoryStore(), hub_key, tmp_path / "fork")  # same key, another history
    fork.mint(5)
    with pytest.raises(Fork, match="forked"):
        witness.round(fork.transport(witness.identity))
    assert witnesses_that_signed(fork.note(), _keys(witness)) == []
    # The fork is remembered: the witness refuses this log even where it looks consistent.
    hub.mint(2)
    with pytest.raises(Fork):
        witness.round(hub.transport(witness.identity))
    assert witnesses_that_signed(hub.note(), _keys(witness)) == []


def test_the_witness_command_prints_a_fork_on_stderr_and_exits_non_zero(
    hub: Hub, hub_key: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fork = _make_hub(MemoryStore(), hub_key, tmp_path / "fork")
    key = Identity.load_or_create(tmp_path / "w")  # the key the command below will use
    hub.accept(Witness(key, tmp_path / "w", default_name(key)))
    target = {"hub": hub}

    def transport(url: str, identity: Identity, timeout_s: float) -> HubTransport:
        return HubTransport(url, identity, transport=target["hub"].mock_transport())

    monkeypatch.setattr(witness_cli, "HubTransport", transport)
    args = ["witness", "--hub", HUB_URL, "--data-dir", str(tmp_path / "w"), "--once"]
    hub.mint(2)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "cosigned lumbung.hub/" in first.stdout
    assert "size 2" in first.stdout
    target["hub"] = fork
    fork.mint(4)
    forked = CliRunner().invoke(app, args)
    assert forked.exit_code == 1
    assert "FORK DETECTED" in forked.stderr


def test_the_watch_loop_cosigns_each_new_checkpoint_until_stopped(
    hub: Hub, witness: Witness
) -> None:
    stop = threading.Event()
    seen: list[WitnessState | LumbungError] = []

    def report(outcome: WitnessState | LumbungError) -> None:
        seen.append(outcome)
        if len(seen) < 3:
            hub.mint(len(seen))
        else:
            stop.set()

    witness.watch(hub.transport(witness.identity), 0.01, stop, report)
    assert [o.size if isinstance(o, WitnessState) else o for o in seen] == [0, 1, 3]
    require_witnesses(hub.note(), _keys(witness), 1)


def test_a_log_that_rolls_back_is_refused(hub: Hub, witness: Witness) -> None:
    hub.mint(2)
    state = witness.round(hub.transport(witness.identity))
    ahead = WitnessState(state.origin, state.size + 5, state.root)
    state_path(witness.data_dir, state.origin).write_text(state_to_json(ahead))
    with pytest.raises(Rollback, match="rolled back"):
        witness.round(hub.transport(witness.identity))


def test_a_cosignature_of_a_stale_checkpoint_is_refused_with_409(
    hub: Hub, witness: Witness
) -> None:
    hub.mint(1)
    stale = cosign(hub.note(), witness.name, witness.identity)
    hub.mint(1)
    with pytest.raises(Conflict, match="latest checkpoint") as caught:
        _post(hub, witness.identity, stale, witness.vkey)
    assert "HTTP 409" in caught.value.message
    assert witnesses_that_signed(hub.note(), _keys(witness)) == []


def test_a_cosignature_that_does_not_verify_is_refused(hub: Hub, witness: Witness) -> None:
    hub.mint(1)
    cosigned = cosign(hub.note(), witness.name, witness.identity)
    head, encoded = cosigned.rstrip("\n").rsplit(" ", 1)
    payload = bytearray(base64.b64decode(encoded))
    payload[-1] ^= 1  # one bit of the Ed25519 signature
    forged = f"{head} {base64.b64encode(bytes(payload)).decode()}\n"
    with pytest.raises(Unauthenticated) as caught:
        _post(hub, witness.identity, forged, witness.vkey)
    assert "HTTP 401" in caught.value.message
    # A valid line, but posted under someone else's request key: refused.
    with pytest.raises(Forbidden):
        _post(hub, Identity.generate(), cosigned, witness.vkey)
    assert witnesses_that_signed(hub.note(), _keys(witness)) == []
    _post(hub, witness.identity, cosigned, witness.vkey)  # the genuine one is taken
    assert witnesses_that_signed(hub.note(), _keys(witness)) == [witness.name]


def test_verify_with_min_witnesses_fails_without_the_witness_and_passes_with_it(
    hub: Hub, witness: Witness, tmp_path: Path
) -> None:
    hub.mint(3)
    client = Identity.generate()
    ledger = LedgerClient(hub.transport(client))
    with pytest.raises(Unauthenticated, match="0 of the 1 witness cosignatures"):
        audit(ledger, tmp_path / "client", _keys(witness), 1)
    witness.round(hub.transport(witness.identity))
    report = audit(ledger, tmp_path / "client", _keys(witness), 1)
    assert (report.size, report.witnesses) == (3, (witness.name,))


def test_ledger_verify_min_witnesses_fails_without_the_witness_and_passes_with_it(
    hub: Hub, witness: Witness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def connect(url: str, config: ClientConfig | None = None) -> Client:
        return Client(url, Identity.generate(), transport=hub.mock_transport())

    monkeypatch.setattr(Client, "connect", connect)
    args = ["ledger", "verify", "--hub", HUB_URL, "--data-dir", str(tmp_path / "client")]
    args += ["--witness", witness.vkey, "--min-witnesses", "1"]
    hub.mint(2)
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1
    assert "0 of the 1 witness cosignatures" in refused.stderr
    witness.round(hub.transport(witness.identity))
    verified = CliRunner().invoke(app, args)
    assert verified.exit_code == 0, verified.output
    assert f"witnesses 1 of 1 cosigned: {witness.name}" in verified.stdout


def _post(hub: Hub, who: Identity, note: str, vkey: str) -> None:
    hub.transport(who).call("POST", COSIGNATURES_PATH, json={"note": note, "vkey": vkey})
