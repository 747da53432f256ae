"""Commit, shared by local and remote changes: what one change writes.

The change and its chain link, the record's document (when it has one) and
markers, the materialized record and its indexes, the history link, the
feed event and the audit entry, all in the batch's one transaction. At the
end of a batch this node's drafts are signed together: one Ed25519
signature over the Merkle root of their IDs (protocol/envelope.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

from registrygrid.crdt import disputes
from registrygrid.crdt.record import (
    RecordDoc,
    append_to_stored,
    stored_doc,
)
from registrygrid.engine import registries as regs
from registrygrid.engine.rebuild import judges_otherwise
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.engine.erasure import ERASURES_REGISTRY
from registrygrid.engine.values import (
    record_digest,
)
from registrygrid.protocol.envelope import (
    Draft,
    Envelope,
    sign_batch,
    wire_of,
)
from registrygrid.record import Record
from registrygrid.storage import chains, changes, feed, records
from registrygrid.storage.store import Txn
from registrygrid.trust.policy import POLICIES_REGISTRY
from registrygrid.trust.statements import Statement


class Committing(EngineCore):
    """What the engine writes for one change and one batch (mixed into Engine)."""

    def _seal_drafts(self, txn: Txn, batch: Batch, publish: bool) -> None:
        """Sign the batch's own changes at once: one signature over the
        Merkle root of their IDs, stored once, each change with its proof."""
        if not batch.drafts:
            return
        drafts = list(batch.drafts.values())
        signed, tree = sign_batch(self.key, drafts)
        changes.put_batch(self.store, txn, drafts, signed)
        # A draft of a record this batch went on to erase keeps its ID only,
        # and is never published (the notice vouches for its position).
        gone = {d.cid for d in drafts if (d.body.registry, d.body.record) in batch.erased_records}
        for d in drafts:
            if d.cid in gone:
                changes.put_erased(self.store, txn, d.cid)
        if publish:
            batch.committed.local_envelopes.extend(
                wire_of(d.body_bytes, i, signed.size, tree.path(i), signed.signature) for i, d in enumerate(drafts)
                if d.cid not in gone)
        self.metrics["write.batches_signed"] += 1

    def _commit(self, txn: Txn, batch: Batch, env: Envelope | Draft, doc: RecordDoc | None,
                old: dict[str, Any] | None, *, origin: str, requested_by: str | None,
                state: dict[str, Any], statement: Statement | None = None,
                automerge: tuple[bytes, bytes] | None = None,
                heads_before: list[bytes] | None = None) -> tuple[int, dict[str, Any]]:
        """Store one change and what it makes. ``doc`` is the record's
        document with the change applied, None for a snapshot create of a
        record that has no document; ``automerge`` the (hash, change) the
        document gained, when that is not the envelope's own payload (a
        snapshot's genesis change, merged into an existing document).
        ``heads_before`` are the document's heads before the change joined
        it, when the change may not have seen all of it (a remote one)."""
        store = self.store
        body = env.body
        reg, rec = body.registry, body.record
        if isinstance(env, Envelope):  # this node's drafts are stored when the batch signs them
            changes.put_received(store, txn, env)
        chains.link(store, txn, reg, body.author, body.seq, env.cid)
        if self._head(txn, batch, reg, body.author)[0] <= body.seq:  # not back past erased places (_erased_twin)
            batch.heads[(reg, body.author)] = self._chain_heads[(reg, body.author)] = (body.seq, env.cid)
        if automerge is None and not body.is_snapshot:
            automerge = (body.change_hash, body.payload)
        if doc is not None and automerge is not None:
            stored = append_to_stored(records.get_document(store, txn, reg, rec), automerge[1])
            if stored is None:
                stored = stored_doc(doc.save())
            records.put_document(store, txn, reg, rec, stored)
            records.mark_applied(store, txn, reg, rec, automerge[0], env.cid)
            batch.hold_doc((reg, rec), doc, stored)
        conflicts: list[dict[str, Any]] = []
        if doc is not None and automerge is not None:
            state, conflicts = self._settled(txn, batch, reg, rec, doc, automerge[0], heads_before=heads_before,
                                             deps=() if body.is_snapshot else body.deps, state=state, old=old,
                                             cause=env.id)
        record = self._materialized(state, env, old, conflicts)
        records.put_record(self.store, txn, old, record)
        self._batch_feed_seq += 1
        seq = self._batch_feed_seq
        feed.append(self.store, txn, feed.FeedEvent(seq, feed.EVENT_TYPES[body.op], reg, rec, body.kind, env.id,
                                                    body.author, body.hlc, origin))
        records.add_history(self.store, txn, reg, rec, seq, env.cid)
        reason = "local write" if origin == "local" else f"replicated from {origin}"
        if requested_by:
            reason += f" for {requested_by}"
        self.audit.append(txn, at_ms=self.now_ms(), actor=body.author, action=body.op, target=f"{reg}/{rec}",
                          reason=reason, before=record_digest(old), after=record_digest(record), change=env.id)
        batch.committed.feed_seqs.append(seq)
        batch.committed.registries.add(reg)
        self.metrics[f"write.{body.op}"] += 1
        if reg == regs.REGISTRY_OF_REGISTRIES:
            self._registry_cache.pop(rec, None)
            if old is None and records.refused_record_ids(self.store, txn, rec):
                # Its records' changes an erasure's paths kept before it came
                # (refused until now: engine/rebuild.py) are judged by it.
                self._rebuild_records(txn, batch, rec, lambda record: False, env, origin)  # type: ignore[attr-defined]
            # Whose access policies count for a registry depends on its
            # owner (trust/policy.py): a descriptor that arrives after a
            # policy for its registry makes that policy count from then on.
            batch.policies_changed = True
            if old is not None and old["fields"].get("conflict_policy") != record["fields"].get("conflict_policy"):
                self._resettle_registry(txn, batch, rec, env, origin)
            if origin != "local" and old is not None and (judges_otherwise(old, record)
                                                          or tuple(body.hlc) < tuple(old["updated_hlc"])):
                # A version that came in late: changes made since it was,
                # judged by the version before it here, are judged again. A
                # version older than the latest one held changes nothing the
                # registry shows now, but judges the changes of its own time
                # (EngineCore._descriptor_at). (A local change is later than
                # every change this node holds.)
                self._rejudge_registry(txn, batch, rec, tuple(body.hlc), env, origin)  # type: ignore[attr-defined]
        if reg == disputes.DISPUTES_REGISTRY and not record["deleted"]:
            self._after_dispute_record(txn, batch, record["kind"], rec, record["fields"])  # type: ignore[attr-defined]
        if reg == POLICIES_REGISTRY:
            batch.policies_changed = True
        if reg == regs.KINDS_REGISTRY:
            self._after_kind_record(txn, batch, record, env, origin)  # type: ignore[attr-defined]
        if reg == ERASURES_REGISTRY and not record["deleted"]:  # a notice, or a supplement to one
            # A supplement as its author made it too: two nodes of an org may
            # file one notice at once, and the record shows one create's
            # fields, maybe not the ones this supplement was written into.
            own = doc.materialize(heads=[body.change_hash]) if doc is not None and not body.is_snapshot else None
            self._after_erasure_notice(txn, batch, env, record, origin, own)  # type: ignore[attr-defined]
        if statement is not None and self.trust.add(statement):
            # Nothing can fail after this point of the op; a later failure of
            # the batch reloads the trust state from the store.
            self.metrics[f"trust.{statement.kind}"] += 1
            # Changes parked for this key, or for any key of this org (an
            # invitation admits them all), may go on now.
            batch.delegated.extend(sorted(self.trust.affected_by_revocation(statement.subject)))
            batch.stated.append(statement.subject)
            if statement.delegation is not None:
                batch.delegations.append(statement.delegation)
        return seq, record

    def _materialized(self, state: dict[str, Any], env: Envelope | Draft, old: dict[str, Any] | None,
                      conflicts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return materialized(state, env, old, conflicts)

    def _feed_event(self, txn: Txn, batch: Batch, env: Envelope, registry: str, record_id: str,
                    event: str, origin: str, *, kind: str | None = None, history: bool = True) -> None:
        body = env.body
        self._batch_feed_seq += 1
        seq = self._batch_feed_seq
        feed.append(self.store, txn, feed.FeedEvent(seq, event, registry, record_id, kind or body.kind, env.id,
                                                    body.author, body.hlc, origin))
        if history:
            records.add_history(self.store, txn, registry, record_id, seq, env.cid)
        batch.committed.feed_seqs.append(seq)
        batch.committed.registries.add(registry)


def materialized(state: dict[str, Any], env: Envelope | Draft, old: dict[str, Any] | None,
                 conflicts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The record, as stored and read, after ``env`` made the document's
    state ``state`` (``old``: the record before it, or None)."""
    body = env.body
    created = state.get("created") if isinstance(state.get("created"), dict) else {}
    latest = (tuple(body.hlc), env.id)
    if old is not None and (tuple(old["updated_hlc"]), old["change_id"]) > latest:
        updated_hlc, updated_by, change_id = old["updated_hlc"], old["updated_by"], old["change_id"]
    else:
        updated_hlc, updated_by, change_id = list(body.hlc), body.author, env.id
    # The record's one shape (registrygrid/record.py), as the dict that
    # storage, the SDK and the bridge read.
    return msgspec.structs.asdict(Record(
        registry=body.registry, id=body.record, kind=state.get("kind"), schema=state.get("schema"),
        owner=state.get("owner"), tags=state["tags"], links=state["links"], fields=state["fields"],
        deleted=bool(state["deleted"]), created_at=created.get("at"), created_by=created.get("by"),
        updated_at=updated_hlc[0], updated_hlc=updated_hlc, updated_by=updated_by, change_id=change_id,
        revision=(old["revision"] if old else 0) + 1, conflicts=conflicts or [],
    ))
