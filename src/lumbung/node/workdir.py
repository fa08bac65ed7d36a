"""A task attempt's working directory on the node: made, filled, restored, measured, removed.

Layout, under ``<data_dir>/tasks/<task>-<attempt>/`` (the sandbox shows the task this directory
and nothing else of the data directory): ``inputs/`` (read-only), ``checkpoint/`` (restored from
the hub when the task resumes, packed and uploaded while it runs), ``tmp/`` (``TMPDIR``),
``rounds/`` (a train worker's exchange with its courier), and the ``progress`` file. The checkpoint
archive is packed beside the directory, never in it, so packing never reads its own output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lumbung.errors import LumbungError, NotFound, Rejected
from lumbung.node import workfiles
from lumbung.node.checkpoints import unpack

log = logging.getLogger(__name__)

# Entries (files and directories) a task may create: empty files cost no bytes but an inode each.
MAX_ENTRIES = 100_000
_PROGRESS_MAX_BYTES = 256

# (sha256, destination) -> None: a verified download from the hub.
Download = Callable[[str, Path], None]


@dataclass
class Restored:
    """What ``WorkDir.restore`` made of a checkpoint chain."""

    sha256: str | None = None  # the checkpoint restored; None for a fresh start
    failed: list[str] = field(default_factory=list)  # newer ones that would not restore
    reasons: list[str] = field(default_factory=list)


class WorkDir:
    def __init__(self, tasks_dir: Path, task_id: str, attempt: int) -> None:
        # Absolute: the task runs in it, and the paths it is given must still resolve.
        self.root = tasks_dir.resolve() / f"{task_id}-{attempt}"
        self.archive = self.root.with_name(f"{task_id}-{attempt}.checkpoint.tar.gz")
        self._progress = 0.0

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds"

    @property
    def progress_file(self) -> Path:
        return self.root / "progress"

    def create(self, *, training: bool) -> None:
        self.remove()
        for sub in ("inputs", "checkpoint", "tmp", *(("rounds",) if training else ())):
            (self.root / sub).mkdir(parents=True)

    def fetch_inputs(self, inputs: dict[str, str], download: Download) -> None:
        """Download every input by hash into ``inputs/``, then make them read-only."""
        for name, sha256 in sorted(inputs.items()):
            dest = _inside(self.inputs, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            download(sha256, dest)
        _make_read_only(self.inputs)

    def restore(self, chain: list[str], download: Download, *, max_bytes: int) -> Restored:
        """Restore the newest checkpoint of ``chain`` that unpacks within ``max_bytes``.

        One that does not (garbage, a gzip bomb, hostile paths, gone from the hub) is skipped
        for the one before it, down to a fresh start.
        """
        restored = Restored()
        for sha in chain:
            try:
                download(sha, self.archive)
                _remove_tree(self.checkpoint)
                unpack(self.archive, self.checkpoint, max_bytes=max_bytes)
                restored.sha256 = sha
                break
            except (Rejected, NotFound) as exc:
                log.warning("checkpoint %s not restored: %s", sha[:12], exc)
                restored.failed.append(sha)
                restored.reasons.append(f"{sha[:12]}: {exc}")
            finally:
                self.archive.unlink(missing_ok=True)
        if restored.sha256 is None:
            _remove_tree(self.checkpoint)
        self.checkpoint.mkdir(exist_ok=True)
        return restored

    def progress(self) -> float:
        """The task's own estimate, 0..1, from its ``progress`` file; the last good one if the
        file is missing, half-written, or not a file at all."""
        try:
            raw = workfiles.read_file(self.root, "progress", _PROGRESS_MAX_BYTES)
            text = raw.decode().strip()
            value = json.loads(text) if text else self._progress
            if isinstance(value, dict):
                value = value.get("progress", self._progress)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._progress = min(1.0, max(0.0, float(value)))
        except (OSError, ValueError, LumbungError):
            pass
        return self._progress

    def over_budget(self, budget_bytes: int) -> str | None:
        """Why the task's files are over its disk budget, or None while they are within it."""
        usage = workfiles.disk_usage(self.root, skip=frozenset({"inputs"}))
        if usage.bytes <= budget_bytes and usage.entries <= MAX_ENTRIES:
            return None
        return (
            f"disk budget exceeded: the task wrote {usage.bytes} bytes in {usage.entries} "
            f"files and directories (its budget: {budget_bytes} bytes, {MAX_ENTRIES} entries)"
        )

    def remove(self) -> None:
        _remove_tree(self.root)
        self.archive.unlink(missing_ok=True)


def _inside(base: Path, name: str) -> Path:
    """``base/name``, refused if ``name`` would lead out of ``base``."""
    path = base / name
    if not path.resolve().is_relative_to(base.resolve()):
        raise Rejected(f"path {name!r} leads outside the task's directory")
    return path


def _make_read_only(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)  # noqa: S103 - the task runs as another uid


def _remove_tree(root: Path) -> None:
    if not root.exists():
        return
    # Read-only directories (inputs/) must be writable again before their entries can be removed.
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103
    shutil.rmtree(root, ignore_errors=True)
