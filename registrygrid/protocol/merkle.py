"""RFC 6962 Merkle trees: the audit ledger's signed heads, and the one
signature an author puts on a whole commit batch of changes.

Leaves and inner nodes hash with different prefixes (0x00, 0x01), so no leaf
can pass for a subtree. Built bottom-up, a level's unpaired last node moves
up unchanged, which gives exactly RFC 6962's tree (split at the largest power
of two below the size); ``tests/test_merkle.py`` checks the two agree for
every size up to a few hundred.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

EMPTY_ROOT = hashlib.sha256(b"").digest()
# A path has one hash per level: 64 levels cover any size a u64 can name.
MAX_PATH = 64


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()  # RFC 6962 2.1


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """Every level of the tree over ``leaves`` (the leaf data, hashed here):
    the root, and the inclusion path of any leaf, in O(log n) each."""

    __slots__ = ("levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        level = [leaf_hash(leaf) for leaf in leaves]
        levels = [level]
        while len(level) > 1:
            paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) & 1:
                paired.append(level[-1])
            level = paired
            levels.append(level)
        self.levels = levels

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def path(self, index: int) -> list[bytes]:
        """The sibling hashes from leaf ``index`` up to the root (RFC 6962's
        audit path, bottom first); empty for a tree of one leaf."""
        out = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            index >>= 1
        return out


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` proves ``leaf`` (data, hashed here) sits under
    at ``index`` of a tree of ``size`` leaves; None when the path cannot be
    one (wrong length for that index and size, or an index out of range)."""
    if not 0 <= index < size or len(path) > MAX_PATH:
        return None
    # Runs for every change received: the hashing is inlined (a call per
    # level was a tenth of a remote change's cost).
    sha256 = hashlib.sha256
    acc = sha256(b"\x00" + leaf).digest()
    used, count, width = 0, len(path), size
    while width > 1:
        if index & 1 or index + 1 < width:
            if used == count:
                return None
            sibling = path[used]
            acc = sha256(b"\x01" + sibling + acc if index & 1 else b"\x01" + acc + sibling).digest()
            used += 1
        index >>= 1
        width = (width + 1) >> 1
    return acc if used == count else None


class ProvenPaths:
    """``root_from_path`` for a stream of leaves, remembering the last
    path's nodes. A receiver gets a batch's changes together and in order,
    and neighbouring leaves share every node of their paths above the level
    where they meet: each leaf is hashed up to the first node it has in
    common with the last one (about two levels, not log2 of the batch), and
    the rest of the walk, the same inputs, gives the same root. One writer
    thread uses it; a reader of ``_last`` sees one whole tuple or another.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # (size, index, path, node at each level, path entries used below each level, root)
        self._last: tuple[int, int, Sequence[bytes], list[bytes], list[int], bytes] | None = None

    def root(self, leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
        """What ``root_from_path(leaf, index, size, path)`` returns."""
        if not 0 <= index < size or len(path) > MAX_PATH:
            return None
        last = self._last
        if last is not None and last[0] != size:
            last = None
        sha256 = hashlib.sha256
        acc = sha256(b"\x00" + leaf).digest()
        nodes, used_below = [acc], [0]
        used, count, width, position, level = 0, len(path), size, index, 0
        while True:
            if (last is not None and level < len(last[3]) and last[1] >> level == position
                    and last[3][level] == acc and path[used:] == last[2][last[4][level]:]):
                # The same node with the same siblings above it: the same
                # root. This leaf's path is remembered, its nodes above here
                # being the last one's, so the next leaf meets it low.
                shift = used - last[4][level]
                self._last = (size, index, path, nodes + last[3][level + 1:],
                              used_below + [u + shift for u in last[4][level + 1:]], last[5])
                return last[5]
            if width <= 1:
                break
            if position & 1 or position + 1 < width:
                if used == count:
                    return None
                sibling = path[used]
                acc = sha256(b"\x01" + sibling + acc if position & 1 else b"\x01" + acc + sibling).digest()
                used += 1
            position >>= 1
            width = (width + 1) >> 1
            level += 1
            nodes.append(acc)
            used_below.append(used)
        if used != count:
            return None
        self._last = (size, index, path, nodes, used_below, acc)
        return acc


class MerkleFrontier:
    """The roots of the perfect subtrees covering the leaves so far: O(log n)
    state that appends in O(log n) and yields the RFC 6962 root (the audit
    ledger grows its tree this way, one entry at a time)."""

    def __init__(self, size: int = 0, nodes: list[bytes] | None = None) -> None:
        self.size = size
        self.nodes = list(nodes or [])  # largest subtree first

    def append(self, leaf: bytes) -> None:
        node = leaf
        size = self.size
        while size & 1:
            node = node_hash(self.nodes.pop(), node)
            size >>= 1
        self.nodes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            acc = node_hash(node, acc)
        return acc

    def to_state(self) -> list[Any]:
        return [self.size, self.nodes]
