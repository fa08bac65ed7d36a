"""A root node's task uids: a block of its own among the nodes on this machine.

A node running as root runs task slot ``i`` as uid ``base + i``, never as root. Two nodes on one
machine must not share uids: their tasks would share one ``RLIMIT_NPROC`` count and could signal
each other. Each node takes a block of ``BLOCK`` uids from ``FIRST_UID``: it starts at the block
its data directory hashes to (so a restarted node usually gets its old uids back) and holds a lock
file for that block for as long as it runs; a block another running node holds is skipped. Where
the lock directory cannot be made (not root), the hashed block is used as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lumbung.errors import ConfigError

log = logging.getLogger(__name__)

FIRST_UID = 200_000
BLOCKS = 2048
BLOCK = 512  # two per slot, for the most slots a node may have (256)
LOCK_DIR = Path("/run/lumbung/uid-blocks")


@dataclass
class UidBlock:
    base: int
    lock: IO[bytes] | None  # open (and locked) while the node runs; closing it frees the block

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def hashed_block(data_dir: Path) -> int:
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).digest()
    return int.from_bytes(digest[:4], "big") % BLOCKS


def base_of(block: int) -> int:
    return FIRST_UID + block * BLOCK


def claim(data_dir: Path, lock_dir: Path = LOCK_DIR) -> UidBlock:
    """The first free block from the one ``data_dir`` hashes to, locked for this process."""
    first = hashed_block(data_dir)
    try:
        lock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot coordinate task uids with other nodes (%s): using block %d", exc, first)
        return UidBlock(base_of(first), None)
    for step in range(BLOCKS):
        block = (first + step) % BLOCKS
        lock = (lock_dir / f"{block}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return UidBlock(base_of(block), lock)
    raise ConfigError(
        f"all {BLOCKS} blocks of task uids are held by other nodes on this machine",
        field="task_uid_base",
    )
