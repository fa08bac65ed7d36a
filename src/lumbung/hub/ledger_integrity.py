"""Checking the stored log against itself before the hub serves it.

The store is not trusted to hold what the hub wrote. A database edited behind the hub's back (a
leaf deleted, two leaves swapped, a tree node or the checkpoint changed) must stop the hub at
start: otherwise it signs checkpoints over a tree its leaves no longer give, or finds every
append colliding with a row left behind and answers 409 for ever.

So while it replays the leaves the hub rebuilds the tree's right frontier from their hashes
(``lumbung.ledger.tree.Frontier``) and compares every node they complete with the stored one
(``check_page``); then it checks nothing is stored beyond the log's size (``check_nothing_beyond``)
and opens the latest checkpoint with its own key and compares its size and root with the rebuilt
tree (``check_checkpoint``). Each raises ``Corrupted`` naming the first bad leaf or node. The cost
is a SHA-256 per leaf and per interior node and one read of the stored nodes: seconds on a
million entries, beside the minute their signatures take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lumbung.errors import ConfigError, Corrupted, LumbungError
from lumbung.ledger.checkpoint import Checkpoint, open_checkpoint
from lumbung.ledger.merkle import leaf_hash
from lumbung.ledger.note import SIG_TYPE_ED25519, key_id, parse_note
from lumbung.ledger.tree import Frontier, NodeKey, completed_ranges
from lumbung.store.ledger import LedgerStore

# Levels a tree of up to 2^63 leaves can have, and an index bound above any stored one.
_LEVELS = 64
_NO_END = (1 << 63) - 1


def check_page(log: LedgerStore, frontier: Frontier, end: int, page: Sequence[bytes]) -> None:
    """Extend ``frontier`` (the rebuilt tree of the leaves before this page) by ``page``, the
    stored leaves [frontier.size, end), and check each node they complete against the store."""
    start = frontier.size
    hashes = [leaf_hash(leaf) for leaf in page]
    stored = log.node_ranges(completed_ranges(start, end))
    if len(page) != end - start:
        index = next(
            (start + i for i, h in enumerate(hashes) if stored.get((0, start + i)) != h),
            start + len(page),
        )
        raise Corrupted(
            f"leaf {index} is missing from the store: it holds {len(page)} of the "
            f"{end - start} leaves from {start} to {end - 1}"
        )
    rebuilt = frontier.extend(hashes)
    if stored != rebuilt:
        raise Corrupted(_first_difference(rebuilt, stored))


def _first_difference(rebuilt: dict[NodeKey, bytes], stored: dict[NodeKey, bytes]) -> str:
    # Nodes come out of Frontier.extend in the order the leaves complete them: the first that
    # differs names the first leaf (level 0) or subtree the database no longer agrees with.
    level, index = next(key for key, value in rebuilt.items() if stored.get(key) != value)
    what = "is missing from" if (level, index) not in stored else "does not match"
    if level == 0:
        return f"leaf {index} {what} the stored tree: its hash is not node (0, {index})"
    first, last = index << level, ((index + 1) << level) - 1
    return f"tree node ({level}, {index}) {what} its leaves {first} to {last} in the store"


def check_nothing_beyond(log: LedgerStore, size: int) -> None:
    """Refuse a leaf or node stored past the log's ``size``: what is left of a deleted tail, on
    which every later append would collide. Node (level, i) is complete only if
    i < size >> level."""
    beyond = log.node_ranges([(level, size >> level, _NO_END) for level in range(_LEVELS)])
    if beyond:
        # The first is the one whose last leaf comes first: a node is stray from that leaf on.
        level, index = min(beyond, key=lambda key: ((key[1] + 1) << key[0], key[0]))
        if level == 0:
            raise Corrupted(
                f"leaf {index}'s hash (node (0, {index})) is stored beyond the log's {size} "
                "leaves: a leaf was deleted, or the size edited"
            )
        raise Corrupted(f"tree node ({level}, {index}) is stored beyond the log's {size} leaves")
    if log.leaves(size, size + 1):
        raise Corrupted(f"leaf {size} is stored beyond the log's {size} leaves")


def check_checkpoint(
    log: LedgerStore, origin: str, public_key: bytes, size: int, root_at: Callable[[int], bytes]
) -> int:
    """The size of the latest stored checkpoint after checking it (-1 if there is none yet).

    It must be signed by this hub's key (``ConfigError`` if another key signed the log: hubs
    sharing a database share the key file), name the size it is stored under, sign no more than
    the ``size`` leaves stored (a crash between an append and its checkpoint leaves it smaller,
    which is fine), and sign the root ``root_at`` gives for its size.
    """
    try:
        signed_size, note = log.latest_checkpoint()
    except LumbungError:  # NotFound: a new log, not signed yet
        return -1
    cp = _open(note, origin, public_key, signed_size)
    if cp.size != signed_size:
        raise Corrupted(f"the checkpoint stored for size {signed_size} signs size {cp.size}")
    if cp.size > size:
        raise Corrupted(
            f"leaf {size} is missing from the store: the latest checkpoint signs {cp.size} "
            f"leaves but the store holds {size}"
        )
    if cp.root != root_at(cp.size):
        raise Corrupted(
            f"the latest checkpoint (size {cp.size}) signs a root the stored leaves do not give"
        )
    return signed_size


def _open(note: str, origin: str, public_key: bytes, signed_size: int) -> Checkpoint:
    try:
        _, lines = parse_note(note)
    except LumbungError as exc:
        raise Corrupted(f"the checkpoint stored for size {signed_size} is not a note") from exc
    kid = key_id(origin, SIG_TYPE_ED25519, public_key)
    if not any(line.name == origin and line.key_id == kid for line in lines):
        raise ConfigError(
            f"this database's ledger is not signed by this hub's key ({origin}): "
            "hubs sharing a database must share the hub key file",
            field="data_dir",
        )
    try:
        return open_checkpoint(note, origin, public_key)
    except LumbungError as exc:
        raise Corrupted(
            f"the checkpoint stored for size {signed_size} carries this hub's signature, but "
            f"it does not verify: {exc.message}"
        ) from exc
