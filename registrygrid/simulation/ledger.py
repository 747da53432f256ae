"""A simulated node's store: signed changes by author chain, in memory.

The large-scale simulator (node/simulator.py) runs a thousand nodes in one
process; a thousand LMDB stores and engines would measure the disk, not the
protocol. A ``Ledger`` keeps what replication needs and checks what a
replica checks before it counts a change: the envelope's signature (batch
roots verified once per process, protocol/envelope.py) and its place in its
author's chain (sequence and ``prev``). A change whose predecessor has not
arrived waits, as the engine parks it, and is released when it comes. It is
a ``ChangeSource`` (protocol/sync.py), so ``answer_sync`` serves from it
exactly as from the engine. It does not materialize records (no Automerge,
no schemas, no trust policy): a simulation measures how changes spread, and
the engine's own tests cover what it does with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import claimed_id, open_envelope
from registrygrid.protocol.sync import WANTED_DEPTH, GonePlace, HeadTags, Vector, Wanted, head_tag
from registrygrid.protocol.sync_session import Applied


@dataclass
class Ledger:
    chains: dict[tuple[str, str], list[tuple[bytes, bytes]]] = field(default_factory=dict)  # -> [(id, wire)]
    ids: set[bytes] = field(default_factory=set)
    waiting: dict[tuple[str, str, int], bytes] = field(default_factory=dict)  # (registry, author, seq) -> wire
    refused: int = 0

    def has(self, ids: Sequence[bytes]) -> set[bytes]:
        return {cid for cid in ids if cid in self.ids}

    def apply(self, wires: Iterable[bytes]) -> tuple[Applied, list[bytes]]:
        """Take ``wires`` in; the counts, and the IDs of the changes that now
        count (released ones included), in the order they came to count."""
        applied: list[bytes] = []
        duplicate = pending = rejected = 0
        for wire in wires:
            try:
                env = open_envelope(wire)
            except RegistryError:
                rejected += 1
                self.refused += 1
                continue
            if env.cid in self.ids:
                duplicate += 1
                continue
            body = env.body
            chain = self.chains.setdefault((body.registry, body.author), [])
            if body.seq <= len(chain):
                duplicate += 1  # another envelope for a held position: the engine's equivocation case
                continue
            if body.seq > len(chain) + 1:
                self.waiting[(body.registry, body.author, body.seq)] = wire
                pending += 1
                continue
            if body.prev != (chain[-1][0] if chain else b""):
                rejected += 1
                self.refused += 1
                continue
            self._append(chain, env.cid, wire)
            applied.append(env.cid)
            applied += self._release(body.registry, body.author, chain)
        return Applied(len(applied), duplicate, pending, rejected), applied

    def _append(self, chain: list[tuple[bytes, bytes]], cid: bytes, wire: bytes) -> None:
        chain.append((cid, wire))
        self.ids.add(cid)

    def _release(self, registry: str, author: str, chain: list[tuple[bytes, bytes]]) -> list[bytes]:
        released = []
        while (wire := self.waiting.pop((registry, author, len(chain) + 1), None)) is not None:
            env = open_envelope(wire)
            if env.body.prev != chain[-1][0]:
                self.refused += 1
                break
            self._append(chain, env.cid, wire)
            released.append(env.cid)
        return released

    # ---- ChangeSource (protocol/sync.py): what answer_sync reads

    def replicated_vector(self, registries: Iterable[str] | None = None, *, reader: str | None = None) -> Vector:
        wanted = set(registries) if registries is not None else None
        vector: Vector = {}
        for (registry, author), chain in sorted(self.chains.items()):
            if chain and (wanted is None or registry in wanted):
                vector.setdefault(registry, {})[author] = len(chain)
        return vector

    def envelopes_after(self, registry: str, author: str, after_seq: int, *, limit: int,
                        max_bytes: int) -> list[bytes]:
        out: list[bytes] = []
        size = 0
        for _, wire in self.chains.get((registry, author), [])[after_seq:after_seq + limit]:
            if out and size + len(wire) > max_bytes:
                break
            out.append(wire)
            size += len(wire)
        return out

    def other_links(self, vector: Vector, heads: HeadTags, *, max_bytes: int) -> list[bytes]:
        out: list[bytes] = []
        size = 0
        for registry, tags in sorted(heads.items()):
            for author, tag in sorted(tags.items()):
                chain = self.chains.get((registry, author), [])
                seq = vector.get(registry, {}).get(author, 0)
                if not 1 <= seq <= len(chain) or head_tag(chain[seq - 1][0]) == tag:
                    continue
                wire = chain[seq - 1][1]
                if out and size + len(wire) > max_bytes:
                    continue
                out.append(wire)
                size += len(wire)
        return out

    def unreported_forks(self, registries: Collection[str], *, max_bytes: int) -> list[bytes]:
        return []  # a ledger keeps no evidence: it holds one branch and counts the rest as duplicates

    def gone_places(self, lacking: Mapping[tuple[str, str], tuple[int, int]]) -> list[GonePlace]:
        """Nothing: a ledger erases nothing, so no change's bytes are gone."""
        return []

    def wanted_links(self, wanted: Wanted, *, max_bytes: int) -> list[bytes]:
        """The asked changes this ledger's chains hold, each with up to
        WANTED_DEPTH links before it, oldest first (a ledger holds one
        branch of each chain, and no evidence)."""
        out: list[bytes] = []
        sent: set[bytes] = set()  # a walk stops at a link an ask above it sent (as the engine's does)
        size = 0
        for registry, authors in sorted(wanted.items()):
            for author, asked in sorted(authors.items()):
                chain = self.chains.get((registry, author), [])
                for seq, cid in sorted(asked, reverse=True):
                    if not 1 <= seq <= len(chain) or chain[seq - 1][0] != cid:
                        continue
                    walk = []
                    for link, wire in reversed(chain[max(seq - WANTED_DEPTH, 0):seq]):
                        if link in sent:
                            break
                        walk.append((link, wire))
                    for link, wire in reversed(walk):
                        if out and size + len(wire) > max_bytes:
                            return out
                        out.append(wire)
                        sent.add(link)
                        size += len(wire)
        return out

    def digest(self) -> str:
        """One hash of every chain: equal on two ledgers holding the same changes."""
        h = hashlib.sha256()
        for (registry, author), chain in sorted(self.chains.items()):
            h.update(f"{registry}\0{author}\0{len(chain)}\0".encode())
            if chain:
                h.update(chain[-1][0])
        return h.hexdigest()


def change_id(wire: bytes) -> bytes:
    return claimed_id(wire)
