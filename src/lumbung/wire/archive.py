"""The checkpoint archive format, and what a valid archive may hold.

A checkpoint is a gzip-compressed tar of a task's checkpoint directory (packed deterministically by
the node, ``lumbung.node.checkpoints``). It comes from a provider and is unpacked on the next
provider's machine, so it is hostile until checked: only regular files and directories, relative
paths without ``..``, at most ``max_entries`` members and ``max_bytes`` of unpacked content (the
job's disk budget), so that a small archive cannot unpack into a disk-filling one (a gzip bomb).

The hub checks an uploaded checkpoint with ``inspect_archive`` before it joins the task's chain;
the node checks every member again while it unpacks (``check_member``), so neither trusts the other.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from lumbung.errors import Rejected

# Members of one checkpoint archive; far above what a training checkpoint holds.
MAX_ARCHIVE_ENTRIES = 10_000
_NAME_MAX_CHARS = 1024


@dataclass(frozen=True)
class ArchiveSummary:
    entries: int
    unpacked_bytes: int  # the sum of the regular files' sizes


def check_member(member: tarfile.TarInfo) -> None:
    """``Rejected`` unless ``member`` is a regular file or a directory at a safe relative path."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        raise Rejected(f"checkpoint archive holds a link or special file: {name[:200]!r}")
    path = PurePosixPath(name)
    unsafe = (
        not name
        or len(name) > _NAME_MAX_CHARS
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or "\x00" in name
    )
    if unsafe:
        raise Rejected(f"checkpoint archive holds an unsafe path: {name[:200]!r}")


def inspect_archive(
    stream: IO[bytes], *, max_bytes: int, max_entries: int = MAX_ARCHIVE_ENTRIES
) -> ArchiveSummary:
    """Read the whole archive from ``stream`` (once, front to back) and check every member.

    Raises ``Rejected`` for an archive that is not gzip-compressed tar, holds a member
    ``check_member`` refuses, more than ``max_entries`` members or more than ``max_bytes``
    unpacked. The file contents are read through (a truncated archive is caught) but not kept.
    """
    entries = 0
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                entries += 1
                if entries > max_entries:
                    raise Rejected(f"checkpoint archive holds more than {max_entries} entries")
                check_member(member)
                total += member.size if member.isreg() else 0
                if total > max_bytes:
                    raise Rejected(
                        f"checkpoint archive unpacks to more than {max_bytes} bytes "
                        "(the job's disk budget)"
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise Rejected(f"checkpoint archive is not a readable tar.gz: {exc}") from exc
    if entries == 0:
        raise Rejected("checkpoint archive is empty")
    return ArchiveSummary(entries=entries, unpacked_bytes=total)
