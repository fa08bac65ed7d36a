"""The ``LUMBUNG_*`` task environment: the names a node sets and the code it runs reads.

The environment is the whole interface between a node and a task (docs/formats.md, "The task
environment"). The node writes it (``lumbung.node.task_spec``); the trainer reads it
(``lumbung.train.trainer``). ``lumbung.node.entry`` reads two of these names on its own, because
it runs inside a container where nothing but the standard library may be importable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TASK_ID = "LUMBUNG_TASK_ID"
JOB_ID = "LUMBUNG_JOB_ID"
ATTEMPT = "LUMBUNG_ATTEMPT"
PARAMS = "LUMBUNG_PARAMS"
PARAM_PREFIX = "LUMBUNG_PARAM_"
INPUTS_DIR = "LUMBUNG_INPUTS_DIR"
CHECKPOINT_DIR = "LUMBUNG_CHECKPOINT_DIR"
PROGRESS_FILE = "LUMBUNG_PROGRESS_FILE"
TRAIN_SPEC = "LUMBUNG_TRAIN_SPEC"
TRAIN_DIR = "LUMBUNG_TRAIN_DIR"
TRAIN_SDIST = "LUMBUNG_TRAIN_SDIST"
TRAIN_TEXT = "LUMBUNG_TRAIN_TEXT"

# Reserved for the node: a job's own env may not set any name with this prefix.
RESERVED_PREFIX = "LUMBUNG_"


def param_name(name: str) -> str:
    """``LUMBUNG_PARAM_<NAME>``: one variable per parameter."""
    return PARAM_PREFIX + name.upper()


def param_value(value: object) -> str:
    """A string parameter as it is, any other value as JSON (``0.01``, ``true``, ``7``)."""
    return value if isinstance(value, str) else json.dumps(value)


def params_json(params: Mapping[str, object]) -> str:
    return json.dumps(params, sort_keys=True)


@dataclass(frozen=True)
class TrainerEnv:
    """What a train worker is told by its environment."""

    spec_json: str
    shard: int
    rounds_dir: Path
    inputs_dir: Path | None
    sdist: Path | None
    text: Path | None

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> TrainerEnv:
        """Raises ``KeyError`` naming a variable the node must have set."""
        inputs = environ.get(INPUTS_DIR)
        sdist = environ.get(TRAIN_SDIST)
        text = environ.get(TRAIN_TEXT)
        return cls(
            spec_json=environ[TRAIN_SPEC],
            shard=int(json.loads(environ[PARAMS])["shard"]),
            rounds_dir=Path(environ.get(TRAIN_DIR, "rounds")),
            inputs_dir=Path(inputs) if inputs else None,
            sdist=Path(sdist) if sdist else None,
            text=Path(text) if text else None,
        )
