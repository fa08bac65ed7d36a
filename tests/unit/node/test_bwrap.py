"""The bubblewrap sandbox, attacked by its own task: every way out the attack on issue 7 found."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lumbung.node.bwrap import BwrapRunner, SandboxPolicy
from lumbung.node.sandbox import SandboxSpec, scrubbed_env

MIB = 1024 * 1024
POSTGRES_SOCKET = Path("/var/run/postgresql/.s.PGSQL.5432")


def _node_layout(root: Path) -> Path:
    """A node's data directory beside a hub's, with another task's files: the task's neighbours."""
    (root / "node" / "tasks" / "other-1").mkdir(parents=True)
    (root / "node" / "key.pem").write_text("NODE PRIVATE KEY")
    (root / "node" / "tasks" / "other-1" / "secret.txt").write_text("OTHER TASK'S DATA")
    (root / "hub").mkdir()
    (root / "hub" / "key.pem").write_text("HUB PRIVATE KEY")
    workdir = root / "node" / "tasks" / "mine-1"
    (workdir / "tmp").mkdir(parents=True)
    return workdir


def _spec(workdir: Path, argv: list[str], **overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "argv": argv,
        "workdir": workdir,
        "env": scrubbed_env({}, workdir),
        "network": False,
        "cpus": 1,
        "memory_bytes": None,
        "disk_bytes": None,
        "max_runtime_s": 60,
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


def _python(runner: BwrapRunner, workdir: Path, code: str, **overrides: object) -> tuple[int, str]:
    process = runner.start(_spec(workdir, ["python", "-c", textwrap.dedent(code)], **overrides))
    try:
        code_ = process.wait(60)
        out = process.stdout.read().decode() + process.stderr.read().decode()
    finally:
        process.kill_group()
        process.stdout.close()
        process.stderr.close()
    assert code_ is not None
    return code_, out


def test_the_task_cannot_read_the_node_key_the_hub_key_or_another_task(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    hub_key = tmp_path / "hub" / "key.pem"
    code, out = _python(
        sandbox_runner,
        workdir,
        f"""
        import os
        for path in ("../../key.pem", "../other-1/secret.txt", {str(hub_key)!r}):
            try:
                print("READ", open(path).read())
            except OSError as exc:
                print("refused", type(exc).__name__)
        print("neighbours", sorted(os.listdir("..")))
        """,
    )
    assert code == 0, out
    assert "PRIVATE KEY" not in out
    assert "OTHER TASK" not in out
    assert out.count("refused FileNotFoundError") == 3
    assert "neighbours ['mine-1']" in out


def test_without_network_the_task_reaches_no_host_socket(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code, out = _python(
            sandbox_runner,
            workdir,
            f"""
            import socket, subprocess
            for family, address in ((socket.AF_UNIX, {str(POSTGRES_SOCKET)!r}),
                                    (socket.AF_INET, ("127.0.0.1", {port}))):
                try:
                    socket.socket(family).connect(address)
                    print("CONNECTED", address)
                except OSError as exc:
                    print("refused", type(exc).__name__)
            psql = subprocess.run(["psql", "-h", "/var/run/postgresql", "-U", "postgres",
                                   "-c", "select 1"], capture_output=True)
            print("psql exit", psql.returncode)
            """,
        )
    assert code == 0, out
    assert "CONNECTED" not in out
    assert out.count("refused") == 2
    assert "psql exit 0" not in out


def test_with_network_the_task_reaches_the_host_loopback(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    # What `network: true` means, and what the threat model warns providers of.
    workdir = _node_layout(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code, out = _python(
            sandbox_runner,
            workdir,
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); "
            "print('connected')",
            network=True,
        )
    assert (code, out.strip()) == (0, "connected")


def test_the_task_sees_only_its_own_processes_and_none_of_the_nodes_environment(
    sandbox_runner: BwrapRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUMBUNG_NODE_SECRET", "hunter2")
    workdir = _node_layout(tmp_path)
    code, out = _python(
        sandbox_runner,
        workdir,
        f"""
        import os
        print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
        print("node visible", os.path.exists("/proc/{os.getpid()}/environ") and {os.getpid()} > 2)
        for pid in (1, 2):
            try:
                print("environ", open(f"/proc/{{pid}}/environ").read())
            except OSError as exc:
                print("refused", type(exc).__name__)
        """,
    )
    assert code == 0, out
    assert "hunter2" not in out
    assert "node visible False" in out
    assert "pids [1, 2]" in out  # bubblewrap's init and the task itself


def test_the_task_has_no_capabilities_and_is_not_root(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    code, out = _python(
        sandbox_runner,
        workdir,
        """
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print("CapEff", status["CapEff"].strip(), "NoNewPrivs", status["NoNewPrivs"].strip())
        print("uids", os.getresuid())
        for path in ("/evil", "/usr/evil", "inputs-or-not/../../evil"):
            try:
                open(path, "w")
                print("WROTE", path)
            except OSError as exc:
                print("refused", type(exc).__name__)
        """,
    )
    assert code == 0, out
    assert "CapEff 0000000000000000 NoNewPrivs 1" in out
    assert "WROTE" not in out
    if os.geteuid() == 0:
        # A root node's task runs as an unprivileged uid of its own, not as root.
        assert f"uids ({sandbox_runner.policy.task_uid_base}," in out


def test_forking_past_the_process_limit_fails(sandbox_runner: BwrapRunner, tmp_path: Path) -> None:
    workdir = _node_layout(tmp_path)
    strict = BwrapRunner(
        sandbox_runner.bwrap, SandboxPolicy(max_processes=32), sandbox_runner.runtime
    )
    code, out = _python(
        strict,
        workdir,
        """
        import os, time
        forked = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            forked += 1
        print("forked", forked)
        """,
    )
    assert code == 0, out
    forked = int(out.split("forked")[1].split()[0])
    assert 0 < forked < 32


def test_a_file_over_the_disk_budget_cannot_be_written(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    code, _ = _python(
        sandbox_runner, workdir, "open('big', 'wb').write(b'x' * (4 * 1024 * 1024))", disk_bytes=MIB
    )
    assert code != 0
    assert (workdir / "big").stat().st_size <= MIB


def _running(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in argv and state != "Z":
                found.append(int(entry))
    return found


def _gone(marker: str, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _running(marker):
            return True
        time.sleep(0.05)
    return False


def test_a_child_that_escapes_by_setsid_dies_with_its_task(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    marker = "317.25"
    process = sandbox_runner.start(
        _spec(workdir, ["sh", "-c", f"setsid sleep {marker} & sleep 0.5; echo started"])
    )
    assert process.wait(30) == 0
    assert process.stdout.read() == b"started\n"
    process.stdout.close()
    process.stderr.close()
    assert _gone(marker)


def test_no_task_process_survives_its_node_killed_with_sigkill(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    marker = "318.5"
    node = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from lumbung.node.bwrap import find_bwrap, SandboxPolicy
        from lumbung.node.sandbox import SandboxSpec, scrubbed_env
        runner, why = find_bwrap(SandboxPolicy(), Path({str(tmp_path / "node")!r}))
        workdir = Path({str(workdir)!r})
        spec = SandboxSpec(argv=["sh", "-c", "sleep {marker} & setsid sleep {marker} & wait"],
                           workdir=workdir, env=scrubbed_env({{}}, workdir), network=False,
                           cpus=1, memory_bytes=None, disk_bytes=None, max_runtime_s=600)
        runner.start(spec)
        print("started", flush=True)
        time.sleep(600)
        """
    )
    popen = subprocess.Popen(
        [sys.executable, "-c", node], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert popen.stdout is not None
        assert popen.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 10
        while len(_running(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_running(marker)) == 2
        popen.send_signal(signal.SIGKILL)
        popen.wait(10)
        assert _gone(marker)
    finally:
        if popen.poll() is None:
            popen.kill()
        if popen.stdout is not None:
            popen.stdout.close()


def test_terminate_gives_the_task_its_sigterm_then_kills_what_is_left(
    sandbox_runner: BwrapRunner, tmp_path: Path
) -> None:
    workdir = _node_layout(tmp_path)
    script = "trap 'echo saving; exit 7' TERM; sleep 100 & wait"
    process = sandbox_runner.start(_spec(workdir, ["sh", "-c", script]))
    time.sleep(0.5)
    process.terminate_group(grace_s=5)
    assert process.poll() == 7
    assert process.stdout.read() == b"saving\n"
    process.stdout.close()
    process.stderr.close()


def test_a_data_directory_inside_the_runtime_is_refused(tmp_path: Path) -> None:
    from lumbung.errors import ConfigError
    from lumbung.node.bwrap import runtime_paths

    with pytest.raises(ConfigError, match="data directory"):
        runtime_paths(Path(sys.prefix) / "node-data")
