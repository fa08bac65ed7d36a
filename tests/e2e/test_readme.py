"""The README's commands and Python example, run as written against real processes.

Blocks marked ``<!-- readme-test: NAME -->`` are executed: shell lines ending in ``&`` start a
background process (the test waits until the hub listens or the node is online), the others must
exit 0. Only the port is changed, to a free one, so parallel runs cannot collide.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def readme_block(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, dict[str, str], int]:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # the client's key goes to ~/.lumbung/client
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "120",
        # The README's client commands use the default hub URL; only its port differs here.
        "LUMBUNG_CLIENT_HUB_URL": f"http://127.0.0.1:{port}",
    }
    return tmp_path, env, port


def _wait_ready(line: str, port: int, cwd: Path, env: dict[str, str]) -> None:
    if " hub serve" in line:
        wait_for(lambda: _get(port, "/v1/health"), 60, "the hub to listen")
    if " node start" in line:
        wait_for(lambda: _node_online(port, cwd, env), 60, "the node to come online")


def _node_online(port: int, cwd: Path, env: dict[str, str]) -> bool:
    argv = [str(BIN / "lumbung"), "nodes", "--json", "--hub", f"http://127.0.0.1:{port}"]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and any(n["online"] for n in json.loads(done.stdout))


def _get(port: int, path: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(
    "block",
    ["by-hand", pytest.param("train", marks=pytest.mark.xdist_group("training")), "witness"],
)
def test_readme_shell_blocks_run_as_written(
    workdir: tuple[Path, dict[str, str], int], block: str
) -> None:
    cwd, env, port = workdir
    background: list[subprocess.Popen[bytes]] = []
    try:
        for line in readme_block(block).strip().splitlines():
            line = line.replace("8600", str(port))
            if line.endswith("&"):
                with (cwd / f"bg{len(background)}.log").open("wb") as log:
                    background.append(
                        subprocess.Popen(  # noqa: S602 - the README's own shell lines, run as written
                            line.rstrip("& "),
                            shell=True,
                            cwd=cwd,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                _wait_ready(line, port, cwd, env)
                continue
            done = subprocess.run(  # noqa: S602 - the README's own shell lines, run as written
                line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=240
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if line.startswith("lumbung job list"):
                assert "primes" in done.stdout
                assert "succeeded" in done.stdout
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in background:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_readme_python_example_runs_as_written(
    workdir: tuple[Path, dict[str, str], int],
) -> None:
    cwd, env, port = workdir
    hub = subprocess.Popen(
        [
            *(str(BIN / "lumbung"), "hub", "serve", "--data-dir", "hub", "--port", str(port)),
            *("--faucet-micro", "100000000"),
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    node = None
    try:
        wait_for(lambda: _get(port, "/v1/health"), 60, "the hub to listen")
        node = subprocess.Popen(
            [
                str(BIN / "lumbung"),
                "node",
                "start",
                "--hub",
                f"http://127.0.0.1:{port}",
                "--data-dir",
                "node",
                "--heartbeat-s",
                "0.5",
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: _node_online(port, cwd, env), 60, "the node to come online")
        code = readme_block("python").replace("8600", str(port))
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        assert "1 of 1 nodes fit" in done.stdout
        assert "succeeded" in done.stdout
    finally:
        for proc in (node, hub):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
