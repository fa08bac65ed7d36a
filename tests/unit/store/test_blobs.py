"""Blob stores: uploads are verified against their name, bounded, deduplicated, and atomic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lumbung.errors import HashMismatch, NotFound, Rejected, TooLarge
from lumbung.store.blobs import BlobStore, DirectoryBlobStore, MemoryBlobStore

DATA = b"checkpoint bytes " * 1000
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(params=["memory", "directory"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    return DirectoryBlobStore(tmp_path / "blobs")


def stored_files(root: Path) -> list[Path]:
    """Every file under the store's root, temporary uploads included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_streamed_upload_is_readable_under_its_hash(blobs: BlobStore) -> None:
    upload = blobs.begin(DATA_SHA, max_bytes=len(DATA))
    for start in range(0, len(DATA), 4096):
        upload.write(DATA[start : start + 4096])
    assert upload.commit() == len(DATA)
    assert blobs.exists(DATA_SHA)
    assert blobs.size(DATA_SHA) == len(DATA)
    with blobs.open(DATA_SHA) as reader:
        assert reader.read() == DATA


def test_content_that_does_not_match_its_name_is_rejected_and_not_stored(
    blobs: BlobStore,
) -> None:
    upload = blobs.begin(DATA_SHA, max_bytes=len(DATA))
    upload.write(DATA[:-1] + b"!")
    with pytest.raises(HashMismatch) as caught:
        upload.commit()
    assert caught.value.field == "sha256"
    assert not blobs.exists(DATA_SHA)


def test_upload_over_the_limit_fails_mid_stream_and_stores_nothing(blobs: BlobStore) -> None:
    upload = blobs.begin(DATA_SHA, max_bytes=len(DATA) - 1)
    upload.write(DATA[:1000])
    with pytest.raises(TooLarge):
        upload.write(DATA[1000:])
    with pytest.raises(Rejected):
        upload.commit()
    assert not blobs.exists(DATA_SHA)


def test_same_content_twice_is_stored_once(blobs: BlobStore) -> None:
    assert blobs.put_bytes(DATA) == DATA_SHA
    upload = blobs.begin(DATA_SHA, max_bytes=len(DATA))
    upload.write(DATA)
    assert upload.commit() == len(DATA)
    with blobs.open(DATA_SHA) as reader:
        assert reader.read() == DATA


def test_empty_blob_is_a_valid_blob(blobs: BlobStore) -> None:
    empty_sha = blobs.put_bytes(b"")
    assert empty_sha == hashlib.sha256(b"").hexdigest()
    assert blobs.size(empty_sha) == 0


@pytest.mark.parametrize(
    "name", ["", "abc", DATA_SHA.upper(), DATA_SHA + "0", "../" + DATA_SHA[3:]]
)
def test_names_that_are_not_sha256_hex_are_rejected(blobs: BlobStore, name: str) -> None:
    for call in (blobs.exists, blobs.size, blobs.open):
        with pytest.raises(Rejected) as caught:
            call(name)
        assert caught.value.field == "sha256"
    with pytest.raises(Rejected):
        blobs.begin(name, max_bytes=10)


def test_absent_blob_is_not_found(blobs: BlobStore) -> None:
    assert not blobs.exists(DATA_SHA)
    with pytest.raises(NotFound, match=DATA_SHA):
        blobs.size(DATA_SHA)
    with pytest.raises(NotFound, match=DATA_SHA):
        blobs.open(DATA_SHA)


def test_directory_store_lays_blobs_out_by_prefix(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    store.put_bytes(DATA)
    assert stored_files(tmp_path) == [tmp_path / DATA_SHA[:2] / DATA_SHA[2:4] / DATA_SHA]


def test_failed_and_aborted_uploads_leave_no_files_behind(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    mismatched = store.begin(DATA_SHA, max_bytes=len(DATA))
    mismatched.write(b"wrong")
    with pytest.raises(HashMismatch):
        mismatched.commit()
    too_large = store.begin(DATA_SHA, max_bytes=10)
    with pytest.raises(TooLarge):
        too_large.write(DATA)
    aborted = store.begin(DATA_SHA, max_bytes=len(DATA))
    aborted.write(DATA)
    aborted.abort()
    aborted.abort()
    assert stored_files(tmp_path) == []


def test_upload_in_progress_is_invisible_under_its_name(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    upload = store.begin(DATA_SHA, max_bytes=len(DATA))
    upload.write(DATA)
    assert not store.exists(DATA_SHA)
    assert [p.parent.name for p in stored_files(tmp_path)] == ["tmp"]
    upload.commit()
    assert store.exists(DATA_SHA)
    assert not list((tmp_path / "tmp").iterdir())
