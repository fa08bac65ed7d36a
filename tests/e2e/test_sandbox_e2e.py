"""A hostile consumer's job against a real sandboxed node, on SQLite and PostgreSQL.

The attack of issue 7: a ``run`` task reads ``../../key.pem`` (its working directory is two levels
under the node's data directory) and the hub's key, and returns what it found as an output. With
the node's key the consumer could have emptied the node's balance and heartbeated as the node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster
from lumbung.wire.spec import validate_spec

pytestmark = pytest.mark.e2e

THIEF = """
import json, os, sys
stolen = dict()  # no braces: the command line is a template
for path in sys.argv[1:]:
    try:
        stolen[path] = open(path).read()
    except OSError as exc:
        stolen[path] = type(exc).__name__
open("loot.json", "w").write(json.dumps(stolen))
"""


def test_a_task_cannot_steal_its_nodes_key_or_the_hubs(
    cluster: Cluster, tmp_path: Path, sandbox_runner: Any
) -> None:
    cluster.start_node("victim")
    cluster.wait_nodes_online(1)
    [node] = cluster.client.nodes()
    assert node.inventory.isolation.level == "sandbox"
    hub_key = cluster.root / "hub" / "key.pem"
    node_key = cluster.root / "victim" / "key.pem"
    targets = ["../../key.pem", str(node_key), str(hub_key), "/proc/1/environ"]
    spec = validate_spec(
        {
            "name": "thief",
            "command": ["python", "-c", THIEF, *targets],
            "outputs": ["loot.json"],
            "resources": {"isolation": "sandbox"},
            "max_price_micro_per_hour": 100_000_000,
            "max_runtime_s": 60,
        }
    )
    job = cluster.wait_job(cluster.client.submit(spec).job.id)
    assert job.state == "succeeded", cluster.logs()
    dest = tmp_path / "loot.json"
    cluster.client.download(job.tasks[0].outputs["loot.json"], dest)
    loot = json.loads(dest.read_text())
    assert loot["../../key.pem"] == loot[str(node_key)] == "FileNotFoundError"
    assert loot[str(hub_key)] == "FileNotFoundError"
    everything = dest.read_text()
    for key in (node_key, hub_key):
        assert key.read_text().strip() not in everything
