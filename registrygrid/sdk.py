"""The Python SDK for apps that embed a RegistryGrid store.

    import registrygrid
    with registrygrid.open("~/.registrygrid") as grid:
        result = grid.put("grid.functions", "function", {"name": "resize", ...}, tags=["image"])
        record = grid.get("grid.functions", result.record_id)

Every method raises a typed ``registrygrid.errors.RegistryError`` on bad input
or refusal. Writes are durable when the method returns. ``put_many`` and
``execute`` commit many operations in one transaction (one fsync), which is
how bulk loads should be done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registrygrid import b64url, dispute_views
from registrygrid.crdt.conflicts import ABSENT
from registrygrid.crdt.disputes import DISPUTES_REGISTRY, RESOLUTION_KIND
from registrygrid.engine import registries as regs
from registrygrid.engine.engine import Engine
from registrygrid.engine.ops import (
    AuditNote,
    Delete,
    Erase,
    Operation,
    Outcome,
    Put,
    Update,
    WriteResult,
)
from registrygrid.engine.verify import VerifyReport, verify_store
from registrygrid.errors import (
    KindNotFound,
    NotFound,
    RecordErased,
    RegistryError,
    StorageFailed,
    UnknownKind,
    ValidationError,
)
from registrygrid.home import STORE_MARK, FederationMembership, Home, OrgMembership
from registrygrid.identity.delegation import Delegation, verify_delegation
from registrygrid.identity.keys import KeyPair, public_key_from_did
from registrygrid.protocol import names
from registrygrid.protocol.envelope import cid_to_str, open_envelope
from registrygrid.schemas import KindSchema, SchemaCatalog
from registrygrid.storage import chains, changes, erasures, feed, records
from registrygrid.storage.audit import AuditEntry, AuditLedger
from registrygrid.storage.feed import MAX_SEQ, FeedEvent
from registrygrid.storage.store import Store, pack, unpack
from registrygrid.trust import access
from registrygrid.trust.federation import Genesis, genesis_record, invitation_record
from registrygrid.trust.statements import (
    DELEGATION_KIND,
    FEDERATION_KIND,
    INVITATION_KIND,
    MEMBERS_REGISTRY,
    REVOCATION_KIND,
    delegation_record,
)

# A page of a listing; bigger pages are refused rather than silently cut so
# a client never mistakes a truncated page for the end.
MAX_PAGE = 1000


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(registry: str, record_id: str) -> str:
    return b64url.encode(pack([registry, record_id]))


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        registry, record_id = unpack(b64url.decode(cursor))
        return str(registry), str(record_id)
    except Exception:
        raise ValidationError(f"invalid cursor {cursor[:80]!r}") from None  # a cursor may be kilobytes long


def _raise_if_error(outcome: Outcome) -> Any:
    if isinstance(outcome, RegistryError):
        raise outcome
    return outcome


log = logging.getLogger(__name__)

def matches_where(record: Mapping[str, Any], where: Sequence[tuple[str, str, Any]]) -> bool:
    """Field filters: (dotted path into fields, op, value); op is one of
    eq ne lt le gt ge contains. Values of another type never match a range."""
    for path, op, value in where:
        current: Any = record.get("fields", {})
        for part in path.split("."):
            if isinstance(current, Mapping) and part in current:
                current = current[part]
            else:
                current = _MISSING
                break
        if not _compare(current, op, value):
            return False
    return True


_MISSING = object()


def _equal(a: Any, b: Any) -> bool:
    """JSON equality as a filter means it: ``true`` is not ``1`` (Python's
    ``==`` says it is), while ``2`` is ``2.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _compare(current: Any, op: str, value: Any) -> bool:
    if op == "eq":
        return current is not _MISSING and _equal(current, value)
    if op == "ne":
        return current is _MISSING or not _equal(current, value)
    if op == "contains":
        if isinstance(current, list):
            return any(_equal(item, value) for item in current)
        return isinstance(current, str) and isinstance(value, str) and value in current
    if current is _MISSING or isinstance(current, bool) or isinstance(value, bool):
        return False
    numeric = (int, float)
    if not ((isinstance(current, numeric) and isinstance(value, numeric))
            or (isinstance(current, str) and isinstance(value, str))):
        return False
    if op == "lt":
        return current < value
    if op == "le":
        return current <= value
    if op == "gt":
        return current > value
    if op == "ge":
        return current >= value
    raise ValidationError(f"unknown filter operator {op!r}; use eq ne lt le gt ge contains")


def _check_seq(name: str, value: int) -> None:
    """A feed or audit position a caller names: 0 to MAX_SEQ."""
    if not 0 <= value <= MAX_SEQ:
        raise ValidationError(f"{name} must be between 0 and {MAX_SEQ}")


class LocalRegistry:
    """A store opened in this process: the engine for writes, LMDB for reads."""

    def __init__(self, store: Store, engine: Engine, home: Home | None = None) -> None:
        self.store = store
        self.engine = engine
        self.home = home
        self._writes_home = False  # holds the home's lock: keeps its store mark (open_home)

    # ---- lifecycle ----

    @classmethod
    def open_home(cls, home: str | Path | Home | None = None, *, lock: bool = True) -> LocalRegistry:
        home = home if isinstance(home, Home) else Home(home)
        home.require()
        if lock:
            home.lock("sdk")
        rotation = None
        try:
            if lock:  # a key rotation a crash stopped: its key swap first, then the rest below
                from registrygrid.membership import finish_rotation

                rotation = finish_rotation(home)
            key = home.node_key()
            membership = home.verified_org()
            federation = home.federation()
            # A store made anew for a key that signed before (a lost disk, a
            # deleted store): its chains restart at 1, and any write would
            # sign a sequence number peers hold already (equivocation).
            store = Store(home.store_path)
            # An empty store, not only a missing one: a data.mdb emptied or
            # made anew (`rgrid store migrate` of a deleted store) opened as
            # an ordinary store, and the key signed sequence 1 again.
            lost = home.key_has_signed(key.did) and _empty(store)
            # A store that went back in time (restored from a backup older
            # than its last close) holds fewer of the key's changes than the
            # home saw: a write would sign a sequence number peers hold.
            behind = not lost and bool(_behind(store, key.did, home.store_mark(key.did)))
            try:
                engine = Engine(store, key, SchemaCatalog(), owner=membership.org if membership else None,
                                federation=(federation.claims, federation.id))
            except BaseException:
                store.close()  # a store the engine refuses (its federation record unreadable) is left shut
                raise
            if (lost or behind) and lock:
                engine.begin_recovery()
        except BaseException:
            home.unlock()
            raise
        registry = cls(store, engine, home)
        registry._writes_home = lock
        if lock and membership is not None and engine.recovering is None:
            try:
                registry.publish_membership(membership, federation)
                registry._note_key_signed(membership)
                if rotation is not None:
                    registry._publish_rotation(rotation)
            except BaseException:
                registry.close()
                raise
        return registry

    def _publish_rotation(self, plan: dict[str, Any]) -> None:
        """Put the revocation of a rotation's old key (membership.py) into
        grid.members unless it is there, then end the rotation's plan."""
        from registrygrid.membership import ROTATION_FILE

        assert self.home is not None
        revocation = plan["revocation"]
        with self.store.read() as txn:
            held = records.get_record(self.store, txn, MEMBERS_REGISTRY, revocation["id"]) is not None
        if not held:
            (outcome,) = self.engine.execute([Put(MEMBERS_REGISTRY, REVOCATION_KIND, revocation["fields"],
                                                  revocation["id"])])
            if isinstance(outcome, RegistryError):
                raise outcome
        (self.home.path / ROTATION_FILE).unlink()

    def _note_key_signed(self, membership: OrgMembership) -> None:
        """Record in the home that its node key has signed here, once the
        store holds the node's delegation (which the node publishes itself)."""
        assert self.home is not None
        did = self.engine.key.did
        if self.home.key_has_signed(did):
            return
        record_id, _ = delegation_record(membership.delegation)
        with self.store.read() as txn:
            held = records.get_record(self.store, txn, MEMBERS_REGISTRY, record_id)
        if held is not None and held["created_by"] == did:
            self.home.note_key_signed(did)

    def end_recovery(self, *, none_kept: bool = False) -> dict[str, Any]:
        """``rgrid store recovered``: the node's history is back; writes
        resume after its key's last change held here, and the home's
        statements are published if they are still missing."""
        was = self.engine.recovering
        required = self.home.store_mark(self.engine.key.did) if self.home is not None else {}
        heads = self.engine.end_recovery(none_kept=none_kept, required=required)
        if was is not None and self.home is not None:
            membership = self.home.verified_org()
            if membership is not None:
                self.publish_membership(membership, self.home.federation())
                self._note_key_signed(membership)
        return {"key": self.engine.key.did, "was_recovering": was is not None,
                "since_ms": (was or {}).get("since_ms"), "last_changes": heads}

    def publish_membership(self, membership: OrgMembership,
                           federation: FederationMembership | None = None) -> list[WriteResult]:
        """Put the home's signed statements (the federation's genesis, the
        org's invitation into it, its delegation of this node) and the org's
        own record into the store if they are not there yet (``rgrid init``,
        and every open of an older home, after a renewal or a join), so they
        replicate and every peer can check that this node speaks for a
        member org."""
        statements = [(DELEGATION_KIND, *delegation_record(membership.delegation))]
        if federation is not None and federation.genesis is not None:
            statements.insert(0, (FEDERATION_KIND, *genesis_record(federation.genesis)))
        if federation is not None and federation.invitation is not None:
            statements.insert(1, (INVITATION_KIND, *invitation_record(federation.invitation)))
        ops: list[Operation] = []
        with self.store.read() as txn:
            for kind, record_id, fields in statements:
                if records.get_record(self.store, txn, MEMBERS_REGISTRY, record_id) is None:
                    ops.append(Put(MEMBERS_REGISTRY, kind, fields, record_id))
            org_record_here = records.get_record(self.store, txn, access.ORGS_REGISTRY, membership.org) is not None
        # Only the founder's home creates the org's record, once
        # (OrgMembership.founder says why); other nodes replicate it.
        create_org_record = membership.founder and not membership.org_record_published and not org_record_here
        if create_org_record:
            ops.append(Put(access.ORGS_REGISTRY, "org", {"name": membership.name or "org", "did": membership.org},
                           membership.org))
        # Each op is answered on its own: with an expired delegation the org
        # record is refused (and audited) while the home still opens, and
        # created at an open after the renewal.
        outcomes = self.engine.execute(ops)
        org_record_written = create_org_record and isinstance(outcomes[-1], WriteResult)
        if membership.founder and not membership.org_record_published and (org_record_here or org_record_written) \
                and self.home is not None:
            self.home.note_org_record_published()
        return [outcome for outcome in outcomes if isinstance(outcome, WriteResult)]

    @classmethod
    def open_path(cls, path: str | Path, key: KeyPair | None = None, *, owner: str | None = None,
                  delegation: Delegation | None = None, federation: Genesis | None = None) -> LocalRegistry:
        """A bare store without a home (tests, simulations, tools). With a
        ``delegation`` of ``key``, the store writes for the delegating org
        and publishes the delegation (as a home does); with a ``federation``
        genesis, only its members' changes count (docs/trust.md). The store
        records its federation: opened without one later, it stays in it."""
        store = Store(path)
        if delegation is not None:
            owner = delegation.claims.org
        try:
            engine = Engine(store, key or KeyPair.generate(), SchemaCatalog(), owner=owner,
                            federation=(federation.claims, federation.id) if federation else None)
        except BaseException:
            store.close()
            raise
        registry = cls(store, engine)
        if delegation is not None:
            registry.publish_delegation(delegation)
        return registry

    def publish_delegation(self, delegation: Delegation) -> WriteResult | None:
        """Put a signed delegation into grid.members unless it is there; None if it was."""
        record_id, fields = delegation_record(delegation)
        with self.store.read() as txn:
            if records.get_record(self.store, txn, MEMBERS_REGISTRY, record_id) is not None:
                return None
        return self.put(MEMBERS_REGISTRY, DELEGATION_KIND, fields, id=record_id)

    def close(self) -> None:
        try:
            # The audit ledger's last, partial batch is sealed before the store
            # closes (a head signed in a transaction that failed is forgotten).
            audit = self.engine.audit
            try:
                self.store.transact(lambda txn: audit.finish_batch(txn, self.engine.key, self.engine.now_ms(),
                                                                   force=True), aborted=audit.reload)
            except StorageFailed as exc:
                # A full disk: the writes made are committed all the same, and
                # the batch is sealed with the next one. Raised here, it was taken for
                # the failure of the write just made ("the write was not
                # made"), which a retry then made twice.
                log.warning("the audit ledger's last batch is sealed with the next one: %s", exc.message)
            if self._writes_home and self.home is not None and self.engine.recovering is None:
                did = self.engine.key.did
                with self.store.read() as txn:
                    held = {registry: authors[did] for registry, authors in chains.heads(self.store, txn).items()
                            if did in authors}
                try:
                    self.home.save_store_mark(did, held)
                except OSError as exc:  # a full disk must not stop the store from closing
                    log.warning("could not save %s: %s", STORE_MARK, exc)
        finally:
            self.engine.close()
            self.store.close()
            if self.home is not None:
                self.home.unlock()

    def __enter__(self) -> LocalRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes ----

    def execute(self, ops: Sequence[Operation]) -> list[Outcome]:
        """Many operations, one transaction; each answered on its own."""
        return self.engine.execute(ops)

    def put(self, registry: str, kind: str, fields: Mapping[str, Any], *, id: str | None = None,
            tags: Sequence[str] = (), links: Sequence[Mapping[str, str]] = (), schema: int | None = None,
            actor: str | None = None) -> WriteResult:
        return _raise_if_error(self.engine.execute([Put(registry, kind, fields, id, tags, links, schema, actor)])[0])

    def put_many(self, puts: Sequence[Put]) -> list[WriteResult | RegistryError]:
        return self.engine.execute(puts)  # type: ignore[return-value]

    def update(self, registry: str, id: str, *, fields: Mapping[str, Any] | None = None,
               patch: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
               links: Sequence[Mapping[str, str]] | None = None, schema: int | None = None,
               if_match: str | None = None, actor: str | None = None) -> WriteResult:
        op = Update(registry, id, fields, patch, tags, links, schema, if_match, actor)
        return _raise_if_error(self.engine.execute([op])[0])

    def delete(self, registry: str, id: str, *, if_match: str | None = None, actor: str | None = None) -> WriteResult:
        return _raise_if_error(self.engine.execute([Delete(registry, id, if_match, actor)])[0])

    def erase(self, registry: str, id: str, *, reason: str = "", blobs: Sequence[str] = (),
              actor: str | None = None) -> WriteResult:
        """Erase a record's whole history here, and ask every node to (an
        erasure notice in grid.erasures: docs/erasure.md). The result names
        the notice; "unchanged" if the record was erased already. The blobs
        named are purged from this home's object store too (a running node
        does that itself)."""
        result = _raise_if_error(self.engine.execute([Erase(registry, id, reason, tuple(blobs), actor)])[0])
        if blobs and self.home is not None:
            from registrygrid.blobs.erasure import purge_blobs
            from registrygrid.blobs.service import Assets

            for purge in purge_blobs(Assets.open(self.home, self.store).blobs, blobs):
                if purge.outcome != "absent":
                    self.audit_note("erase", actor or "sdk", f"blobs/{purge.cid}",
                                    f"erasure {result.record_id}: blob {purge.outcome} {purge.reason}".strip())
        return result

    def erasures(self) -> list[dict[str, Any]]:
        """Every record an erasure notice names here, and what became of it
        (erased, waiting for the record, refused)."""
        with self.store.read() as txn:
            return [{"registry": registry, "record": record, "notice": notice, "state": state}
                    for registry, record, notice, state in erasures.iter_marks(self.store, txn)]

    def erased_places(self) -> dict[str, Any]:
        """The places of authors' chains this node holds, or will hold,
        without their bytes (docs/erasure.md), run by run: what vouches for
        each run (an erasure notice; ``gone-at-peers``: a sync peer said no
        node kept them; ``past-revocation-cutoff``: its author's key was
        revoked before them), how many of its places this node's chain has
        linked, and whether it still asks its sync peers for their bytes
        (the notice stopped counting, or a peer said they are gone). With
        them, the supplements this node owes: places it erased under a
        notice that it could not list yet (its key's delegation lapsed)."""
        warrants = {erasures.GONE: "gone-at-peers", erasures.PAST_CUTOFF: "past-revocation-cutoff"}
        places = []
        with self.store.read() as txn:
            heads = chains.heads(self.store, txn)
            for registry, author, first, last, warrant in erasures.vouched_ranges(self.store, txn):
                head = heads.get(registry, {}).get(author, 0)
                places.append({
                    "registry": registry, "author": author, "first": first, "last": last,
                    "warrant": warrants.get(warrant, "notice"),
                    "notice": None if warrant in warrants else warrant,
                    "linked": max(0, min(last, head) - first + 1),
                    "asked": erasures.is_void(self.store, txn, warrant),
                })
            owed = [{"notice": notice, "places": [{"author": author, "seq": seq} for author, seq in listed]}
                    for notice, listed in erasures.owed(self.store, txn)]
        return {"items": places, "owed": owed}

    # ---- disputes (docs/conflicts.md) ----

    def disputes(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Field disputes (manual conflict rule) and equivocations this node knows."""
        if status is not None and status not in dispute_views.STATUSES:
            raise ValidationError(f"status must be one of {list(dispute_views.STATUSES)}")
        return dispute_views.list_disputes(self.store, self.engine.trust, status=status)

    def dispute(self, id: str) -> dict[str, Any]:
        """One dispute in full: competing writes or envelopes, a diff, its resolutions."""
        return dispute_views.show_dispute(self.store, self.engine.trust, id, self.engine.catalog)

    def resolve_dispute(self, id: str, *, value: Any = ABSENT, removed: bool = False, note: str = "",
                        actor: str | None = None) -> WriteResult:
        """File a signed resolution: the value a disputed field takes (or
        ``removed``), or, for an equivocation, its acknowledgement. Refused
        (PolicyDenied) when this node's key may not decide it."""
        fields = dispute_views.resolution_fields(self.store, self.engine.trust, self.engine.catalog, id,
                                                 author=self.engine.key.did, at_ms=self.engine.now_ms(),
                                                 value=value, removed=removed, note=note)
        return self.put(DISPUTES_REGISTRY, RESOLUTION_KIND, fields, tags=[id], actor=actor)

    def audit_note(self, action: str, actor: str, target: str, reason: str = "") -> None:
        self.engine.execute([AuditNote(action, actor, target, reason)])

    # ---- reads ----

    def get(self, registry: str, id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        names.registry_name(registry)
        names.record_id(id)
        with self.store.read() as txn:
            record = records.get_record(self.store, txn, registry, id)
            if record is None and registry not in regs.BUILTINS:
                self._require_registry(txn, registry)
            if record is not None and not include_deleted and regs.is_deleted(self.store, txn, registry):
                # Unknown, as its listing answers (a deleted registry's
                # records were read one by one, listed with the others).
                raise regs.unknown_registry(registry)
        if record is None:
            self._raise_if_erased(registry, id)
        if record is None or (record["deleted"] and not include_deleted):
            raise NotFound(f"no record {registry}/{id}" + (" (it was deleted)" if record else ""))
        return record

    def _raise_if_erased(self, registry: str, id: str) -> None:
        with self.store.read() as txn:
            held = erasures.mark(self.store, txn, registry, id)
        # "waiting": the record was never held here, and its changes are
        # erased as they arrive; gone either way.
        if held is not None and erasures.burned(held[1]):
            raise RecordErased(f"{registry}/{id} was erased (notice {held[0]})", details={"notice": held[0]})

    def list(self, registry: str | None = None, *, kind: str | None = None, tag: str | None = None,
             owner: str | None = None, where: Sequence[tuple[str, str, Any]] = (), limit: int = 100,
             cursor: str | None = None, include_deleted: bool = False, conflicted: bool = False) -> Page:
        """Records in (registry, id) order; ``cursor`` resumes after the last
        item of the previous page, so pages stay stable under concurrent inserts.
        ``conflicted``: only records that show conflicts (concurrent writes
        a rule settled, or disputes), read from their own index."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be between 1 and {MAX_PAGE}")
        if registry is not None:
            names.registry_name(registry)
        after = decode_cursor(cursor) if cursor else None
        items: list[dict[str, Any]] = []
        more = False
        with self.store.read() as txn:
            if registry is not None and registry not in regs.BUILTINS:
                regs.lookup(self.store, txn, registry, include_deleted=include_deleted)
            deleted: dict[str, bool] = {}  # a listing across registries leaves out the deleted ones'
            for record in records.iter_records(self.store, txn, registry=registry, kind=kind, owner=owner,
                                               tag=tag, conflicted=conflicted, after=after):
                if record["deleted"] and not include_deleted:
                    continue
                if registry is None and not include_deleted:
                    held = record["registry"]
                    if held not in deleted:
                        deleted[held] = regs.is_deleted(self.store, txn, held)
                    if deleted[held]:
                        continue
                if where and not matches_where(record, where):
                    continue
                if len(items) == limit:
                    more = True
                    break
                items.append(record)
        next_cursor = encode_cursor(items[-1]["registry"], items[-1]["id"]) if more and items else None
        return Page(items, next_cursor)

    def iter_all(self, registry: str | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self.list(registry, cursor=cursor, limit=MAX_PAGE, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def history(self, registry: str, id: str) -> list[dict[str, Any]]:
        """Every change of a record in the order this node accepted them."""
        names.registry_name(registry)
        names.record_id(id)
        out = []
        with self.store.read() as txn:
            if registry not in regs.BUILTINS:
                self._require_registry(txn, registry)  # a deleted one's too: unknown, as to its listing
            for feed_seq, cid in records.history(self.store, txn, registry, id):
                wire = changes.wire(self.store, txn, cid)
                body = open_envelope(wire, verify=False).body  # type: ignore[arg-type]
                out.append({"feed_seq": feed_seq, "change_id": cid_to_str(cid), "op": body.op,
                            "author": body.author, "seq": body.seq, "hlc": list(body.hlc),
                            "schema": body.schema, "size": len(wire)})  # type: ignore[arg-type]
        if not out:
            self._raise_if_erased(registry, id)
            raise NotFound(f"no record {registry}/{id}")
        return out

    def changes(self, since: int = 0, *, limit: int = 1000, registry: str | None = None,
                kind: str | None = None) -> list[FeedEvent]:
        _check_seq("since", since)
        if not 1 <= limit <= 10_000:
            raise ValidationError("limit must be between 1 and 10000")
        return feed.read(self.store, since=since, limit=limit, registry=registry, kind=kind)

    def feed_head(self) -> int:
        return feed.head(self.store)

    def change(self, change_id: bytes) -> bytes | None:
        with self.store.read() as txn:
            return changes.wire(self.store, txn, change_id)

    # ---- registries and kinds ----

    def registries(self) -> list[dict[str, Any]]:
        out = [desc.to_dict() for desc in regs.BUILTINS.values()]
        with self.store.read() as txn:
            for record in records.iter_records(self.store, txn, registry=regs.REGISTRY_OF_REGISTRIES):
                if not record["deleted"]:
                    out.append(regs.descriptor_from_record(record).to_dict())
        return sorted(out, key=lambda d: d["name"])

    def describe_registry(self, name: str) -> dict[str, Any]:
        names.registry_name(name)
        if name in regs.BUILTINS:
            desc = regs.BUILTINS[name].to_dict()
        else:
            with self.store.read() as txn:
                desc = self._require_registry(txn, name).to_dict()
        with self.store.read() as txn:
            count = sum(1 for r in records.iter_records(self.store, txn, registry=name) if not r["deleted"])
        desc["records"] = count
        return desc

    def create_registry(self, name: str, kinds: Sequence[str], *, description: str = "",
                        write_policy: str = "open", conflict_policy: Any = "last-writer-wins",
                        replication: str = "federation", limits: Mapping[str, Any] | None = None,
                        readers: Sequence[str] = (), write_roles: Sequence[str] = (),
                        actor: str | None = None) -> WriteResult:
        """``limits``: ``{"max_record_bytes": int, "max_changes_per_second_per_org": float}``,
        either optional (registry.v1.json; docs/federation.md, "Policy guard")."""
        fields = {"name": name, "description": description, "kinds": list(kinds), "write_policy": write_policy,
                  "conflict_policy": conflict_policy,
                  "replication": {"scope": replication, **({"readers": list(readers)} if readers else {})}}
        if limits:
            fields["limits"] = dict(limits)
        if write_roles:
            fields["write_roles"] = list(write_roles)
        return self.put(regs.REGISTRY_OF_REGISTRIES, "registry", fields, id=name, actor=actor)

    def explain(self, subject: str, action: str, registry: str, record_id: str | None = None, *,
                fields: Sequence[str] = (), local_roles: Sequence[str] = ()) -> dict[str, Any]:
        """What every node would decide if ``subject`` (a did:key) did
        ``action`` (read, create, update, delete, admin) on ``registry`` (or
        one record of it) now, touching ``fields``, and the rule that decides."""
        if action not in ("read", "create", "update", "delete", "admin"):
            raise ValidationError(f"action must be read, create, update, delete or admin, not {action!r}")
        public_key_from_did(subject)
        names.registry_name(registry)
        if record_id is not None:
            names.record_id(record_id)
        engine = self.engine
        with self.store.read() as txn:
            desc = regs.lookup(self.store, txn, registry)
            record = records.get_record(self.store, txn, registry, record_id) if record_id else None
        if record_id is not None and record is None and action in ("update", "delete"):
            raise NotFound(f"no record {registry}/{record_id}")
        decision = access.explain(engine.trust, desc, engine.policy, subject=subject, action=action,
                                  record=record, fields=fields, at_ms=engine.now_ms(), local_roles=local_roles)
        return {"subject": subject, "action": action, "registry": registry, "record": record_id,
                "fields": list(fields), **decision.to_dict()}

    def kinds(self) -> list[dict[str, Any]]:
        return [_kind_dict(k) for k in self.engine.catalog.kinds()]

    def kind(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A kind's JSON Schema and versions; KindNotFound if this node has
        not registered it (or that version of it)."""
        try:
            found = _kind_dict(self.engine.catalog.get(name, version))
        except UnknownKind as exc:
            raise KindNotFound(exc.message, details=exc.details) from None
        found["versions"] = self.engine.catalog.versions(name)
        return found

    def register_kind(self, name: str, version: int, schema: Mapping[str, Any], *, registry: str = "",
                      description: str = "", actor: str | None = None) -> WriteResult:
        if not isinstance(schema, Mapping):
            raise ValidationError(f"a kind's schema is a JSON object, not {type(schema).__name__}")
        fields = {"name": name, "version": version, "schema": dict(schema), "description": description}
        if registry:
            fields["registry"] = registry
        return self.put(regs.KINDS_REGISTRY, "kind", fields, id=f"{name}.v{version}", actor=actor)

    def _require_registry(self, txn: Any, name: str) -> regs.RegistryDescriptor:
        return regs.lookup(self.store, txn, name)

    # ---- integrity ----

    def verify(self) -> VerifyReport:
        return verify_store(self.store)

    def audit_log(self, *, since: int = 0, limit: int = 100, reverse: bool = False,
                  target: str | None = None) -> list[AuditEntry]:
        """Audit entries; ``target`` (``REGISTRY/ID``) keeps one record's."""
        _check_seq("since", since)
        return AuditLedger.entries(self.store, since=since, limit=limit, reverse=reverse, target=target)

    def audit_verify(self) -> dict[str, Any]:
        signers = self.home.node_dids() if self.home is not None else [self.engine.key.did]
        return AuditLedger.verify(self.store, signers)

    def identity(self) -> dict[str, Any]:
        if self.home is not None:
            return home_identity(self.home)
        key = self.engine.key
        return {"did": key.did, "peer_id": key.peer_id, "org": self.engine.owner}

    def stats(self) -> dict[str, Any]:
        out = self.store.stats()
        out["feed_head"] = self.feed_head()
        out["recovering"] = int(self.engine.recovering is not None)  # 1: a lost store recovers (end_recovery)
        # The federation whose members' changes this store counts: its
        # home's, or the one the store recorded when opened bare
        # (Engine._store_federation); "-" outside any federation.
        federation = self.engine.federation
        out["federation"] = federation[0].name if federation is not None else "-"
        out["federation_id"] = federation[1] if federation is not None else "-"
        out.update({f"metric.{k}": v for k, v in sorted(self.engine.metrics.items())})
        return out

    def state_digest(self) -> str:
        """A hash of every record's replicated content: equal on two nodes iff
        they hold the same records in the same state."""
        import hashlib

        from registrygrid.engine.engine import canonical
        from registrygrid.record import replicated_content

        digest = hashlib.sha256()
        with self.store.read() as txn:
            for k, record in records.iter_stored(self.store, txn):
                digest.update(k)
                digest.update(canonical(replicated_content(record)))
        return digest.hexdigest()


class StoreChecks:
    """Read-only integrity checks of a store that another process may be writing."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.store = Store(home.store_path, readonly=True)

    def verify(self) -> VerifyReport:
        return verify_store(self.store)

    def audit_verify(self) -> dict[str, Any]:
        return AuditLedger.verify(self.store, self.home.node_dids())

    def heads_of(self, author: str) -> dict[str, int]:
        """registry -> sequence number of ``author``'s last change held here
        (what a revocation of that key names as its cutoffs)."""
        with self.store.read() as txn:
            vector = chains.heads(self.store, txn)
        return {registry: authors[author] for registry, authors in sorted(vector.items()) if author in authors}

    def changes(self, since: int = 0, *, limit: int = 1000, registry: str | None = None,
                kind: str | None = None) -> list[FeedEvent]:
        """The feed as LocalRegistry.changes reads it, holding no lock: a
        cursor past the head is refused as the bridge refuses it."""
        _check_seq("since", since)
        head = feed.head(self.store)
        if since > head:
            raise ValidationError(f"since {since} is beyond this node's feed head {head}: a cursor of another node, "
                                  "or of before its store was restored; start again from 0 or the head",
                                  details=[{"path": "--from", "message": f"beyond the feed head {head}"}])
        return feed.read(self.store, since=since, limit=limit, registry=registry, kind=kind)

    def feed_head(self) -> int:
        return feed.head(self.store)

    def recovering(self) -> bool:
        """The store is made anew and still recovers its key's changes from peers (Engine.begin_recovery)."""
        from registrygrid.engine.engine import RECOVERING

        with self.store.read() as txn:
            return self.store.get_meta(txn, RECOVERING) is not None

    def close(self) -> None:
        self.store.close()


def heads_held(home: Home, authors: Sequence[str]) -> dict[str, dict[str, int]]:
    """author -> registry -> sequence of its last change this home's store
    holds (a revocation's cutoffs); nothing for a home whose node never
    opened its store (it holds no change: an lmdb error was the answer)."""
    if not Path(home.store_path).exists():
        return {author: {} for author in authors}
    checks = StoreChecks(home)
    try:
        return {author: checks.heads_of(author) for author in authors}
    finally:
        checks.close()


def _behind(store: Store, did: str, mark: dict[str, int]) -> dict[str, tuple[int, int]]:
    """registry -> (held, marked) where the store holds fewer of key
    ``did``'s changes than the home's mark says it did."""
    if not mark:
        return {}
    with store.read() as txn:
        heads = chains.heads(store, txn)
    return {registry: (heads.get(registry, {}).get(did, 0), seq) for registry, seq in sorted(mark.items())
            if heads.get(registry, {}).get(did, 0) < seq}


def _empty(store: Store) -> bool:
    """The store holds no change at all (its feed has none)."""
    with store.read() as txn:
        return feed.last_seq(store, txn) == 0


def home_identity(home: Home) -> dict[str, Any]:
    """A home's node identity from its files alone (no store, no lock): the
    did:key and peer ID of its key, its org and delegation, and, while a
    node runs there, the multiaddrs the node published in node.json."""
    key = home.node_key()
    out: dict[str, Any] = {"did": key.did, "peer_id": key.peer_id, "org": key.did}
    membership = home.org()
    if membership is not None:
        claims = verify_delegation(membership.delegation, subject=key.did, check_window=False)
        out.update(org=membership.org, org_name=membership.name, roles=list(claims.roles),
                   delegation_expires=claims.expires)
    running = home.node_info()  # written by the node's federation while it runs
    if running is not None:
        out["addrs"] = running.get("addrs", [])
    return out


def _kind_dict(kind: KindSchema) -> dict[str, Any]:
    return {"name": kind.name, "version": kind.version, "registry": kind.registry, "builtin": kind.builtin,
            "description": kind.description, "schema": dict(kind.schema)}


def open(home: str | Path | Home | None = None) -> LocalRegistry:  # noqa: A001 - mirrors io.open
    """Open the store of a home for this process (takes the home's writer lock)."""
    return LocalRegistry.open_home(home)
