"""Files in a task's working directory, touched from outside the sandbox without trusting them.

The task owns everything below its working directory and may swap any file or directory for a
symbolic link, a FIFO or a device at any moment, including between the node's check and its use.
So the node never opens such a path by name: it walks down from the working directory one
component at a time with ``O_NOFOLLOW`` (a link anywhere on the way is refused, not followed),
opens FIFOs without blocking, and reads only regular files, never more than it expects. Otherwise
a task could have the node (which holds the key and, on a root node, can read everything) read
``/etc/shadow`` into a checkpoint or write into its own data directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lumbung.errors import Rejected

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _parts(rel: str) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\x00" in rel:
        raise Rejected(f"path {rel!r} leads outside the task's directory")
    return parts


@contextlib.contextmanager
def open_dir(root: Path, rel: str = "") -> Iterator[int]:
    """A descriptor of the directory ``root/rel``, reached without following any link."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in _parts(rel) if rel else ():
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def open_file(root: Path, rel: str) -> int:
    """A descriptor of the regular file ``root/rel``; ``Rejected`` for a link or anything else."""
    *dirs, name = _parts(rel)
    with open_dir(root, "/".join(dirs)) as dir_fd:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise Rejected(f"{rel!r} cannot be opened: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Rejected(f"{rel!r} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_file(root: Path, rel: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/rel``; ``Rejected`` over ``max_bytes``."""
    fd = open_file(root, rel)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Rejected(f"{rel!r} is over {max_bytes} bytes")
    return data


def exists(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file reachable without links."""
    try:
        os.close(open_file(root, rel))
    except (Rejected, OSError):
        return False
    return True


def write_file(root: Path, rel: str, data: bytes) -> None:
    """Write ``root/rel`` whole, under a temporary name first, so a reader never sees half."""
    *dirs, name = _parts(rel)
    tmp = name + ".tmp"
    with open_dir(root, "/".join(dirs)) as dir_fd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)  # whatever the task left there, a link included
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


@dataclass(frozen=True)
class Usage:
    bytes: int  # allocated on disk, not the files' apparent sizes (a sparse file costs little)
    entries: int


def disk_usage(root: Path, skip: frozenset[str] = frozenset()) -> Usage:
    """What the tree below ``root`` occupies, links not followed; top-level names in ``skip``
    (the read-only inputs) are not counted."""
    total = entries = 0
    stack = [(root, True)]
    while stack:
        path, top = stack.pop()
        try:
            listing = list(os.scandir(path))
        except OSError:
            continue  # removed meanwhile, or not a directory any more
        for entry in listing:
            if top and entry.name in skip:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            entries += 1
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                stack.append((Path(entry.path), False))
    return Usage(bytes=total, entries=entries)
