"""The ledger against a real hub process: faucet, a transfer, and ``lumbung ledger verify``.

The auditor runs as the real CLI in a subprocess. Tampering with one stored leaf in the hub's
SQLite file (the hub then serves the altered bytes) must make the audit fail.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FAUCET_MICRO, Cluster, lumbung_cli
from lumbung.crypto.keys import Identity
from lumbung.ledger.entries import Transfer, sign_entry

pytestmark = pytest.mark.e2e

AT_MS = 1_800_000_000_000


@pytest.fixture
def faucet_hub(tmp_path: Path) -> Iterator[Cluster]:
    """A hub on SQLite whose faucet is on (the test cluster's hub always has one)."""
    cluster = Cluster(tmp_path, "")
    try:
        cluster.start_hub()
        yield cluster
    finally:
        cluster.close()


def _lumbung(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return lumbung_cli(cluster, *args, data_dir="auditor")


def test_verify_passes_on_an_honest_log_and_fails_after_a_leaf_is_tampered(
    faucet_hub: Cluster,
) -> None:
    client = faucet_hub.client  # its first use took the faucet's credits: entry 0
    payee = Identity.generate().actor_id
    me = Identity.load_or_create(faucet_hub.root / "client")  # the key faucet_hub.client signs with
    transfer = Transfer(author=me.actor_id, seq=1, at=AT_MS, to=payee, amount=1_250_000)
    assert client.ledger.append([sign_entry(transfer, me)]) == [1]
    assert client.ledger.account(client.actor_id).balance == FAUCET_MICRO - 1_250_000

    first = _lumbung(faucet_hub, "ledger", "verify")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "entries   2" in first.stdout
    assert "ledger verified" in first.stdout
    again = _lumbung(faucet_hub, "ledger", "verify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "extends   the last verified head of size 2" in again.stdout
    proof = _lumbung(faucet_hub, "ledger", "proof", "1")
    assert proof.returncode == 0, proof.stderr
    assert "inclusion proof verified" in proof.stdout
    shown = _lumbung(faucet_hub, "account", payee)
    assert shown.returncode == 0, shown.stderr
    assert "1.250000 credits" in shown.stdout

    with sqlite3.connect(faucet_hub.root / "hub" / "hub.sqlite3") as db:
        (leaf,) = db.execute("SELECT leaf FROM ledger_leaves WHERE idx = 1").fetchone()
        tampered = leaf.replace(b'"amount":1250000', b'"amount":1250001')
        assert tampered != leaf
        db.execute("UPDATE ledger_leaves SET leaf = ? WHERE idx = 1", (tampered,))
    failed = _lumbung(faucet_hub, "ledger", "verify")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "leaf 1" in failed.stderr
    assert "signature" in failed.stderr
