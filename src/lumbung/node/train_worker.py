"""One DiLoCo worker of a ``train`` job (``python -m lumbung.node.train_worker``), run by a node.

The node runs this like any task (its own process group, logs shipped, killed on cancel), with
the network on and the node's key, because the worker talks to the hub itself: each round it asks
what to do, fetches the round's weights (the compressed change when it holds the round before,
the full weights otherwise), takes H inner steps on its shard, and uploads its compressed
pseudo-gradient with error feedback. It exits 0 when the hub says training is over.

Everything comes from the environment the node sets: ``LUMBUNG_HUB_URL``, ``LUMBUNG_NODE_DIR``
(the node's key), ``LUMBUNG_TASK_ID``, ``LUMBUNG_ATTEMPT``, ``LUMBUNG_PARAMS`` (the shard),
``LUMBUNG_TRAIN_SPEC`` (the job's ``train`` section as JSON), ``LUMBUNG_TRAIN_CACHE`` (where the
dataset is kept between tasks) and ``LUMBUNG_PROGRESS_FILE``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from lumbung.client.node_session import NodeSession
from lumbung.crypto.keys import Identity
from lumbung.errors import Conflict, Unavailable
from lumbung.train.codec import decode, encode, encode_with_feedback
from lumbung.train.data import (
    BatchSampler,
    Corpus,
    load_shakespeare,
    shard,
    validation_windows,
)
from lumbung.train.inner import Worker, build_model, evaluate, flat_weights, pick_device
from lumbung.train.rounds import FULL_WEIGHTS
from lumbung.train.spec import codec_config, model_config
from lumbung.train.text_dataset import corpus_from_text
from lumbung.wire.api import RoundInfo, RoundUpdateReport
from lumbung.wire.train import TrainSpec

# Validation windows each worker scores the round's starting weights on (fixed, so comparable).
VALIDATION_WINDOWS = 64
# How often a worker whose update is in asks whether the next round has opened.
WAIT_POLL_S = 0.5
# A hub that does not answer (restarting, a network blip) is retried this long before giving up.
HUB_PATIENCE_S = 120.0
T = TypeVar("T")


@dataclass
class Held:
    """The global weights this worker holds, exactly as the hub published them."""

    weights: np.ndarray
    sha256: str  # of their full encoding: the hub names weights by this


def main() -> int:
    started = time.monotonic()  # the attempt's work starts here, data loading included
    env = os.environ
    spec = TrainSpec.model_validate_json(env["LUMBUNG_TRAIN_SPEC"])
    task_id, attempt = env["LUMBUNG_TASK_ID"], int(env["LUMBUNG_ATTEMPT"])
    shard_index = int(json.loads(env["LUMBUNG_PARAMS"])["shard"])
    torch.set_num_threads(max(1, int(env.get("OMP_NUM_THREADS", "1"))))
    identity = Identity.load_or_create(Path(env["LUMBUNG_NODE_DIR"]))
    session = NodeSession(env["LUMBUNG_HUB_URL"], identity, timeout_s=120.0)
    try:
        return WorkerRun(spec, session, task_id, attempt, shard_index, started).loop()
    finally:
        session.close()


class WorkerRun:
    def __init__(
        self,
        spec: TrainSpec,
        session: NodeSession,
        task_id: str,
        attempt: int,
        shard_index: int,
        started: float,
    ) -> None:
        self.spec, self.session = spec, session
        self.task_id, self.attempt = task_id, attempt
        self.started = started
        corpus = self.corpus()
        m = spec.model
        config = model_config(m, corpus.vocab_size)
        device = pick_device()
        shards = shard(corpus, spec.workers.wanted, spec.dataset.sharding, spec.seed)
        sampler = BatchSampler(
            shards[shard_index], spec.inner.batch_size, m.context, seed=(spec.seed, shard_index)
        )
        self.worker = Worker(config, spec.inner, sampler, device)
        self.scorer = build_model(config, spec.seed, device)
        self.windows = validation_windows(corpus.validation, m.context, VALIDATION_WINDOWS)
        # Built on the CPU from the job's seed, so every node starts from the same bits.
        self.initial = flat_weights(build_model(config, spec.seed, torch.device("cpu")))
        self.residual = np.zeros_like(self.initial)
        self.uplink = codec_config(spec.compression)
        self.held: Held | None = None
        print(
            f"worker for shard {shard_index}: {self.initial.size:,} parameters on {device.type}",
            flush=True,
        )

    def corpus(self) -> Corpus:
        dataset = self.spec.dataset
        if dataset.sha256 is not None:  # the user's own text file
            return corpus_from_text(self._download(dataset.sha256), dataset.validation_fraction)
        cache = Path(os.environ.get("LUMBUNG_TRAIN_CACHE") or tempfile.gettempdir())
        return load_shakespeare(dataset.validation_plays, cache)

    def hub(self, call: Callable[[], T]) -> T:
        """``call`` the hub, waiting out a hub that is down (a restart keeps its rounds)."""
        deadline = time.monotonic() + HUB_PATIENCE_S
        while True:
            try:
                return call()
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    raise
                print(f"hub unavailable, retrying: {exc.message}", flush=True)
                time.sleep(1.0)

    def loop(self) -> int:
        while True:
            info = self.hub(lambda: self.session.round_info(self.task_id, self.attempt))
            if info.state == "done":
                print(f"training over after {info.rounds_total} rounds", flush=True)
                return 0
            if info.state == "submitted":
                time.sleep(WAIT_POLL_S)
                continue
            self.train_round(info)

    def train_round(self, info: RoundInfo) -> None:
        base, bytes_down, initial_sha = self.fetch(info)
        base_val_loss = evaluate(self.scorer, base.weights, self.windows)
        result = self.worker.train(base.weights, self.spec.inner_steps)
        delta = base.weights - result.weights  # the pseudo-gradient (Algorithm 1, line 8)
        blob, self.residual = encode_with_feedback(delta, self.residual, self.uplink)
        report = RoundUpdateReport(
            attempt=self.attempt,
            sha256=self.hub(lambda: self.session.upload_bytes(blob)),
            base_sha=base.sha256,
            initial_sha=initial_sha,
            tokens=result.tokens,
            inner_steps=result.steps,
            train_loss=result.mean_loss,
            base_val_loss=base_val_loss,
            bytes_down=bytes_down,
            runtime_s=time.monotonic() - self.started,
            device=result.device,
        )
        try:
            self.hub(lambda: self.session.send_update(self.task_id, info.round, report))
        except Conflict as exc:
            # The round closed while this worker trained (its deadline): try the next one.
            print(f"round {info.round}: update not taken ({exc.message})", flush=True)
            return
        print(
            f"round {info.round}: train loss {result.mean_loss:.3f}, "
            f"start val loss {base_val_loss:.3f}, sent {len(blob):,} bytes, "
            f"fetched {bytes_down:,} bytes ({result.device})",
            flush=True,
        )
        _write_progress((info.round + 1) / info.rounds_total)

    def fetch(self, info: RoundInfo) -> tuple[Held, int, str | None]:
        """The round's starting weights, the bytes downloaded for them, and for the first update
        of round 0 the seeded initial weights' hash (which this worker then uploads)."""
        if info.base_sha is None:
            blob = encode(self.initial, FULL_WEIGHTS)
            sha = self.hub(lambda: self.session.upload_bytes(blob))
            self.held = Held(self.initial, sha)
            return self.held, 0, sha
        if info.round == 0 and _full_sha(self.initial) == info.base_sha:
            self.held = Held(self.initial, info.base_sha)  # another worker sent the same bits
            return self.held, 0, info.base_sha
        held = self.held
        if (
            held is not None
            and info.change_sha is not None
            and held.sha256 == info.previous_base_sha
        ):
            change = self._download(info.change_sha)
            weights = held.weights + decode(change, held.weights.size)
            if _full_sha(weights) == info.base_sha:  # the same float32 sums as the hub's
                self.held = Held(weights, info.base_sha)
                return self.held, len(change), None
        full = self._download(info.base_sha)
        self.held = Held(decode(full, self.initial.size), info.base_sha)
        return self.held, len(full), None

    def _download(self, sha256: str) -> bytes:
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            dest = Path(tmp) / sha256
            self.hub(lambda: self.session.download(sha256, dest))
            return dest.read_bytes()


def _full_sha(weights: np.ndarray) -> str:
    return hashlib.sha256(encode(weights, FULL_WEIGHTS)).hexdigest()


def _write_progress(fraction: float) -> None:
    path = os.environ.get("LUMBUNG_PROGRESS_FILE")
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(f"{fraction:.4f}")
        tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
