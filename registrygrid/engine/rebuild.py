"""Records rebuilt from their valid changes when the rules change.

A revocation, a new access policy or a create race can make changes that
counted stop counting (or the reverse); the record is then rebuilt from the
changes that are valid under the rules of their time, in causal order, so
every node shows the same record whatever order things arrived in
(docs/trust.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from registrygrid.crdt import conflicts as tracking
from registrygrid.crdt import resolver
from registrygrid.crdt.disputes import DISPUTES_REGISTRY, RESOLUTION_KIND
from registrygrid.crdt.record import (
    RecordDoc,
    stored_doc,
)
from registrygrid.crdt.snapshot import (
    read_snapshot,
)
from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch, kind_race
from registrygrid.engine.core import EngineCore
from registrygrid.engine.erasure import ERASURES_REGISTRY
from registrygrid.engine.values import (
    automerge_of,
    fields_size,
    record_digest,
)
from registrygrid.errors import (
    MalformedInput,
    NotOwner,
    PolicyDenied,
    RegistryError,
    UnknownRegistry,
    ValidationError,
)
from registrygrid.identity.delegation import DelegationBody
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import (
    Draft,
    Envelope,
)
from registrygrid.protocol.hlc import MAX_DRIFT_MS
from registrygrid.storage import chains, erasures, feed, records
from registrygrid.storage.store import Txn
from registrygrid.trust import access
from registrygrid.trust.policy import POLICIES_REGISTRY, PolicySet, PolicyVersion
from registrygrid.trust.state import Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY, read_statement


# Rounds of weighing the access rules again after a policy record changed
# (a policy may govern grid.policies itself): far above what rules judged in
# time order take (a handful), and a bound should they not settle.
MAX_POLICY_ROUNDS = 16


class Rebuilds(EngineCore):
    """The engine's rebuilds of records under changed rules (mixed into Engine)."""

    @staticmethod
    def _frontiers_of(live: list[tuple[Envelope | Draft, bytes]]) -> tracking.Frontiers:
        """A rebuilt record's conflict frontiers, from its valid changes in
        causal order (only a record whose history forked needs this)."""
        return tracking.replayed((am_hash, automerge_of(env)[1]) for env, am_hash in live)[1]

    def _policies(self, txn: Txn, batch: Batch | None = None) -> PolicySet:
        """The access rules in force, each version of each grid.policies
        record judging the changes made while it stood (trust/policy.py)."""
        def owner_of(registry: str) -> str | None:
            try:
                return regs.lookup(self.store, txn, registry, include_deleted=True).owner
            except RegistryError:
                return None

        batch = batch if batch is not None else Batch()
        versions: list[PolicyVersion] = []
        for record in records.iter_records(self.store, txn, registry=POLICIES_REGISTRY):  # deleted ones too
            versions += self._policy_versions(txn, batch, record)
        return PolicySet.of(versions, is_admin=self.trust.is_admin, owner_of=owner_of)

    def _policy_versions(self, txn: Txn, batch: Batch, record: dict[str, Any]) -> list[PolicyVersion]:
        """The versions of one policy record, each until the next. A record
        never edited stands as it is from its creation (deleted: never)."""
        history = self._versions(txn, batch, POLICIES_REGISTRY, record["id"])
        if not history:
            return [] if record.get("deleted") else [PolicyVersion(record)]
        out = []
        for n, (at, state) in enumerate(history):
            until = history[n + 1][0][0] if n + 1 < len(history) else None
            if n + 1 == len(history):
                state = record  # the last version is the record itself (what every reader sees)
            version = {**record, "fields": state.get("fields") or {}, "deleted": bool(state.get("deleted"))}
            # From its own change's clock, the first one's too: where two
            # creates raced, the record's created_at is the winner's, and
            # the earlier create's version stood before it.
            out.append(PolicyVersion(version, since_ms=at[0], until_ms=until))
        return out

    def _apply_rules(self, txn: Txn, batch: Batch, cause: Envelope, origin: str) -> None:
        """After a remote change committed: what it changed in the rules
        (access policies, trust statements, quarantines, resolutions) is
        applied to what is stored. A revocation or a quarantine may rebuild
        a grid.policies record (the revoked key edited a policy), so the
        policies are weighed again after them."""
        self._apply_policies(txn, batch, cause, origin)
        self._rebuild_revoked(txn, batch, cause, origin)
        self._apply_disputes(txn, batch, cause, origin)  # type: ignore[attr-defined]
        self._apply_policies(txn, batch, cause, origin)

    def _apply_policies(self, txn: Txn, batch: Batch, cause: Envelope | Draft, origin: str) -> None:
        """After a grid.policies change or rebuild: the rules in force are
        reloaded, and every record of a registry whose rules changed is
        rebuilt, so records stay the pure function of the changes valid
        under the rules of their time, whichever order the policy and the
        changes arrived in (a policy may target grid.policies itself: its
        records' rebuilds weigh the rules again, until they stand)."""
        rounds = 0
        while batch.policies_changed:
            rounds += 1
            if rounds > MAX_POLICY_ROUNDS:
                # Versions judge only what came after them, so the rules
                # settle; a guard all the same: never a write path spinning.
                self.metrics["policy.unsettled"] += 1
                batch.policies_changed = False
                break
            batch.policies_changed = False
            before, self.policy = self.policy, self._policies(txn, batch)
            changed = {r for r in before.registries() | self.policy.registries()
                       if before.rules.get(r) != self.policy.rules.get(r)}
            for registry in sorted(changed):
                self._rebuild_records(txn, batch, registry, lambda record: True, cause, origin)

    def _rebuild_revoked(self, txn: Txn, batch: Batch, cause: Envelope, origin: str) -> None:
        """After a statement about a key: erasure notices of its org vouch for
        its chains' positions now (engine/erasure.py); if the key is revoked,
        its applied changes past their cutoffs no longer count, so the
        records they touched are rebuilt from the changes that remain valid."""
        stated = bool(batch.stated)
        while batch.stated:
            subject = batch.stated.pop()
            self._vouch_for_key(txn, batch, subject, origin)  # type: ignore[attr-defined]
            if subject == self.key.did:
                self._pay_owed_supplements(txn, batch)  # type: ignore[attr-defined]
            for key_did in sorted(self.trust.affected_by_revocation(subject)):
                self._rebuild_revoked_key(txn, batch, key_did, cause, origin)
        while batch.delegations:
            self._rejudge_redelegated(txn, batch, batch.delegations.pop(), cause, origin)
        if stated:
            self._resettle_by_trust(txn, batch, cause, origin)  # type: ignore[attr-defined]

    def _rebuild_revoked_key(self, txn: Txn, batch: Batch, subject: str, cause: Envelope,
                             origin: str) -> None:
        """After a statement about ``subject``, judge again the records whose
        verdicts on its changes it may have turned: past the lowest cutoff
        of any revocation of it (the key's own or an admin's cuts it whole;
        an org's ends that org's delegation), from 0 when an org that
        delegated it was removed (its changes for that org then count only
        up to an admin's cutoffs), those that count; and, for a key several
        orgs delegated, those refused: a change for an org whose delegation
        came later was refused as not its (the key was known for another),
        and stayed refused where it had come first."""
        delegators = {d.org for d in self.trust.delegations.get(subject, ())}
        revoked = self.trust.any_revocation(subject)
        removed = any(self.trust.org_removed(org) for org in delegators)
        several = len(delegators) > 1
        if revoked is None and not removed and not several:
            return

        def cutoff(registry: str) -> int | None:  # past it, what counts may stop counting
            if removed:
                return 0
            return revoked.cutoff(registry) if revoked is not None else None

        targets: set[tuple[str, str]] = set()
        for registry, authors in chains.heads(self.store, txn).items():
            head, cut = authors.get(subject, 0), cutoff(registry)
            start = 0 if several else (cut or 0)
            if registry == MEMBERS_REGISTRY or head <= start:
                continue
            for seq, cid in chains.links_after(self.store, txn, registry, subject, start):
                body = self._held_body(txn, batch, cid)  # type: ignore[attr-defined]
                if body is None:  # erased: nothing of it counts anywhere
                    continue
                counts = records.counts(self.store, txn, registry, body.record, cid, body.change_hash)
                if (counts and cut is not None and seq > cut) or (several and not counts):
                    targets.add((registry, body.record))
        for registry, record_id in sorted(targets):
            self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)

    def _rejudge_redelegated(self, txn: Txn, batch: Batch, delegation: DelegationBody, cause: Envelope,
                             origin: str) -> None:
        """After a delegation of a key its org had delegated before: the
        key's changes of the moments it now governs (trust/state.py
        ``delegation_at``: the latest that covers a moment) were judged by
        another delegation, or none, where it arrived after them; those whose
        roles differ are judged again, so a node that held an offline
        device's write before the org made the device a reader drops it as
        the nodes that heard of the reader first refused it. Reads every
        change of the key (an org's rare act); rebuilds only the records of
        changes whose roles changed."""
        key, org = delegation.subject, delegation.org
        of_org = [d for d in self.trust.delegations.get(key, ()) if d.org == org]
        before = [d for d in of_org if d != delegation]
        if not before:
            return  # the org's first of this key: its changes waited for it (parked), none was judged
        # No change of this node can be later than its clock and the drift
        # it allows (later ones are refused on arrival), so a window whose
        # roles change only past that (a renewal with the same roles) has
        # nothing to judge again, whenever it is asked.
        horizon = int(time.time()) + MAX_DRIFT_MS // 1000 + 1
        if not _roles_change(before, of_org, delegation.not_before, min(delegation.expires, horizon)):
            return
        targets: set[tuple[str, str]] = set()
        for registry, authors in chains.heads(self.store, txn).items():
            if registry == MEMBERS_REGISTRY or authors.get(key, 0) == 0:
                continue
            for _, cid in chains.links_after(self.store, txn, registry, key, 0):
                body = self._held_body(txn, batch, cid)  # type: ignore[attr-defined]
                if body is None:  # erased: nothing of it counts anywhere
                    continue
                moment = body.hlc[0] // 1000
                if not delegation.not_before <= moment < delegation.expires:
                    continue
                was, now = _governing(before, moment), _governing(of_org, moment)
                if was is None or now is None or was.roles != now.roles:
                    targets.add((registry, body.record))
        for registry, record_id in sorted(targets):
            self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)

    def _rebuild(self, txn: Txn, batch: Batch, registry: str, record_id: str, *,
                 cause: Envelope, origin: str) -> None:
        """Make a record the pure function of its valid changes again.

        Every change stored for the record (applied or refused) is judged
        anew in causal order (clock, then change ID: a change's clock is
        above those of the changes it builds on), as on first arrival:
        revocation cutoffs, the earliest valid create fixing the owner,
        ownership and policy of each change, and no change built on a
        refused one. The document, the record and its indexes are rewritten
        from the valid ones; a record left with none disappears. The feed
        gets an event for each change that now counts, and one for the
        record when changes stopped counting."""
        store = self.store
        applied_cids = {*records.applied_changes(self.store, txn, registry, record_id).values(),
                        *records.applied_ids(self.store, txn, registry, record_id)}
        refused = records.refused_changes(self.store, txn, registry, record_id)
        envs = [self._stored_envelope(txn, batch, cid) for cid in applied_cids | set(refused.values())]
        envs.sort(key=lambda e: (tuple(e.body.hlc), e.cid))
        live: list[tuple[Envelope | Draft, bytes]] = []  # with the hash of its Automerge change
        live_hashes: set[bytes] = set()
        refused_now: dict[bytes, bytes] = {}
        blob = b""
        doc: RecordDoc | None = None  # of the valid changes so far, each added in place
        state: dict[str, Any] | None = None
        heads: set[bytes] = set()  # of the document built so far
        concurrent = False  # did a change not see all of the document before it?
        # An erased record's create is gone but still came first: a later
        # create of the id by another org lost to it (engine/erasure.py).
        erased = erasures.erased_create(store, txn, registry, record_id) \
            if self._has_erasures else None  # type: ignore[attr-defined]
        for env in envs:
            body = env.body
            added = False
            try:
                if any(dep in refused_now for dep in body.deps) or not set(body.deps) <= live_hashes:
                    raise PolicyDenied("it builds on a refused change")
                am_hash, am_change = automerge_of(env)
                if registry != MEMBERS_REGISTRY:
                    self.trust.check_chain(body.author, registry, body.seq)
                if doc is None:
                    candidate_doc = RecordDoc.apply(None, am_change)
                else:
                    added = True
                    doc.add_change(am_change)
                    candidate_doc = doc
                if am_hash not in candidate_doc.heads():
                    raise MalformedInput("Automerge did not apply the change")
                candidate = candidate_doc.materialize()
                try:
                    desc = self._descriptor_at(txn, batch, registry, body.hlc)  # the one in force when it was made
                except UnknownRegistry:
                    # Held by an erasure's paths before its registry came (a
                    # notice voided since): refused until the registry's
                    # first version comes, which judges it (Committing).
                    raise PolicyDenied(f"registry {registry} is not known here yet") from None
                # Judged on what it made of what its author saw, as ingest
                # judges it (RemoteIngest._check_state): its own history.
                if body.is_genesis:
                    own = read_snapshot(body.payload, kind=body.kind, schema=body.schema) if body.is_snapshot \
                        else RecordDoc.apply(None, am_change).materialize()
                elif set(body.deps) == heads:
                    own = candidate
                else:
                    own = candidate_doc.materialize(heads=[am_hash])
                size = fields_size(own["fields"]) \
                    if body.op != "delete" and desc.max_record_bytes < limits.MAX_RECORD_BYTES else None
                refusal = self._registry_refusal(desc, body.op, body.kind, size)
                if refusal is None and registry == regs.REGISTRY_OF_REGISTRIES and body.op != "delete":
                    refusal = regs.descriptor_refusal(record_id, own)  # as ingest judges it
                if refusal is not None:
                    raise refusal
                if body.op != "delete" and self._is_user_kind(own["kind"], own["schema"]):  # type: ignore[attr-defined]
                    # Its kind's definition may have changed since (engine/kinds.py).
                    self.catalog.validate(own["kind"], own["schema"], own["fields"])
                at_ms = body.hlc[0]
                if body.is_genesis:
                    claim = own
                    created = claim["created"] if isinstance(claim.get("created"), dict) else {}
                    statement = read_statement(body.kind, record_id, claim["fields"]) \
                        if registry == MEMBERS_REGISTRY else None
                    verdict = access.check_create(self.trust.at_place(body.author, registry, body.seq), desc,
                                                  author=body.author, record_id=record_id,
                                                  owner=claim.get("owner"), created_by=created.get("by"),
                                                  at_ms=at_ms, statement=statement, policy=self.policy,
                                                  kind=body.kind, fields=claim.get("fields"))
                    if state is None and erased is not None and claim.get("owner") != erased[0] \
                            and (tuple(body.hlc), env.cid) > (erased[1], erased[2]):
                        raise NotOwner(f"{registry}/{record_id} belongs to {erased[0]}, whose create came first "
                                       "(the record was erased since)")
                    if state is not None and state.get("owner") != claim.get("owner"):
                        raise NotOwner(f"{registry}/{record_id} belongs to {state.get('owner')}, whose create "
                                       f"came first")
                    if state is not None and (state.get("kind"), state.get("schema")) != \
                            (claim.get("kind"), claim.get("schema")):
                        raise kind_race(registry, record_id, state, claim)
                else:
                    if state is None:
                        raise NotOwner(f"{registry}/{record_id} has no valid create")
                    judged_before = state
                    if set(body.deps) != heads:  # concurrent: judged on what its author saw (_judged_before)
                        judged_before = candidate_doc.materialize(heads=list(body.deps))
                    verdict = access.check_modify(self.trust.at_place(body.author, registry, body.seq), desc,
                                                  op=body.op, author=body.author,
                                                  before={**judged_before, "registry": registry, "id": record_id},
                                                  after=own, at_ms=at_ms, policy=self.policy)
                if verdict is Verdict.WAIT:
                    # Every stored change was judged once with its signer's
                    # delegation known (RemoteIngest._refuse waits for it), and
                    # delegations are never forgotten: a WAIT here is a bug,
                    # and a change nobody can place never counts.
                    raise PolicyDenied(f"{body.author}'s delegation is not known here")
            except (PolicyDenied, ValidationError):  # MalformedInput and SchemaViolation among them
                refused_now[automerge_of(env)[0]] = env.cid
                self.metrics["trust.refused_on_rebuild"] += int(env.cid in applied_cids)
                if added:  # the refused change went into the document: build it again without it
                    doc = RecordDoc.load(blob)
                continue
            concurrent = concurrent or set(body.deps) != heads
            heads = (heads - set(body.deps)) | {am_hash}
            blob += am_change
            doc = candidate_doc
            live.append((env, am_hash))
            live_hashes.add(am_hash)
            state = candidate
        # The record's bookkeeping, rewritten.
        records.clear_change_index(store, txn, registry, record_id)
        for env, am_hash in live:
            records.mark_applied(store, txn, registry, record_id, am_hash, env.cid)
        for h, cid in refused_now.items():
            records.mark_refused(store, txn, registry, record_id, h, cid)
        live_cids = {env.cid for env, _ in live}
        now_refused = applied_cids - live_cids
        for seq, cid in records.history(self.store, txn, registry, record_id):
            if cid in now_refused:
                records.drop_history(self.store, txn, registry, record_id, seq)
        old = records.get_record(self.store, txn, registry, record_id)
        record: dict[str, Any] | None = None
        if not live:
            records.delete_document(store, txn, registry, record_id)
            records.put_frontiers(store, txn, registry, record_id, {})
            if old is not None:
                records.delete_record(self.store, txn, old)
        else:
            assert doc is not None  # built from the live changes, as ``blob`` holds them
            records.put_document(store, txn, registry, record_id, stored_doc(doc.save()))
            latest = max((env for env, _ in live), key=lambda e: (tuple(e.body.hlc), e.id))
            frontiers = self._frontiers_of(live) if concurrent else {}
            records.put_frontiers(store, txn, registry, record_id, frontiers)
            state = doc.materialize()
            found = self._conflicts_of(txn, batch, registry, record_id, doc.doc, frontiers, state["kind"],
                                       state["owner"])
            state = resolver.apply(state, found) if found else state
            record = {**self._materialized(state, latest, None, [msgspec.structs.asdict(c) for c in found]),
                      "revision": len(live)}
            records.put_record(self.store, txn, old, record)
        batch.forget_doc((registry, record_id))
        if registry == regs.REGISTRY_OF_REGISTRIES:
            self._registry_cache.pop(record_id, None)
        if registry == POLICIES_REGISTRY:
            batch.policies_changed = True  # the rules in force are read from these records (_apply_policies)
        for env, _ in live:
            if env.cid not in applied_cids:  # counts now: its own feed event, as if just applied
                self._feed_event(txn, batch, env, registry, record_id, feed.EVENT_TYPES[env.body.op], origin)
        if now_refused:
            kind = (record or old or {}).get("kind") or cause.body.kind
            event = "deleted" if record is None or record["deleted"] else "updated"
            self._feed_event(txn, batch, cause, registry, record_id, event, origin, kind=kind, history=False)
        self.metrics["trust.rebuilt_records"] += 1
        self.audit.append(txn, at_ms=self.now_ms(), actor=cause.body.author, action="delete" if record is None
                          else "update", target=f"{registry}/{record_id}",
                          reason=f"rebuilt from its valid changes: {len(live)} count, {len(refused_now)} refused",
                          before=record_digest(old), after=record_digest(record), change=cause.id)
        if registry == regs.KINDS_REGISTRY:
            self._after_kind_record(txn, batch, record, cause, origin)  # type: ignore[attr-defined]
        if registry == DISPUTES_REGISTRY:
            # A resolution that no longer counts (its signer revoked before
            # it), or counts now: the records of its dispute are settled
            # again (_apply_disputes). Else nodes that held it before the
            # revocation kept showing its value, and the others did not.
            for held in (old, record):
                dispute = (held or {}).get("fields", {}).get("dispute") \
                    if (held or {}).get("kind") == RESOLUTION_KIND else None
                if isinstance(dispute, str) and dispute not in batch.resolved:
                    batch.resolved.append(dispute)
        if registry == ERASURES_REGISTRY and record is None and old is not None:
            # An erasure notice no longer counts (its signer's key was
            # revoked before it): what it erased here is undone.
            self._void_notice(txn, batch, record_id, old, cause, origin)  # type: ignore[attr-defined]
        if self._has_erasures:  # type: ignore[attr-defined]
            # The rebuild may have given the id to the org whose erasure
            # notice of it was refused (a create race, a rule that came
            # late): judged again (engine/erasure.py).
            self._judge_waiting(txn, batch, registry, record_id, origin)  # type: ignore[attr-defined]
        if registry == regs.REGISTRY_OF_REGISTRIES:
            flipped = [tuple(env.body.hlc) for env in envs if (env.cid in applied_cids) != (env.cid in live_cids)]
            if judges_otherwise(old, record):
                # Another create of the descriptor won (an earlier one, by
                # another org): the registry's records were judged by the one
                # that lost, here only. Judge them again by the one every node
                # holds (its owner, write policy, kinds, limits).
                self._rejudge_registry(txn, batch, record_id, None, cause, origin)
            elif flipped:
                # A version stopped or started counting (a revoked key's
                # edit of the rules): the changes made while it was in force
                # were judged by it here only (_descriptor_at).
                self._rejudge_registry(txn, batch, record_id, min(flipped), cause, origin)
            if (old or {}).get("fields", {}).get("conflict_policy") \
                    != (record or {}).get("fields", {}).get("conflict_policy"):
                # The rules that settle conflicts now are others (a revoked
                # key's edit of them stopped counting): every record shows
                # what they choose, as on a node that never applied the edit.
                self._resettle_registry(txn, batch, record_id, cause, origin)  # type: ignore[attr-defined]

    def _rejudge_registry(self, txn: Txn, batch: Batch, registry: str, since: tuple[int, int] | None,
                          cause: Envelope | Draft, origin: str) -> None:
        """Rebuild the registry's records changed at or after ``since`` (all
        of them when None), and those holding refused changes: a version of
        its descriptor that judges otherwise came in late (each change is
        judged by the version in force when it was made: _descriptor_at)."""
        self.metrics["trust.registry_rejudged"] += 1
        self._rebuild_records(txn, batch, registry,
                              lambda record: since is None or tuple(record["updated_hlc"]) >= since, cause, origin)

    def _rebuild_records(self, txn: Txn, batch: Batch, registry: str, chosen: Callable[[dict[str, Any]], bool],
                         cause: Envelope | Draft, origin: str, *, kind: str | None = None) -> None:
        """Rebuild the records of ``registry`` (of ``kind``) that ``chosen``
        picks, and every record holding refused changes (a change of the
        rules may make one count)."""
        ids = [r["id"] for r in records.iter_records(self.store, txn, registry=registry, kind=kind) if chosen(r)]
        listed = set(ids)
        ids += [rid for rid in records.refused_record_ids(self.store, txn, registry) if rid not in listed]
        for record_id in ids:
            self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)  # type: ignore[arg-type]


def _roles_change(before: list[DelegationBody], now: list[DelegationBody], start: int, end: int) -> bool:
    """Whether the roles that govern some moment of [start, end) differ
    between two lists of one org's delegations of a key. Which delegation
    governs changes only where one begins or ends."""
    points = {start, *(x for d in now for x in (d.not_before, d.expires) if start < x < end)}
    for moment in sorted(p for p in points if p < end):
        was, is_now = _governing(before, moment), _governing(now, moment)
        if was is None or is_now is None or was.roles != is_now.roles:
            return True
    return False


def _governing(delegations: list[DelegationBody], moment: int) -> DelegationBody | None:
    """The delegation that governs ``moment`` among one org's of one key,
    sorted as the trust state keeps them: the last that covers it."""
    best = None
    for claims in delegations:
        if claims.not_before <= moment < claims.expires:
            best = claims
    return best


def judges_otherwise(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    """Whether two states of a registry's descriptor judge its records'
    changes differently: owner, write policy and roles, kinds, size limit."""
    if before is None or after is None:
        return before is not after
    old, new = regs.descriptor_from_record(before), regs.descriptor_from_record(after)
    return (old.owner, old.write_policy, old.write_roles, old.kinds, old.max_record_bytes) != \
        (new.owner, new.write_policy, new.write_roles, new.kinds, new.max_record_bytes)
