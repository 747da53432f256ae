"""Disputes in the engine: equivocations reported and quarantined, resolutions counted.

crdt/disputes.py defines the records of ``grid.disputes`` and checks their
evidence; this part of the engine acts on them, identically on every node:

* a node that sees an author sign two changes with one sequence, or a
  change whose ``prev`` is not the author's change before it that the node
  holds, files an equivocation report (a local write, so it replicates
  like any record);
* a node that stores a report compares its two changes with its own chain
  of the author, and files what that proves in turn: reports walk back,
  between nodes holding either branch, to where the fork began (a node
  that only syncs first meets a fork where the branches' heads part,
  past where they did), and carry each branch's changes to the nodes
  holding the other;
* a stored report quarantines the author's changes in that registry from
  that sequence on (trust/state.py), and the records they touched are
  rebuilt without them (rebuild.py), whatever order things arrived in;
* a quarantined author's change that this node's chain cannot take (the
  other branch of the fork: this node holds its own) is kept as evidence
  and marked on its record, so that what builds on it is refused here as
  on the nodes that hold that branch, instead of waiting for it for ever;
* a report's change whose prev this node lacks (the other branch's, which
  only sync could bring and its vector never asks for) is asked for by ID
  with the next sync (``wanted``); a peer holding it sends it with the
  links before it (``wanted_links``), so the walk back goes on even where
  the only node holding that branch may not file reports;
* a node that met a fork it could not report shows the fork's changes to
  its peers (``unreported_forks``), which report it;
* a stored resolution resettles the records that hold its dispute, and the
  resolver (crdt/resolver.py) shows its value when its author may decide.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from registrygrid.crdt import disputes
from registrygrid.crdt.conflicts import ABSENT
from registrygrid.crdt.resolver import Resolution
from registrygrid.engine import subjects
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.engine.ops import Put
from registrygrid.errors import RegistryError, ValidationError
from registrygrid.engine.values import automerge_of
from registrygrid.protocol.envelope import Envelope, open_envelope
from registrygrid.protocol.sync import MAX_UNREPORTED, MAX_WANTED, WANTED_DEPTH, Wanted
from registrygrid.storage import chains, changes, erasures, pending, records
from registrygrid.storage.store import Txn
from registrygrid.trust import access


# How many places asked for by ID ``wanted`` reads, in MAX_WANTEDs: it asks
# for them MAX_WANTED at a time, in turns.
_WANTED_SCAN = 16


class Disputing(EngineCore):
    """The engine's handling of grid.disputes (mixed into Engine)."""

    def _check_dispute_record(self, record_id: str, kind: str, fields: Any, tags: Any) -> None:
        """A grid.disputes record is its own evidence: checked before it is
        stored, for local writes and remote changes alike."""
        if kind != disputes.REPORT_KIND and record_id.startswith("dispute-"):
            # An equivocation's dispute id is public (a hash of the two
            # change ids): a record of another kind under it made every node
            # take the report as filed, so nothing was quarantined and the
            # nodes kept the two branches apart for good.
            raise ValidationError(f"{disputes.DISPUTES_REGISTRY} ids that start with dispute- are the "
                                  f"equivocation reports' own; a {kind} takes another id")
        if kind == disputes.REPORT_KIND:
            disputes.read_report(record_id, fields)
        elif kind == disputes.RESOLUTION_KIND:
            disputes.check_resolution(fields, tags or ())

    def _report_equivocation(self, txn: Txn, batch: Batch, env: Envelope, other_cid: bytes | None) -> None:
        """File the proof that ``env``'s author equivocated: ``other_cid`` is
        the author's change this node holds with ``env``'s sequence, or with
        the one before it that ``env``'s prev does not name (once per
        dispute, whoever files it first). Never fails the intake: a node
        that may not write grid.disputes (no delegation yet) counts it and
        goes on."""
        if other_cid is None or other_cid in batch.drafts:
            return
        other = changes.envelope(self.store, txn, other_cid)
        if other is None or not disputes.proves_fork(env, other):
            return
        try:
            fields = disputes.report_fields(env, other)
            dispute = disputes.equivocation_id(env.body.author, env.body.registry, fields["seq"],
                                               fields["changes"])
            if records.get_record(self.store, txn, disputes.DISPUTES_REGISTRY, dispute) is not None \
                    or records.refused_changes(self.store, txn, disputes.DISPUTES_REGISTRY, dispute):
                return  # filed already: a report kept refused proves it too (_take_refused_report)
            self._put(txn, batch, Put(disputes.DISPUTES_REGISTRY, disputes.REPORT_KIND, fields,  # type: ignore[attr-defined]
                                      record_id=dispute, actor="equivocation detector"))
            self.metrics["equivocation.reported"] += 1
        except RegistryError as exc:
            self.metrics[f"equivocation.unreported.{exc.code}"] += 1

    def _hold_forked(self, txn: Txn, batch: Batch, env: Envelope, *, as_evidence: bool = True) -> None:
        """Hold ``env`` as the other branch of its author's fork, if a
        quarantine covers it and this node's chain does not hold it (it
        conflicts with a held link, breaks the chain, or waits past a gap):
        kept as evidence, and its Automerge hash marked on its record. Sync
        never brings the rest of that branch (this node's vector names those
        positions already), so a change built on it would otherwise wait for
        ever, and its author's later changes behind it; refused instead, as
        on the nodes that hold the branch (it builds on a quarantined change).
        What waited for the record is released (batch.unblocked)."""
        body = env.body
        since = self.trust.quarantined_since(body.author, body.registry)
        if since is None or body.seq < since:
            return
        if chains.at(self.store, txn, body.registry, body.author, body.seq) == env.cid:
            return
        automerge_hash = automerge_of(env)[0]
        if records.is_forked(self.store, txn, body.registry, body.record, automerge_hash):
            return
        if as_evidence:
            pending.keep_evidence(self.store, txn, body.registry, body.author, body.seq, env.cid, env.wire)
            self._take_report_held_as_evidence(txn, batch, env)
        records.mark_forked(self.store, txn, body.registry, body.record, automerge_hash, env.cid)
        batch.unblocked.append(pending.on_record(body.registry, body.record))
        self.metrics["equivocation.fork_held"] += 1

    def _after_dispute_record(self, txn: Txn, batch: Batch, kind: str, record_id: str, fields: Any) -> None:
        """Note what a committed grid.disputes record asks for; done once the
        operation's change is in (_apply_disputes). A report's two changes
        are held at once: one of them is the other branch's."""
        if kind == disputes.REPORT_KIND:
            self._take_report(txn, batch, disputes.read_report(record_id, fields))
        elif kind == disputes.RESOLUTION_KIND:
            batch.resolved.append(fields["dispute"])

    def _take_report(self, txn: Txn, batch: Batch, found: disputes.Equivocation) -> None:
        """Act on a proven equivocation: quarantine, hold the other branch's
        change, and compare both with this node's chain (_walk_fork)."""
        if self.trust.quarantine(found.author, found.registry, found.seq):
            self.metrics["equivocation.quarantined"] += 1
            batch.quarantined.append((found.author, found.registry, found.seq))
        for env in found.envelopes:
            self._hold_forked(txn, batch, env)
        batch.fork_walk.extend(found.envelopes)

    def _take_refused_report(self, txn: Txn, batch: Batch, env: Envelope) -> None:
        """A report kept refused in its filer's chain (its filer may not write
        grid.disputes, was revoked, lost a create race, or is the forked key
        itself) proves its equivocation all the same: the evidence is the two
        signed changes, whoever carried them. Every node holds the same
        chains, so every node quarantines alike, in whichever order the
        report and what refuses it arrived. (A forked chain is the
        exception: a node on its other branch holds the report as evidence
        at most; if no report of its own follows, it shows that evidence
        to its peers: unreported_forks.)"""
        found = disputes.report_in(env)
        if found is not None:
            self._take_report(txn, batch, found)

    def _take_report_held_as_evidence(self, txn: Txn, batch: Batch, env: Envelope) -> None:
        """A report this node holds only as evidence (a change of another
        branch of its forked filer's chain in grid.disputes) proves its
        equivocation all the same, as one kept refused does: else the forked
        key's own node, which holds the clone's report that way and may not
        file its own (its key quarantined there), never quarantines what
        every other node does (Engine._load_trust reads these too)."""
        if env.body.registry == disputes.DISPUTES_REGISTRY:
            self._take_refused_report(txn, batch, env)

    def _walk_fork(self, txn: Txn, batch: Batch, env: Envelope) -> None:
        """A report's change, against this node's chain of its author: a
        different change held with its sequence, or one held with the
        sequence before that its prev does not name, proves the fork there
        too, and is reported (nothing when the chain agrees: the branches
        share that history)."""
        body = env.body
        here = chains.at(self.store, txn, body.registry, body.author, body.seq)
        if here is not None and here != env.cid and here != erasures.UNSEEN:
            self._report_equivocation(txn, batch, env, here)
        before = chains.at(self.store, txn, body.registry, body.author, body.seq - 1) if body.seq > 1 else None
        if before is not None and before != body.prev and before != erasures.UNSEEN:
            self._report_equivocation(txn, batch, env, before)

    def _apply_disputes(self, txn: Txn, batch: Batch, cause: Envelope, origin: str) -> None:
        """Rebuild what a new quarantine cuts, walk reports back to where
        their fork began, and resettle what a new resolution decides."""
        while batch.fork_walk:
            self._walk_fork(txn, batch, batch.fork_walk.pop())
        while batch.quarantined:
            author, registry, seq = batch.quarantined.pop()
            targets: set[str] = set()
            for _, cid in chains.links_after(self.store, txn, registry, author, seq - 1):
                body = self._held_body(txn, batch, cid)  # type: ignore[attr-defined]
                if body is not None:  # an erased change counts nowhere
                    targets.add(body.record)
            for record_id in sorted(targets):
                self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)  # type: ignore[attr-defined]
            # Changes of the author's other branch this node held before the
            # quarantine: evidence (a conflict, a broken chain), or parked
            # past a gap in its chain.
            evidence = [open_envelope(w, verify=False) for w in pending.evidence_of(self.store, txn, registry, author)]
            parked = [open_envelope(w, verify=False) for w in pending.waiting_in_chain(self.store, txn, registry, author)]
            for env in evidence:
                self._hold_forked(txn, batch, env)
            for env in parked:
                self._hold_forked(txn, batch, env, as_evidence=False)
        while batch.resolved:
            dispute = batch.resolved.pop()
            for registry, record_id in records.records_disputing(self.store, txn, dispute):
                self._resettle_record(txn, batch, registry, record_id, cause, origin)  # type: ignore[attr-defined]

    _wanted_turn = 0  # which MAX_WANTED of the places asked for by ID go in the next request (``wanted``)

    def wanted(self) -> Wanted:
        """The changes this node asks its sync peers for by ID, which its
        vector can't ask for (it holds those positions):

        - the other branches' changes that a change it holds as evidence
          against a quarantined author names as its prev, where this node
          holds that change neither as a link nor as evidence: without them
          its reports can't be walked back past where it met the fork;
        - changes it erased by a notice that no longer counts (its signer's
          key was revoked before it): a peer that kept them gives them back;
        - places it linked past unseen on the word of such a notice, or of
          a peer that said they are gone (engine/gone.py): asked for by
          place (the unseen-link ID), since their IDs are unknown here.

        The first ones always go first; the others MAX_WANTED at a time, in
        turns, when there are more."""
        first: list[tuple[str, str, int, bytes]] = []  # the fork walks: always asked first
        rest: list[tuple[str, str, int, bytes]] = []
        bound = _WANTED_SCAN * MAX_WANTED
        with self.store.read() as txn:
            for (author, registry) in sorted(dict(self.trust.quarantined)):
                for wire in pending.evidence_of(self.store, txn, registry, author):
                    body = open_envelope(wire, verify=False).body
                    seq = body.seq - 1
                    if seq < 1 or not body.prev or self._holds_link(txn, registry, author, seq, body.prev):
                        continue
                    if len(first) < MAX_WANTED:
                        first.append((registry, author, seq, body.prev))
            # Changes erased here by a notice that no longer counts: taken
            # again from a peer that kept them (engine/erasure.py _restore).
            for cid, known in erasures.restorable(self.store, txn):
                rest.append((known["registry"], known["author"], known["seq"], cid))
                if len(rest) >= bound:
                    break
            if len(rest) < bound:
                for registry, author, seq in self._unseen_gone(txn, limit=bound - len(rest)):  # type: ignore[attr-defined]
                    rest.append((registry, author, seq, erasures.UNSEEN))
        room = MAX_WANTED - len(first)
        if len(rest) > room:
            # Taken in turns: places no peer will give this node (a private
            # registry's records, kept from its org: engine/subjects.py) held
            # the first MAX_WANTED for good, and what came after them was
            # never asked for again.
            start = (self._wanted_turn * room) % len(rest)
            self._wanted_turn += 1
            rest = (rest[start:] + rest[:start])[:room]
        out: Wanted = {}
        for registry, author, seq, cid in first + rest:
            out.setdefault(registry, {}).setdefault(author, []).append((seq, cid))
        return out

    def _holds_link(self, txn: Txn, registry: str, author: str, seq: int, cid: bytes) -> bool:
        """Whether this node holds ``cid`` at ``seq`` of the author's chain,
        as a link or as evidence (an unseen link counts as held: erased)."""
        link = chains.at(self.store, txn, registry, author, seq)
        return link in (cid, erasures.UNSEEN) or pending.has_evidence(self.store, txn, registry, author, seq, cid)

    def unreported_forks(self, registries: Collection[str], *, max_bytes: int,
                         withheld: subjects.Withheld | None = None) -> list[bytes]:
        """The changes this node holds as evidence of forks in
        ``registries`` that no quarantine here covers: it met both changes
        but could not report them (its key revoked, or not yet delegated),
        or its report was refused. And those of forks of its own key: it
        reports them in its own forked chains, which its peers may hold
        another branch of. Sent with a pass's first answer, so that the
        peer meets them and reports the fork: otherwise a peer holding the
        longer branch never would (its vector asks past its own head).
        Empty wherever every fork seen is reported by a key not forked. At
        least one change, then ``max_bytes`` and MAX_UNREPORTED."""
        out: list[bytes] = []
        size = 0
        with self.store.read() as txn:
            for registry, author, seq, wire in pending.all_evidence(self.store, txn):
                since = self.trust.quarantined_since(author, registry)
                covered = since is not None and since <= seq and author != self.key.did  # type: ignore[attr-defined]
                if registry not in registries or covered or (withheld is not None and withheld.wire(txn, wire)):
                    continue
                if out and (size + len(wire) > max_bytes or len(out) >= MAX_UNREPORTED):
                    break
                out.append(wire)
                size += len(wire)
        self.metrics["sync.unreported_forks_shown"] += len(out)
        return out

    def wanted_links(self, wanted: Wanted, *, max_bytes: int,
                     withheld: subjects.Withheld | None = None) -> list[bytes]:
        """What a peer's ``wanted`` asks for that this node holds (as a link
        or as evidence), each with up to WANTED_DEPTH links before it along
        the prevs, oldest first: a fork whose branches met past where they
        parted is walked back in one session, however few of its changes
        the asker's evidence named. At least one change, then ``max_bytes``."""
        out: list[bytes] = []
        sent: set[bytes] = set()
        size = 0
        with self.store.read() as txn:
            for registry, authors in sorted(wanted.items()):
                for author, asked in sorted(authors.items()):
                    for seq, cid in sorted(asked, reverse=True):
                        for wire, link in reversed(self._links_back(txn, registry, author, seq, cid, sent)):
                            if withheld is not None and withheld.wire(txn, wire):
                                sent.add(link)  # kept from this reader: neither sent nor counted
                                continue
                            if out and size + len(wire) > max_bytes:
                                self.metrics["sync.wanted_sent"] += len(out)
                                return out
                            out.append(wire)
                            sent.add(link)
                            size += len(wire)
        self.metrics["sync.wanted_sent"] += len(out)
        return out

    def _links_back(self, txn: Txn, registry: str, author: str, seq: int, cid: bytes,
                    sent: set[bytes]) -> list[tuple[bytes, bytes]]:
        """(wire, ID) of ``cid`` at ``seq`` (whatever change this node holds
        there, for the unseen-link ID: a place asked for by a node that
        never learned its ID) and the changes its prevs name before it,
        newest first, while this node holds them: stops at an erased
        change, one sent already, or WANTED_DEPTH."""
        out: list[tuple[bytes, bytes]] = []
        if cid == erasures.UNSEEN:
            cid = chains.at(self.store, txn, registry, author, seq) or b""
        while seq >= 1 and cid and cid not in sent and len(out) < WANTED_DEPTH:
            if chains.at(self.store, txn, registry, author, seq) == cid:
                wire = changes.wire(self.store, txn, cid)
            else:
                wire = pending.evidence_wire(self.store, txn, registry, author, seq, cid)
            if not wire:  # not held, or erased
                break
            out.append((wire, cid))
            seq, cid = seq - 1, open_envelope(wire, verify=False).body.prev
        return out

    def _resolutions(self, txn: Txn, registry: str, record_id: str,
                     owner: str) -> Callable[[str, Collection[str]], Resolution | None]:
        """How the resolver finds a dispute's resolution: the latest one (by
        clock, then change ID) whose author, at its own time, spoke for a
        federation admin org, the registry's owner org or the record's owner
        org, among those not ``set_aside`` (change IDs: engine/settle.py
        sets aside those that would leave the record unsound). Anyone may
        file one; only those count."""
        desc = self._registry(txn, registry)

        def lookup(dispute: str, set_aside: Collection[str] = ()) -> Resolution | None:
            best: tuple[Any, Resolution] | None = None
            for rec in records.iter_records(self.store, txn, registry=disputes.DISPUTES_REGISTRY, tag=dispute):
                fields = rec["fields"]
                if rec["deleted"] or rec["kind"] != disputes.RESOLUTION_KIND or fields.get("dispute") != dispute:
                    continue
                if rec["change_id"] in set_aside:
                    continue
                if fields.get("outcome") != "value":  # an acknowledgement of an equivocation decides no value
                    continue
                if not access.may_resolve(self.trust, rec["created_by"], rec["created_at"] or 0,
                                          registry_owner=desc.owner, owners=(owner,)):
                    continue
                order = (rec["updated_hlc"], rec["change_id"])
                if best is None or order > best[0]:
                    value = disputes_value(fields)
                    best = (order, Resolution(dispute=dispute, value=value, change_id=rec["change_id"],
                                              author=rec["created_by"]))
            return best[1] if best else None

        return lookup


def disputes_value(fields: Any) -> Any:
    """The value a resolution decides (ABSENT: the field is removed)."""
    if fields.get("removed"):
        return ABSENT
    return fields.get("value")
