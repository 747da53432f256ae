"""What every part of the engine shares: its state, and lookups that see the
batch's own writes before they are committed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from registrygrid.crdt import conflicts as tracking
from registrygrid.crdt import resolver
from registrygrid.crdt.record import (
    RecordDoc,
    doc_bytes,
    stored_doc,
)
from registrygrid.crdt.snapshot import (
    genesis_change,
    read_snapshot,
)
from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch
from registrygrid.engine.doc_cache import DocumentCache
from registrygrid.engine.values import automerge_of_body
from registrygrid.errors import (
    NotFound,
    PolicyDenied,
    ValidationError,
)
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol import names
from registrygrid.protocol.envelope import (
    Draft,
    Envelope,
    cid_to_str,
)
from registrygrid.protocol.hlc import HybridClock
from registrygrid.schemas import KindSchema, SchemaCatalog
from registrygrid.storage import chains, changes, records
from registrygrid.storage.audit import AuditLedger
from registrygrid.storage.store import Store, Txn
from registrygrid.trust.policy import PolicySet
from registrygrid.trust.state import TrustState
from registrygrid.trust.statements import MEMBERS_REGISTRY, Statement, read_statement


# Versions of records that state rules (engine/core.py _versions), kept
# between batches: a descriptor edited a few times judges every late change
# of its registry.
VERSION_CACHE_ENTRIES = 256


class EngineCore:
    """State and lookups every part of the engine uses; Engine (engine.py)
    sets the state, the parts are mixed in beside this."""

    # Set by Engine.__init__ (engine.py).
    store: Store
    key: KeyPair
    catalog: SchemaCatalog
    owner: str
    actor: bytes
    now_ms: Callable[[], int]
    metrics: Counter[str]
    trust: TrustState
    policy: PolicySet
    audit: AuditLedger
    clock: HybridClock
    feed_seq: int
    _batch_feed_seq: int
    _chain_heads: dict[tuple[str, str], tuple[int, bytes]]
    _registry_cache: dict[str, regs.RegistryDescriptor]
    _doc_cache: DocumentCache
    _version_cache: dict[tuple[str, str, tuple[bytes, ...]], list[tuple[tuple[int, int], dict[str, Any]]]]
    # Set while a store made anew recovers what this node's key signed
    # before (Engine.begin_recovery): the key signs nothing meanwhile.
    recovering: dict[str, Any] | None

    def _head(self, txn: Txn, batch: Batch, registry: str, author: str) -> tuple[int, bytes]:
        # This batch's own moves first: they are not in LMDB until it ends,
        # and survive the cache reset that follows a refused op.
        moved = batch.heads.get((registry, author))
        if moved is not None:
            return moved
        cached = self._chain_heads.get((registry, author))
        if cached is not None:
            return cached
        head = chains.head(self.store, txn, registry, author)
        self._chain_heads[(registry, author)] = head
        return head

    def _registry(self, txn: Txn, name: str) -> regs.RegistryDescriptor:
        """A registry's descriptor, a deleted one's included (remote changes
        made before their authors saw the delete still land: regs.lookup);
        local writes use _live_registry."""
        # Writer thread only: readers use regs.lookup, which caches nothing.
        cached = self._registry_cache.get(name) or regs.BUILTINS.get(name)  # built-ins never change
        if cached is not None:
            return cached
        desc = regs.lookup(self.store, txn, name, include_deleted=True)
        if not desc.builtin:
            self._registry_cache[name] = desc
        return desc

    def _descriptor_at(self, txn: Txn, batch: Batch, name: str, hlc: Any) -> regs.RegistryDescriptor:
        """The descriptor that judges a remote change made at ``hlc``: the
        one in force then, as for access policies (docs/trust.md). A change
        made before a write policy was tightened still counts on a node that
        got the tightening first, as on one that got it after: records stay
        a function of their changes, whatever the arrival order. Costs a
        comparison unless the change is older than the descriptor's latest
        change (a late arrival)."""
        desc = self._registry(txn, name)
        if desc.builtin or tuple(hlc) >= desc.changed_hlc:
            return desc
        versions = self._versions(txn, batch, regs.REGISTRY_OF_REGISTRIES, name, at=tuple(hlc))
        if not versions:
            return desc
        at, state = versions[0]
        record = records.get_record(self.store, txn, regs.REGISTRY_OF_REGISTRIES, name) or {}
        return regs.descriptor_from_record({**record, "id": name, "fields": state.get("fields") or {},
                                            "owner": state.get("owner", desc.owner),
                                            "deleted": bool(state.get("deleted")),
                                            "updated_hlc": list(at)})

    def _versions(self, txn: Txn, batch: Batch, registry: str, name: str, *,
                  at: tuple[int, int] | None = None) -> list[tuple[tuple[int, int], dict[str, Any]]]:
        """Every version a record stood in, oldest first: after each of its
        changes that count (in causal order: clocks follow deps), that
        change's clock and the record as the changes up to it made it; with
        ``at``, only the version in force at that clock (the first, for a
        clock before it). Empty for a record of one change (its one version:
        the stored record). The rules a record states (a registry's
        descriptor, an access policy) judge a change by the version in force
        at its clock, so a late arrival is judged as on a node that had it
        first.

        Made from the changes alone, never from the stored document (which
        one node may have built and another not, where two creates raced),
        so every node sees the same versions; kept by the changes' IDs
        (``_version_cache``), so a registry's catch-up replays them once."""
        cids = records.applied_ids(self.store, txn, registry, name)
        if len(cids) < 2:
            return []
        key = (registry, name, tuple(cids))
        versions = self._version_cache.get(key)
        if versions is None:
            versions = self._replay_versions(txn, batch, registry, name, cids)
            if len(self._version_cache) >= VERSION_CACHE_ENTRIES:
                self._version_cache.clear()
            self._version_cache[key] = versions
        if at is None:
            return versions
        then = [v for v in versions if v[0] <= at]
        return [then[-1] if then else versions[0]]

    def _replay_versions(self, txn: Txn, batch: Batch, registry: str, name: str,
                         cids: list[bytes]) -> list[tuple[tuple[int, int], dict[str, Any]]]:
        bodies = {}
        changes = {}
        for cid in cids:
            body = self._change_body(txn, batch, cid)
            am_hash, am_change = automerge_of_body(body)
            bodies[am_hash], changes[am_hash] = body, am_change
        ordered = sorted(bodies, key=lambda h: (tuple(bodies[h].hlc), h))
        out = []
        if all(list(bodies[h].deps) == ordered[n - 1:n] for n, h in enumerate(ordered)):
            doc: RecordDoc | None = None  # one line of edits: nothing raced
            for h in ordered:
                if doc is None:
                    doc = RecordDoc.apply(None, changes[h])
                else:
                    doc.add_change(changes[h])
                out.append((tuple(bodies[h].hlc), doc.materialize()))
            return out
        for n, last in enumerate(ordered):
            # Edits raced: the version shows what its conflict rules chose
            # then (as the record did when it stood so), not Automerge's pick.
            then_doc, frontiers = tracking.replayed((h, changes[h]) for h in ordered[:n + 1])
            state = then_doc.materialize()
            found = self._conflicts_of(txn, batch, registry, name,  # type: ignore[attr-defined]
                                       then_doc.doc, frontiers, state["kind"], state["owner"])
            out.append((tuple(bodies[last].hlc), resolver.apply(state, found) if found else state))
        return out

    @staticmethod
    def _registry_refusal(desc: regs.RegistryDescriptor, op: str, kind: str,
                          size: int | None) -> PolicyDenied | None:
        """Why a registry's own rules refuse what a remote change made, or
        None: its kinds and its ``max_record_bytes``, in ``desc``, the
        version in force at the change's clock. Its author may not have seen
        that version (a kind dropped, the cap lowered) when it signed, so
        such a change is kept as evidence, never rejected: a rejected change
        is never stored, and its author's later changes in the registry
        would wait for it forever. A delete is never refused by them (it
        makes nothing larger, and the records of a kind a registry stopped
        holding can still be cleared away, as local deletes can). ``size``: the
        record's fields packed (values.fields_size), or None: not measured.
        A kind version's record is never deleted: it is published once,
        and a delete took the kind from nodes that opened their store after
        it and left it with those that ran on, so the records of it reached
        some nodes and waited for a definition on others for good."""
        if op == "delete":
            if desc.name == regs.KINDS_REGISTRY:
                return kind_is_published()
            return None
        if kind not in desc.kinds:
            return PolicyDenied(f"registry {desc.name} does not hold kind {kind!r}")
        if size is not None and size > desc.max_record_bytes:
            return PolicyDenied(f"record fields take {size} bytes; registry {desc.name}'s max_record_bytes "
                                f"is {desc.max_record_bytes}")
        return None

    def _live_registry(self, txn: Txn, name: str) -> regs.RegistryDescriptor:
        """A registry this node may write: known here, and not deleted."""
        desc = self._registry(txn, name)
        if desc.deleted:
            raise regs.unknown_registry(name)
        return desc

    def _kind_for(self, desc: regs.RegistryDescriptor, kind: str, version: int | None) -> KindSchema:
        names.kind_name(kind)
        if kind not in desc.kinds:
            raise ValidationError(
                f"registry {desc.name} holds kinds {list(desc.kinds)}, not {kind!r}",
                details=[{"path": "kind", "message": f"not one of {list(desc.kinds)}"}],
            )
        return self.catalog.get(kind, version)

    def _live_record(self, txn: Txn, registry: str, record_id: str) -> dict[str, Any]:
        self._live_registry(txn, registry)
        record = records.get_record(self.store, txn, registry, record_id)
        if record is None:
            self._refuse_if_erased(txn, registry, record_id)  # type: ignore[attr-defined]
        if record is None or record["deleted"]:
            raise NotFound(f"no record {registry}/{record_id}" + (" (it was deleted)" if record else ""))
        return record

    def _doc_for_write(self, txn: Txn, batch: Batch, registry: str, record_id: str) -> RecordDoc:
        doc = self._document(txn, batch, registry, record_id)
        if doc is None:
            raise NotFound(f"no document for {registry}/{record_id}")
        doc.fork_with_actor(self.actor)
        return doc

    def _document(self, txn: Txn, batch: Batch, registry: str, record_id: str) -> RecordDoc | None:
        """The record's Automerge document; built (and stored) from its
        snapshot creates when it has none yet, None when it has neither."""
        key = (registry, record_id)
        doc = batch.docs.get(key)
        if doc is not None:
            return doc
        stored = records.get_document(self.store, txn, registry, record_id)
        if stored is not None:
            doc = self._doc_cache.take(key, stored)
            if doc is None:
                doc = RecordDoc.load(doc_bytes(stored))
                record = records.get_record(self.store, txn, registry, record_id)
                doc.changes = record["revision"] if record is not None else 0  # what it weighs when kept
                self.metrics["docs.loaded"] += 1
            else:
                self.metrics["docs.from_cache"] += 1
        else:
            geneses = []
            # No document yet: every change that counts is a snapshot create.
            for cid in sorted(records.applied_ids(self.store, txn, registry, record_id)):
                body = self._change_body(txn, batch, cid)
                if not body.is_snapshot:
                    continue
                genesis = genesis_change(read_snapshot(body.payload, kind=body.kind, schema=body.schema), body.author)
                geneses.append(genesis.raw_bytes)
                records.mark_applied(self.store, txn, registry, record_id, genesis.hash, cid)
            if not geneses:
                return None
            blob = b"".join(geneses)
            stored = stored_doc(b"") + blob
            records.put_document(self.store, txn, registry, record_id, stored)
            doc = RecordDoc.apply(None, blob)
            doc.changes = len(geneses)
            self.metrics["docs.built_from_snapshot"] += 1
        batch.hold_doc(key, doc, stored)
        return doc

    @staticmethod
    def _judged_before(old: dict[str, Any], doc: RecordDoc, heads_before: list[bytes],
                       deps: list[bytes]) -> dict[str, Any]:
        """The record before an update, as ownership and access policy judge
        it: what its author saw. That is the record as stored, unless the
        change did not see all of the document (a concurrent change) or the
        record shows values a conflict rule chose: then it is read from the
        change's deps (``heads_before``: the document's heads before it)."""
        if sorted(heads_before) == sorted(deps):
            return {**old, **doc.materialize(heads=heads_before)} if old.get("conflicts") else old
        return {**old, **doc.materialize(heads=deps)}

    def _change_body(self, txn: Txn, batch: Batch, cid: bytes) -> Any:
        made = batch.drafts.get(cid)
        if made is not None:
            return made.body
        body = changes.body(self.store, txn, cid)
        if body is None:
            raise NotFound(f"change {cid_to_str(cid)} is not stored")
        return body

    def _stored_envelope(self, txn: Txn, batch: Batch, cid: bytes) -> Envelope | Draft:
        made = batch.drafts.get(cid)
        if made is not None:
            return made
        env = changes.envelope(self.store, txn, cid)
        if env is None:
            raise NotFound(f"change {cid_to_str(cid)} is not stored")
        return env

    def _special_checks(self, registry: str, record_id: str, kind: str,
                        fields: Mapping[str, Any], owner: str | None) -> Statement | None:
        """Rules of the built-in registries that describe the grid itself;
        a grid.members record is read (and its signature checked) as the
        statement it carries."""
        if registry == MEMBERS_REGISTRY:
            return read_statement(kind, record_id, fields)
        if registry == regs.REGISTRY_OF_REGISTRIES:
            regs.check_new_descriptor(record_id, fields, self.catalog, owner=owner)
        elif registry == regs.KINDS_REGISTRY:
            self._register_kind(record_id, fields)
        return None

    def _register_kind(self, record_id: str, fields: Mapping[str, Any], *, replace: bool = False) -> bool:
        """Add a user kind to the catalog, or raise why not; whether the
        catalog changed. Runs before a local kind record is written, so a
        kind the catalog refuses is never stored (a remote one is checked
        before, and registered once committed: engine/kinds.py).
        Registering an identical kind again is a no-op, so replays and
        retries are harmless."""
        return self.catalog.register(self._kind_of(record_id, fields), replace=replace)

    @staticmethod
    def _kind_of(record_id: str, fields: Mapping[str, Any]) -> KindSchema:
        expected = f"{fields.get('name')}.v{fields.get('version')}"
        if record_id != expected:
            raise ValidationError(f"a kind definition's id must be NAME.vVERSION ({expected!r})")
        # A kind's home registry is informational for user kinds (records go
        # wherever a registry lists the kind); default to a per-kind name.
        home = fields.get("registry") or f"user.{fields['name']}"
        return KindSchema(name=fields["name"], version=int(fields["version"]), registry=home,
                          schema=fields["schema"], description=fields.get("description", ""), builtin=False)


def kind_is_published() -> PolicyDenied:
    return PolicyDenied("a kind version is published once and never deleted (records of it may be anywhere); "
                        "publish a new version instead, and stop writing this one")
