"""Conflicts settled as changes commit: what a record shows where writes raced.

After a change joins a record's document, the record's conflict frontiers
are brought up to date (crdt/conflicts.py) and every conflict is settled by
the registry's conflict policy (crdt/resolver.py). The record then shows
the chosen values and lists the conflicts, and each newly settled conflict
is written to the audit ledger with the rule that decided it.

Costs nothing on the common path: a change that has seen the whole record
(every local write; a remote change whose deps are the document's heads)
of a record without conflicts, in a registry without immutable fields,
skips all of it after one LMDB read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from automerge.core import Document

from registrygrid.crdt import conflicts as tracking
from registrygrid.crdt import resolver
from registrygrid.crdt.disputes import settlement_refusal
from registrygrid.crdt.record import RecordDoc
from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import cid_to_str
from registrygrid.storage import records
from registrygrid.storage.store import Txn
from registrygrid.trust import access


class Settling(EngineCore):
    """The engine's conflict settling (mixed into Engine)."""

    def _settled(self, txn: Txn, batch: Batch, registry: str, record_id: str, doc: RecordDoc,
                 change_hash: bytes, *, heads_before: list[bytes] | None, deps: Sequence[bytes],
                 state: dict[str, Any], old: dict[str, Any] | None,
                 cause: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The state a record shows once ``change_hash`` joined ``doc``, and
        its conflicts. ``heads_before``: the document's heads before the
        change joined it (a remote change, which may not have seen all of
        it); None for a local one."""
        store = self.store
        frontiers = records.get_frontiers(store, txn, registry, record_id)
        desc = self._registry(txn, registry)
        policy = desc.conflict_rules
        kind = state["kind"]
        concurrent = heads_before is not None and sorted(heads_before) != sorted(deps)
        had = bool(old and old.get("conflicts"))
        if not frontiers and not concurrent and not had and not policy.immutable_fields(kind):
            return state, []
        if frontiers or concurrent:
            # What the document gained since its heads before: the change alone.
            since = heads_before if heads_before is not None else deps
            meta = next(tracking.ChangeMeta.of(c) for c in doc.doc.get_changes(list(since)) if c.hash == change_hash)
            updated = tracking.track(doc.doc, heads_before, meta, frontiers, tracking.kept_history(doc))
            if updated != frontiers:
                records.put_frontiers(store, txn, registry, record_id, updated)
            frontiers = updated
        conflicts = self._conflicts_of(txn, batch, registry, record_id, doc.doc, frontiers, kind, state["owner"],
                                       doc.written)
        if conflicts or had:
            state = resolver.apply(doc.materialize(), conflicts)
            self._audit_settled(txn, registry, record_id, old, conflicts, cause)
        return state, [msgspec.structs.asdict(c) for c in conflicts]

    def _conflicts_of(self, txn: Txn, batch: Batch, registry: str, record_id: str, doc: Document,
                      frontiers: tracking.Frontiers, kind: str, owner: str,
                      written: dict[Any, Any] | None = None) -> list[resolver.FieldConflict]:
        desc = self._registry(txn, registry)
        # Writers described once per document, not at every change: on a
        # record where eight writers race, each change settles its paths
        # among all of them again (~40 descriptions a change, each a stored
        # body and a trust lookup). What one says depends on the change,
        # the owner and the trust state, all three in the key.
        known: dict[Any, Any] = written if written is not None else {}
        revision = self.trust.revision

        def describe(change_hash: bytes) -> resolver.Writer:
            key = ("writer", change_hash, owner, revision)
            writer = known.get(key)
            if writer is not None:
                return writer  # type: ignore[no-any-return]
            cid = records.applied_change(self.store, txn, registry, record_id, change_hash)
            if cid is None:  # cannot happen for a change the document holds; say so rather than guess
                writer = resolver.Writer(change_id=f"automerge:{change_hash.hex()}", author="unknown", hlc=(0, 0))
            else:
                body = self._change_body(txn, batch, cid)
                subject = access.subject_of(self.trust.at_place(body.author, registry, body.seq), body.author,
                                            body.hlc[0], owner)
                writer = resolver.Writer(change_id=cid_to_str(cid), author=body.author, hlc=tuple(body.hlc),
                                         roles=subject.roles, for_owner=owner in subject.orgs)
            if len(known) >= resolver.MAX_WRITTEN:  # as resolver._written_at bounds it
                known.clear()
            known[key] = writer
            return writer

        def created_heads() -> list[bytes]:
            # The changes with no deps (the creates' geneses). Kept with the
            # document, with the heads they were read at: the next call
            # reads only the changes the document gained since.
            seen_at, roots = written.get("roots", ([], [])) if written is not None else ([], [])
            roots = sorted({*roots, *(c.hash for c in doc.get_changes(seen_at) if not c.deps)})
            if written is not None:
                written["roots"] = (doc.get_heads(), roots)
            return roots

        lookup = self._resolutions(txn, registry, record_id, owner)  # type: ignore[attr-defined]
        # A resolution that would leave the record unsound does not count,
        # on every node alike (a pure function of the document and the
        # resolutions): the bridge refused it, but one written through the
        # SDK or by a peer left the record outside its kind (a required
        # field removed), and every later update of it was refused. The
        # latest one that does count decides then: set aside whole, the
        # dispute fell back to open, and a bad later resolution undid a
        # good earlier one. Each round sets one more aside, so it ends.
        set_aside: set[str] = set()
        while True:
            found = resolver.settle(doc, frontiers, policy=desc.conflict_rules, kind=kind, registry=registry,
                                    record_id=record_id, describe=describe, created_heads=created_heads,
                                    resolutions=lambda dispute: lookup(dispute, set_aside), written=written)
            breaking = self._unsound_resolutions(doc, kind, found)
            if not breaking:
                return found
            self.metrics["conflicts.resolution_breaks_schema"] += len(breaking)
            set_aside |= breaking

    def _unsound_resolutions(self, doc: Document, kind: str, found: Sequence[resolver.FieldConflict]) -> set[str]:
        """The resolutions (change IDs) among ``found`` that, put in the
        record, leave it unsound (each judged alone; crdt/disputes.py
        ``settlement_refusal``)."""
        resolved = [c for c in found if c.status == "resolved"]
        if not resolved:
            return set()
        state = {**RecordDoc(doc).materialize(), "kind": kind}
        return {str(c.resolved_by) for c in resolved if settlement_refusal(state, c, self.catalog) is not None}

    def _audit_settled(self, txn: Txn, registry: str, record_id: str, old: dict[str, Any] | None,
                       conflicts: Sequence[resolver.FieldConflict], cause: str | None) -> None:
        """One audit entry per conflict that is new or settled differently, with
        the rule that decided it: ``rgrid audit log --record`` explains a value."""
        # The rule and the competing writes are part of what was said: a
        # policy switch that picks the same change, or a union that gains a
        # write, was left explained by the entry of before.
        def said(path: str, status: str, chosen: Any, resolved_by: Any, rule: str, writes: Any) -> tuple[Any, ...]:
            return path, status, chosen, resolved_by, rule, tuple(sorted(str(w.get("change")) for w in writes or ()))

        seen = {said(c["path"], c["status"], c["chosen"], c.get("resolved_by"), c.get("rule"), c.get("writes"))
                for c in (old or {}).get("conflicts") or ()}
        for conflict in conflicts:
            if said(conflict.path, conflict.status, conflict.chosen, conflict.resolved_by, conflict.rule,
                    conflict.writes) in seen:
                continue
            # The ledger is append-only and hash-chained, so it never holds
            # a field's value (an erasure could not take it out again): it
            # names the path, the rule and the change; the record shows the
            # value (docs/erasure.md).
            shown = "a removal" if conflict.removed else "a value"
            how = {"settled": f"{conflict.rule} chose {shown}",
                   "disputed": f"manual: disputed ({conflict.dispute}); showing {shown} until resolved",
                   "resolved": f"manual: resolved by {conflict.resolved_by} to {shown}"}[conflict.status]
            whose = f" (change {conflict.chosen})" if conflict.chosen else ""
            self.metrics[f"conflicts.{conflict.status}"] += 1
            self.audit.append(txn, at_ms=self.now_ms(), actor=self.key.did, action="merge",
                              target=f"{registry}/{record_id}",
                              reason=f"{conflict.path}: {how}{whose} among {len(conflict.writes)} concurrent "
                                     f"writes"[:512], change=cause)

    def _resettle_registry(self, txn: Txn, batch: Batch, registry: str, cause: Any, origin: str) -> None:
        """The registry's conflict policy changed: every record with a
        document shows what the new rules choose."""
        for record in list(records.iter_records(self.store, txn, registry=registry)):
            self._resettle_record(txn, batch, registry, record["id"], cause, origin)

    def _resettle_by_trust(self, txn: Txn, batch: Batch, cause: Any, origin: str) -> None:
        """A statement changed what the trust state says of keys: conflicts
        settled by a rule that picks by who wrote (``role-priority``,
        ``owner-wins``) may pick otherwise now, so every node shows the
        same pick whether the statement came before or after the writes."""
        names = [r["id"] for r in records.iter_records(self.store, txn, registry=regs.REGISTRY_OF_REGISTRIES)
                 if not r["deleted"]]
        for registry in sorted(names):
            try:
                if not self._registry(txn, registry).conflict_rules.reads_trust:
                    continue
            except RegistryError:
                continue
            conflicted = [r["id"] for r in records.iter_records(self.store, txn, registry=registry, conflicted=True)]
            for record_id in conflicted:
                self._resettle_record(txn, batch, registry, record_id, cause, origin)

    def _resettle_record(self, txn: Txn, batch: Batch, registry: str, record_id: str, cause: Any,
                         origin: str) -> None:
        """Settle a record's conflicts again (a new policy, a resolution),
        with a feed event when what it shows changes."""
        record = records.get_record(self.store, txn, registry, record_id)
        doc = self._document(txn, batch, registry, record_id) if record is not None else None
        if record is None or doc is None:
            return  # never updated: nothing concurrent, nothing immutable to guard
        frontiers = records.get_frontiers(self.store, txn, registry, record_id)
        try:
            conflicts = self._conflicts_of(txn, batch, registry, record_id, doc.doc, frontiers, record["kind"],
                                           record["owner"])
        except RegistryError:
            self.metrics["conflicts.unsettled"] += 1
            return
        state = resolver.apply(doc.materialize(), conflicts)
        shown = {**record, "tags": state["tags"], "links": state["links"], "fields": state["fields"],
                 "deleted": bool(state["deleted"]), "schema": state["schema"],
                 "conflicts": [msgspec.structs.asdict(c) for c in conflicts]}
        if shown == record:
            return
        records.put_record(self.store, txn, record, shown)
        self._audit_settled(txn, registry, record_id, record, conflicts, cause.id)
        self._feed_event(txn, batch, cause, registry, record_id, "deleted" if shown["deleted"] else "updated",  # type: ignore[attr-defined]
                         origin, kind=record["kind"], history=False)
