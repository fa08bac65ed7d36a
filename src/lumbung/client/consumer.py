"""``lumbung.Client``: submit, plan, watch and collect jobs from Python.

from lumbung import Client
client = Client.connect("http://127.0.0.1:8600")
job = client.submit(parse_spec(open("sweep.yaml").read()), base_dir=Path("."))
done = client.wait(job.id, timeout_s=600)
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import time
from pathlib import Path

import httpx

from lumbung.client.ledger import LedgerClient
from lumbung.client.transport import HubTransport
from lumbung.config import ClientConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import Rejected, Unavailable
from lumbung.ids import new_id
from lumbung.ledger.entries import EscrowLock, SignedEntry, leaf_bytes
from lumbung.market.plan import escrow_micro
from lumbung.wire.api import JobSummary, JobView, LogLine, NodeView, Plan, Results, SubmitResponse
from lumbung.wire.spec import InputSpec, JobSpec

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class Client:
    """A consumer's signed session with a hub."""

    def __init__(
        self,
        hub_url: str,
        identity: Identity,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._hub = HubTransport(hub_url, identity, timeout_s=timeout_s, transport=transport)

    @classmethod
    def connect(cls, hub_url: str, config: ClientConfig | None = None) -> Client:
        """A client whose key lives in the config's data directory (created on first use)."""
        config = config or ClientConfig(hub_url=hub_url)
        identity = Identity.load_or_create(config.data_dir.expanduser())
        return cls(hub_url, identity, timeout_s=config.timeout_s)

    @property
    def actor_id(self) -> str:
        return self._hub.identity.actor_id

    @property
    def ledger(self) -> LedgerClient:
        """The hub's transparency log: checkpoints, entries, proofs, accounts."""
        return LedgerClient(self._hub)

    def submit(self, spec: JobSpec, base_dir: Path = Path(".")) -> SubmitResponse:
        """Upload the spec's local input files, then submit it with a signed escrow lock of its
        worst-case cost; the hub answers with the job and its plan.

        ``Rejected`` (field ``escrow.entry.amount``) if the balance cannot cover the lock.
        """
        uploaded = _resolve_inputs(spec, base_dir, self._hub.upload_file)
        lock = functools.partial(EscrowLock, job_id=new_id("job"), amount=escrow_micro(uploaded))
        spec_json = uploaded.model_dump(mode="json")

        def send(signed: SignedEntry) -> SubmitResponse:
            leaf = base64.b64encode(leaf_bytes(signed)).decode("ascii")
            body = {"spec": spec_json, "escrow": leaf}
            return SubmitResponse.model_validate(self._hub.call("POST", "/v1/jobs", json=body))

        return self.ledger.with_next_seq(lock, send, "escrow.entry.seq")

    def plan(self, spec: JobSpec, base_dir: Path = Path(".")) -> Plan:
        """A dry run: which nodes fit and what the job would cost. Uploads nothing."""
        hashed = _resolve_inputs(spec, base_dir, _hash_file)
        body = {"spec": hashed.model_dump(mode="json")}
        return Plan.model_validate(self._hub.call("POST", "/v1/jobs/plan", json=body))

    def get(self, job_id: str) -> JobView:
        return JobView.model_validate(self._hub.call("GET", f"/v1/jobs/{job_id}"))

    def list(self) -> builtins.list[JobSummary]:
        return [JobSummary.model_validate(j) for j in self._hub.call("GET", "/v1/jobs")]

    def nodes(self) -> builtins.list[NodeView]:
        return [NodeView.model_validate(n) for n in self._hub.call("GET", "/v1/nodes")]

    def logs(self, job_id: str, after_seq: int = 0) -> builtins.list[LogLine]:
        raw = self._hub.call("GET", f"/v1/jobs/{job_id}/logs", params={"after": after_seq})
        return [LogLine.model_validate(line) for line in raw]

    def results(self, job_id: str) -> Results:
        return Results.model_validate(self._hub.call("GET", f"/v1/jobs/{job_id}/results"))

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._hub.call("POST", f"/v1/jobs/{job_id}/cancel"))

    def download(self, sha256: str, dest: Path) -> None:
        """Fetch an artifact (an output, a checkpoint) into ``dest``, verified against its hash."""
        self._hub.download(sha256, dest)

    def wait(self, job_id: str, timeout_s: float = 3600.0, poll_s: float = 0.5) -> JobView:
        """Poll until the job ends; ``Unavailable`` if it has not ended within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.state in TERMINAL_STATES:
                return job
            if time.monotonic() >= deadline:
                raise Unavailable(f"job {job_id} still {job.state} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def close(self) -> None:
        self._hub.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_inputs(spec: JobSpec, base_dir: Path, to_hash: object) -> JobSpec:
    """Replace each local ``path`` input by the ``sha256`` that ``to_hash`` gives for the file."""
    resolved: list[InputSpec] = []
    for i, item in enumerate(spec.inputs):
        if item.path is None:
            resolved.append(item)
            continue
        path = (base_dir / item.path).expanduser()
        if not path.is_file():
            raise Rejected(f"input file {path} does not exist", field=f"inputs.{i}.path")
        sha256 = to_hash(path)  # type: ignore[operator]
        resolved.append(InputSpec(name=item.name, sha256=sha256))
    train = spec.train
    if train is not None and train.dataset.path is not None:
        path = (base_dir / train.dataset.path).expanduser()
        if not path.is_file():
            raise Rejected(f"dataset file {path} does not exist", field="train.dataset.path")
        dataset = train.dataset.model_copy(update={"path": None, "sha256": to_hash(path)})  # type: ignore[operator]
        train = train.model_copy(update={"dataset": dataset})
    return spec.model_copy(update={"inputs": resolved, "train": train})
