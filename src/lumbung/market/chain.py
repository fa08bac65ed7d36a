"""A task's checkpoint chain as a resuming node sees it: from its end back to its first link.

The store keeps every link a task ever had, in the order they came (``seq``). The chain is what
the task's end (``Task.last_checkpoint_sha``) reaches by following each link's ``prev_sha256``:
after a node could not restore a link and fell back to an earlier one, the links it skipped
are off the chain, and the rejected ones stay off it even when the same bytes come again.
"""

from __future__ import annotations

from collections.abc import Sequence

from lumbung.market.model import CheckpointLink


def live_chain(links: Sequence[CheckpointLink], end_sha: str | None) -> list[CheckpointLink]:
    """The links from the one ``end_sha`` names back to the chain's start, newest first,
    skipping rejected links.

    Every step goes to an older link (a lower ``seq``): a link names the end of the chain as it
    was when the link was made, so a checkpoint whose bytes come again later cannot make a loop.
    """
    by_sha: dict[str, list[CheckpointLink]] = {}
    for link in sorted(links, key=lambda c: c.seq, reverse=True):
        if link.rejected is None:
            by_sha.setdefault(link.sha256, []).append(link)
    chain: list[CheckpointLink] = []
    sha, before = end_sha, None
    while sha is not None:
        found = next((c for c in by_sha.get(sha, []) if before is None or c.seq < before), None)
        if found is None:
            break  # only a store edited by hand loses a link; the rest of the chain is unknown
        chain.append(found)
        sha, before = found.prev_sha256, found.seq
    return chain
