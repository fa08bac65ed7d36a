"""Checking the signatures of many log leaves at once, over every core when there are enough.

An auditor replaying a million entries, and a hub replaying its log at start, spend most of their
time in Ed25519 verification (about 65 us each here), which is independent per entry: so the
leaves are verified in worker processes first, and then replayed in order on one core with
``Ledger.apply_verified``. The check is the same either way; only where it runs differs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType

from lumbung.errors import LumbungError, Unauthenticated
from lumbung.ledger.entries import decode_leaf, verify_entry

# Fewer leaves than this are checked in-process: starting workers would cost more than it saves.
PARALLEL_MIN_LEAVES = 4_000


class SignatureChecker:
    """Raises ``Unauthenticated`` naming the first leaf whose signature (or form) is bad."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def check(self, leaves: Sequence[bytes], first_index: int) -> None:
        """Check ``leaves``, the first of which is leaf ``first_index`` of the log."""
        if self.workers < 2 or len(leaves) < PARALLEL_MIN_LEAVES:
            failure = first_bad_signature(leaves, first_index)
        else:
            if self._pool is None:
                # forkserver, not fork: the caller may have threads (an HTTP client's, a server's).
                context = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            step = -(-len(leaves) // self.workers)
            starts = range(0, len(leaves), step)
            chunks = [leaves[i : i + step] for i in starts]
            firsts = [first_index + i for i in starts]
            results = self._pool.map(first_bad_signature, chunks, firsts)
            failure = next((f for f in results if f), None)
        if failure is not None:
            index, message = failure
            raise Unauthenticated(f"leaf {index}: {message}", field="signature")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> SignatureChecker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def first_bad_signature(leaves: Sequence[bytes], first_index: int) -> tuple[int, str] | None:
    """(index, why) of the first leaf that does not parse or whose signature fails; else None.

    Runs in worker processes: it returns what failed instead of raising, so nothing has to be
    pickled back but a short message.
    """
    for offset, leaf in enumerate(leaves):
        try:
            verify_entry(decode_leaf(leaf))
        except LumbungError as exc:
            return first_index + offset, exc.message
    return None
