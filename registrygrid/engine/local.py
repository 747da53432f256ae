"""Local writes: a put, an update or a delete prepared for commit.

Every check that can fail (names, kind, schema, size, ownership and policy,
this node's own delegation) runs before the first put, so a refused write
leaves nothing behind. A new record is a signed snapshot (crdt/snapshot.py);
an edit is one Automerge change of the record's document. The change is a
draft until the batch ends and signs all of this node's drafts at once
(commit.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from registrygrid.crdt import disputes, resolver
from registrygrid.crdt.conflicts import map_object, value_at
from registrygrid.crdt.snapshot import encode_snapshot
from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore, kind_is_published
from registrygrid.engine.erasure import ERASURES_REGISTRY, SUPPLEMENT_ACTOR
from registrygrid.engine.ops import (
    Delete,
    Put,
    Update,
    WriteResult,
)
from registrygrid.engine.values import (
    checked_fields,
    checked_json,
    checked_links,
    checked_tags,
    merge_patch,
    state_after_edit,
)
from registrygrid.errors import (
    AlreadyExists,
    Conflict,
    PolicyDenied,
    StoreRecovering,
    ValidationError,
)
from registrygrid.protocol import names
from registrygrid.protocol.envelope import (
    Draft,
    Envelope,
    draft,
)
from registrygrid.protocol.hlc import Hlc
from registrygrid.schemas import KindSchema
from registrygrid.storage import pending, records
from registrygrid.storage.store import Txn
from registrygrid.trust import access
from registrygrid.trust.state import PlacedTrust, Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY


class LocalWrites(EngineCore):
    """The engine's local writes (mixed into Engine)."""

    def _put(self, txn: Txn, batch: Batch, op: Put) -> WriteResult:
        registry = names.registry_name(op.registry)
        desc = self._live_registry(txn, registry)
        kind = self._kind_for(desc, op.kind, op.schema)
        fields = checked_fields(op.fields, desc.max_record_bytes)
        # One walk of the fields: what Automerge could hold, and whether the
        # schema engine may take them as plain JSON without its own walk.
        plain_json = checked_json(fields)
        self.catalog.validate(kind.name, kind.version, fields, plain_json=plain_json)
        tags = checked_tags(op.tags)
        links = checked_links(op.links)
        record_id = names.record_id(op.record_id) if op.record_id is not None else names.new_record_id()
        statement = self._special_checks(registry, record_id, kind.name, fields, self.owner)
        if registry == disputes.DISPUTES_REGISTRY:
            self._check_dispute_record(record_id, kind.name, fields, tags)  # type: ignore[attr-defined]
        self._refuse_if_erased(txn, registry, record_id)  # type: ignore[attr-defined]
        if registry == ERASURES_REGISTRY:
            self._local_verdict(self._check_erasure_notice(txn, record_id, fields, self.key.did,  # type: ignore[attr-defined]
                                                           self.now_ms(), local=True), self.owner)
        old = records.get_record(self.store, txn, registry, record_id)
        if old is not None and not old["deleted"]:
            raise AlreadyExists(f"{registry}/{record_id} already exists; update it instead")
        hlc = self.clock.tick()
        owner = statement.org if statement is not None else self.owner
        placed = self._check_own_chain(txn, batch, registry)
        if old is not None:
            if old["kind"] != kind.name:
                raise Conflict(f"{registry}/{record_id} was a {old['kind']}; a deleted record keeps its kind")
            if registry == regs.REGISTRY_OF_REGISTRIES:
                regs.check_descriptor_change(record_id, old["fields"], fields)
            self._local_verdict(access.check_modify(placed, desc, op="create", author=self.key.did,
                                                    before=old, after=None, at_ms=hlc.wall_ms, policy=self.policy,
                                                    after_fields=fields, local_roles=op.roles), old["owner"])
            doc = self._doc_for_write(txn, batch, registry, record_id)
            field_objs, tag_objs = self._raced_maps(txn, registry, record_id, doc)
            before = doc.heads()
            change = self._not_refused(txn, registry, record_id, doc, before, hlc, lambda distinct: doc.update(
                fields=fields, schema=kind.version, tags=tags, links=links, force_undelete=True,
                field_objs=field_objs, tag_objs=tag_objs, distinct=distinct))
            state = state_after_edit(old, schema=kind.version, fields=fields, tags=tags, links=links, deleted=False)
            made = self._draft(txn, batch, registry, record_id, "create", kind, hlc, change=change)
        else:
            self._local_verdict(access.check_create(placed, desc, author=self.key.did, record_id=record_id,
                                                    owner=owner, created_by=self.key.did, at_ms=hlc.wall_ms,
                                                    statement=statement, policy=self.policy, kind=kind.name,
                                                    fields=fields, local_roles=op.roles), owner)
            # A new record is a signed snapshot: no Automerge document
            # until its first update (crdt/snapshot.py); check_value held.
            doc = None
            state = {"kind": kind.name, "schema": kind.version, "owner": owner, "tags": tags, "links": links,
                     "fields": fields, "deleted": False, "created": {"at": hlc.wall_ms, "by": self.key.did}}
            snapshot = encode_snapshot(kind=kind.name, schema=kind.version, owner=owner, created_at=hlc.wall_ms,
                                       created_by=self.key.did, fields=fields, tags=tags, links=links)
            made = self._draft(txn, batch, registry, record_id, "create", kind, hlc, snapshot=snapshot)
        env = made
        seq, record = self._commit(txn, batch, env, doc, old, origin="local", requested_by=op.actor, state=state,
                                   statement=statement)
        self._after_local(txn, batch, env)
        return WriteResult("created", registry, record_id, env.id, seq, record)

    def _edited(self, txn: Txn, op: Update | Delete) -> tuple[str, str, Any, dict[str, Any]]:
        """The live record an update or delete targets (registry, id, its
        registry's descriptor, the record), with its If-Match checked."""
        registry = names.registry_name(op.registry)
        record_id = names.record_id(op.record_id)
        if registry == ERASURES_REGISTRY and not (isinstance(op, Update) and op.actor == SUPPLEMENT_ACTOR):
            # Its registry, record and org name what was erased (its id is
            # made of them), its positions what other nodes link past: an
            # edit moved them, and was checked only once stored.
            raise PolicyDenied(f"{registry}/{record_id}: an erasure notice is written by the erasure itself "
                               "(rgrid erase, POST .../records/{id}/erase) and never edited or deleted")
        desc = self._live_registry(txn, registry)
        old = self._live_record(txn, registry, record_id)
        if op.if_match is not None and op.if_match != old["change_id"]:
            raise Conflict(f"{registry}/{record_id} is at change {old['change_id']}, not {op.if_match}",
                           details={"current": old["change_id"]})
        return registry, record_id, desc, old

    def _update(self, txn: Txn, batch: Batch, op: Update) -> WriteResult:
        registry, record_id, desc, old = self._edited(txn, op)
        if op.fields is not None and op.patch is not None:
            raise ValidationError("give either fields (replace) or patch (merge), not both")
        version = op.schema if op.schema is not None else old["schema"]
        kind = self._kind_for(desc, old["kind"], version)
        hlc = self.clock.tick()
        placed = self._check_own_chain(txn, batch, registry)
        if op.fields is not None:
            fields = dict(op.fields)
        else:
            fields = dict(old["fields"])
            if version != old["schema"]:
                fields = self.catalog.migrate(kind.name, fields, old["schema"], version)
            if op.patch is not None:
                if not isinstance(op.patch, Mapping):
                    raise ValidationError("a merge patch must be a JSON object")
                fields = merge_patch(fields, op.patch)
        fields = checked_fields(fields, desc.max_record_bytes)
        checked_json(fields)  # what Automerge cannot hold, named by its path before the schema sees it
        self._local_verdict(access.check_modify(placed, desc, op="update", author=self.key.did, before=old,
                                                after=None, at_ms=hlc.wall_ms, policy=self.policy,
                                                after_fields=fields, local_roles=op.roles), old["owner"])
        self.catalog.validate(kind.name, kind.version, fields)
        tags = checked_tags(op.tags) if op.tags is not None else None
        links = checked_links(op.links) if op.links is not None else None
        self._special_checks(registry, record_id, kind.name, fields, old["owner"])
        if registry == regs.REGISTRY_OF_REGISTRIES:
            regs.check_descriptor_change(record_id, old["fields"], fields)
        self._check_immutable(desc, old, fields)
        doc = self._doc_for_write(txn, batch, registry, record_id)
        # A local update is made on the record as shown (old), but its
        # document holds Automerge's pick where writes conflict: leave those
        # paths alone unless the update changes them, so a conflict is never
        # settled by an edit of another field. undelete: a record shown live
        # (update-wins) is live in the change too.
        field_objs, tag_objs = self._raced_maps(txn, registry, record_id, doc)
        written, settling = _as_written(doc, fields, old), _settling(fields, links, old)
        change = self._not_refused(txn, registry, record_id, doc, doc.heads(), hlc, lambda distinct: doc.update(
            fields=written, schema=kind.version, tags=tags, links=links, undelete=bool(old.get("conflicts")),
            settle=settling, field_objs=field_objs, tag_objs=tag_objs, distinct=distinct))
        if change is None:
            return WriteResult("unchanged", registry, record_id, old["change_id"], None, old)
        state = state_after_edit(old, schema=kind.version, fields=fields, tags=tags, links=links)
        env = self._draft(txn, batch, registry, record_id, "update", kind, hlc, change=change)
        seq, record = self._commit(txn, batch, env, doc, old, origin="local", requested_by=op.actor, state=state)
        self._after_local(txn, batch, env)
        return WriteResult("updated", registry, record_id, env.id, seq, record)

    def _delete(self, txn: Txn, batch: Batch, op: Delete) -> WriteResult:
        registry, record_id, desc, old = self._edited(txn, op)
        if registry == regs.KINDS_REGISTRY:
            raise kind_is_published()
        hlc = self.clock.tick()
        placed = self._check_own_chain(txn, batch, registry)
        self._local_verdict(access.check_modify(placed, desc, op="delete", author=self.key.did, before=old,
                                                after=None, at_ms=hlc.wall_ms, policy=self.policy,
                                                local_roles=op.roles), old["owner"])
        kind = self.catalog.get(old["kind"], old["schema"])
        doc = self._doc_for_write(txn, batch, registry, record_id)
        change = self._not_refused(txn, registry, record_id, doc, doc.heads(), hlc, doc.delete)
        env = self._draft(txn, batch, registry, record_id, "delete", kind, hlc, change=change)
        seq, record = self._commit(txn, batch, env, doc, old, origin="local", requested_by=op.actor,
                                   state=state_after_edit(old, deleted=True))
        self._after_local(txn, batch, env)
        return WriteResult("deleted", registry, record_id, env.id, seq, record)

    def _raced_maps(self, txn: Txn, registry: str, record_id: str,
                    doc: Any) -> tuple[list[bytes], list[bytes]]:
        """Where two creates of the record raced, the fields maps and the
        tag maps they made (each made its own; Automerge shows one, the
        record the one its rule picks, or the tags' union): an edit goes
        into all of them. ([], []) for a record created once."""
        frontiers = records.get_frontiers(self.store, txn, registry, record_id)
        out: tuple[list[bytes], list[bytes]] = ([], [])
        for path, objs in ((("fields",), out[0]), (("tags",), out[1])):
            for change in frontiers.get(path, ()):
                obj = map_object(doc.doc, path, change)
                if obj is not None and obj not in objs:
                    objs.append(obj)
        return out

    def _check_immutable(self, desc: Any, old: dict[str, Any], fields: Mapping[str, Any]) -> None:
        """Fields the registry's conflict policy makes immutable keep the value
        the record was created with (crdt/conflict_policy.py)."""
        immutable = desc.conflict_rules.immutable_fields(old["kind"])
        if not immutable:
            return
        before = old["fields"]
        changed = sorted(name for name in set(before) | set(fields)
                         if name in immutable
                         and not resolver.same(before.get(name, resolver.ABSENT), fields.get(name, resolver.ABSENT)))
        if changed:
            raise PolicyDenied(f"{desc.name} makes {changed} immutable after create (its conflict policy); "
                               f"create a new record instead", details={"rule": "conflict_policy:immutable",
                                                                         "fields": changed})

    def _draft(self, txn: Txn, batch: Batch, registry: str, record_id: str, op: str,
               kind: KindSchema, hlc: Hlc, *, change: Any = None, snapshot: bytes | None = None) -> Draft:
        """This node's next change in ``registry``: its body and ID are final
        now; the batch signs it when it ends (_seal_drafts)."""
        seq, prev = self._head(txn, batch, registry, self.key.did)
        if snapshot is not None:
            deps, change_hash, payload = [], b"", snapshot
        else:
            deps, change_hash, payload = list(change.deps), change.hash, change.raw_bytes
        made = draft(author=self.key.did, registry=registry, record=record_id, op=op,  # type: ignore[arg-type]
                     kind=kind.name, schema=kind.version, seq=seq + 1, prev=prev, hlc=hlc, deps=deps,
                     change_hash=change_hash, payload=payload)
        batch.drafts[made.cid] = made
        return made

    def _not_refused(self, txn: Txn, registry: str, record_id: str, doc: Any, before: list[bytes], hlc: Hlc,
                     edit: Callable[[int | None], Any]) -> Any:
        """The Automerge change ``edit`` makes, made again distinct when it
        is one this record holds as refused: this node's own change that a
        rule which came late refused and dropped from the document, and
        that the same edit made again would repeat to the byte (automerge
        1.0.0rc1 dates every change 0). Signed under a new envelope, it
        would be rejected by every node holding the first as a second
        envelope of one change, and this node's later changes in the
        registry would wait behind it."""
        change = edit(None)
        if change is None or not records.is_refused(self.store, txn, registry, record_id, change.hash):
            return change
        doc.rollback(before)
        self.metrics["write.made_distinct"] += 1
        return edit(hlc.wall_ms * 65536 + hlc.counter % 65536)

    def _after_local(self, txn: Txn, batch: Batch, env: Envelope) -> None:
        """A local write that changed the rules (a statement, a policy)
        re-judges what they govern, and lets waiting changes go on."""
        self._apply_policies(txn, batch, env, "local")  # a no-op unless a policy changed
        if batch.delegated:
            self._rebuild_revoked(txn, batch, env, "local")
            self._release(txn, batch, None, "parked")
        if env.body.registry in (regs.KINDS_REGISTRY, regs.REGISTRY_OF_REGISTRIES):
            # Remote changes of this kind, or in this registry, may wait for it.
            self._release(txn, batch, None, "parked", prefixes=[pending.on_record(env.body.registry,
                                                                                  env.body.record)])
        if batch.quarantined or batch.resolved or batch.fork_walk:
            self._apply_disputes(txn, batch, env, "local")  # type: ignore[attr-defined]
        # A rebuild above may have changed a grid.policies record (a revoked
        # key's edit of a policy): the rules in force are weighed again.
        self._apply_policies(txn, batch, env, "local")
        if batch.unblocked:  # a report held a fork's change: what built on it is judged now
            self._release(txn, batch, None, "parked")

    def _check_own_chain(self, txn: Txn, batch: Batch, registry: str) -> PlacedTrust:
        """Whether this node's key may sign its next change in ``registry``:
        not while its store recovers the key's history (the next sequence
        number may be one its peers hold already), nor once the key is
        revoked (by its org, from another node)."""
        if self.recovering is not None:
            raise StoreRecovering(
                f"this node's store lacks changes its key {self.key.did} signed (made anew, or restored from a "
                "backup older than its last stop): it signs nothing until they are back. Let the node sync "
                "from its peers (`rgrid node start`), then stop it and run `rgrid store recovered`",
                details={"since_ms": self.recovering.get("since_ms")})
        seq, _ = self._head(txn, batch, registry, self.key.did)
        self.trust.check_chain(self.key.did, registry, seq + 1)
        return self.trust.at_place(self.key.did, registry, seq + 1)  # its next change, as peers will judge it

    def _local_verdict(self, verdict: Verdict, org: str) -> None:
        """A local write never waits: a delegation this node lacks is one it
        would have to publish first."""
        if verdict is Verdict.WAIT:
            raise PolicyDenied(
                f"this node ({self.key.did}) has no delegation from {org} in {MEMBERS_REGISTRY}; "
                f"the org publishes one with `rgrid org delegate {self.key.did}`")


def _settling(fields: dict[str, Any], links: list[dict[str, str]] | None,
              old: dict[str, Any]) -> list[tuple[str, ...]]:
    """The conflicting paths under ``fields`` (and ``links``, when the update
    sets them) it gives a value other than the one shown: it settles them,
    so its change must overwrite every concurrent value there, Automerge's
    pick included."""
    out = []
    for conflict in old.get("conflicts") or ():
        path = resolver.unpointer(conflict["path"])
        if path[0] == "fields" and len(path) >= 2 and not resolver.same(
                resolver.get_in(fields, path[1:]), resolver.get_in(old["fields"], path[1:])):
            out.append(tuple(path))
        elif path == ["links"] and links is not None and not resolver.same(links, old["links"]):
            out.append(("links",))
    return out


def _as_written(doc: Any, fields: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The fields an update writes into the document: ``fields``, except that
    a conflicting path the update leaves as shown keeps the document's own
    value (so the update does not write it)."""
    if not old.get("conflicts"):
        return fields
    out = fields
    for conflict in old["conflicts"]:
        path = resolver.unpointer(conflict["path"])
        if path[0] != "fields" or len(path) < 2:
            continue
        if resolver.same(resolver.get_in(fields, path[1:]), resolver.get_in(old["fields"], path[1:])):
            if out is fields:
                out = copy.deepcopy(fields)
            resolver.put_in(out, path[1:], value_at(doc.doc, tuple(path)))
    return out
