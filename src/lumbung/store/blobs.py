"""Content-addressed blob stores: artifacts named by the SHA-256 of their bytes.

An upload is streamed, counted and hashed as it arrives; it becomes visible under its name only
after the hash matched, so a reader never sees a half-written or mislabelled blob, and the same
content uploaded twice is stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

from lumbung.errors import HashMismatch, NotFound, Rejected, TooLarge
from lumbung.ids import is_sha256_hex

_COPY_CHUNK_BYTES = 1 << 20


class BlobUpload(Protocol):
    def write(self, chunk: bytes) -> None:
        """Add bytes; ``TooLarge`` as soon as the total passes the upload's ``max_bytes``."""

    def commit(self) -> int:
        """Check the hash and publish the blob; returns its size. ``HashMismatch`` if it differs."""

    def abort(self) -> None:
        """Discard what was written; safe to call after ``commit`` or twice."""


class BlobStore(Protocol):
    def begin(self, sha256: str, max_bytes: int) -> BlobUpload: ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int:
        """Size in bytes; ``NotFound`` if absent."""

    def open(self, sha256: str) -> BinaryIO:
        """A binary reader of the blob (close it); ``NotFound`` if absent."""

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its hash."""


def check_name(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits, else ``Rejected`` naming the field."""
    if not isinstance(sha256, str) or not is_sha256_hex(sha256):
        raise Rejected(f"not a SHA-256 name (64 lowercase hex digits): {sha256!r}", field="sha256")
    return sha256


class _Hashing:
    """What every upload shares: the byte count against the limit and the running hash."""

    def __init__(self, sha256: str, max_bytes: int) -> None:
        self.expected = check_name(sha256)
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self.hasher = hashlib.sha256()

    def take(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes > self.max_bytes:
            raise TooLarge(f"upload is over its limit of {self.max_bytes} bytes")
        self.hasher.update(chunk)

    def verify(self) -> None:
        actual = self.hasher.hexdigest()
        if actual != self.expected:
            raise HashMismatch(f"content hashes to {actual}, not {self.expected}", field="sha256")


# --- on disk ------------------------------------------------------------------------------------


class DirectoryBlobStore:
    """Blobs as files ``root/ab/cd/<sha256>``; uploads wait in ``root/tmp`` until verified."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        name = check_name(sha256)
        return self.root / name[:2] / name[2:4] / name

    def begin(self, sha256: str, max_bytes: int) -> BlobUpload:
        return _FileUpload(self, _Hashing(sha256, max_bytes))

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no artifact {sha256}") from None

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"no artifact {sha256}") from None

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        upload = self.begin(sha256, len(data))
        try:
            upload.write(data)
            upload.commit()
        finally:
            upload.abort()
        return sha256


class _FileUpload:
    def __init__(self, store: DirectoryBlobStore, hashing: _Hashing) -> None:
        self._store = store
        self._hashing = hashing
        fd, name = tempfile.mkstemp(dir=store._tmp, prefix="upload-")
        self._tmp_path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise Rejected("upload is already finished")
        try:
            self._hashing.take(chunk)
        except TooLarge:
            self.abort()
            raise
        self._file.write(chunk)

    def commit(self) -> int:
        if self._file is None:
            raise Rejected("upload is already finished")
        try:
            self._hashing.verify()
            target = self._store.path(self._hashing.expected)
            if not target.exists():
                # Data on disk before the name points at it: a crash leaves no truncated blob.
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp_path, target)
                _fsync_directory(target.parent)  # and the new name survives a power cut too
        finally:
            self.abort()
        return self._hashing.size_bytes

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp_path.unlink()


def _fsync_directory(path: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory; its renames are journalled anyway
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- in memory ----------------------------------------------------------------------------------


class MemoryBlobStore:
    """The directory store's twin for tests: the same checks, bytes in a dict."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def begin(self, sha256: str, max_bytes: int) -> BlobUpload:
        return _MemoryUpload(self, _Hashing(sha256, max_bytes))

    def exists(self, sha256: str) -> bool:
        with self._lock:
            return check_name(sha256) in self._blobs

    def size(self, sha256: str) -> int:
        return len(self._get(sha256))

    def open(self, sha256: str) -> BinaryIO:
        return io.BytesIO(self._get(sha256))

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        upload = self.begin(sha256, len(data))
        upload.write(data)
        upload.commit()
        return sha256

    def _get(self, sha256: str) -> bytes:
        with self._lock:
            try:
                return self._blobs[check_name(sha256)]
            except KeyError:
                raise NotFound(f"no artifact {sha256}") from None

    def _publish(self, sha256: str, data: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(sha256, data)


class _MemoryUpload:
    def __init__(self, store: MemoryBlobStore, hashing: _Hashing) -> None:
        self._store = store
        self._hashing = hashing
        self._chunks: list[bytes] | None = []

    def write(self, chunk: bytes) -> None:
        if self._chunks is None:
            raise Rejected("upload is already finished")
        try:
            self._hashing.take(chunk)
        except TooLarge:
            self.abort()
            raise
        self._chunks.append(bytes(chunk))

    def commit(self) -> int:
        if self._chunks is None:
            raise Rejected("upload is already finished")
        try:
            self._hashing.verify()
            self._store._publish(self._hashing.expected, b"".join(self._chunks))
        finally:
            self.abort()
        return self._hashing.size_bytes

    def abort(self) -> None:
        self._chunks = None
