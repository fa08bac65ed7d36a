"""A hub in-process (Starlette's TestClient over the ASGI app) and signed actors that call it.

A fake clock drives leases and signatures, so expiry is tested without sleeping. Consumers fund
their escrow from the treasury (the hub's key) directly, as a real hub's operator would.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

from lumbung.client.auth import SignedAuth
from lumbung.config import HubConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import LumbungError
from lumbung.hub.app import create_app
from lumbung.hub.context import HubContext
from lumbung.ids import new_id
from lumbung.ledger.entries import EscrowLock, leaf_bytes, sign_entry
from lumbung.market.plan import escrow_micro
from lumbung.store.blobs import MemoryBlobStore
from lumbung.store.protocol import Store
from lumbung.wire.spec import validate_spec

LEASE_S = 10.0
BACKGROUND_WAIT_S = 60.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Actor:
    identity: Identity
    http: TestClient
    clock: FakeClock
    ctx: HubContext

    def escrow(self, body: dict[str, Any], *, fund: bool = True) -> str:
        """The signed escrow lock of ``body``'s worst case, funded by the treasury first."""
        try:
            amount = escrow_micro(validate_spec(body))
        except LumbungError:
            amount = 1  # a spec the hub must refuse for itself
        log = self.ctx.log
        assert log is not None
        balance, _, last_seq = log.account(self.id)
        if fund and balance < amount:
            log.mint(self.id, amount - balance)
        lock = EscrowLock(
            author=self.id,
            seq=last_seq + 1,
            at=int(self.clock() * 1000),
            job_id=new_id("job"),
            amount=amount,
        )
        return base64.b64encode(leaf_bytes(sign_entry(lock, self.identity))).decode()

    def submit(self, body: dict[str, Any], expect: int = 201) -> Any:
        return self.call("POST", "/v1/jobs", {"spec": body, "escrow": self.escrow(body)}, expect)

    @property
    def id(self) -> str:
        return self.identity.actor_id

    def call(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        response = self.http.request(
            method, path, json=json, auth=SignedAuth(self.identity, clock=self.clock)
        )
        # What the request left to the background (a round to close) is done before the test
        # looks: in-process tests read the hub's state right after each request.
        assert self.ctx.background.wait_idle(BACKGROUND_WAIT_S), "background work is stuck"
        assert response.status_code == expect, response.text
        return response.json() if response.content else None

    def upload(self, data: bytes, expect: int = 201) -> str:
        sha = hashlib.sha256(data).hexdigest()
        response = self.http.put(
            f"/v1/blobs/{sha}",
            content=data,
            headers={"x-lumbung-streamed": "1"},
            auth=SignedAuth(self.identity, clock=self.clock),
        )
        assert response.status_code == expect, response.text
        return sha


@dataclass
class Hub:
    ctx: HubContext
    http: TestClient
    clock: FakeClock

    def actor(self) -> Actor:
        return Actor(Identity.generate(), self.http, self.clock, self.ctx)

    def node(
        self, name: str, price_cpu: int = 10_000, cpus: int = 4, kinds: tuple[str, ...] = ("run",)
    ) -> Actor:
        node = self.actor()
        node.call(
            "POST",
            "/v1/nodes/register",
            {
                "name": name,
                "inventory": {
                    "cpus": cpus,
                    "memory_mib": 8192,
                    "disk_free_mib": 50_000,
                    "kinds": list(kinds),
                },
                "price_micro_per_gpu_hour": 0,
                "price_micro_per_cpu_hour": price_cpu,
                "slots": 1,
            },
        )
        return node


def make_hub(store: Store, tmp_path: Any, **config_fields: Any) -> Hub:
    clock = FakeClock()
    config = HubConfig(
        data_dir=tmp_path, lease_timeout_s=LEASE_S, cheaper_node_grace_s=2.0, **config_fields
    )
    ctx = HubContext(config=config, store=store, blobs=MemoryBlobStore(), clock=clock)
    return Hub(ctx, TestClient(create_app(ctx, reaper=False)), clock)


def claim(node: Actor) -> dict[str, Any] | None:
    result: dict[str, Any] | None = node.call("POST", "/v1/tasks/claim", {"wait_s": 0})[
        "assignment"
    ]
    return result


def archive(content: bytes = b"state", name: str = "state.bin") -> bytes:
    """A checkpoint as a node packs one: a tar.gz of its checkpoint directory (here one file),
    the same bytes for the same content."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def run_for(node: Actor, task_id: str, runtime_s: float) -> None:
    """The node has held the task's lease for ``runtime_s``: the hub's clock moves on to then
    (never back), so an honest report of that runtime is kept whole."""
    started = node.ctx.store.get_task(task_id).started_at
    assert started is not None
    node.clock.now = max(node.clock.now, started + runtime_s)
