"""Checkpoint archives: deterministic hashes, round trips, hostile archives refused."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lumbung.errors import Rejected
from lumbung.node.checkpoints import pack_dir, unpack

MIB = 1024 * 1024


def _fill(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(b"\x00\x01weights" * 100)
    (root / "sub" / "state.json").write_text('{"step": 7}')


def test_same_content_gives_same_hash_whatever_the_mtimes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _fill(a)
    _fill(b)
    os.utime(b / "model.bin", (1_000_000, 1_000_000))
    os.utime(b / "sub", (2_000_000, 2_000_000))
    os.chmod(b / "sub" / "state.json", 0o600)

    assert pack_dir(a, tmp_path / "a.tgz") == pack_dir(b, tmp_path / "b.tgz")
    assert (tmp_path / "a.tgz").read_bytes() == (tmp_path / "b.tgz").read_bytes()


def test_changed_content_gives_a_new_hash(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _fill(src)
    first = pack_dir(src, tmp_path / "1.tgz")
    (src / "sub" / "state.json").write_text('{"step": 8}')
    assert pack_dir(src, tmp_path / "2.tgz") != first


def test_empty_directory_packs_to_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty" / "only-a-dir").mkdir(parents=True)
    assert pack_dir(tmp_path / "empty", tmp_path / "x.tgz") is None


def test_round_trip_restores_the_files(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _fill(src)
    os.symlink("/etc/passwd", src / "link")  # links are never packed
    sha = pack_dir(src, tmp_path / "c.tgz")
    assert sha is not None
    assert len(sha) == 64

    unpack(tmp_path / "c.tgz", dest, max_bytes=MIB)

    assert (dest / "model.bin").read_bytes() == (src / "model.bin").read_bytes()
    assert (dest / "sub" / "state.json").read_text() == '{"step": 7}'
    assert not (dest / "link").exists()


def _archive(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../escape.txt"])
def test_path_traversal_is_rejected(tmp_path: Path, name: str) -> None:
    _archive(tmp_path / "bad.tgz", tarfile.TarInfo(name), b"pwned")
    with pytest.raises(Rejected):
        unpack(tmp_path / "bad.tgz", tmp_path / "dest", max_bytes=MIB)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_rejected(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("innocent")
    link.type = kind
    link.linkname = "/etc/passwd"
    _archive(tmp_path / "bad.tgz", link)
    with pytest.raises(Rejected):
        unpack(tmp_path / "bad.tgz", tmp_path / "dest", max_bytes=MIB)
    assert not (tmp_path / "dest" / "innocent").exists()


def test_garbage_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(Rejected):
        unpack(tmp_path / "junk.tgz", tmp_path / "dest", max_bytes=MIB)


def test_a_gzip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # 64 MiB of zeros compress to about 64 KiB: far over a 1 MiB budget.
    member = tarfile.TarInfo("zeros.bin")
    _archive(tmp_path / "bomb.tgz", member, bytes(64 * MIB))
    assert (tmp_path / "bomb.tgz").stat().st_size < MIB
    with pytest.raises(Rejected, match="disk budget"):
        unpack(tmp_path / "bomb.tgz", tmp_path / "dest", max_bytes=MIB)
    assert not (tmp_path / "dest").exists()


def test_an_archive_of_too_many_entries_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "many.tgz", "w:gz") as tar:
        for i in range(10_001):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    with pytest.raises(Rejected, match="entries"):
        unpack(tmp_path / "many.tgz", tmp_path / "dest", max_bytes=MIB)


def test_a_directory_link_is_not_followed_when_packing(tmp_path: Path) -> None:
    secret = tmp_path / "node"
    secret.mkdir()
    (secret / "key.pem").write_text("PRIVATE")
    src = tmp_path / "src"
    _fill(src)
    os.symlink(secret, src / "sub2")
    assert pack_dir(src, tmp_path / "c.tgz") is not None
    with tarfile.open(tmp_path / "c.tgz") as tar:
        names = tar.getnames()
    assert "sub2" not in names
    assert not any("key.pem" in n for n in names)


def test_a_fifo_in_the_checkpoint_does_not_hang_packing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _fill(src)
    os.mkfifo(src / "pipe")
    assert pack_dir(src, tmp_path / "c.tgz") is not None
    with tarfile.open(tmp_path / "c.tgz") as tar:
        assert "pipe" not in tar.getnames()
