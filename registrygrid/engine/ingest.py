"""Remote changes: checked, parked while they wait, applied or kept as refused.

decode + verify (once per batch signature) -> dedupe -> the author's chain
(equivocation and breaks are evidence) -> the registry's kinds -> the
payload (a snapshot, or an Automerge change whose header must match the
envelope) -> Automerge deps present? (else park it: fetched, never
guessed) -> trust and policy of the signer at the change's own time (a
missing delegation parks it too; a refusal is kept in the chain as
evidence) -> commit -> release what waited for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from registrygrid.crdt import disputes
from registrygrid.crdt.change import read_header
from registrygrid.crdt.record import (
    RecordDoc,
    actor_for,
)
from registrygrid.crdt.snapshot import (
    DOCUMENT_KEYS,
    check_value,
    genesis_change,
    snapshot_state,
)
from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch, CreateRace, kind_race
from registrygrid.engine.core import EngineCore
from registrygrid.engine.erasure import ERASURES_REGISTRY
from registrygrid.engine.ops import (
    ExpireParked,
    IngestResult,
    Remote,
)
from registrygrid.engine.values import (
    automerge_of,
    checked_links,
    checked_tags,
    fields_size,
)
from registrygrid.errors import (
    ChainBroken,
    Equivocation,
    KeyRevoked,
    MalformedInput,
    MissingDependencies,
    NotOwner,
    PolicyDenied,
    RegistryError,
    SchemaViolation,
    TooLarge,
    UnknownRegistry,
    ValidationError,
)
from registrygrid.identity.keys import public_key_from_did
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import (
    ChangeBody,
    Envelope,
    cid_to_str,
    open_envelope,
)
from registrygrid.protocol.hlc import MAX_DRIFT_MS
from registrygrid.storage import chains, changes, erasures, pending, records
from registrygrid.storage.store import Txn
from registrygrid.trust import access
from registrygrid.trust.state import Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY, Statement, read_statement

# Changes parked while they wait for dependencies. Anti-entropy refetches
# anything refused here, so the cap only bounds memory and disk a peer can
# make us hold: 100k envelopes is ~50 MB at typical sizes.
MAX_PENDING = 100_000
# And their bytes: at the largest changes the count alone let a member park
# 25 GiB.
MAX_PENDING_BYTES = 1 << 30
# How long a change waits before it is dropped. Sync refetches what a chain
# lacks every 10 s, so a dependency that exists arrives in seconds; one
# that never comes (a predecessor no peer holds, a registry whose create
# was refused) kept its change parked for good, against the caps above.
PARKED_TTL_MS = 3_600_000
# No one org (nor every key whose delegation is not known, together) may
# hold more than this part of either cap: a member that signs changes that
# never resolve fills its own share, not the room everyone's out-of-order
# deliveries need (TrustState.parking_share).
MAX_PENDING_SHARE = MAX_PENDING // 4
MAX_PENDING_SHARE_BYTES = MAX_PENDING_BYTES // 4


class RemoteIngest(EngineCore):
    """The engine's intake of remote changes (mixed into Engine)."""

    def _remote(self, txn: Txn, batch: Batch, op: Remote) -> IngestResult:
        self.metrics["remote.received"] += 1
        env = open_envelope(op.wire, verify=not op.preverified)
        try:
            result = self._ingest(txn, batch, env, op.peer)
        except RegistryError:
            if batch.quarantined or batch.fork_walk:  # refused, but a report it carries was taken
                self._apply_rules(txn, batch, env, op.peer)  # type: ignore[attr-defined]
            if batch.unblocked:  # refused, but held as a fork's change: what built on it is judged now
                self._release(txn, batch, None, op.peer)
            raise
        if result.status in ("applied", "refused", "erased"):
            self._link_on(txn, batch, env)
        if result.status == "refused":
            self._take_refused_report(txn, batch, env)  # type: ignore[attr-defined]
        if result.status == "pending" and batch.unblocked:
            # Parked itself, but linked unseen positions (or held a fork's
            # change) on the way: what waited for those may go on.
            self._release(txn, batch, None, op.peer)
        if result.status in ("applied", "refused", "erased"):
            self._apply_rules(txn, batch, env, op.peer)  # type: ignore[attr-defined]
            released = self._release(txn, batch, env, op.peer)
            if released:
                result = replace(result, released=tuple(released))
        self.metrics[f"remote.{result.status}"] += 1
        return result

    def _ingest(self, txn: Txn, batch: Batch, env: Envelope, peer: str) -> IngestResult:
        """Judge and apply one change. An update is added to its record's
        document in place (cheap, where loading the document again costs
        its whole history), so whatever keeps it out of the record after
        that (refused, parked, an error) drops the document from the batch:
        the next reader loads it as stored."""
        try:
            return self._take_in(txn, batch, env, peer)
        finally:
            _drop_in_place(batch, env.body)

    def _take_in(self, txn: Txn, batch: Batch, env: Envelope, peer: str) -> IngestResult:
        body = env.body
        if changes.has(self.store, txn, env.cid) or env.cid in batch.drafts:
            if self._has_erasures and (burning := self._burned_gone(txn, env)) is not None:  # type: ignore[attr-defined]
                return self._keep_gone_erased(txn, batch, env, burning)  # type: ignore[attr-defined]
            if self._has_erasures and self._restorable(txn, env.cid, env):  # type: ignore[attr-defined]
                return self._restore(txn, batch, env, peer)  # type: ignore[attr-defined]
            if self._has_erasures and (erasures.change(self.store, txn, env.cid) or {}).get("notice") \
                    == erasures.PAST_CUTOFF:
                return self._keep_past_cutoff(txn, batch, env, peer)  # its ID was linked before it came
            return IngestResult("duplicate", env.id)
        since = self.trust.quarantined_since(body.author, body.registry)
        if since is not None and since <= body.seq \
                and pending.has_evidence(self.store, txn, body.registry, body.author, body.seq, env.cid):
            # The other branch of a fork this node knows and acted on: held
            # as evidence already (a peer shows it with each sync pass).
            return IngestResult("duplicate", env.id)
        head_seq, head_cid = self._head(txn, batch, body.registry, body.author)
        if body.seq > head_seq + 1 and self._past_cutoff(body.registry, body.author, head_seq + 1) \
                and not (since is not None and since <= body.seq):
            # The places before it count nowhere (its author's revocation
            # cut them): linked past at once, as a notice's vouched places
            # are, so a gap whose bytes no node has (an erased change whose
            # notice stopped counting) holds back nothing that counts: not
            # this change, refused, nor a valid change built on it. Not
            # for a forked author's: past a gap may be another branch,
            # which is held as such (_hold_forked), not linked into ours.
            erasures.vouch(self.store, txn, body.registry, body.author, head_seq + 1, body.seq - 1,
                           erasures.PAST_CUTOFF, "")
            self._has_erasures = True
            self.metrics["trust.revoked_places_linked"] += body.seq - 1 - head_seq
        if self._has_erasures:  # type: ignore[attr-defined]
            # Chain positions an erasure notice vouches for (engine/erasure.py).
            if body.seq > head_seq + 1 and self._fill_vouched(txn, batch, body.registry, body.author):  # type: ignore[attr-defined]
                head_seq, head_cid = self._head(txn, batch, body.registry, body.author)
            if body.seq <= head_seq and chains.at(self.store, txn, body.registry, body.author,
                                                  body.seq) == erasures.UNSEEN:
                return self._arrived_unseen(txn, batch, env, peer)
            if body.seq == head_seq + 1 and head_cid == erasures.UNSEEN and body.prev:
                # Written before this change's own checks: its signature holds
                # (checked on arrival), so the ID it names is authentic even
                # if the change itself is refused below.
                self._learn_unseen(txn, batch, body.registry, body.author, head_seq, body.prev)  # type: ignore[attr-defined]
                head_cid = body.prev
        if body.seq <= head_seq and self._has_erasures and not (since is not None and since <= body.seq):  # type: ignore[attr-defined]
            # Another change at a place whose change is erased here: a fork
            # no node can prove (engine/erasure.py, _erased_twin).
            twin = self._erased_twin(txn, batch, env, head_seq)  # type: ignore[attr-defined]
            if twin is not None:
                head_seq, head_cid = twin
        if body.seq <= head_seq:
            other = chains.at(self.store, txn, body.registry, body.author, body.seq)
            self._keep_evidence(txn, batch, env, other)
            self._report_equivocation(txn, batch, env, other)  # type: ignore[attr-defined]
            self._hold_forked(txn, batch, env)  # type: ignore[attr-defined]
            raise Equivocation(
                f"{body.author} signed two different changes with sequence {body.seq} in {body.registry}",
                details={"seq": body.seq, "changes": [env.id, cid_to_str(other) if other else None]},
            )
        if body.seq > head_seq + 1:
            # Wait for its own predecessor, not for the next missing link:
            # keyed by the next link, every change of a long gap would be
            # released and parked again at each link applied (quadratic; a
            # 2,000-change gap cost ~1M re-parks).
            self._hold_forked(txn, batch, env, as_evidence=False)  # type: ignore[attr-defined]
            return self._park(txn, batch, env, pending.for_predecessor(body.registry, body.author, body.seq, env.cid))
        if body.prev != head_cid:
            self._keep_evidence(txn, batch, env, head_cid or None)
            # Its prev names a change other than the held one before it: the
            # author signed two with that sequence (crdt/disputes.py).
            self._report_equivocation(txn, batch, env, head_cid or None)  # type: ignore[attr-defined]
            self._hold_forked(txn, batch, env)  # type: ignore[attr-defined]
            raise ChainBroken(f"change {body.seq} of {body.author} does not follow its change {head_seq}")
        if self._has_erasures:  # type: ignore[attr-defined]
            held = erasures.mark(self.store, txn, body.registry, body.record)
            if held is not None and held[1] != erasures.VOID:  # void: its record is taken as any
                settled = self._under_erasure(txn, batch, env, held, peer)  # type: ignore[attr-defined]
                if settled is not None:
                    return settled
        try:
            desc = self._descriptor_at(txn, batch, body.registry, body.hlc)  # the one in force when it was made
        except UnknownRegistry:
            # Its registry's descriptor has not arrived (gossip messages out
            # of order): wait for it like a missing dependency, released when
            # grid.registries/NAME commits. Rejected, it would hold back its
            # author's later changes until sync offered it again.
            self.metrics["remote.waiting_registry"] += 1
            return self._park(txn, batch, env, pending.for_deps(regs.REGISTRY_OF_REGISTRIES, body.registry, env.cid))
        store, reg, rec = self.store, body.registry, body.record
        if not body.is_snapshot:
            self._check_automerge_header(env)
            if records.is_applied(store, txn, reg, rec, body.change_hash) \
                    or records.is_refused(store, txn, reg, rec, body.change_hash):
                raise MalformedInput("this Automerge change was already stored under another envelope")
        claim: dict[str, Any] = {}
        plain_json = False
        if body.is_snapshot:
            claim, plain_json = snapshot_state(body.payload, kind=body.kind, schema=body.schema)
        # The kinds it holds. Refused only once the change's deps are here
        # (below): a refusal is final until something rebuilds the record,
        # and the arrival of a missing dependency does not.
        refusal = self._registry_refusal(desc, body.op, body.kind, None)
        if refusal is None and self._awaits_kind(body.kind, body.schema):  # type: ignore[attr-defined]
            # Its user kind's definition has not arrived (gossip messages
            # out of order; a sync response cut at its budget): wait for it
            # like a missing dependency, released when that record commits.
            # Rejected, it would hold back its author's later changes until
            # sync offered it again.
            self.metrics["remote.waiting_kind"] += 1
            return self._park(txn, batch, env, pending.for_deps(regs.KINDS_REGISTRY, f"{body.kind}.v{body.schema}",
                                                                env.cid))
        if body.is_snapshot and refusal is None:
            try:
                self._check_state(env, claim, desc, shape_checked=True, plain_json=plain_json)
            except SchemaViolation as exc:
                return self._refuse_by_schema(txn, batch, env, exc, peer, claim)
            except PolicyDenied as exc:
                return self._refuse(txn, batch, env, exc, peer, claim)
        builds_on_refused = False
        if body.deps:
            # Updates name the genesis change of the record's snapshot: build
            # the document (once) so that its hash is known here.
            self._document(txn, batch, body.registry, body.record)
        for dep in body.deps:
            if not records.is_applied(store, txn, reg, rec, dep):
                if not records.is_refused(store, txn, reg, rec, dep) \
                        and not records.is_forked(store, txn, reg, rec, dep):  # a quarantined fork's other branch
                    return self._park(txn, batch, env, pending.for_deps(reg, rec, env.cid))
                builds_on_refused = True
        if refusal is not None:
            return self._refuse(txn, batch, env, refusal, peer, claim)
        if builds_on_refused:
            return self._refuse(txn, batch, env, PolicyDenied(
                f"it builds on a refused change of {body.registry}/{body.record}"), peer, claim)
        try:
            if body.registry != MEMBERS_REGISTRY:  # statements carry their own authority
                self.trust.check_chain(body.author, body.registry, body.seq)
        except PolicyDenied as exc:
            return self._keep_refused(txn, batch, env, exc, peer)
        old = records.get_record(self.store, txn, body.registry, body.record)
        automerge: tuple[bytes, bytes] | None = None
        heads_before: list[bytes] | None = None
        if body.is_snapshot and old is None:
            doc, state = None, claim
        else:
            existing = self._document(txn, batch, body.registry, body.record)
            change = body.payload
            if body.is_snapshot:
                # A create of a record that exists: two creates raced. Their
                # geneses merge as Automerge merges any concurrent changes.
                genesis = genesis_change(claim, body.author)
                automerge, change = (genesis.hash, genesis.raw_bytes), genesis.raw_bytes
            if existing is not None:
                # Into the document in place; judged on it as it was before
                # (heads_before), and dropped unless it commits (_ingest).
                heads_before = existing.heads()
                batch.in_place.add((body.registry, body.record))
                try:
                    existing.add_change(change)
                except MalformedInput:
                    _drop_in_place(batch, body)
                    seq = self._seq_taken(txn, batch, body.registry, body.record, change)
                    if seq is None:
                        raise
                    # Its author made a change here that its own node later
                    # refused (a rule that arrived late: a revocation, a
                    # descriptor), then this one, which took the refused
                    # one's place in its Automerge sequence; this node still
                    # holds that one, and one document cannot hold both.
                    # Which counts is settled by judging them in clock order.
                    return self._settle_by_rebuild(txn, batch, env, PolicyDenied(
                        f"{body.author} made its Automerge change {seq} of {body.registry}/{body.record} twice "
                        "(the first was refused where it was made); one counts"), peer)
                doc = existing
            else:
                doc = RecordDoc.apply(None, change)
            if (automerge[0] if automerge else body.change_hash) not in doc.heads():
                raise MalformedInput("Automerge did not apply the change")
            state = doc.materialize()
            if not body.is_snapshot:  # a create's claim is checked above
                # Judged on what it made of what its author saw (its own
                # history), never on its merge with changes its author had
                # not seen: two updates each within the size cap or a schema
                # may merge into a record beyond it, and a verdict on the merge
                # would depend on which of them arrived first.
                concurrent = heads_before is not None and sorted(heads_before) != sorted(body.deps)
                own = doc.materialize(heads=[body.change_hash]) if concurrent else state
                try:
                    self._check_state(env, own, desc)
                    if body.op == "delete":
                        _check_only_deletes(body, own, doc.materialize(heads=list(body.deps)))
                except SchemaViolation as exc:
                    _drop_in_place(batch, body)
                    return self._refuse_by_schema(txn, batch, env, exc, peer, claim)
                except PolicyDenied as exc:
                    _drop_in_place(batch, body)
                    return self._refuse(txn, batch, env, exc, peer, claim)
        statement = read_statement(body.kind, body.record, state["fields"]) \
            if body.registry == MEMBERS_REGISTRY and not state.get("deleted") else None
        try:
            judged_old, judged = old, claim
            if not body.is_snapshot:
                judged = own
                if heads_before is not None and old is not None:
                    judged_old = self._judged_before(old, doc, heads_before, list(body.deps))
            verdict = self._remote_verdict(env, desc, judged_old, judged, statement)
            if body.registry == ERASURES_REGISTRY and body.op == "create" and not state.get("deleted"):
                # Whether its signer may erase the record depends on what this
                # node holds: refused here, it is kept as evidence (the chain
                # goes on), never dropped.
                notice_verdict = self._check_erasure_notice(txn, body.record, state["fields"], body.author,  # type: ignore[attr-defined]
                                                            body.hlc[0])
                if notice_verdict is Verdict.WAIT:
                    verdict = notice_verdict
        except CreateRace as race:
            _drop_in_place(batch, body)  # before the rebuild reads the record
            # The earliest valid create (by clock, then change ID) counts on
            # every node, whichever arrived first.
            return self._settle_by_rebuild(txn, batch, env, race.refusal, peer)
        except PolicyDenied as exc:
            _drop_in_place(batch, body)
            return self._keep_refused(txn, batch, env, exc, peer)
        if verdict is Verdict.WAIT:
            # Its signer's delegation has not arrived: wait for it like a
            # missing dependency (sync brings grid.members), never guess.
            _drop_in_place(batch, body)
            self.metrics["remote.waiting_delegation"] += 1
            return self._park(txn, batch, env, pending.for_delegation(body.author, env.cid))
        # What the change made (``judged``, its own history), as for every
        # record rule: the merge may hold a concurrent change's values.
        if body.registry == regs.KINDS_REGISTRY and not judged.get("deleted"):
            # Checked now, registered once committed (engine/kinds.py): two
            # creates of one kind version may race, and the catalog follows
            # the definition the record shows then.
            self.catalog.check(self._kind_of(body.record, judged["fields"]))
        if body.registry == regs.REGISTRY_OF_REGISTRIES and not judged.get("deleted"):
            refusal = regs.descriptor_refusal(body.record, judged)
            if refusal is not None:
                _drop_in_place(batch, body)
                return self._refuse(txn, batch, env, refusal, peer, claim)
        if body.registry == disputes.DISPUTES_REGISTRY and not judged.get("deleted"):
            self._check_dispute_record(body.record, body.kind, judged["fields"], judged.get("tags"))  # type: ignore[attr-defined]
        if not self.clock.observe(env.hlc):
            # A timestamp far ahead would drag every clock forward and win
            # every "latest change" comparison; refuse it (the author's
            # clock is wrong) rather than let it skew the federation.
            raise ValidationError(f"change clock {env.hlc.wall_ms} ms is more than {MAX_DRIFT_MS} ms ahead of ours")
        seq, _ = self._commit(txn, batch, env, doc, old, origin=peer, requested_by=None, state=state,
                              statement=statement, automerge=automerge, heads_before=heads_before)
        batch.in_place.discard((body.registry, body.record))  # committed: the document is as stored now
        if body.is_snapshot and old is None \
                and records.refused_changes(self.store, txn, body.registry, body.record):
            # Changes of the record held refused before its create came (a
            # rebuild ran without it: what they build on was missing) are
            # judged again now that it is here, as where it came first.
            self._rebuild(txn, batch, body.registry, body.record, cause=env, origin=peer)  # type: ignore[attr-defined]
            if not records.counts(self.store, txn, body.registry, body.record, env.cid, body.change_hash):
                return IngestResult("refused", env.id)
        if self._has_erasures:  # type: ignore[attr-defined]
            # A notice that waited for this record is judged now, in this
            # transaction: an erased record's bytes are never left behind.
            self._judge_waiting(txn, batch, body.registry, body.record, peer)  # type: ignore[attr-defined]
        return IngestResult("applied", env.id, seq)

    def _arrived_unseen(self, txn: Txn, batch: Batch, env: Envelope, peer: str) -> IngestResult:
        """A change arrived for a position this node linked past unseen (an
        erasure notice vouched for it): if it fits the chain around it, its
        ID takes the place; its bytes are kept only if nothing erased its
        record here (the notice no longer counts, or never acted here)."""
        body = env.body
        before = chains.at(self.store, txn, body.registry, body.author, body.seq - 1) if body.seq > 1 else b""
        after = chains.at(self.store, txn, body.registry, body.author, body.seq + 1)
        after_body = changes.body(self.store, txn, after) if after and after != erasures.UNSEEN else None
        if (before != erasures.UNSEEN and body.prev != before) or (after_body is not None
                                                                    and after_body.prev != env.cid):
            self._keep_evidence(txn, batch, env, None)
            raise ChainBroken(f"change {body.seq} of {body.author} does not fit the changes around it")
        vouched = erasures.vouched(self.store, txn, body.registry, body.author, body.seq)
        if vouched is not None and vouched[0] == erasures.GONE \
                and (burning := self._burned_gone(txn, env)) is not None:  # type: ignore[attr-defined]
            return self._keep_gone_erased(txn, batch, env, burning)  # type: ignore[attr-defined]
        if vouched is not None and vouched[0] == erasures.PAST_CUTOFF:
            chains.link(self.store, txn, body.registry, body.author, body.seq, env.cid)
            if self._head(txn, batch, body.registry, body.author)[0] == body.seq:
                batch.heads[(body.registry, body.author)] = self._chain_heads[(body.registry, body.author)] = \
                    (body.seq, env.cid)
            return self._keep_past_cutoff(txn, batch, env, peer)
        if vouched is not None and (erasures.is_void(self.store, txn, vouched[0])
                                    or erasures.mark(self.store, txn, body.registry, body.record) is None):
            # Linked past on the word of a notice that no longer counts, or
            # that erased nothing of this change's record here: the change
            # takes its place (and the head, if it is the head).
            chains.link(self.store, txn, body.registry, body.author, body.seq, env.cid)
            if self._head(txn, batch, body.registry, body.author)[0] == body.seq:
                batch.heads[(body.registry, body.author)] = self._chain_heads[(body.registry, body.author)] = \
                    (body.seq, env.cid)
            return self._restore(txn, batch, env, peer)  # type: ignore[attr-defined]
        self._learn_unseen(txn, batch, body.registry, body.author, body.seq, env.cid, body.record)  # type: ignore[attr-defined]
        if vouched is not None:
            # A change built on this one is known for what it is when it
            # comes (engine/erasure.py _built_on_erased), as where it was
            # erased with its bytes.
            erasures.put_hash(self.store, txn, body.registry, body.record, automerge_of(env)[0], vouched[0])
        return IngestResult("erased", env.id)

    def _past_cutoff(self, registry: str, author: str, seq: int) -> bool:
        """Whether change ``seq`` of the author's chain in ``registry`` is past
        the cutoff of a revocation of the author that counts here."""
        if registry == MEMBERS_REGISTRY:
            return False
        revoked = self.trust.revoked(author)
        return revoked is not None and seq > revoked.cutoff(registry)

    def _keep_past_cutoff(self, txn: Txn, batch: Batch, env: Envelope, peer: str) -> IngestResult:
        """A change at a place linked past without it (_past_cutoff) came:
        kept as evidence, refused, as on a node that had it in order."""
        body = env.body
        changes.put_received(self.store, txn, env)
        erasures.drop_change(self.store, txn, env.cid)
        records.mark_refused(self.store, txn, body.registry, body.record, automerge_of(env)[0], env.cid)
        why = KeyRevoked(f"{body.author} was revoked; its change #{body.seq} in {body.registry} is past the "
                         "revocation's cutoff")
        self._count_refusal(txn, env, why, f"from {peer}; kept as evidence, not applied")
        return IngestResult("refused", env.id, error=why)

    def _count_refusal(self, txn: Txn, env: Envelope, why: RegistryError, note: str) -> None:
        """A change kept as evidence, not applied: counted and audited."""
        body = env.body
        self.metrics[f"rejected.{why.code}"] += 1
        self.audit.append(txn, at_ms=self.now_ms(), actor=body.author, action="deny",
                          target=f"{body.registry}/{body.record}", reason=f"{why.audit_reason()} ({note})"[:512],
                          change=env.id)

    def _refuse_by_schema(self, txn: Txn, batch: Batch, env: Envelope, exc: SchemaViolation,
                          peer: str, claim: dict[str, Any]) -> IngestResult:
        """A change whose record fails its kind's schema: a user kind's is
        kept as evidence, since its definition may be replaced when a create
        race of the kind settles (engine/kinds.py); a built-in kind's is
        malformed input."""
        if not self._is_user_kind(env.body.kind, env.body.schema):  # type: ignore[attr-defined]
            raise exc
        return self._refuse(txn, batch, env, exc, peer, claim)

    def _refuse(self, txn: Txn, batch: Batch, env: Envelope, why: RegistryError, peer: str,
                claim: dict[str, Any]) -> IngestResult:
        """Keep a change that the registry's rules refuse as evidence, unless
        its signer's authority is not known here yet: then it waits for its
        delegation, like a change that passes them, and is judged from the
        start when it comes. Kept at once, a rebuild would later judge a
        change whose signer it could not place. ``claim``: a create's
        snapshot (its owner; an update's is the record's)."""
        body = env.body
        if body.registry != MEMBERS_REGISTRY:
            owner = claim.get("owner") if body.is_snapshot else \
                (records.get_record(self.store, txn, body.registry, body.record) or {}).get("owner")
            try:
                # No record to place it against (its create was refused):
                # its signer must be known at least, or a rebuild that later
                # lets the create count could not judge it.
                waits = self.trust.check_speaks_for(body.author, owner, body.hlc[0]) is Verdict.WAIT \
                    if isinstance(owner, str) else not self.trust.known(body.author)
            except RegistryError:  # a refusal of its own: the registry's stands
                waits = False
            if waits:
                self.metrics["remote.waiting_delegation"] += 1
                return self._park(txn, batch, env, pending.for_delegation(body.author, env.cid))
        return self._keep_refused(txn, batch, env, why, peer)

    def _check_automerge_header(self, env: Envelope) -> None:
        check_automerge_header(env.body)

    def _remote_verdict(self, env: Envelope, desc: regs.RegistryDescriptor, old: dict[str, Any] | None,
                        state: dict[str, Any], statement: Statement | None) -> Verdict:
        """Ownership and policy of a remote change, judged as a local write of
        its signer would have been, at the change's own time."""
        body = env.body
        at_ms = body.hlc[0]
        if body.is_genesis:
            # A create: what it claims is its snapshot alone (``state``), even
            # when the record exists already (two creates of one id raced); a
            # legacy create's claim is its Automerge change alone.
            claim = state if body.is_snapshot else RecordDoc.apply(None, body.payload).materialize()
            created = claim.get("created") if isinstance(claim.get("created"), dict) else {}
            verdict = access.check_create(self.trust.at_place(body.author, body.registry, body.seq), desc,
                                          author=body.author, record_id=body.record,
                                          owner=claim.get("owner"), created_by=created.get("by"), at_ms=at_ms,
                                          statement=statement, policy=self.policy, kind=body.kind,
                                          fields=claim.get("fields"))
            if verdict is Verdict.WAIT:
                return verdict  # its signer first: a race is settled by rebuilding, which judges it
            if old is not None and old["owner"] != claim.get("owner"):
                raise CreateRace(NotOwner(f"{body.registry}/{body.record} belongs to {old['owner']}, whose create "
                                           f"came first; a create of the same id by {claim.get('owner')} is refused"))
            if old is not None and (old["kind"], old["schema"]) != (claim.get("kind"), claim.get("schema")):
                # Creates of one org merge, but a record has one kind and
                # schema version (Automerge would pick one, its conflict rule
                # maybe another, and records would be judged by either).
                raise CreateRace(kind_race(body.registry, body.record, old, claim))
            return verdict
        if old is None:
            raise MalformedInput(f"a {body.op} of {body.registry}/{body.record}, which has no create")
        return access.check_modify(self.trust.at_place(body.author, body.registry, body.seq), desc, op=body.op,
                                   author=body.author, before=old, after=state, at_ms=at_ms, policy=self.policy)

    def _keep_refused(self, txn: Txn, batch: Batch, env: Envelope, why: RegistryError, peer: str,
                      *, audit: bool = True) -> IngestResult:
        """Keep a change that trust or policy refuses in its author's chain,
        as evidence, without applying it (docs/trust.md): the record stays
        as it was, the author's later changes still follow their chain, and
        a change built on this one is refused too. Counted and audited."""
        body = env.body
        changes.put_received(self.store, txn, env)
        chains.link(self.store, txn, body.registry, body.author, body.seq, env.cid)
        batch.heads[(body.registry, body.author)] = self._chain_heads[(body.registry, body.author)] = \
            (body.seq, env.cid)
        records.mark_refused(self.store, txn, body.registry, body.record, automerge_of(env)[0], env.cid)
        if audit:
            self._count_refusal(txn, env, why, f"from {peer}; kept as evidence, not applied")
        if body.registry == ERASURES_REGISTRY and body.op == "update":
            self._after_refused_supplement(txn, batch, env, peer)  # type: ignore[attr-defined]
        return IngestResult("refused", env.id, error=why)

    def _seq_taken(self, txn: Txn, batch: Batch, registry: str, record_id: str, change: bytes) -> int | None:
        """The Automerge sequence number of ``change`` if the record's
        document holds another change of its actor with it, else None."""
        header = read_header(change)
        doc = self._document(txn, batch, registry, record_id)  # as stored: the one it failed in was dropped
        if doc is None:
            return None
        for held in doc.doc.get_changes([]):
            if held.actor_id == header.actor and held.seq == header.seq and held.hash != header.hash:
                return header.seq
        return None

    def _settle_by_rebuild(self, txn: Txn, batch: Batch, env: Envelope, refusal: PolicyDenied,
                           peer: str) -> IngestResult:
        """Keep the change, then rebuild its record from every change it
        holds, judged in clock order: the change counts if it is valid
        there, and is kept as evidence otherwise (``refusal`` says why)."""
        body = env.body
        self._keep_refused(txn, batch, env, refusal, peer, audit=False)
        self._rebuild(txn, batch, body.registry, body.record, cause=env, origin=peer)
        if records.counts(self.store, txn, body.registry, body.record, env.cid, body.change_hash):
            return IngestResult("applied", env.id, self._batch_feed_seq)
        self._count_refusal(txn, env, refusal, "kept as evidence")
        return IngestResult("refused", env.id, error=refusal)

    def _check_state(self, env: Envelope, state: dict[str, Any], desc: regs.RegistryDescriptor, *,
                     shape_checked: bool = False, plain_json: bool = False) -> dict[str, Any]:
        """The record as a remote change made it from what its author saw,
        checked as a local write would be: fixed kind, the kind's schema, an
        owner, tags and links by the rules of local writes, and the size
        caps (``shape_checked``: a snapshot's, which read_snapshot checked
        already; ``plain_json``: its check_value answer). Raises what
        rejects it, or SchemaViolation or PolicyDenied (the registry's own
        rules), which the caller keeps as evidence."""
        body = env.body
        if state.get("kind") != body.kind:
            raise ValidationError(f"change turns a {state.get('kind')!r} record into {body.kind!r}; kinds are fixed")
        # A change does what its op says: only a delete leaves the record
        # deleted (an update or a re-create leaves it live, as every local
        # write does). Access policies judge by the op, so an "update" that
        # deleted would pass a policy that refuses this signer deletes; and
        # a flag that is not a boolean was stored as its truth value, while
        # the document kept the other (`rgrid verify` failed).
        deleted = state.get("deleted")
        if type(deleted) is not bool or deleted != (body.op == "delete"):
            raise ValidationError(f"{body.registry}/{body.record}: this {body.op} leaves deleted = {deleted!r:.40}; "
                                  "only a delete deletes, and the flag is true or false")
        if not state.keys() <= DOCUMENT_KEYS:  # what no local write makes, outside the size cap's count
            raise ValidationError(f"{body.registry}/{body.record}: this {body.op} adds "
                                  f"{sorted(state.keys() - DOCUMENT_KEYS)[:5]} to the record's document, whose "
                                  f"keys are {sorted(DOCUMENT_KEYS)}")
        schema = state.get("schema")
        if type(schema) is not int:
            raise ValidationError(f"record schema version {schema!r} is not an integer")
        kind = self.catalog.get(body.kind, schema)
        if not shape_checked:
            self._check_tags_and_links(state.get("tags"), state.get("links"))
            # An update's ops can give its fields any shape: they must hold
            # what a local write may (nesting, keys, JSON numbers), as a
            # snapshot's must (read_snapshot), or it is rejected.
            plain_json = check_value(state.get("fields"))
        self.catalog.validate(kind.name, kind.version, state.get("fields"), plain_json=plain_json)
        if not isinstance(state.get("owner"), str):
            raise ValidationError("record has no owner")
        # The size caps hold for what a remote change makes, as for a local
        # write (an update of a small record, or a payload that expands). A
        # snapshot's fields are encoded inside its payload, so a payload
        # within the cap needs no second encoding to tell. No node signs a
        # record beyond the global cap (rejected); the registry's own cap is
        # the registry's rule (_registry_refusal: kept as evidence).
        if body.op != "delete" and not (shape_checked and len(body.payload) <= desc.max_record_bytes):
            size = fields_size(state.get("fields"))  # packed once for both caps
            if size > limits.MAX_RECORD_BYTES:
                raise TooLarge(f"record fields take {size} bytes; the cap is {limits.MAX_RECORD_BYTES}")
            refusal = self._registry_refusal(desc, body.op, body.kind, size)
            if refusal is not None:
                raise refusal
        return state

    @staticmethod
    def _check_tags_and_links(tags: Any, links: Any) -> None:
        if not isinstance(tags, list) or checked_tags(tags) != tags:
            raise ValidationError(f"record tags must be valid, unique tag names, at most {limits.MAX_TAGS}")
        if not isinstance(links, list) or checked_links(links) != links:
            raise ValidationError(f"record links must be {{rel, registry, record}}, at most {limits.MAX_LINKS}")

    def _park(self, txn: Txn, batch: Batch, env: Envelope, waiting_key: bytes) -> IngestResult:
        batch.none_waiting = False
        share = self.trust.parking_share(env.body.author).encode()
        try:
            fresh = pending.park(self.store, txn, waiting_key, env.cid, env.wire, cap=MAX_PENDING,
                                 cap_bytes=MAX_PENDING_BYTES, now_ms=self.now_ms(), share=share,
                                 share_cap=MAX_PENDING_SHARE, share_cap_bytes=MAX_PENDING_SHARE_BYTES)
        except MissingDependencies:
            self.metrics["remote.parking_full"] += 1
            raise
        if fresh:
            self.metrics["remote.parked"] += 1
        return IngestResult("pending", env.id)

    def _expire_parked(self, txn: Txn, batch: Batch, op: ExpireParked) -> int:
        """Drop what waited longer than the TTL; how many changes went."""
        now = self.now_ms()
        dropped = pending.expire(self.store, txn, parked_before_ms=now - op.ttl_ms, now_ms=now)
        self.metrics["remote.parked_expired"] += dropped
        return dropped

    def _release(self, txn: Txn, batch: Batch, first: Envelope | None, peer: str, *,
                 prefixes: Sequence[bytes] = ()) -> list[str]:
        """Apply parked changes that waited for ``first``, for a delegation
        this batch committed, or under ``prefixes`` (and, transitively, for
        those)."""
        released: list[str] = []
        if batch.none_waiting or not pending.any_waiting(self.store, txn):  # the common case: nothing is parked
            batch.none_waiting = True
            batch.delegated.clear()
            batch.unblocked.clear()
            return released
        work: list[Envelope | None] = [first]
        extra = list(prefixes)
        while work or batch.delegated or batch.unblocked:
            prefixes = [pending.on_delegation(subject) for subject in batch.delegated] + extra + batch.unblocked
            extra = []
            batch.delegated.clear()
            batch.unblocked.clear()
            done = work.pop() if work else None
            if done is not None:
                body = done.body
                prefixes.append(pending.after_link(body.registry, body.author, body.seq))
                prefixes.append(pending.on_record(body.registry, body.record))
            for wire in pending.release(self.store, txn, prefixes):
                try:
                    env = open_envelope(wire, verify=False)  # verified when parked
                    result = self._ingest(txn, batch, env, peer)
                except RegistryError as exc:
                    self.metrics[f"rejected.{exc.code}"] += 1
                    continue
                if result.status in ("applied", "refused", "erased"):
                    self._link_on(txn, batch, env)
                    if result.status == "refused":
                        self._take_refused_report(txn, batch, env)  # type: ignore[attr-defined]
                    self._apply_rules(txn, batch, env, peer)  # type: ignore[attr-defined]
                    released.append(env.id)
                    work.append(env)
        return released

    def _link_on(self, txn: Txn, batch: Batch, env: Envelope) -> None:
        """The author's chain just moved: link it past the positions an
        erasure notice vouches for right after (they may follow its last
        change here; _release lets what waited for them go on)."""
        if self._has_erasures:  # type: ignore[attr-defined]
            self._fill_vouched(txn, batch, env.body.registry, env.body.author)  # type: ignore[attr-defined]

    def _keep_evidence(self, txn: Txn, batch: Batch, env: Envelope, other_cid: bytes | None) -> None:
        """File both changes under their own sequence numbers: two with one
        seq (equivocation), or a change and the held link its ``prev``
        does not name (a broken chain: a fork one link earlier)."""
        body = env.body
        pending.keep_evidence(self.store, txn, body.registry, body.author, body.seq, env.cid, env.wire)
        self._take_report_held_as_evidence(txn, batch, env)  # type: ignore[attr-defined]
        if other_cid and other_cid not in batch.drafts:  # a draft is this node's own: never equivocation
            other = changes.envelope(self.store, txn, other_cid)
            if other is not None:
                pending.keep_evidence(self.store, txn, body.registry, body.author, other.body.seq, other_cid,
                                      other.wire)


def check_automerge_header(body: ChangeBody) -> None:
    """What an envelope says of its Automerge change must be what the
    change's own bytes say, checked before any document is loaded."""
    header = read_header(body.payload)
    if header.hash != body.change_hash:
        raise MalformedInput("the envelope's payload is not the change its change_hash names")
    if header.actor != actor_for(public_key_from_did(body.author)):
        raise PolicyDenied("the Automerge change was made under another author's actor id")
    if sorted(header.deps) != sorted(body.deps):
        raise MalformedInput("the envelope's deps differ from its change's deps")


def _drop_in_place(batch: Batch, body: Any) -> None:
    """A change added to its record's document in place will not commit:
    the document goes from the batch (the next reader loads it as stored)."""
    key = (body.registry, body.record)
    if key in batch.in_place:
        batch.in_place.discard(key)
        batch.forget_doc(key)


def _check_only_deletes(body: Any, after: dict[str, Any], before: dict[str, Any]) -> None:
    """A delete changes nothing but the deleted flag, as every local delete
    (RecordDoc.delete). Its edits would otherwise show where update-wins
    shows the record live again, unchecked: a delete is neither size-capped
    (nothing it keeps grows) nor judged as the update of those fields."""
    changed = sorted(key for key in before.keys() | after.keys()
                     if key != "deleted" and before.get(key) != after.get(key))
    if changed:
        raise ValidationError(f"{body.registry}/{body.record}: this delete also changes {changed[:5]}; a delete "
                              "changes nothing but the deleted flag")
