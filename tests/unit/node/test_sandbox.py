"""The process sandbox: process groups, scrubbed environment, resource limits, no network."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lumbung.node.sandbox import (
    ProcessRunner,
    RunningProcess,
    SandboxSpec,
    probe_isolation,
    scrubbed_env,
)
from lumbung.wire.api import Isolation

ISOLATION = probe_isolation()
MIB = 1024 * 1024


def _spec(workdir: Path, argv: list[str], **overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "argv": argv,
        "workdir": workdir,
        "env": scrubbed_env({}, workdir),
        "network": True,
        "cpus": 1,
        "memory_bytes": None,
        "disk_bytes": None,
        "max_runtime_s": 60,
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


def _run(runner: ProcessRunner, spec: SandboxSpec) -> tuple[int | None, str, str]:
    process = runner.start(spec)
    code = process.wait(30)
    try:
        return code, process.stdout.read().decode(), process.stderr.read().decode()
    finally:
        _close(process)


def _close(process: RunningProcess) -> None:
    process.stdout.close()
    process.stderr.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its parent


def _wait_gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


@pytest.fixture
def runner() -> ProcessRunner:
    return ProcessRunner(ISOLATION)


@pytest.fixture
def started(runner: ProcessRunner, tmp_path: Path) -> Iterator[list[RunningProcess]]:
    processes: list[RunningProcess] = []
    yield processes
    for p in processes:
        p.kill_group()
        _close(p)


def test_task_leads_its_own_process_group(
    runner: ProcessRunner, tmp_path: Path, started: list[RunningProcess]
) -> None:
    process = runner.start(_spec(tmp_path, ["sleep", "100"]))
    started.append(process)
    assert os.getpgid(process.pid) == process.pid
    assert os.getpgid(process.pid) != os.getpgid(0)


def test_killing_the_group_kills_grandchildren(
    runner: ProcessRunner, tmp_path: Path, started: list[RunningProcess]
) -> None:
    process = runner.start(_spec(tmp_path, ["sh", "-c", "sleep 100 & sleep 100"]))
    started.append(process)
    deadline = time.monotonic() + 5
    while len(_group_members(process.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = _group_members(process.pid)
    assert len(members) == 3  # sh and its two sleeps

    process.kill_group()

    assert _wait_gone(members)


def test_terminate_group_gives_the_task_a_chance_then_kills(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    # The shell ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    process = runner.start(_spec(tmp_path, ["sh", "-c", "trap '' TERM; sleep 100 & wait"]))
    time.sleep(0.3)
    members = _group_members(process.pid)
    started_at = time.monotonic()
    process.terminate_group(grace_s=0.5)
    _close(process)
    assert time.monotonic() - started_at >= 0.5
    assert _wait_gone(members)


def test_node_secrets_do_not_reach_the_task(
    runner: ProcessRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUMBUNG_TEST_SECRET", "hunter2")
    env = scrubbed_env({"TASK_VAR": "visible"}, tmp_path)
    code, out, _ = _run(runner, _spec(tmp_path, ["env"], env=env))
    assert code == 0
    assert "hunter2" not in out
    assert "TASK_VAR=visible" in out
    assert f"HOME={tmp_path}" in out


def test_python_in_a_command_is_the_nodes_interpreter(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    code, out, _ = _run(
        runner, _spec(tmp_path, ["python", "-c", "import sys; print(sys.executable)"])
    )
    assert code == 0
    assert os.path.dirname(out.strip()) == os.path.dirname(sys.executable)


def test_memory_limit_makes_a_big_allocation_fail(runner: ProcessRunner, tmp_path: Path) -> None:
    allocate = "b = bytearray(2 * 1024 ** 3); print('allocated')"
    code, out, err = _run(
        runner, _spec(tmp_path, ["python", "-c", allocate], memory_bytes=512 * MIB)
    )
    assert code != 0
    assert "MemoryError" in err
    assert "allocated" not in out


def test_core_files_are_disabled(runner: ProcessRunner, tmp_path: Path) -> None:
    show = "import resource; print(resource.getrlimit(resource.RLIMIT_CORE))"
    code, out, _ = _run(runner, _spec(tmp_path, ["python", "-c", show]))
    assert code == 0
    assert out.strip() == "(0, 0)"


def test_file_size_limit_stops_a_large_write(runner: ProcessRunner, tmp_path: Path) -> None:
    write = "open('big', 'wb').write(b'x' * (4 * 1024 * 1024))"
    code, _, _ = _run(runner, _spec(tmp_path, ["python", "-c", write], disk_bytes=1 * MIB))
    assert code != 0
    assert (tmp_path / "big").stat().st_size <= 1 * MIB


def test_probe_reports_a_reason_when_there_is_no_network_isolation() -> None:
    isolation = probe_isolation()
    if isolation.network == "netns":
        assert not any("share the host network" in n for n in isolation.notes)
    else:
        assert any(
            "tasks share the host network: unshare unavailable" in n for n in isolation.notes
        )


@pytest.mark.skipif(ISOLATION.network != "netns", reason="no network namespaces on this machine")
@pytest.mark.parametrize("network", [False, True])
def test_task_without_network_cannot_connect(
    runner: ProcessRunner, tmp_path: Path, network: bool
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        connect = (
            "import socket; "
            f"socket.create_connection(('127.0.0.1', {port}), timeout=2); print('ok')"
        )
        code, out, _ = _run(runner, _spec(tmp_path, ["python", "-c", connect], network=network))
    assert (code == 0 and out.strip() == "ok") is network


def test_without_isolation_the_argv_is_run_as_given(tmp_path: Path) -> None:
    runner = ProcessRunner(Isolation(network="none", notes=["test"]))
    code, out, _ = _run(runner, _spec(tmp_path, ["echo", "plain"], network=False))
    assert (code, out) == (0, "plain\n")
