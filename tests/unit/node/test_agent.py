"""The node's loops against an in-memory stand-in for the hub's session."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

from test_task_run import FakeSession, _assignment

from lumbung.client import NodeSession
from lumbung.config import NodeConfig
from lumbung.errors import Unavailable
from lumbung.node.agent import NodeAgent
from lumbung.node.sandbox import ProcessRunner, probe_isolation
from lumbung.wire.api import (
    Assignment,
    HeartbeatRequest,
    HeartbeatResponse,
    Inventory,
    NodeRegister,
    NodeView,
)


class FakeHub(FakeSession):
    def __init__(self, assignments: list[Assignment]) -> None:
        super().__init__()
        self.queue = list(assignments)
        self.registrations: list[NodeRegister] = []
        self.heartbeats: list[HeartbeatRequest] = []
        self.cancel: list[str] = []
        self.claim_failures = 0

    def register(self, registration: NodeRegister) -> NodeView:
        self.registrations.append(registration)
        return NodeView(
            id="ak_x",
            name=registration.name,
            inventory=registration.inventory,
            price_micro_per_gpu_hour=0,
            price_micro_per_cpu_hour=0,
            slots=registration.slots,
            online=True,
            reliability=1.0,
            last_heartbeat_at=None,
        )

    def claim(self, wait_s: float) -> Assignment | None:
        if self.claim_failures:
            self.claim_failures -= 1
            raise Unavailable("hub restarting")
        if self.queue:
            return self.queue.pop(0)
        time.sleep(wait_s)
        return None

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        self.heartbeats.append(request)
        return HeartbeatResponse(renewed=[], cancel=self.cancel, lease_timeout_s=15.0)


def _agent(tmp_path: Path, hub: FakeHub, **config: Any) -> tuple[threading.Event, threading.Thread]:
    settings: dict[str, Any] = {"heartbeat_s": 0.1, "claim_wait_s": 0.1, "grace_s": 0.5}
    settings.update(config)
    agent = NodeAgent(
        NodeConfig(data_dir=tmp_path, name="test-node", **settings),
        cast(NodeSession, hub),
        Inventory(cpus=2, memory_mib=1024, disk_free_mib=1024),
        ProcessRunner(probe_isolation()),
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    return stop, thread


def _until(condition: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_node_registers_runs_a_claimed_task_and_drains_on_stop(tmp_path: Path) -> None:
    hub = FakeHub([_assignment(command=["echo", "hi"])])
    stop, thread = _agent(tmp_path, hub)
    assert _until(lambda: hub.completed)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert hub.registrations[0].name == "test-node"
    assert hub.completed[0].error is None
    assert hub.heartbeats[-1].draining is True


def test_node_registers_again_after_the_hub_was_unavailable(tmp_path: Path) -> None:
    hub = FakeHub([_assignment(command=["true"])])
    hub.claim_failures = 1
    stop, thread = _agent(tmp_path, hub)
    assert _until(lambda: hub.completed)
    stop.set()
    thread.join(30)
    assert len(hub.registrations) >= 2


def test_task_still_running_after_the_grace_period_is_released(tmp_path: Path) -> None:
    hub = FakeHub([_assignment(command=["sleep", "100"])])
    stop, thread = _agent(tmp_path, hub)
    assert _until(lambda: any(h.tasks for h in hub.heartbeats))
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert [r.reason for r in hub.released] == ["node draining"]
    assert hub.completed == []


def test_heartbeat_cancel_stops_the_task(tmp_path: Path) -> None:
    task = _assignment(command=["sleep", "100"])
    hub = FakeHub([task])
    stop, thread = _agent(tmp_path, hub)
    assert _until(lambda: any(h.tasks for h in hub.heartbeats))
    hub.cancel = [task.task_id]
    assert _until(lambda: hub.heartbeats[-1].free_slots == 1 and not hub.heartbeats[-1].tasks)
    stop.set()
    thread.join(30)
    assert (hub.completed, hub.released) == ([], [])
