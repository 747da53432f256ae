"""RFC 6962 Merkle trees: one root, whichever way it is built, and inclusion
paths that prove exactly one leaf at one index."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.protocol.merkle import (
    MerkleFrontier,
    MerkleTree,
    ProvenPaths,
    leaf_hash,
    node_hash,
    root_from_path,
)


def _rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH as RFC 6962 2.1 defines it: split at the largest power of two below n."""
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_rfc6962_root(leaves[:k]), _rfc6962_root(leaves[k:]))


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def test_the_tree_the_frontier_and_rfc_6962_agree_on_every_root_up_to_300_leaves() -> None:
    for n in range(1, 301):
        leaves = _leaves(n)
        frontier = MerkleFrontier()
        for leaf in leaves:
            frontier.append(leaf_hash(leaf))
        assert MerkleTree(leaves).root == frontier.root() == _rfc6962_root(leaves), n


def test_every_leaf_of_every_size_up_to_130_is_proven_by_its_path() -> None:
    for n in range(1, 131):
        leaves = _leaves(n)
        tree = MerkleTree(leaves)
        for i, leaf in enumerate(leaves):
            path = tree.path(i)
            assert len(path) <= max(1, (n - 1).bit_length())
            assert root_from_path(leaf, i, n, path) == tree.root


def test_a_batch_of_one_has_an_empty_path_and_its_root_is_the_leaf_hash() -> None:
    tree = MerkleTree([b"only"])
    assert tree.path(0) == []
    assert tree.root == leaf_hash(b"only")


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 200), st.data())
def test_a_path_proves_nothing_for_another_leaf_or_index(n: int, data: st.DataObject) -> None:
    # (The same path can lead to the same root under another size: the
    # leftmost leaves of 65 and 66 leaves have equal paths. That is why an
    # author signs the size with the root: protocol/envelope.batch_message.)
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
    path = tree.path(i)
    assert root_from_path(leaves[j], i, n, path) != tree.root
    assert root_from_path(leaves[i], j, n, path) != tree.root


@pytest.mark.parametrize(("index", "size", "path_len"), [(0, 0, 0), (5, 5, 3), (-1, 4, 2), (0, 4, 1), (0, 4, 3),
                                                         (0, 1, 1), (0, 2**64, 65)])
def test_impossible_proofs_are_none_not_an_exception(index: int, size: int, path_len: int) -> None:
    assert root_from_path(b"leaf", index, size, [b"\x00" * 32] * path_len) is None


# ---------------------------------------------------------------- a stream of paths


def test_proven_paths_gives_every_leaf_of_a_batch_its_root_in_order_and_out_of_order() -> None:
    proven = ProvenPaths()
    for n in (1, 2, 3, 7, 64, 65, 130):
        leaves = _leaves(n)
        tree = MerkleTree(leaves)
        for i in [*range(n), *reversed(range(n)), *range(0, n, 3)]:
            assert proven.root(leaves[i], i, n, tree.path(i)) == tree.root, (n, i)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_proven_paths_answers_as_root_from_path_whatever_came_before(data: st.DataObject) -> None:
    """Honest paths of several batches, interleaved with tampered ones (a
    flipped leaf, sibling, index or size, a path cut or lengthened): the
    remembered nodes never change an answer, nor let a bad path through."""
    proven = ProvenPaths()
    trees = {n: (MerkleTree(_leaves(n)), _leaves(n)) for n in data.draw(st.sets(st.integers(1, 40), min_size=1,
                                                                                   max_size=3), label="sizes")}
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        n = data.draw(st.sampled_from(sorted(trees)))
        tree, leaves = trees[n]
        i = data.draw(st.integers(0, n - 1))
        leaf, index, size, path = leaves[i], i, n, tree.path(i)
        tamper = data.draw(st.sampled_from(["none", "none", "leaf", "sibling", "index", "size", "cut", "longer"]))
        if tamper == "leaf":
            leaf = leaf[:-1] + bytes([leaf[-1] ^ 1])
        elif tamper == "sibling" and path:
            k = data.draw(st.integers(0, len(path) - 1))
            path = [*path[:k], bytes([path[k][0] ^ 1]) + path[k][1:], *path[k + 1:]]
        elif tamper == "index":
            index = data.draw(st.integers(-1, n))
        elif tamper == "size":
            size = data.draw(st.integers(0, 2 * n))
        elif tamper == "cut" and path:
            path = path[:-1]
        elif tamper == "longer":
            path = [*path, b"\x07" * 32]
        assert proven.root(leaf, index, size, path) == root_from_path(leaf, index, size, path)
