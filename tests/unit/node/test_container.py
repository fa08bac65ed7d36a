"""The container runner: its command line, and a clean refusal when no engine answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lumbung.errors import Unavailable
from lumbung.node.container import ContainerRunner, container_command
from lumbung.node.sandbox import SandboxSpec, scrubbed_env


def _engine_answers() -> bool:
    for engine in ("docker", "podman"):
        try:
            if subprocess.run([engine, "info"], capture_output=True, timeout=10).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            continue
    return False


def _spec(workdir: Path, **overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "argv": [sys.executable, "-m", "lumbung.node.entry", "job:main"],
        "workdir": workdir,
        "env": scrubbed_env(
            {"LUMBUNG_CHECKPOINT_DIR": str(workdir / "checkpoint"), "API_TOKEN": "s3cret"},
            workdir,
        ),
        "network": False,
        "cpus": 2,
        "memory_bytes": 2**30,
        "disk_bytes": None,
        "max_runtime_s": 60,
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


def test_missing_engine_is_refused_with_a_clear_reason() -> None:
    with pytest.raises(Unavailable, match="needs a running Docker or Podman engine"):
        ContainerRunner(engine="no-such-container-engine")


def test_command_line_isolates_the_task_and_hides_its_secrets(tmp_path: Path) -> None:
    argv, cli_env = container_command("docker", "python:3.11-slim", _spec(tmp_path), "lumbung-x")
    line = " ".join(argv)
    for flag in ("--network none", "--memory 1073741824", "--cpus 2", "--pids-limit 512"):
        assert flag in line
    assert "--ulimit core=0" in line
    assert "--read-only" in line
    assert f"{tmp_path}:/work" in line
    assert argv[-3:] == ["python", "/opt/lumbung/lumbung/node/entry.py", "job:main"]
    assert "s3cret" not in line  # passed through the CLI's environment, not its argv
    assert cli_env["API_TOKEN"] == "s3cret"
    assert cli_env["LUMBUNG_CHECKPOINT_DIR"] == "/work/checkpoint"
    # HOME is one the CLI needs itself, so the task's value travels in the argv.
    assert "-e HOME=/work" in line


def test_task_with_network_gets_no_network_flag(tmp_path: Path) -> None:
    argv, _ = container_command("docker", "img", _spec(tmp_path, network=True), "n")
    assert "--network" not in argv


def test_gpu_task_is_given_only_its_devices(tmp_path: Path) -> None:
    env = scrubbed_env({"CUDA_VISIBLE_DEVICES": "2,3"}, tmp_path)
    argv, cli_env = container_command("docker", "img", _spec(tmp_path, env=env), "n")
    assert argv[argv.index("--gpus") + 1] == '"device=2,3"'
    assert cli_env["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.skipif(not _engine_answers(), reason="no Docker or Podman engine answers here")
def test_engine_runs_a_task_in_a_container(tmp_path: Path) -> None:
    runner = ContainerRunner()
    spec = _spec(tmp_path, argv=["sh", "-c", "echo inside; pwd"], network=False)
    process = runner.start(spec)
    code = process.wait(300)
    out = process.stdout.read().decode()
    process.stdout.close()
    process.stderr.close()
    assert code == 0
    assert out == "inside\n/work\n"
