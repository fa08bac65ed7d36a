"""RFC 9162 Merkle Tree Hashes and proofs: known answers, a literal transcription of the RFC to
agree with, and tampering that must be caught."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lumbung.errors import ProofError, Rejected
from lumbung.ledger import merkle


def H(data: bytes) -> bytes:  # the RFC's name for SHA-256
    return hashlib.sha256(data).digest()


def leaves_of(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"entry %d" % i) for i in range(n)]


def flip_bit(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


# --- Known answers: the Certificate Transparency reference inputs (RFC 6962 test data) ---------

CT_INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (index, size, proof)
    (0, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (5, 8, ["bc1a0643", "ca854ea1", "d37ee418"]),
    (2, 3, ["fac54203"]),
    (1, 5, ["6e340b9c", "5f083f0a", "bc1a0643"]),
]
CT_CONSISTENCY = [  # (size1, size2, proof)
    (1, 1, []),
    (1, 8, ["96a296d2", "5f083f0a", "6b47aaf2"]),
    (6, 8, ["0ebc5d34", "ca854ea1", "d37ee418"]),
    (2, 5, ["5f083f0a", "bc1a0643"]),
]
CT_LEAVES = [merkle.leaf_hash(data) for data in CT_INPUTS]


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_roots_match_certificate_transparency_reference(size: int) -> None:
    assert merkle.root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == merkle.EMPTY_ROOT == H(b"")
    assert merkle.EMPTY_ROOT.hex().startswith("e3b0c442")


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_match_reference(index: int, size: int, expected: list[str]) -> None:
    proof = merkle.inclusion_proof(CT_LEAVES[:size], index)
    assert [node.hex()[:8] for node in proof] == expected
    merkle.verify_inclusion(CT_LEAVES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("size1", "size2", "expected"), CT_CONSISTENCY)
def test_consistency_proofs_match_reference(size1: int, size2: int, expected: list[str]) -> None:
    proof = merkle.consistency_proof(CT_LEAVES[:size2], size1)
    assert [node.hex()[:8] for node in proof] == expected
    root1, root2 = bytes.fromhex(CT_ROOTS[size1]), bytes.fromhex(CT_ROOTS[size2])
    merkle.verify_consistency(size1, size2, root1, root2, proof)


def test_small_trees_match_hand_computed_hashes() -> None:
    a, b, c, d, e, f, g = (H(b"\x00" + bytes([i])) for i in range(7))
    leaves = [a, b, c, d, e, f, g]

    def node(left: bytes, right: bytes) -> bytes:
        return H(b"\x01" + left + right)

    ab, cd, ef = node(a, b), node(c, d), node(e, f)
    assert merkle.leaf_hash(b"\x00") == a
    assert merkle.root(leaves[:1]) == a
    assert merkle.root(leaves[:2]) == ab
    assert merkle.root(leaves[:3]) == node(ab, c)
    assert merkle.root(leaves[:4]) == node(ab, cd)
    assert merkle.root(leaves[:5]) == node(node(ab, cd), e)
    assert merkle.root(leaves[:7]) == node(node(ab, cd), node(ef, g))
    assert merkle.inclusion_proof(leaves[:7], 6) == [ef, node(ab, cd)]
    assert merkle.inclusion_proof(leaves[:7], 2) == [d, ab, node(ef, g)]
    assert merkle.consistency_proof(leaves[:7], 3) == [c, d, ab, node(ef, g)]
    assert merkle.consistency_proof(leaves[:7], 4) == [node(ef, g)]


# --- A literal transcription of RFC 9162 to agree with --------------------------------------


def rfc_mth(d: Sequence[bytes]) -> bytes:
    """Section 2.1.1, recursion and slices as written."""
    n = len(d)
    if n == 0:
        return H(b"")
    if n == 1:
        return d[0]  # the inputs are already leaf hashes
    k = 1
    while k * 2 < n:
        k *= 2
    return H(b"\x01" + rfc_mth(d[:k]) + rfc_mth(d[k:]))


def rfc_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """Section 2.1.3.1."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*rfc_path(m, d[:k]), rfc_mth(d[k:])]
    return [*rfc_path(m - k, d[k:]), rfc_mth(d[:k])]


def rfc_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """Section 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [rfc_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*rfc_subproof(m, d[:k], b), rfc_mth(d[k:])]
    return [*rfc_subproof(m - k, d[k:], False), rfc_mth(d[:k])]


def rfc_inclusion_ok(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root_hash: bytes
) -> bool:
    """Section 2.1.3.2, one numbered step per block."""
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = H(b"\x01" + p + r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        else:
            r = H(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    return sn == 0 and r == root_hash


def rfc_consistency_ok(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """Section 2.1.4.2 for 0 < first < second; equal sizes need an empty proof (2.1.4.1)."""
    if first == second:
        return not path and first_hash == second_hash
    if not path:
        return False
    path = list(path)
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = H(b"\x01" + c + fr)
            sr = H(b"\x01" + c + sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn //= 2
                    sn //= 2
        else:
            sr = H(b"\x01" + sr + c)
        fn //= 2
        sn //= 2
    return fr == first_hash and sr == second_hash and sn == 0


def accepts_inclusion(*args: object) -> bool:
    try:
        merkle.verify_inclusion(*args)  # type: ignore[arg-type]
    except ProofError:
        return False
    return True


def accepts_consistency(*args: object) -> bool:
    try:
        merkle.verify_consistency(*args)  # type: ignore[arg-type]
    except ProofError:
        return False
    return True


@pytest.mark.parametrize("n", range(0, 40))
def test_root_and_proofs_equal_the_rfc_recursion_for_small_trees(n: int) -> None:
    leaves = leaves_of(n)
    assert merkle.root(leaves) == rfc_mth(leaves)
    for index in range(n):
        assert merkle.inclusion_proof(leaves, index) == rfc_path(index, leaves)
    for size1 in range(1, n + 1):
        assert merkle.consistency_proof(leaves, size1) == rfc_subproof(size1, leaves, True)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(40, 300), data=st.data())
def test_root_and_proofs_equal_the_rfc_recursion_for_larger_trees(
    n: int, data: st.DataObject
) -> None:
    leaves = leaves_of(n)
    index = data.draw(st.integers(0, n - 1))
    size1 = data.draw(st.integers(1, n))
    assert merkle.root(leaves) == rfc_mth(leaves)
    assert merkle.inclusion_proof(leaves, index) == rfc_path(index, leaves)
    assert merkle.consistency_proof(leaves, size1) == rfc_subproof(size1, leaves, True)


def test_verifiers_agree_with_the_rfc_on_changed_indices_and_sizes() -> None:
    """The root binds the tree, not the claimed size: accept exactly what the RFC accepts."""
    changed_claim_outcomes = set()
    for n in range(1, 25):
        leaves = leaves_of(n)
        roots = [merkle.root(leaves[:size]) for size in range(n + 1)]
        for index in range(n):
            proof = merkle.inclusion_proof(leaves, index)
            for claimed_index in range(n + 2):
                for claimed_size in range(n + 3):
                    args = (leaves[index], claimed_index, claimed_size, proof, roots[n])
                    expected = rfc_inclusion_ok(*args)
                    assert accepts_inclusion(*args) == expected, (index, n, args[1:3])
                    if (claimed_index, claimed_size) != (index, n):
                        changed_claim_outcomes.add(expected)
        for size1 in range(1, n + 1):
            proof = merkle.consistency_proof(leaves, size1)
            for claimed1 in range(1, n + 2):
                for claimed2 in range(claimed1, n + 3):
                    args2 = (claimed1, claimed2, roots[size1], roots[n], proof)
                    expected = rfc_consistency_ok(*args2)
                    assert accepts_consistency(*args2) == expected, (size1, n, claimed1, claimed2)
    # Some changed claims still verify under the RFC (the root is what binds), most do not.
    assert changed_claim_outcomes == {True, False}


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_verifiers_agree_with_the_rfc_on_any_claim_about_a_large_tree(
    n: int, data: st.DataObject
) -> None:
    leaves = leaves_of(n)
    root_hash = merkle.root(leaves)
    index = data.draw(st.integers(0, n - 1))
    claimed_index = data.draw(st.integers(0, 2 * n))
    claimed_size = data.draw(st.integers(0, 2 * n))
    args = (leaves[index], claimed_index, claimed_size, merkle.inclusion_proof(leaves, index))
    assert accepts_inclusion(*args, root_hash) == rfc_inclusion_ok(*args, root_hash)
    size1 = data.draw(st.integers(1, n))
    claimed1 = data.draw(st.integers(1, 2 * n))
    claimed2 = data.draw(st.integers(claimed1, 2 * n))
    old_root = merkle.root(leaves[:size1])
    proof = merkle.consistency_proof(leaves, size1)
    assert accepts_consistency(claimed1, claimed2, old_root, root_hash, proof) == (
        rfc_consistency_ok(claimed1, claimed2, old_root, root_hash, proof)
    )


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_every_proof_verifies_and_any_flipped_bit_is_rejected(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n)
    root_hash = merkle.root(leaves)
    index = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(leaves, index)
    merkle.verify_inclusion(leaves[index], index, n, proof, root_hash)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaves[index], index, n, proof, flip_bit(root_hash, bit))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(flip_bit(leaves[index], bit), index, n, proof, root_hash)
    for position in range(len(proof)):
        bad = [*proof[:position], flip_bit(proof[position], bit), *proof[position + 1 :]]
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaves[index], index, n, bad, root_hash)

    size1 = data.draw(st.integers(1, n))
    old_root = merkle.root(leaves[:size1])
    proof = merkle.consistency_proof(leaves, size1)
    merkle.verify_consistency(size1, n, old_root, root_hash, proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, n, flip_bit(old_root, bit), root_hash, proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, n, old_root, flip_bit(root_hash, bit), proof)
    for position in range(len(proof)):
        bad = [*proof[:position], flip_bit(proof[position], bit), *proof[position + 1 :]]
        with pytest.raises(ProofError):
            merkle.verify_consistency(size1, n, old_root, root_hash, bad)


def test_every_single_bit_of_a_deep_proof_is_load_bearing() -> None:
    leaves = leaves_of(300)
    root_hash = merkle.root(leaves)
    old_root = merkle.root(leaves[:77])
    inclusion = merkle.inclusion_proof(leaves, 201)
    consistency = merkle.consistency_proof(leaves, 77)
    for bit in range(256):
        assert not accepts_inclusion(leaves[201], 201, 300, inclusion, flip_bit(root_hash, bit))
        assert not accepts_consistency(77, 300, old_root, flip_bit(root_hash, bit), consistency)
        for position, node in enumerate(inclusion):
            bad = list(inclusion)
            bad[position] = flip_bit(node, bit)
            assert not accepts_inclusion(leaves[201], 201, 300, bad, root_hash)
        for position, node in enumerate(consistency):
            bad = list(consistency)
            bad[position] = flip_bit(node, bit)
            assert not accepts_consistency(77, 300, old_root, root_hash, bad)


# --- Malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_hashes_that_are_not_32_bytes_are_rejected(length: int) -> None:
    leaves = leaves_of(5)
    root_hash, proof = merkle.root(leaves), merkle.inclusion_proof(leaves, 2)
    wrong = b"\x07" * length
    with pytest.raises(ProofError, match="leaf hash"):
        merkle.verify_inclusion(wrong, 2, 5, proof, root_hash)
    with pytest.raises(ProofError, match="root"):
        merkle.verify_inclusion(leaves[2], 2, 5, proof, wrong)
    with pytest.raises(ProofError, match="proof hash 1"):
        merkle.verify_inclusion(leaves[2], 2, 5, [proof[0], wrong, proof[2]], root_hash)
    consistency = merkle.consistency_proof(leaves, 3)
    old_root = merkle.root(leaves[:3])
    with pytest.raises(ProofError, match="first root"):
        merkle.verify_consistency(3, 5, wrong, root_hash, consistency)
    with pytest.raises(ProofError, match="second root"):
        merkle.verify_consistency(3, 5, old_root, wrong, consistency)
    with pytest.raises(ProofError, match="proof hash 0"):
        merkle.verify_consistency(3, 5, old_root, root_hash, [wrong, *consistency[1:]])
    with pytest.raises(Rejected):
        merkle.root([*leaves, wrong])


def test_proofs_of_the_wrong_length_are_rejected_and_say_so() -> None:
    leaves = leaves_of(13)
    root_hash = merkle.root(leaves)
    proof = merkle.inclusion_proof(leaves, 6)
    with pytest.raises(ProofError, match="too short"):
        merkle.verify_inclusion(leaves[6], 6, 13, proof[:-1], root_hash)
    with pytest.raises(ProofError, match="too long"):
        merkle.verify_inclusion(leaves[6], 6, 13, [*proof, proof[0]], root_hash)
    old_root = merkle.root(leaves[:6])
    consistency = merkle.consistency_proof(leaves, 6)
    with pytest.raises(ProofError, match="too short"):
        merkle.verify_consistency(6, 13, old_root, root_hash, consistency[:-1])
    with pytest.raises(ProofError, match="too long"):
        merkle.verify_consistency(6, 13, old_root, root_hash, [*consistency, root_hash])
    with pytest.raises(ProofError, match="empty"):
        merkle.verify_consistency(6, 13, old_root, root_hash, [])


def test_impossible_positions_and_sizes_are_rejected() -> None:
    leaves = leaves_of(4)
    root_hash = merkle.root(leaves)
    proof = merkle.inclusion_proof(leaves, 3)
    with pytest.raises(ProofError, match="not in a tree"):
        merkle.verify_inclusion(leaves[3], 4, 4, proof, root_hash)
    with pytest.raises(ProofError, match="not in a tree"):
        merkle.verify_inclusion(leaves[0], 0, 0, [], merkle.EMPTY_ROOT)
    with pytest.raises(ProofError, match="negative"):
        merkle.verify_inclusion(leaves[3], -1, 4, proof, root_hash)
    with pytest.raises(ProofError, match="larger"):
        merkle.verify_consistency(4, 3, root_hash, merkle.root(leaves[:3]), [])
    with pytest.raises(Rejected):
        merkle.inclusion_proof(leaves, 4)
    with pytest.raises(Rejected):
        merkle.inclusion_proof([], 0)
    with pytest.raises(Rejected):
        merkle.consistency_proof(leaves, 5)


def test_consistency_from_the_empty_tree_is_rejected() -> None:
    leaves = leaves_of(4)
    with pytest.raises(Rejected):
        merkle.consistency_proof(leaves, 0)
    with pytest.raises(ProofError, match="from a tree of 0"):
        merkle.verify_consistency(0, 4, merkle.EMPTY_ROOT, merkle.root(leaves), [])
    with pytest.raises(ProofError, match="from a tree of 0"):
        merkle.verify_consistency(0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])


def test_equal_sizes_need_an_empty_proof_and_the_same_root() -> None:
    leaves = leaves_of(6)
    root_hash = merkle.root(leaves)
    assert merkle.consistency_proof(leaves, 6) == []
    merkle.verify_consistency(6, 6, root_hash, root_hash, [])
    with pytest.raises(ProofError, match="different roots"):
        merkle.verify_consistency(6, 6, root_hash, merkle.root(leaves_of(7)[1:]), [])
    with pytest.raises(ProofError, match="must be empty"):
        merkle.verify_consistency(6, 6, root_hash, root_hash, [root_hash])


def test_a_forked_history_fails_consistency() -> None:
    honest, forked = leaves_of(10), leaves_of(10)
    forked[3] = merkle.leaf_hash(b"rewritten")
    proof = merkle.consistency_proof(honest, 5)
    with pytest.raises(ProofError, match="root of size 5"):
        merkle.verify_consistency(5, 10, merkle.root(forked[:5]), merkle.root(honest), proof)
