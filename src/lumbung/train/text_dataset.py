"""A user's own dataset: one UTF-8 text file, uploaded as an artifact, trained on by characters.

The vocabulary is the file's characters; its last ``validation_fraction`` is held out, so the
validation loss measures text the model never trained on (the file's end, not a random sample of
windows it has seen). Numpy only, like ``lumbung.train.data``, whose ``Corpus`` it returns.
"""

from __future__ import annotations

import numpy as np

from lumbung.errors import Rejected
from lumbung.train.data import Corpus

# Fewer characters than this cannot fill a batch of windows and a validation set.
MIN_CHARS = 1_000
MAX_VOCAB = 256  # tokens are uint8


def corpus_from_text(data: bytes, validation_fraction: float) -> Corpus:
    """The corpus of a text file; ``Rejected`` naming the field if it cannot be one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"the dataset is not UTF-8 text: {exc}", field="dataset.sha256") from exc
    if len(text) < MIN_CHARS:
        raise Rejected(
            f"the dataset has {len(text)} characters; at least {MIN_CHARS} are needed",
            field="dataset.sha256",
        )
    vocab = "".join(sorted(set(text)))
    if len(vocab) > MAX_VOCAB:
        raise Rejected(
            f"the dataset uses {len(vocab)} distinct characters; at most {MAX_VOCAB} fit",
            field="dataset.sha256",
        )
    index = {c: i for i, c in enumerate(vocab)}
    tokens = np.fromiter((index[c] for c in text), dtype=np.uint8, count=len(text))
    split = len(tokens) - max(1, int(len(tokens) * validation_fraction))
    return Corpus(vocab, {"train": tokens[:split]}, tokens[split:])
