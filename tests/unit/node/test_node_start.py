"""A node starts sandboxed, refuses to start unsandboxed, unless its provider says so."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lumbung.cli.main import app
from lumbung.config import NodeConfig
from lumbung.errors import ConfigError
from lumbung.node import uid_blocks
from lumbung.node.agent import _make_runner
from lumbung.node.sandbox import ProcessRunner


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without bubblewrap on its PATH."""
    monkeypatch.setattr("lumbung.node.bwrap.shutil.which", lambda name: None)


def test_a_node_without_bubblewrap_refuses_to_start(tmp_path: Path, no_bwrap: None) -> None:
    with pytest.raises(ConfigError, match="--allow-unsandboxed") as caught:
        _make_runner(NodeConfig(data_dir=tmp_path))
    assert "bubblewrap is not installed" in caught.value.message


def test_the_cli_says_why_and_exits_non_zero(tmp_path: Path, no_bwrap: None) -> None:
    result = CliRunner().invoke(
        app, ["node", "start", "--hub", "http://127.0.0.1:9", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "refusing to run tasks without a sandbox" in result.output
    assert "Traceback" not in result.output


def test_allowed_to_run_unsandboxed_it_reports_the_process_level(
    tmp_path: Path, no_bwrap: None
) -> None:
    runner, isolation = _make_runner(NodeConfig(data_dir=tmp_path, allow_unsandboxed=True))
    assert isinstance(runner, ProcessRunner)
    assert isolation.level == "process"
    assert any("bubblewrap is not installed" in note for note in isolation.notes)


def test_with_bubblewrap_the_node_reports_the_sandbox_level(
    tmp_path: Path, sandbox_runner: Any
) -> None:
    _, isolation = _make_runner(NodeConfig(data_dir=tmp_path, allow_unsandboxed=True))
    assert isolation.level == "sandbox"
    assert isolation.network == "netns"


def test_nodes_on_one_machine_run_their_tasks_as_different_uids(tmp_path: Path) -> None:
    # Eight data directories, two of them hashing to the same block: each node still gets a block
    # of its own, and a block comes free when its node stops.
    dirs = [tmp_path / f"node-{i}" for i in range(8)]
    first = uid_blocks.hashed_block(dirs[0])
    twin = next(
        tmp_path / f"twin-{n}"
        for n in itertools.count()
        if uid_blocks.hashed_block(tmp_path / f"twin-{n}") == first
    )
    locks = tmp_path / "locks"
    held = [uid_blocks.claim(d, locks) for d in [*dirs, twin]]
    bases = [block.base for block in held]
    assert len(set(bases)) == len(bases)
    assert all(b >= 200_000 and (b - 200_000) % 512 == 0 for b in bases)
    held[0].release()
    again = uid_blocks.claim(dirs[0], locks)
    assert again.base == bases[0]  # a restarted node gets its old uids back
    for block in [again, *held[1:]]:
        block.release()


def test_a_block_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from lumbung.node import uid_blocks; "
            f"b = uid_blocks.claim(Path({str(tmp_path / 'node')!r}), Path({str(locks)!r})); "
            "print(b.base, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        mine = uid_blocks.claim(tmp_path / "node", locks)
        assert mine.base != theirs
        mine.release()
    finally:
        holder.kill()
        holder.communicate()
    freed = uid_blocks.claim(tmp_path / "node", locks)
    assert freed.base == theirs
    freed.release()


def test_without_a_lock_directory_the_hashed_block_is_used(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    block = uid_blocks.claim(tmp_path / "node", blocked / "locks")
    assert block.base == uid_blocks.base_of(uid_blocks.hashed_block(tmp_path / "node"))
    assert block.lock is None
