"""Witnesses and the stored ledger's check against real processes on SQLite.

A real hub started with ``--witness VKEY`` takes that witness's cosignature (``lumbung witness
--once``) and refuses another's; ``lumbung ledger verify --min-witnesses 1`` then passes. And a hub
whose database was edited while it was stopped refuses to start, naming the leaf, exit code 1.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cluster, lumbung_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster_root(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, "")
    try:
        yield cluster
    finally:
        cluster.close()


def _flat(text: str) -> str:
    """The CLI's message with the terminal's line wrapping undone."""
    return " ".join(text.split())


def _vkey(cluster: Cluster, data_dir: str) -> str:
    done = lumbung_cli(cluster, "witness", "--print-vkey", data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_listed_witness_cosigns_a_real_hub_and_an_unlisted_one_is_refused(
    cluster_root: Cluster,
) -> None:
    cluster = cluster_root
    vkey = _vkey(cluster, "witness")
    cluster.start_hub(witnesses=(vkey,))
    cluster.client  # noqa: B018  (its first use takes the faucet's credits: a checkpoint of size 1)

    cosigned = lumbung_cli(cluster, "witness", "--once", data_dir="witness")
    assert cosigned.returncode == 0, cosigned.stdout + cosigned.stderr
    assert "cosigned lumbung.hub/" in cosigned.stdout
    assert "size 1" in cosigned.stdout
    stranger = lumbung_cli(cluster, "witness", "--once", data_dir="stranger")
    assert stranger.returncode == 1
    assert "not a witness this hub accepts" in _flat(stranger.stderr)
    verified = lumbung_cli(
        cluster, "ledger", "verify", "--witness", vkey, "--min-witnesses", "1", data_dir="auditor"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "witnesses 1 of 1 cosigned" in verified.stdout


def test_a_hub_whose_stored_tree_was_edited_while_stopped_refuses_to_start(
    cluster_root: Cluster,
) -> None:
    cluster = cluster_root
    cluster.start_hub()
    cluster.client  # noqa: B018  (a faucet mint: one leaf, one checkpoint)
    assert cluster.hub is not None
    cluster.hub.kill()
    with sqlite3.connect(cluster.root / "hub" / "hub.sqlite3") as db:
        db.execute("UPDATE ledger_nodes SET hash = ? WHERE level = 0 AND idx = 0", (b"\1" * 32,))
    argv = [sys.executable, "-m", "lumbung", "hub", "serve", "--port", "0"]
    argv += ["--data-dir", str(cluster.root / "hub")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: leaf 0 does not match the stored tree" in _flat(done.stderr)
    assert "Traceback" not in done.stderr
