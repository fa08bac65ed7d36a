"""A user's own text file as a train job's dataset."""

from __future__ import annotations

import numpy as np
import pytest
from factories import train_job

from lumbung.errors import Rejected
from lumbung.train.text_dataset import MIN_CHARS, corpus_from_text
from lumbung.wire.spec import validate_spec

TEXT = ("To be, or not to be, that is the question:\n" * 50).encode()


def test_the_files_characters_are_the_vocabulary_and_its_end_is_held_out() -> None:
    corpus = corpus_from_text(TEXT, 0.1)
    assert corpus.vocab == "".join(sorted(set(TEXT.decode())))
    held_out = corpus.validation
    assert held_out.size == len(TEXT) // 10
    assert corpus.decode(held_out) == TEXT.decode()[-held_out.size :]
    assert np.concatenate([corpus.train["train"], held_out]).size == len(TEXT)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe" * 600, "not UTF-8"),
        (b"too short", f"at least {MIN_CHARS}"),
        ("".join(chr(0x400 + i) for i in range(300)).encode() * 5, "distinct characters"),
    ],
)
def test_a_file_that_cannot_be_a_dataset_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(Rejected, match=why) as caught:
        corpus_from_text(data, 0.1)
    assert caught.value.field == "dataset.sha256"


def test_a_text_dataset_names_exactly_one_file_and_has_no_plays() -> None:
    ok = validate_spec(train_job({"rounds": 1, "dataset": {"name": "text", "sha256": "a" * 64}}))
    assert ok.train is not None
    assert ok.train.dataset.sha256 == "a" * 64
    for bad in (
        {"name": "text"},
        {"name": "text", "sha256": "a" * 64, "path": "book.txt"},
        {"name": "shakespeare", "sha256": "a" * 64},
        {"name": "text", "sha256": "a" * 64, "sharding": "play"},
        {"name": "text", "sha256": "NOT-HEX"},
    ):
        with pytest.raises(Rejected) as caught:
            validate_spec(train_job({"rounds": 1, "dataset": bad}))
        assert caught.value.field is not None
        assert caught.value.field.startswith("train.dataset")
