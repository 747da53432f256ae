"""Changes whose bytes are gone everywhere: what a peer says of them, and
what a node does with its word (docs/erasure.md, "Bytes no peer kept").

An erased change keeps its place in the chains of the nodes that erased
it, its bytes gone. A node that never saw the change and has no word that
vouches for its place (it refused the notice from the start: its signer's
key was revoked before it; or the change is another org's edit that no
node of that org could list) has no way to fill the place: its version
vector stops there for good, and the author's next change in the
registry waits for it.

So a sync answer names the places the puller lacks that the responder
holds without their bytes (``gone_places``), and a puller whose chain
stops in such a run links past it (``_link_past_gone``) as unseen links:
it never takes an ID on a peer's word (the author's next change names the
last one, as after any unseen link). Those places count as erased by a
notice that no longer counts, so the node asks for them on every sync (by
ID where it learned one, by place otherwise: ``_unseen_gone``) and takes
in any that comes (or drops its bytes, if its record was erased here
since): a peer that lies only delays them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from registrygrid.engine import subjects
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.engine.ops import IngestResult, LinkPastGone
from registrygrid.protocol.envelope import Envelope, open_envelope
from registrygrid.protocol.sync import MAX_GONE, MAX_GONE_RUN, MAX_WANTED, GonePlace
from registrygrid.storage import chains, changes, erasures, pending
from registrygrid.storage.store import Txn
from registrygrid.trust.statements import MEMBERS_REGISTRY


class GonePlaces(EngineCore):
    """The engine's side of gone places (mixed into Engine)."""

    # ---- the responder

    def gone_places(self, lacking: Mapping[tuple[str, str], tuple[int, int]], *,
                    withheld: subjects.Withheld | None = None) -> list[GonePlace]:
        """For each chain (registry, author) -> (after, sent): the runs of
        places after ``after`` that this node holds without their bytes
        (``_gone_here``), or keeps from the reader ``withheld`` judges for
        (engine/subjects.py), among the first ``sent`` places it holds with
        their bytes (what it sends) and the run right after them; at most
        MAX_GONE runs of at most MAX_GONE_RUN. Nothing (one read) on a node
        that holds no erasure, for chains of registries none is kept of."""
        out: list[GonePlace] = []
        with self.store.read() as txn:
            if not erasures.any_held(self.store, txn):
                if withheld is None:
                    return out
                lacking = {chain: held for chain, held in lacking.items()
                           if chain[0] in subjects.SUBJECT_REGISTRIES}
            for (registry, author), (after, sent) in sorted(lacking.items()):
                kept = withheld if withheld is not None and registry in subjects.SUBJECT_REGISTRIES else None
                for first, last in self._gone_runs(txn, registry, author, after, sent, kept):
                    out.append(GonePlace(registry, author, first, last))
                    if len(out) >= MAX_GONE:
                        return out
        self.metrics["sync.gone_said"] += len(out)
        return out

    def _gone_runs(self, txn: Txn, registry: str, author: str, after: int,
                   sent: int, withheld: subjects.Withheld | None) -> Iterator[tuple[int, int]]:
        """(first, last) of each run of gone places after ``after``, until
        the place held with its bytes past the first ``sent`` such, or
        MAX_GONE_RUN gone places in all (the puller asks again from there)."""
        held = walked = first = last = 0
        for seq, link in chains.links_after(self.store, txn, registry, author, after):
            if self._gone_here(txn, registry, author, seq, link) \
                    or (withheld is not None and withheld.change(txn, link)):
                first, last = first or seq, seq
                walked += 1
                if walked >= MAX_GONE_RUN:
                    break
                continue
            if first:
                yield first, last
                first = 0
            held += 1
            if held > sent:
                return
        if first:
            yield first, last

    def _gone_here(self, txn: Txn, registry: str, author: str, seq: int, link: bytes) -> bool:
        """Whether chain place ``seq``, linked to ``link``, is held here
        without its bytes: erased by a notice (one that counts here or not),
        linked past unseen on a notice's or a revocation's word, or on a
        peer's that it is gone."""
        return link == erasures.UNSEEN or changes.is_erased(self.store, txn, link)

    # ---- the puller

    def _link_past_gone(self, txn: Txn, batch: Batch, op: LinkPastGone) -> IngestResult:
        """A peer says ``op.place``'s places are gone where it is: if this
        node's chain stops inside that run, link past the rest of it as
        unseen links, and what waited for them goes on. They count as
        erased by a notice that no longer counts (``erasures.GONE``), so
        they are asked for with every sync and taken in if they come.
        Places past the author's revocation cutoff count nowhere: linked
        on the revocation's word, as a change past such a gap would have
        them. Anything else is ignored, and so is a run of a quarantined
        (forked) author's chain."""
        place = op.place
        registry, author = place.registry, place.author
        head, _ = self._head(txn, batch, registry, author)
        since = self.trust.quarantined_since(author, registry)
        if registry == MEMBERS_REGISTRY or not place.first <= head + 1 <= place.last \
                or (since is not None and since <= place.last):
            # Trust statements are never erased; a run this node's chain
            # does not stop in is not its gap; and past a forked author's
            # gap may be another branch (held as such, not linked into ours).
            self.metrics["sync.gone_ignored"] += 1
            return IngestResult("ignored", None)
        held = self._held_in_run(txn, registry, author, head + 1, place.last)
        last = place.last if held is None else held - 1
        if last <= head:
            # This node holds the change at its next place, waiting (for its
            # record's dependencies, say): what it waits for settles it.
            self.metrics["sync.gone_ignored"] += 1
            return IngestResult("ignored", None)
        if self._past_cutoff(registry, author, head + 1):  # type: ignore[attr-defined]
            warrant = erasures.PAST_CUTOFF
        else:
            warrant = erasures.GONE
            erasures.put_void(self.store, txn, erasures.GONE)
        erasures.vouch(self.store, txn, registry, author, head + 1, last, warrant, "")
        self._has_erasures = True
        self._fill_vouched(txn, batch, registry, author)  # type: ignore[attr-defined]
        self.metrics["sync.gone_linked"] += last - head
        self.audit.append(txn, at_ms=self.now_ms(), actor=f"peer:{op.peer}", action="update",
                          target=registry,
                          reason=f"changes {head + 1}..{last} of {author} are gone where {op.peer} is "
                                 "(held there without their bytes): linked past them; they are asked for, "
                                 "and taken in if they come")
        released = self._release(txn, batch, None, op.peer)  # type: ignore[attr-defined]
        return IngestResult("linked", None, released=tuple(released))

    def _held_in_run(self, txn: Txn, registry: str, author: str, first: int, last: int) -> int | None:
        """The lowest place in first..last whose change this node holds
        parked (it waits for its record's dependencies, say): not gone
        here. A scan of what is parked, as a notice's arrival makes
        (engine/erasure.py _drop_parked); only when a run is taken."""
        if not pending.any_waiting(self.store, txn):
            return None
        lowest: int | None = None
        for _, wire in pending.parked(self.store, txn):
            body = open_envelope(wire, verify=False).body
            if body.registry == registry and body.author == author and first <= body.seq <= last \
                    and (lowest is None or body.seq < lowest):
                lowest = body.seq
        return lowest

    def _unseen_gone(self, txn: Txn, limit: int = MAX_WANTED) -> Iterator[tuple[str, str, int]]:
        """(registry, author, seq) of each unseen link this node holds on the
        word of a notice that no longer counts, or of a peer that said it is
        gone: its ID is unknown here, so sync asks for it by place (the
        unseen-link ID: Engine.wanted); at most ``limit``."""
        count = 0
        for registry, author, first, last, notice in erasures.vouched_ranges(self.store, txn):
            if notice == erasures.PAST_CUTOFF or not erasures.is_void(self.store, txn, notice):
                continue
            for seq in range(first, last + 1):
                if chains.at(self.store, txn, registry, author, seq) == erasures.UNSEEN:
                    yield registry, author, seq
                    count += 1
                    if count >= limit:
                        return

    def _burned_gone(self, txn: Txn, env: Envelope) -> str | None:
        """The notice that erased ``env``'s record here, if ``env`` is a
        change this node linked past on a peer's word (its ID learned since,
        or its place still an unseen link) and its record is erased here
        since: it never knew the change was that record's."""
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
        self._keep_erased(txn, batch, env, notice)  # type: ignore[attr-defined]
        return IngestResult("erased", env.id)
