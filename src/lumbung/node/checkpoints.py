"""Checkpoint archives: deterministic tar.gz packing and safe unpacking.

Packing is deterministic (sorted entries, zero times and owners, gzip without a timestamp) so the
same directory contents always give the same SHA-256: an unchanged checkpoint is recognised by its
hash and never uploaded twice, and the hub's checkpoint chain names content, not packing moments.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath

from lumbung.errors import Rejected

_CHUNK_BYTES = 1024 * 1024
_FILE_MODE = 0o644
_DIR_MODE = 0o755


def pack_dir(src: Path, dest_file: Path) -> str | None:
    """Write ``src`` as a deterministic tar.gz to ``dest_file``; its SHA-256, or None if empty.

    Only regular files and directories are packed; symlinks, devices and sockets are left out, so a
    checkpoint can never smuggle a link to a file outside the task's directory.
    """
    entries = _sorted_entries(src)
    if not any(is_file for _, is_file in entries):
        return None
    # mtime=0 and no file name keep the gzip header the same on every run.
    with (
        dest_file.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, is_file in entries:
            _add_entry(tar, src / rel, rel, is_file)
    return _sha256_file(dest_file)


def _sorted_entries(src: Path) -> list[tuple[str, bool]]:
    """(relative posix path, is a regular file) for every file and directory below ``src``."""
    found: list[tuple[str, bool]] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            full = base / name
            mode = full.lstat().st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                found.append((full.relative_to(src).as_posix(), stat.S_ISREG(mode)))
    found.sort()
    return found


def _add_entry(tar: tarfile.TarFile, full: Path, rel: str, is_file: bool) -> None:
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if not is_file:
        info.type = tarfile.DIRTYPE
        info.mode = _DIR_MODE
        tar.addfile(info)
        return
    with full.open("rb") as f:
        # The size is taken from the open file, so a file rewritten meanwhile is still consistent.
        info.size = os.fstat(f.fileno()).st_size
        info.mode = _FILE_MODE | (0o111 if full.stat().st_mode & 0o100 else 0)
        tar.addfile(info, f)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack(archive: Path, dest: Path) -> None:
    """Extract a checkpoint archive into ``dest``; ``Rejected`` if any member is hostile.

    Every member is checked before anything is written: only regular files and directories, no
    absolute paths, no ``..``. The stdlib "data" filter then guards the extraction itself.
    """
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise Rejected(f"checkpoint archive {archive.name} is unreadable: {exc}") from exc


def _check_member(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if not (member.isreg() or member.isdir()):
        raise Rejected(f"checkpoint archive holds a link or special file: {member.name!r}")
    if path.is_absolute() or ".." in path.parts or "\\" in member.name or not member.name:
        raise Rejected(f"checkpoint archive holds an unsafe path: {member.name!r}")
