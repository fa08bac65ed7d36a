"""The provider node's signed session with the hub: register, heartbeat, claim, report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from lumbung.client.transport import HubTransport
from lumbung.crypto.keys import Identity
from lumbung.wire.api import (
    Assignment,
    CheckpointReport,
    ClaimResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    LogChunk,
    NodeRegister,
    NodeView,
    ResultCommitmentReport,
    ResumeFailed,
    RoundInfo,
    RoundUpdateReport,
    TaskComplete,
    TaskRelease,
)
from lumbung.wire.commitment import ExecutionClass, signed_bytes

# Extra seconds on top of a long-poll's wait before the HTTP request itself gives up.
_CLAIM_SLACK_S = 10.0


class NodeSession:
    def __init__(
        self,
        hub_url: str,
        identity: Identity,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._hub = HubTransport(hub_url, identity, timeout_s=timeout_s, transport=transport)

    @property
    def node_id(self) -> str:
        return self._hub.identity.actor_id

    def register(self, registration: NodeRegister) -> NodeView:
        raw = self._hub.call(
            "POST", "/v1/nodes/register", json=registration.model_dump(mode="json")
        )
        return NodeView.model_validate(raw)

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        raw = self._hub.call("POST", "/v1/nodes/heartbeat", json=request.model_dump(mode="json"))
        return HeartbeatResponse.model_validate(raw)

    def claim(self, wait_s: float) -> Assignment | None:
        """Long-poll for a task; None when the hub had nothing for this node within ``wait_s``."""
        raw = self._hub.call(
            "POST", "/v1/tasks/claim", json={"wait_s": wait_s}, timeout_s=wait_s + _CLAIM_SLACK_S
        )
        return ClaimResponse.model_validate(raw).assignment

    def send_logs(self, task_id: str, chunk: LogChunk) -> None:
        self._hub.call("POST", f"/v1/tasks/{task_id}/logs", json=chunk.model_dump(mode="json"))

    def report_checkpoint(self, task_id: str, report: CheckpointReport) -> None:
        self._hub.call(
            "POST", f"/v1/tasks/{task_id}/checkpoints", json=report.model_dump(mode="json")
        )

    def resume_failed(self, task_id: str, report: ResumeFailed) -> None:
        """Tell the hub which checkpoints did not restore and which one the task resumed from."""
        self._hub.call(
            "POST", f"/v1/tasks/{task_id}/resume-failed", json=report.model_dump(mode="json")
        )

    def commit(self, body: Mapping[str, Any]) -> ResultCommitmentReport:
        """Sign a result commitment's body (``lumbung.wire.commitment.commitment_body``) with
        the node's key."""
        identity = self._hub.identity
        return ResultCommitmentReport(
            execution_class=ExecutionClass.model_validate(body["execution_class"]),
            public_key=identity.public_key_raw.hex(),
            signature=identity.sign(signed_bytes(body)).hex(),
        )

    def complete(self, task_id: str, result: TaskComplete) -> None:
        self._hub.call("POST", f"/v1/tasks/{task_id}/complete", json=result.model_dump(mode="json"))

    def release(self, task_id: str, release: TaskRelease) -> None:
        self._hub.call("POST", f"/v1/tasks/{task_id}/release", json=release.model_dump(mode="json"))

    def round_info(self, task_id: str, attempt: int) -> RoundInfo:
        """What the worker of a train task should do now (train, wait, or finish)."""
        raw = self._hub.call("GET", f"/v1/tasks/{task_id}/round", params={"attempt": attempt})
        return RoundInfo.model_validate(raw)

    def send_update(self, task_id: str, round_index: int, report: RoundUpdateReport) -> None:
        path = f"/v1/tasks/{task_id}/rounds/{round_index}/update"
        self._hub.call("POST", path, json=report.model_dump(mode="json"))

    def upload_bytes(self, data: bytes) -> str:
        return self._hub.upload_bytes(data)

    def upload_file(self, path: Path) -> str:
        return self._hub.upload_file(path)

    def download(self, sha256: str, dest: Path) -> None:
        self._hub.download(sha256, dest)

    def close(self) -> None:
        self._hub.close()
