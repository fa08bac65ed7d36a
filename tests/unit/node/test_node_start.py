"""A node starts sandboxed, refuses to start unsandboxed, unless its provider says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lumbung.cli.main import app
from lumbung.config import NodeConfig
from lumbung.errors import ConfigError
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
    from lumbung.node.bwrap import derived_uid_base

    # Fixed paths, not tmp_path: bases are a hash of the path into 2,048 blocks, and eight random
    # paths collide in about 1.4% of runs (seen twice in one day of running this suite).
    bases = {derived_uid_base(Path(f"/var/lib/lumbung/node-{i}")) for i in range(8)}
    assert len(bases) == 8
    assert all(base >= 200_000 and (base - 200_000) % 512 == 0 for base in bases)
    assert derived_uid_base(tmp_path / "node-0") == derived_uid_base(tmp_path / "node-0")
