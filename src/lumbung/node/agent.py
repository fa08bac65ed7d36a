"""The node's loops: register, heartbeat, claim and run tasks, drain on SIGTERM.

Three threads share one ``NodeSession``: the caller's (claims, then the drain), the heartbeat's, and
one per running task. The hub may restart at any moment; registration is idempotent, so after the
hub comes back (or says it has never heard of this node) the node simply registers again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType

from lumbung.client import NodeSession
from lumbung.config import NodeConfig
from lumbung.crypto.keys import Identity
from lumbung.errors import ConfigError, NotFound, Unavailable
from lumbung.node import uid_blocks
from lumbung.node.bwrap import SandboxPolicy, find_bwrap
from lumbung.node.inventory import collect_inventory
from lumbung.node.retry import Backoff
from lumbung.node.sandbox import ProcessRunner, Runner, probe_isolation
from lumbung.node.task_run import TaskRun
from lumbung.wire.api import (
    Assignment,
    HeartbeatRequest,
    Inventory,
    Isolation,
    NodeRegister,
    TaskRelease,
    TaskReport,
)

log = logging.getLogger(__name__)

_IDLE_TICK_S = 0.2


class NodeAgent:
    def __init__(
        self, config: NodeConfig, session: NodeSession, inventory: Inventory, runner: Runner
    ) -> None:
        self._config = config
        self._session = session
        self._inventory = inventory
        self._runner = runner
        self._runs: dict[str, TaskRun] = {}
        self._lock = threading.Lock()
        self._registered = False
        self._hub_down = False
        self._draining = False
        self._drained = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then drain: finish, checkpoint or release every task."""
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        claims = threading.Thread(target=self._claim_loop, args=(stop,), name="claim", daemon=True)
        heartbeat.start()
        claims.start()
        stop.wait()
        self._draining = True
        log.info("stopping: no new tasks; running ones have %.0f s to end", self._config.grace_s)
        self._heartbeat()  # tells the hub at once, which answers our waiting claim with nothing
        self._drain()
        # A claim in flight may still bring a task; the claim loop releases it at once.
        claims.join(self._config.claim_wait_s + 15.0)
        # Heartbeats went on during the drain, keeping the leases of tasks still saving their work.
        self._drained.set()
        heartbeat.join(self._config.heartbeat_s + 35.0)
        self._last_heartbeat()

    # --- registration ---------------------------------------------------------------------------

    def _ensure_registered(self) -> None:
        with self._lock:
            if self._registered:
                return
        registration = NodeRegister(
            name=self._config.name or socket.gethostname() or "node",
            inventory=self._inventory,
            price_micro_per_gpu_hour=self._config.price_micro_per_gpu_hour,
            price_micro_per_cpu_hour=self._config.price_micro_per_cpu_hour,
            slots=self._config.slots,
        )
        view = self._session.register(registration)
        with self._lock:
            self._registered = True
            self._hub_down = False
        log.info("registered with %s as %s (%s)", self._config.hub_url, view.name, view.id)

    def _lost_hub(self, exc: Exception) -> None:
        # The hub may come back with a fresh process (same store) or a fresh store: register again.
        with self._lock:
            self._registered = False
            first = not self._hub_down
            self._hub_down = True
        # One warning per outage, not one per retry.
        log.log(logging.WARNING if first else logging.DEBUG, "hub unavailable: %s", exc)

    # --- claims ---------------------------------------------------------------------------------

    def _claim_loop(self, stop: threading.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            self._reap()
            gpus = self._free_gpus()
            if self._free_slots() == 0:
                stop.wait(_IDLE_TICK_S)
                continue
            try:
                self._ensure_registered()
                assignment = self._session.claim(self._config.claim_wait_s)
            except Unavailable as exc:
                self._lost_hub(exc)
                stop.wait(backoff.delay_s(exc))
                continue
            except NotFound as exc:
                self._lost_hub(exc)
                continue
            backoff.reset()
            if assignment is None:
                continue
            if stop.is_set():
                self._give_back(assignment)
                continue
            self._start_run(assignment, gpus)

    def _start_run(self, assignment: Assignment, free_gpus: list[int]) -> None:
        wanted = assignment.resources.gpus
        if wanted > len(free_gpus):
            # The hub matched this node on its total GPUs while some are busy with other slots.
            self._give_back(assignment, f"node has only {len(free_gpus)} free GPUs of {wanted}")
            return
        run = TaskRun(
            assignment,
            config=self._config,
            session=self._session,
            runner=self._runner,
            inventory=self._inventory,
            gpu_indices=free_gpus[:wanted],
        )
        with self._lock:
            self._runs[assignment.task_id] = run
        log.info("task %s attempt %d started", assignment.task_id, assignment.attempt)
        run.start()

    def _give_back(self, assignment: Assignment, reason: str = "node draining") -> None:
        release = TaskRelease(attempt=assignment.attempt, runtime_s=0.0, reason=reason)
        try:
            self._session.release(assignment.task_id, release)
        except Exception as exc:  # the lease will expire at the hub instead
            log.warning("could not release task %s: %s", assignment.task_id, exc)

    def _reap(self) -> None:
        with self._lock:
            for task_id in [t for t, run in self._runs.items() if run.done()]:
                del self._runs[task_id]

    def _active(self) -> list[TaskRun]:
        with self._lock:
            return [run for run in self._runs.values() if not run.done()]

    def _free_slots(self) -> int:
        return max(0, self._config.slots - len(self._active()))

    def _free_gpus(self) -> list[int]:
        busy = {i for run in self._active() for i in run.gpu_indices}
        return [i for i in range(len(self._inventory.gpus)) if i not in busy]

    # --- heartbeats -----------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._drained.wait(self._config.heartbeat_s):
            self._heartbeat()

    def _heartbeat(self) -> None:
        runs = self._active()
        reports = [
            TaskReport(task_id=r.task_id, attempt=r.attempt, progress=r.progress()) for r in runs
        ]
        request = HeartbeatRequest(
            tasks=reports,
            free_slots=self._free_slots(),
            draining=self._draining,
        )
        try:
            self._ensure_registered()
            response = self._session.heartbeat(request)
        except (Unavailable, NotFound) as exc:
            self._lost_hub(exc)
            return
        by_id = {r.task_id: r for r in runs}
        for task_id in response.cancel:
            if task_id in by_id:
                log.info("task %s cancelled by the hub", task_id)
                by_id[task_id].cancel()

    def _last_heartbeat(self) -> None:
        try:
            self._session.heartbeat(HeartbeatRequest(tasks=[], free_slots=0, draining=True))
        except Exception as exc:
            log.warning("last heartbeat not sent: %s", exc)

    # --- drain ----------------------------------------------------------------------------------

    def _drain(self) -> None:
        deadline = time.monotonic() + self._config.grace_s
        for run in self._active():
            run.join(max(0.0, deadline - time.monotonic()))
        left = self._active()
        for run in left:
            log.info("task %s: grace period over, checkpointing and releasing", run.task_id)
            run.begin_drain(self._config.grace_s)
        for run in left:
            run.join(self._config.grace_s + 90.0)


def run_node(config: NodeConfig) -> int:
    """Run a provider node until SIGTERM or SIGINT; 0 after a clean drain."""
    _configure_logging()
    identity = Identity.load_or_create(config.data_dir)
    uids = _task_uids(config)
    try:
        runner, isolation = _make_runner(config, uids.base)
        inventory = collect_inventory(config, isolation)
        session = NodeSession(config.hub_url, identity)
        stop = threading.Event()
        _install_signal_handlers(stop)
        _print_start_line(config, identity.actor_id, inventory)
        try:
            NodeAgent(config, session, inventory, runner).run(stop)
        finally:
            session.close()
    finally:
        uids.release()
    return 0


def _task_uids(config: NodeConfig) -> uid_blocks.UidBlock:
    """The uids a root node runs its tasks as: the configured ones, or a block of its own."""
    if config.task_uid_base:
        return uid_blocks.UidBlock(config.task_uid_base, None)
    if os.geteuid() != 0:  # tasks run as this user: the uids are unused
        return uid_blocks.UidBlock(uid_blocks.FIRST_UID, None)
    return uid_blocks.claim(config.data_dir)


def _make_runner(
    config: NodeConfig, task_uid_base: int = uid_blocks.FIRST_UID
) -> tuple[Runner, Isolation]:
    if config.runner == "process":
        policy = SandboxPolicy(
            max_processes=config.task_max_processes,
            task_uid_base=task_uid_base,
            slots=config.slots,
        )
        sandbox, why_not = find_bwrap(policy, config.data_dir)
        if sandbox is not None:
            return sandbox, sandbox.isolation
        if not config.allow_unsandboxed:
            raise ConfigError(
                f"refusing to run tasks without a sandbox: {why_not}. Install bubblewrap, or "
                "pass --allow-unsandboxed to run them as plain processes that can read what "
                "this user can (isolation level 'process')",
                field="allow_unsandboxed",
            )
        isolation = probe_isolation(why_not)
        return ProcessRunner(isolation), isolation
    if config.runner == "container":
        from lumbung.node.container import ContainerRunner

        container = ContainerRunner()
        return container, container.isolation
    raise ConfigError(
        f"unknown runner {config.runner!r}: use 'process' or 'container'", field="runner"
    )


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _print_start_line(config: NodeConfig, node_id: str, inventory: Inventory) -> None:
    isolation = inventory.isolation
    if isolation.level == "sandbox":
        network = "isolation: sandbox"
    else:
        network = "WARNING: isolation: process: " + "; ".join(isolation.notes)
    gpus = ", ".join(g.model for g in inventory.gpus) or "no GPUs"
    print(
        f"lumbung node {node_id} -> {config.hub_url} | {config.slots} slot(s), "
        f"{inventory.cpus} CPUs, {gpus} | {config.price_micro_per_gpu_hour} micro/GPU-h, "
        f"{config.price_micro_per_cpu_hour} micro/CPU-h | runner {isolation.runner}, {network}",
        file=sys.stderr,
        flush=True,
    )
