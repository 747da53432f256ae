"""Changes whose bytes are gone everywhere: what a peer says of them, and
what a node does with its word (docs/erasure.md, "Bytes no peer kept").

A notice that erased a change and then stopped counting (its signer's key
was revoked before it) leaves the change's place in the chains of the
nodes that honoured it, its bytes gone, and those nodes ask their peers
for it by ID. If no peer kept it, a node that refused the notice from the
start (it took the revocation first) and never saw the change has no way
to fill its place: the author's next change there waits for it for good.

So a sync answer names the changes asked for by ID whose bytes are gone
where it was (``gone_places``), and a node whose chain waits at such a
place links past it (``_link_past_gone``): only where it holds the
author's next change, whose signed ``prev`` names the place's change, and
only for the run of places from its own chain's head. It never learns the
run's other IDs (only a peer's word names them), so those stay unseen
links. Each such change is held as void-erased, so this node asks for it
by ID on every sync and takes it in if its bytes come: a peer that lies
only delays it. A node asks for the predecessor of the lowest change
parked in each chain (``_awaited_predecessors``), which is how the word
comes at all.
"""

from __future__ import annotations

from collections.abc import Iterator

from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.engine.ops import IngestResult, LinkPastGone
from registrygrid.engine.values import automerge_of
from registrygrid.protocol.envelope import Envelope, cid_to_str, open_envelope
from registrygrid.protocol.sync import MAX_WANTED, WANTED_DEPTH, GonePlace, Wanted
from registrygrid.storage import chains, changes, erasures, pending
from registrygrid.storage.store import Txn
from registrygrid.trust.statements import MEMBERS_REGISTRY


class GonePlaces(EngineCore):
    """The engine's side of gone places (mixed into Engine)."""

    # ---- the responder

    def gone_places(self, wanted: Wanted) -> list[GonePlace]:
        """The changes ``wanted`` names that this node holds at their places
        with their bytes erased by a notice that no longer counts (or on a
        peer's word that they are gone), each with the run of such places
        before it, at most WANTED_DEPTH long; at most MAX_WANTED."""
        out: list[GonePlace] = []
        with self.store.read() as txn:
            if not erasures.any_void(self.store, txn):
                return out
            for registry, authors in sorted(wanted.items()):
                for author, asked in sorted(authors.items()):
                    for seq, cid in sorted(asked):
                        if chains.at(self.store, txn, registry, author, seq) != cid \
                                or not self._gone_here(txn, registry, author, seq, cid):
                            continue
                        first = seq
                        while first > 1 and seq - first + 1 < WANTED_DEPTH:
                            link = chains.at(self.store, txn, registry, author, first - 1)
                            if link is None or not self._gone_here(txn, registry, author, first - 1, link):
                                break
                            first -= 1
                        out.append(GonePlace(registry, author, first, seq, cid))
                        if len(out) >= MAX_WANTED:
                            break
        self.metrics["sync.gone_said"] += len(out)
        return out

    def _gone_here(self, txn: Txn, registry: str, author: str, seq: int, link: bytes) -> bool:
        """Whether chain place ``seq``, linked to ``link``, holds no bytes here
        because a notice that no longer counts erased it (or a peer said so)."""
        if link == erasures.UNSEEN:
            vouched = erasures.vouched(self.store, txn, registry, author, seq)
            return vouched is not None and erasures.is_void(self.store, txn, vouched[0])
        if not changes.is_erased(self.store, txn, link):
            return False
        known = erasures.change(self.store, txn, link)
        return known is not None and erasures.is_void(self.store, txn, known["notice"])

    # ---- the puller

    def _awaited_predecessors(self, txn: Txn) -> Iterator[tuple[str, str, int, bytes]]:
        """(registry, author, seq, ID) of the change the lowest parked change
        of each chain waits for, as that change's ``prev`` names it: asked
        for by ID with a sync pass's first request (Engine.wanted), so that
        a peer that holds it sends it, and one whose bytes of it are gone
        says so."""
        count = 0
        for registry, author, seq, parked in pending.first_waiting_per_chain(self.store, txn):
            wire = pending.parked_wire(self.store, txn, parked)
            if wire is None or chains.at(self.store, txn, registry, author, seq) is not None:
                continue  # a stale key: released already
            prev = open_envelope(wire, verify=False).body.prev
            if prev:
                yield registry, author, seq, prev
                count += 1
                if count >= MAX_WANTED:
                    return

    def _link_past_gone(self, txn: Txn, batch: Batch, op: LinkPastGone) -> IngestResult:
        """A peer says ``op.place``'s changes are gone where it was: link
        past them if this node's chain stops in that run and holds parked
        the author's next change, which names the place's change as its
        prev (the peer's word covers the gap; the signed prev, the ID).
        Then what waited goes on. Anything else is ignored."""
        place = op.place
        registry, author = place.registry, place.author
        head, _ = self._head(txn, batch, registry, author)
        if registry == MEMBERS_REGISTRY or not place.first <= head + 1 <= place.seq \
                or not self._parked_after(txn, registry, author, place.seq, place.change):
            # Trust statements are never erased; a gap that is not this
            # node's, or a change it does not wait for, is not linked on
            # a peer's word.
            self.metrics["sync.gone_ignored"] += 1
            return IngestResult("ignored", cid_to_str(place.change))
        erasures.put_void(self.store, txn, erasures.GONE)
        erasures.vouch(self.store, txn, registry, author, head + 1, place.seq, erasures.GONE, "")
        self._has_erasures = True
        self._fill_vouched(txn, batch, registry, author)  # type: ignore[attr-defined]
        self._learn_unseen(txn, batch, registry, author, place.seq, place.change)  # type: ignore[attr-defined]
        self.metrics["sync.gone_linked"] += place.seq - head
        self.audit.append(txn, at_ms=self.now_ms(), actor=f"peer:{op.peer}", action="update",
                          target=f"{registry}/",
                          reason=f"changes {head + 1}..{place.seq} of {author} are gone where {op.peer} was "
                                 "(erased under a notice that no longer counts): linked past them; "
                                 "they are asked for by ID and taken in if their bytes come")
        released = self._release(txn, batch, None, op.peer)  # type: ignore[attr-defined]
        return IngestResult("linked", cid_to_str(place.change), released=tuple(released))

    def _burned_gone(self, txn: Txn, env: Envelope) -> str | None:
        """The notice that erased ``env``'s record here, if ``env`` is a
        change this node linked past on a peer's word (its ID learned so,
        or its place an unseen link so vouched for) and its record is
        erased here since: it never knew the change was that record's."""
        body = env.body
        held = erasures.mark(self.store, txn, body.registry, body.record)
        if held is None or not erasures.burned(held[1]):
            return None
        known = erasures.change(self.store, txn, env.cid)
        if known is not None:
            return held[0] if known["notice"] == erasures.GONE else None
        vouched = erasures.vouched(self.store, txn, body.registry, body.author, body.seq)
        return held[0] if vouched is not None and vouched[0] == erasures.GONE else None

    def _keep_gone_erased(self, txn: Txn, batch: Batch, env: Envelope, notice: str) -> IngestResult:
        """A change linked past on a peer's word came, and ``notice`` erased
        its record here since: its ID keeps its place, its bytes are
        dropped, and it is held as erased under ``notice`` (asked for no
        more), as any change of an erased record that comes late."""
        body = env.body
        chains.link(self.store, txn, body.registry, body.author, body.seq, env.cid)
        if self._head(txn, batch, body.registry, body.author)[0] == body.seq:
            batch.heads[(body.registry, body.author)] = self._chain_heads[(body.registry, body.author)] = \
                (body.seq, env.cid)
        changes.put_erased(self.store, txn, env.cid)
        erasures.put_change(self.store, txn, env.cid, body.registry, body.record, body.author, body.seq, notice)
        erasures.put_hash(self.store, txn, body.registry, body.record, automerge_of(env)[0], notice)
        self.metrics["erasure.dropped_on_arrival"] += 1
        return IngestResult("erased", env.id)

    def _parked_after(self, txn: Txn, registry: str, author: str, seq: int, cid: bytes) -> bool:
        """Whether a change parked here waits for place ``seq`` of the chain
        and names ``cid`` as its prev."""
        return any(open_envelope(wire, verify=False).body.prev == cid
                   for wire in pending.waiting_for(self.store, txn, registry, author, seq))
