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
from pathlib import Path

from lumbung.errors import Rejected
from lumbung.node import workfiles
from lumbung.wire.archive import check_member, inspect_archive

_CHUNK_BYTES = 1024 * 1024
_FILE_MODE = 0o644
_DIR_MODE = 0o755


def pack_dir(src: Path, dest_file: Path) -> str | None:
    """Write ``src`` as a deterministic tar.gz to ``dest_file``; its SHA-256, or None if empty.

    Only regular files and directories are packed; symlinks, devices and sockets are left out, so a
    checkpoint can never smuggle a link to a file outside the task's directory. The task may be
    running and swapping files meanwhile, so every file is opened below ``src`` without following
    links (``lumbung.node.workfiles``): a file swapped for a link is skipped, never read through.
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
            _add_entry(tar, src, rel, is_file)
    return _sha256_file(dest_file)


def _sorted_entries(src: Path) -> list[tuple[str, bool]]:
    """(relative posix path, is a regular file) for every file and directory below ``src``."""
    found: list[tuple[str, bool]] = []
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(src, follow_symlinks=False):
        base = Path(dirpath).relative_to(src)
        for name in dirnames + filenames:
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue  # removed by the task meanwhile
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                found.append(((base / name).as_posix(), stat.S_ISREG(mode)))
    found.sort()
    return found


def _add_entry(tar: tarfile.TarFile, src: Path, rel: str, is_file: bool) -> None:
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if not is_file:
        info.type = tarfile.DIRTYPE
        info.mode = _DIR_MODE
        tar.addfile(info)
        return
    try:
        fd = workfiles.open_file(src, rel)
    except (Rejected, OSError):
        return  # swapped for a link or removed since the walk: not part of this checkpoint
    with os.fdopen(fd, "rb") as f:
        # Size and mode from the open file, so a file rewritten meanwhile is still consistent.
        status = os.fstat(f.fileno())
        info.size = status.st_size
        info.mode = _FILE_MODE | (0o111 if status.st_mode & 0o100 else 0)
        tar.addfile(info, f)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack(archive: Path, dest: Path, *, max_bytes: int) -> None:
    """Extract a checkpoint archive into ``dest``; ``Rejected`` if any member is hostile.

    The whole archive is checked before anything is written (``lumbung.wire.archive``): only
    regular files and directories at safe relative paths, at most ``max_bytes`` unpacked (the
    job's disk budget, so a small archive cannot fill the disk). The stdlib "data" filter then
    guards the extraction itself.
    """
    with archive.open("rb") as stream:
        inspect_archive(stream, max_bytes=max_bytes)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member)
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as exc:
        raise Rejected(f"checkpoint archive {archive.name} is unreadable: {exc}") from exc
