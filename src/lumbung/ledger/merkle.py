"""Merkle Tree Hashes and their proofs, exactly as RFC 9162 section 2.1 defines them.

These are the reference functions: they take the whole list of leaf hashes, so they are the
yardstick that ``lumbung.ledger.tree`` (which reads O(log n) stored nodes instead) is tested
against, and the verifiers here are what any auditor runs against a log it does not trust.

Every hash is 32 bytes of SHA-256. Leaves and interior nodes are hashed with different one-byte
prefixes (0x00 and 0x01, section 2.1.1) so that a leaf can never be passed off as an interior node.
Verification (sections 2.1.3.2 and 2.1.4.2) is written as the RFC's loops over the bits of the
index and sizes: no recursion, one SHA-256 per proof element.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from lumbung.errors import ProofError, Rejected

HASH_SIZE_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256() (section 2.1.1)

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0)) (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The interior node SHA-256(0x01 || left || right) (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """k, the largest power of two smaller than n (n >= 2): where section 2.1.1 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


# --- Building (sections 2.1.1, 2.1.3.1, 2.1.4.1) ---------------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]), the Merkle Tree Hash of a list of leaf hashes (RFC 9162 section 2.1.1)."""
    _check_leaves(leaf_hashes)
    return _range_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]), the inclusion proof of leaf ``index`` (RFC 9162 section 2.1.3.1).

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])      if m < k
                  = PATH(m - k, D[k:n]) : MTH(D[0:k])  if m >= k
    The recursion is unrolled top-down; the siblings it meets are the proof read backwards.
    """
    _check_leaves(leaf_hashes)
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise Rejected(f"leaf index {index} is not in a tree of {size} leaves", field="index")
    siblings: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = largest_power_of_two_below(hi - lo)
        if m < k:
            siblings.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            siblings.append(_range_root(leaf_hashes, lo, lo + k))
            lo, m = lo + k, m - k
    siblings.reverse()
    return siblings


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(m, D[n]) between the first ``size1`` leaves and all of them (RFC 9162 2.1.4.1).

    PROOF(m, D[n]) = SUBPROOF(m, D[n], true), where
    SUBPROOF(m, D[m], true)  = {}
    SUBPROOF(m, D[m], false) = {MTH(D[m])}
    SUBPROOF(m, D[n], b)     = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          if m <= k
                             = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  if m > k
    The proof between equal sizes is empty; a proof from the empty tree is not defined.
    """
    _check_leaves(leaf_hashes)
    size2 = len(leaf_hashes)
    if not 0 < size1 <= size2:
        raise Rejected(
            f"no consistency proof from size {size1} to size {size2}: need 0 < size1 <= size2",
            field="size1",
        )
    found: list[bytes] = []
    lo, hi, m, whole = 0, size2, size1, True
    while m != hi - lo:
        k = largest_power_of_two_below(hi - lo)
        if m <= k:
            found.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            found.append(_range_root(leaf_hashes, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        found.append(_range_root(leaf_hashes, lo, hi))
    found.reverse()
    return found


def _range_root(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) without slicing: a stack of perfect-subtree roots, merged like a counter.

    After leaf j the stack holds one root per set bit of (j - lo + 1), biggest first; the MTH is
    those roots folded from the right, because section 2.1.1 always splits off the largest power
    of two on the left.
    """
    if hi == lo:
        return EMPTY_ROOT
    stack: list[bytes] = []
    for count in range(1, hi - lo + 1):
        top = leaf_hashes[lo + count - 1]
        while count & 1 == 0:  # each trailing zero of the count closes one perfect subtree
            top = node_hash(stack.pop(), top)
            count >>= 1
        stack.append(top)
    result = stack.pop()
    while stack:
        result = node_hash(stack.pop(), result)
    return result


def _check_leaves(leaf_hashes: Sequence[bytes]) -> None:
    for position, value in enumerate(leaf_hashes):
        if len(value) != HASH_SIZE_BYTES:
            raise Rejected(
                f"leaf hash {position} is {len(value)} bytes, not {HASH_SIZE_BYTES}",
                field="leaf_hashes",
            )


# --- Verifying (sections 2.1.3.2 and 2.1.4.2) ---------------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    The algorithm of RFC 9162 section 2.1.3.2, step by step; raises ProofError on any failure.
    """
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    _check_proof_hashes(proof)
    if index < 0 or size < 0:
        raise ProofError(f"index {index} and size {size} must not be negative")
    if index >= size:  # step 1
        raise ProofError(f"leaf index {index} is not in a tree of {size} leaves")
    fn, sn = index, size - 1  # step 2
    r = leaf_hash  # step 3
    for p in proof:  # step 4
        if sn == 0:  # 4a
            raise ProofError(f"inclusion proof of {len(proof)} hashes is too long")
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1  # 4c
    if sn != 0:  # step 5
        raise ProofError(f"inclusion proof of {len(proof)} hashes is too short")
    if r != root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root")


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``size2`` leaves, ``root2``, extends the one of ``size1``, ``root1``.

    The algorithm of RFC 9162 section 2.1.4.2, which is stated for 0 < size1 < size2; for
    size1 == size2 the proof is empty (section 2.1.4.1) and the roots must be equal. Raises
    ProofError on any failure, including a proof from the empty tree (there is nothing to prove).
    """
    _check_hash(root1, "first root")
    _check_hash(root2, "second root")
    _check_proof_hashes(proof)
    if size1 <= 0:
        raise ProofError(f"no consistency proof from a tree of {size1} leaves")
    if size1 > size2:
        raise ProofError(f"first size {size1} is larger than second size {size2}")
    if size1 == size2:
        if proof:
            raise ProofError(f"proof between equal sizes must be empty, has {len(proof)} hashes")
        if root1 != root2:
            raise ProofError(f"two different roots for the same size {size1}")
        return
    if not proof:  # step 1
        raise ProofError(f"consistency proof from {size1} to {size2} is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # step 2: first is an exact power of 2
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            raise ProofError(f"consistency proof of {len(proof)} hashes is too long")
        if fn & 1 or fn == sn:  # 6b
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1  # 6c
    if sn != 0:  # step 7
        raise ProofError(f"consistency proof of {len(proof)} hashes is too short")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to the root of size {size2}")


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE_BYTES:
        length = len(value) if isinstance(value, bytes) else type(value).__name__
        raise ProofError(f"{what} must be {HASH_SIZE_BYTES} bytes, got {length}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _check_hash(value, f"proof hash {position}")
