"""The write path: one road for every change, local or remote.

``Engine.execute(ops)`` runs a batch of operations in ONE durable LMDB
transaction (group commit: one fsync for the batch) and answers each
operation on its own: a rejected operation leaves no trace but its audit
entry, and never spoils its neighbours.

Local write:  validate (names, kind, schema, size, policy) -> Automerge
              transaction -> sign envelope -> commit.
Remote change: decode + verify signature -> dedupe -> author chain ->
              registry policy -> Automerge deps present? (else park it as
              pending until they arrive: fetched, never guessed) -> apply ->
              check the result (actor, hash, kind, schema) -> commit ->
              release any pending change that waited for this one.
Commit (shared): change, chain head, document, materialized record,
              indexes, history, feed event, audit entry.

Every check that can fail runs before the operation's first put, so a
failure never leaves a half-applied change inside the batch.

The engine does no networking and no waiting: the node runs it on a worker
thread behind a queue; the SDK calls it directly; simulations drive it too.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from registrygrid.crdt.change import read_header
from registrygrid.crdt.record import (
    RecordDoc,
    actor_for,
    append_to_stored,
    doc_bytes,
    stored_doc,
)
from registrygrid.crdt.snapshot import (
    check_value,
    encode_snapshot,
    genesis_change,
    read_snapshot,
)
from registrygrid.engine import registries as regs
from registrygrid.engine.ops import (
    AuditNote,
    Committed,
    Delete,
    Executed,
    IngestResult,
    Operation,
    Outcome,
    Put,
    Remote,
    Update,
    WriteResult,
)
from registrygrid.errors import (
    AlreadyExists,
    ChainBroken,
    Conflict,
    Equivocation,
    MalformedInput,
    NotFound,
    NotOwner,
    PolicyDenied,
    RegistryError,
    TooLarge,
    ValidationError,
)
from registrygrid.identity.keys import KeyPair, public_key_from_did
from registrygrid.protocol import limits, names
from registrygrid.protocol.envelope import (
    Draft,
    Envelope,
    cid_to_str,
    draft,
    id_of,
    is_legacy_wire,
    open_envelope,
    sign_batch,
    signatures_hold,
    wire_of,
)
from registrygrid.protocol.hlc import MAX_DRIFT_MS, Hlc, HybridClock, wall_clock_ms
from registrygrid.record import Record, replicated_content
from registrygrid.schemas import KindSchema, SchemaCatalog
from registrygrid.storage import chains, changes, feed, pending, records
from registrygrid.storage.audit import AuditLedger
from registrygrid.storage.store import Store, StoreFull, Txn, pack
from registrygrid.trust import access
from registrygrid.trust.federation import GenesisBody
from registrygrid.trust.policy import POLICIES_REGISTRY, PolicySet
from registrygrid.trust.state import TrustState, Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY, Statement, read_statement

# Changes parked while they wait for dependencies. Anti-entropy refetches
# anything refused here, so the cap only bounds memory and disk a peer can
# make us hold: 100k envelopes is ~50 MB at typical sizes.
MAX_PENDING = 100_000
# Remote changes of one batch have their signatures checked on this many
# threads before the batch is applied (the machine has 2 cores; each check
# is ~50-90 us of libsodium with the GIL released). Batches smaller than
# PARALLEL_VERIFY_MIN_OPS are checked inline: handing them over costs more
# than it saves.
PARALLEL_VERIFY_THREADS = 2
PARALLEL_VERIFY_MIN_OPS = 32


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def canonical(value: Any) -> bytes:
    """msgpack with map keys sorted: equal values give equal bytes, whatever
    order a JSON object's keys arrived in."""
    return msgspec.msgpack.encode(value, order="sorted")


def record_digest(record: Mapping[str, Any] | None) -> str | None:
    if record is None:
        return None
    return hashlib.sha256(canonical(replicated_content(record))).hexdigest()


@dataclass
class _Batch:
    docs: dict[tuple[str, str], RecordDoc] = field(default_factory=dict)
    committed: Committed = field(default_factory=Committed)
    # This node's changes of the batch, signed together when it ends (one
    # signature over the Merkle root of their IDs), by ID.
    drafts: dict[bytes, Draft] = field(default_factory=dict)
    # (registry, author) -> (seq, cid): chain heads moved by this batch; they
    # survive the cache reset that follows a refused op (see _head).
    heads: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    # Keys whose delegation this batch committed: changes parked waiting
    # for them are released (see _release).
    delegated: list[str] = field(default_factory=list)
    # Keys a statement of this batch was about: their revocations, if any,
    # are applied to what is stored (see _rebuild_revoked).
    stated: list[str] = field(default_factory=list)
    # An access policy changed in this batch: the rules are reloaded and the
    # records of the registries they target rebuilt (see _apply_policies).
    policies_changed: bool = False


class _CreateRace(Exception):
    """A create of an id another org's create already holds: which one
    owns the record is settled by rebuilding it (earliest create wins)."""

    def __init__(self, refusal: NotOwner) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class Engine:
    def __init__(
        self,
        store: Store,
        key_pair: KeyPair,
        catalog: SchemaCatalog | None = None,
        *,
        owner: str | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
        federation: tuple[GenesisBody, str] | None = None,
    ) -> None:
        self.store = store
        self.key = key_pair
        self.catalog = catalog or SchemaCatalog()
        self.owner = owner or key_pair.did  # the org this node writes for
        self.actor = actor_for(key_pair.public_key)
        self.now_ms = now_ms
        self.metrics: Counter[str] = Counter()
        self.listeners: list[Callable[[Committed], None]] = []
        self._verify_pool: ThreadPoolExecutor | None = None  # made on the first big remote batch
        # Who speaks for whom, folded from grid.members (trust/state.py);
        # every change, local or remote, is judged against it. With a
        # federation (genesis claims, id), only its members' orgs count.
        self.trust = TrustState(*(federation or (None, None)))
        # Access rules of grid.policies in force (trust/policy.py).
        self.policy = PolicySet()
        self.audit = AuditLedger(store)
        with store.read() as txn:
            self.clock = HybridClock(now_ms, Hlc(*store.get_meta(txn, "hlc", [0, 0])))
        self._reset_caches()
        self._load_user_kinds()
        self._load_trust()
        with store.read() as txn:
            self.policy = self._policies(txn)

    # ------------------------------------------------------------ batches

    def execute(self, ops: Sequence[Operation]) -> list[Outcome]:
        """Run ``ops`` in one durable transaction; one outcome per op
        (a result, or the RegistryError that refused it)."""
        return self.run(ops).outcomes

    def run(self, ops: Sequence[Operation], *, publish: bool = False) -> Executed:
        """``execute``, and what the batch committed: feed positions, and
        with ``publish`` the wire bytes of this node's new changes (for
        gossip; building them costs a Merkle path each, so only on demand)."""
        while True:
            try:
                return self._execute_once(ops, publish)
            except StoreFull:
                self.metrics["store.map_grown"] += 1
                self.store.grow()

    def _execute_once(self, ops: Sequence[Operation], publish: bool) -> Executed:
        ops = self._check_signatures_in_parallel(ops)
        batch = _Batch()
        outcomes: list[Outcome] = []
        try:
            with self.store.write() as txn:
                for op in ops:
                    outcomes.append(self._run_one(txn, batch, op))
                self._seal_drafts(txn, batch, publish)
                self.store.put_meta(txn, "hlc", list(self.clock.last))
                self.audit.finish_batch(txn, self.key, self.now_ms())
        except BaseException:
            self._reset_caches()
            self._load_trust()  # statements of the failed batch were added in memory
            with self.store.read() as txn:
                self.policy = self._policies(txn)
            self.audit.reload()
            raise
        self.feed_seq = self._batch_feed_seq
        return Executed(outcomes, batch.committed)

    def _check_signatures_in_parallel(self, ops: Sequence[Operation]) -> Sequence[Operation]:
        """Remote ops whose signatures hold, marked preverified; checked on
        PARALLEL_VERIFY_THREADS threads, since libsodium releases the GIL.
        Only legacy (wire format 1) changes are worth it: each carries its own
        signature, while a format-2 batch is verified once and its other
        changes hit the cache, which is Python and holds the GIL. A change
        that fails here is left as it was: the one write path then checks
        it again and refuses it with its typed error."""
        unchecked = [i for i, op in enumerate(ops) if isinstance(op, Remote) and not op.preverified
                     and is_legacy_wire(op.wire)]
        if len(unchecked) < PARALLEL_VERIFY_MIN_OPS:
            return ops
        if self._verify_pool is None:
            self._verify_pool = ThreadPoolExecutor(PARALLEL_VERIFY_THREADS, thread_name_prefix="rgrid-verify")
        slices = [unchecked[k::PARALLEL_VERIFY_THREADS] for k in range(PARALLEL_VERIFY_THREADS)]
        verdicts = self._verify_pool.map(
            lambda part: signatures_hold([ops[i].wire for i in part]), slices)  # type: ignore[union-attr]
        out = list(ops)
        for part, holds in zip(slices, verdicts):
            for i, ok in zip(part, holds):
                if ok:
                    out[i] = replace(out[i], preverified=True)  # type: ignore[type-var]
        return out

    def _seal_drafts(self, txn: Txn, batch: _Batch, publish: bool) -> None:
        """Sign the batch's own changes at once: one signature over the
        Merkle root of their IDs, stored once, each change with its proof."""
        if not batch.drafts:
            return
        drafts = list(batch.drafts.values())
        signed, tree = sign_batch(self.key, drafts)
        changes.put_batch(self.store, txn, drafts, signed)
        if publish:
            batch.committed.local_envelopes.extend(
                wire_of(d.body_bytes, i, signed.size, tree.path(i), signed.signature) for i, d in enumerate(drafts))
        self.metrics["write.batches_signed"] += 1

    def close(self) -> None:
        if self._verify_pool is not None:
            self._verify_pool.shutdown()
            self._verify_pool = None

    def _run_one(self, txn: Txn, batch: _Batch, op: Operation) -> Outcome:
        try:
            if isinstance(op, Put):
                return self._put(txn, batch, op)
            if isinstance(op, Update):
                return self._update(txn, batch, op)
            if isinstance(op, Delete):
                return self._delete(txn, batch, op)
            if isinstance(op, Remote):
                return self._remote(txn, batch, op)
            if isinstance(op, AuditNote):
                self.audit.append(txn, at_ms=self.now_ms(), actor=op.actor, action=op.action,
                                  target=op.target, reason=op.reason)
                self.metrics[f"audit.{op.action}"] += 1
                return None
            raise ValidationError(f"unknown operation {type(op).__name__}")
        except RegistryError as exc:
            # Whatever the op touched in memory is suspect; the transaction
            # holds the truth, so reload from it next time.
            target = _target_of(op)
            batch.docs.pop(target, None)
            self._chain_heads.clear()
            self.metrics[f"rejected.{exc.code}"] += 1
            if isinstance(op, Remote):
                self.metrics["remote.rejected"] += 1
            self.audit.append(
                txn,
                at_ms=self.now_ms(),
                actor=_actor_of(op, self.key.did),
                action="deny",
                target="/".join(target) if target[0] else "",
                reason=f"{exc.code}: {exc.message}"[:512],
            )
            if isinstance(op, Remote):
                return IngestResult("rejected", _try_id(op.wire), error=exc)
            return exc

    def _reset_caches(self) -> None:
        self._chain_heads: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._registry_cache: dict[str, regs.RegistryDescriptor] = {}
        with self.store.read() as txn:
            self.feed_seq = feed.last_seq(self.store, txn)
        self._batch_feed_seq = self.feed_seq

    # ------------------------------------------------------------ local writes

    def _put(self, txn: Txn, batch: _Batch, op: Put) -> WriteResult:
        registry = names.registry_name(op.registry)
        desc = self._registry(txn, registry)
        kind = self._kind_for(desc, op.kind, op.schema)
        fields = _checked_fields(op.fields, desc.max_record_bytes)
        self.catalog.validate(kind.name, kind.version, fields)
        tags = _checked_tags(op.tags)
        links = _checked_links(op.links)
        record_id = names.record_id(op.record_id) if op.record_id is not None else names.new_record_id()
        statement = self._special_checks(registry, record_id, kind.name, fields)
        old = records.get_record(self.store, txn, registry, record_id)
        if old is not None and not old["deleted"]:
            raise AlreadyExists(f"{registry}/{record_id} already exists; update it instead")
        hlc = self.clock.tick()
        owner = statement.org if statement is not None else self.owner
        self._check_own_chain(txn, batch, registry)
        if old is not None:
            if old["kind"] != kind.name:
                raise Conflict(f"{registry}/{record_id} was a {old['kind']}; a deleted record keeps its kind")
            self._local_verdict(access.check_modify(self.trust, desc, op="create", author=self.key.did,
                                                    before=old, after=None, at_ms=hlc.wall_ms, policy=self.policy,
                                                    after_fields=fields, local_roles=op.roles), old["owner"])
            doc = self._doc_for_write(txn, batch, registry, record_id)
            change = doc.update(fields=fields, schema=kind.version, tags=tags, links=links, undelete=True)
            state = _state_of(old, schema=kind.version, fields=fields, tags=tags, links=links, deleted=False)
            made = self._draft(txn, batch, registry, record_id, "create", kind, hlc, change=change)
        else:
            self._local_verdict(access.check_create(self.trust, desc, author=self.key.did, record_id=record_id,
                                                    owner=owner, created_by=self.key.did, at_ms=hlc.wall_ms,
                                                    statement=statement, policy=self.policy, kind=kind.name,
                                                    fields=fields, local_roles=op.roles), owner)
            # A new record is a signed snapshot: no Automerge document
            # until its first update (crdt/snapshot.py).
            check_value(fields)
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

    def _update(self, txn: Txn, batch: _Batch, op: Update) -> WriteResult:
        registry = names.registry_name(op.registry)
        record_id = names.record_id(op.record_id)
        desc = self._registry(txn, registry)
        old = self._live_record(txn, registry, record_id)
        if op.if_match is not None and op.if_match != old["change_id"]:
            raise Conflict(
                f"{registry}/{record_id} is at change {old['change_id']}, not {op.if_match}",
                details={"current": old["change_id"]},
            )
        if op.fields is not None and op.patch is not None:
            raise ValidationError("give either fields (replace) or patch (merge), not both")
        version = op.schema if op.schema is not None else old["schema"]
        kind = self._kind_for(desc, old["kind"], version)
        hlc = self.clock.tick()
        self._check_own_chain(txn, batch, registry)
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
        fields = _checked_fields(fields, desc.max_record_bytes)
        self._local_verdict(access.check_modify(self.trust, desc, op="update", author=self.key.did, before=old,
                                                after=None, at_ms=hlc.wall_ms, policy=self.policy,
                                                after_fields=fields, local_roles=op.roles), old["owner"])
        self.catalog.validate(kind.name, kind.version, fields)
        tags = _checked_tags(op.tags) if op.tags is not None else None
        links = _checked_links(op.links) if op.links is not None else None
        self._special_checks(registry, record_id, kind.name, fields)
        doc = self._doc_for_write(txn, batch, registry, record_id)
        change = doc.update(fields=fields, schema=kind.version, tags=tags, links=links)
        if change is None:
            return WriteResult("unchanged", registry, record_id, old["change_id"], None, old)
        state = _state_of(old, schema=kind.version, fields=fields, tags=tags, links=links)
        env = self._draft(txn, batch, registry, record_id, "update", kind, hlc, change=change)
        seq, record = self._commit(txn, batch, env, doc, old, origin="local", requested_by=op.actor, state=state)
        self._after_local(txn, batch, env)
        return WriteResult("updated", registry, record_id, env.id, seq, record)

    def _delete(self, txn: Txn, batch: _Batch, op: Delete) -> WriteResult:
        registry = names.registry_name(op.registry)
        record_id = names.record_id(op.record_id)
        desc = self._registry(txn, registry)
        old = self._live_record(txn, registry, record_id)
        if op.if_match is not None and op.if_match != old["change_id"]:
            raise Conflict(f"{registry}/{record_id} is at change {old['change_id']}, not {op.if_match}",
                           details={"current": old["change_id"]})
        hlc = self.clock.tick()
        self._check_own_chain(txn, batch, registry)
        self._local_verdict(access.check_modify(self.trust, desc, op="delete", author=self.key.did, before=old,
                                                after=None, at_ms=hlc.wall_ms, policy=self.policy,
                                                local_roles=op.roles), old["owner"])
        kind = self.catalog.get(old["kind"], old["schema"])
        doc = self._doc_for_write(txn, batch, registry, record_id)
        change = doc.delete()
        env = self._draft(txn, batch, registry, record_id, "delete", kind, hlc, change=change)
        seq, record = self._commit(txn, batch, env, doc, old, origin="local", requested_by=op.actor,
                                   state=_state_of(old, deleted=True))
        self._after_local(txn, batch, env)
        return WriteResult("deleted", registry, record_id, env.id, seq, record)

    def _draft(self, txn: Txn, batch: _Batch, registry: str, record_id: str, op: str,
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

    def _after_local(self, txn: Txn, batch: _Batch, env: Envelope) -> None:
        """A local write that changed the rules (a statement, a policy)
        re-judges what they govern, and lets waiting changes go on."""
        if batch.policies_changed:
            self._apply_policies(txn, batch, env, "local")
        if batch.delegated:
            self._rebuild_revoked(txn, batch, env, "local")
            self._release(txn, batch, None, "parked")

    def _check_own_chain(self, txn: Txn, batch: _Batch, registry: str) -> None:
        """This node's own key may have been revoked (by its org, from another node)."""
        seq, _ = self._head(txn, batch, registry, self.key.did)
        self.trust.check_chain(self.key.did, registry, seq + 1)

    def _local_verdict(self, verdict: Verdict, org: str) -> None:
        """A local write never waits: a delegation this node lacks is one it
        would have to publish first."""
        if verdict is Verdict.WAIT:
            raise PolicyDenied(
                f"this node ({self.key.did}) has no delegation from {org} in {MEMBERS_REGISTRY}; "
                f"the org publishes one with `rgrid org delegate {self.key.did}`")

    # ------------------------------------------------------------ remote changes

    def _remote(self, txn: Txn, batch: _Batch, op: Remote) -> IngestResult:
        self.metrics["remote.received"] += 1
        env = open_envelope(op.wire, verify=not op.preverified)
        result = self._ingest(txn, batch, env, op.peer)
        if result.status in ("applied", "refused"):
            self._apply_policies(txn, batch, env, op.peer)
            self._rebuild_revoked(txn, batch, env, op.peer)
            released = self._release(txn, batch, env, op.peer)
            if released:
                result = replace(result, released=tuple(released))
        self.metrics[f"remote.{result.status}"] += 1
        return result

    def _ingest(self, txn: Txn, batch: _Batch, env: Envelope, peer: str) -> IngestResult:
        body = env.body
        if changes.has(self.store, txn, env.cid) or env.cid in batch.drafts:
            return IngestResult("duplicate", env.id)
        head_seq, head_cid = self._head(txn, batch, body.registry, body.author)
        if body.seq <= head_seq:
            other = chains.at(self.store, txn, body.registry, body.author, body.seq)
            self._keep_evidence(txn, batch, env, other)
            raise Equivocation(
                f"{body.author} signed two different changes with sequence {body.seq} in {body.registry}",
                details={"seq": body.seq, "changes": [env.id, cid_to_str(other) if other else None]},
            )
        if body.seq > head_seq + 1:
            # Wait for its own predecessor, not for the next missing link:
            # keyed by the next link, every change of a long gap would be
            # released and parked again at each link applied (quadratic; a
            # 2,000-change gap cost ~1M re-parks).
            return self._park(txn, env, pending.for_predecessor(body.registry, body.author, body.seq, env.cid))
        if body.prev != head_cid:
            self._keep_evidence(txn, batch, env, head_cid or None)
            raise ChainBroken(f"change {body.seq} of {body.author} does not follow its change {head_seq}")
        desc = self._registry(txn, body.registry)
        if body.kind not in desc.kinds:
            raise PolicyDenied(f"registry {body.registry} does not hold kind {body.kind!r}")
        claim: dict[str, Any] = {}
        if body.is_snapshot:
            claim = read_snapshot(body.payload, kind=body.kind, schema=body.schema)
            self._check_state(env, claim, desc)
        else:
            self._check_automerge_header(env)
        store, reg, rec = self.store, body.registry, body.record
        if not body.is_snapshot and (records.is_applied(store, txn, reg, rec, body.change_hash)
                                     or records.is_refused(store, txn, reg, rec, body.change_hash)):
            raise MalformedInput("this Automerge change was already stored under another envelope")
        builds_on_refused = False
        if body.deps:
            # Updates name the genesis change of the record's snapshot: build
            # the document (once) so that its hash is known here.
            self._document(txn, batch, body.registry, body.record)
        for dep in body.deps:
            if not records.is_applied(store, txn, reg, rec, dep):
                if not records.is_refused(store, txn, reg, rec, dep):
                    return self._park(txn, env, pending.for_deps(reg, rec, env.cid))
                builds_on_refused = True
        try:
            if builds_on_refused:
                raise PolicyDenied(f"it builds on a refused change of {body.registry}/{body.record}")
            if body.registry != MEMBERS_REGISTRY:  # statements carry their own authority
                self.trust.check_chain(body.author, body.registry, body.seq)
        except PolicyDenied as exc:
            return self._keep_refused(txn, batch, env, exc, peer)
        old = records.get_record(self.store, txn, body.registry, body.record)
        automerge: tuple[bytes, bytes] | None = None
        if body.is_snapshot and old is None:
            doc, state = None, claim
        else:
            existing = self._document(txn, batch, body.registry, body.record)
            saved = existing.save() if existing is not None else None
            if body.is_snapshot:
                # A create of a record that exists: two creates raced. Their
                # geneses merge as Automerge merges any concurrent changes.
                genesis = genesis_change(claim, body.author)
                automerge = (genesis.hash, genesis.raw_bytes)
                doc = RecordDoc.apply(saved, genesis.raw_bytes)
            else:
                doc = RecordDoc.apply(saved, body.payload)
            if (automerge[0] if automerge else body.change_hash) not in doc.heads():
                raise MalformedInput("Automerge did not apply the change")
            state = self._check_state(env, doc.materialize(), desc)
        statement = read_statement(body.kind, body.record, state["fields"]) \
            if body.registry == MEMBERS_REGISTRY and not state.get("deleted") else None
        try:
            verdict = self._remote_verdict(env, desc, old, claim if body.is_snapshot else state, statement)
        except _CreateRace as race:
            return self._settle_create_race(txn, batch, env, race, peer)
        except PolicyDenied as exc:
            return self._keep_refused(txn, batch, env, exc, peer)
        if verdict is Verdict.WAIT:
            # Its signer's delegation has not arrived: wait for it like a
            # missing dependency (sync brings grid.members), never guess.
            self.metrics["remote.waiting_delegation"] += 1
            return self._park(txn, env, pending.for_delegation(body.author, env.cid))
        if body.registry == regs.KINDS_REGISTRY and not state.get("deleted"):
            self._register_kind(body.record, state["fields"])
        if not self.clock.observe(env.hlc):
            # A timestamp far ahead would drag every clock forward and win
            # every "latest change" comparison; refuse it (the author's
            # clock is wrong) rather than let it skew the federation.
            raise ValidationError(f"change clock {env.hlc.wall_ms} ms is more than {MAX_DRIFT_MS} ms ahead of ours")
        batch.docs.pop((body.registry, body.record), None)
        seq, _ = self._commit(txn, batch, env, doc, old, origin=peer, requested_by=None, state=state,
                              statement=statement, automerge=automerge)
        return IngestResult("applied", env.id, seq)

    def _check_automerge_header(self, env: Envelope) -> None:
        """What the envelope says of its Automerge change must be what the
        change's own bytes say, checked before any document is loaded."""
        body = env.body
        header = read_header(body.payload)
        if header.hash != body.change_hash:
            raise MalformedInput("the envelope's payload is not the change its change_hash names")
        if header.actor != actor_for(public_key_from_did(body.author)):
            raise PolicyDenied("the Automerge change was made under another author's actor id")
        if sorted(header.deps) != sorted(body.deps):
            raise MalformedInput("the envelope's deps differ from its change's deps")

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
            verdict = access.check_create(self.trust, desc, author=body.author, record_id=body.record,
                                          owner=claim.get("owner"), created_by=created.get("by"), at_ms=at_ms,
                                          statement=statement, policy=self.policy, kind=body.kind,
                                          fields=claim.get("fields"))
            if old is not None and old["owner"] != claim.get("owner"):
                raise _CreateRace(NotOwner(f"{body.registry}/{body.record} belongs to {old['owner']}, whose create "
                                           f"came first; a create of the same id by {claim.get('owner')} is refused"))
            return verdict
        if old is None:
            raise MalformedInput(f"a {body.op} of {body.registry}/{body.record}, which has no create")
        return access.check_modify(self.trust, desc, op=body.op, author=body.author, before=old, after=state,
                                   at_ms=at_ms, policy=self.policy)

    # ------------------------------------------------------------ refused changes and rebuilds

    def _keep_refused(self, txn: Txn, batch: _Batch, env: Envelope, why: RegistryError, peer: str,
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
        records.mark_refused(self.store, txn, body.registry, body.record, _automerge_of(env)[0], env.cid)
        if audit:
            self.metrics[f"rejected.{why.code}"] += 1
            self.audit.append(txn, at_ms=self.now_ms(), actor=body.author, action="deny",
                              target=f"{body.registry}/{body.record}",
                              reason=f"{why.code}: {why.message} (from {peer}; kept as evidence, not applied)"[:512],
                              change=env.id)
        return IngestResult("refused", env.id, error=why)

    def _settle_create_race(self, txn: Txn, batch: _Batch, env: Envelope, race: _CreateRace,
                            peer: str) -> IngestResult:
        """Two orgs created one id: the earliest valid create (by clock, then
        change ID) owns the record on every node, whichever arrived first."""
        body = env.body
        self._keep_refused(txn, batch, env, race.refusal, peer, audit=False)
        self._rebuild(txn, batch, body.registry, body.record, cause=env, origin=peer)
        if records.counts(self.store, txn, body.registry, body.record, env.cid, body.change_hash):
            return IngestResult("applied", env.id, self._batch_feed_seq)
        self.metrics[f"rejected.{race.refusal.code}"] += 1
        self.audit.append(txn, at_ms=self.now_ms(), actor=body.author, action="deny",
                          target=f"{body.registry}/{body.record}",
                          reason=f"{race.refusal.code}: {race.refusal.message} (kept as evidence)"[:512],
                          change=env.id)
        return IngestResult("refused", env.id, error=race.refusal)

    def _policies(self, txn: Txn) -> PolicySet:
        def owner_of(registry: str) -> str | None:
            try:
                return regs.lookup(self.store, txn, registry).owner
            except RegistryError:
                return None

        return PolicySet.of(records.iter_records(self.store, txn, registry=POLICIES_REGISTRY),
                            is_admin=self.trust.is_admin, owner_of=owner_of)

    def _apply_policies(self, txn: Txn, batch: _Batch, cause: Envelope, origin: str) -> None:
        """After a grid.policies change: the rules in force are reloaded, and
        every record of a registry whose rules changed is rebuilt, so records
        stay the pure function of the changes valid under the rules of their
        time, whichever order the policy and the changes arrived in."""
        if not batch.policies_changed:
            return
        batch.policies_changed = False
        before, self.policy = self.policy, self._policies(txn)
        changed = {r for r in before.registries() | self.policy.registries()
                   if before.rules.get(r) != self.policy.rules.get(r)}
        for registry in sorted(changed):
            ids = [r["id"] for r in records.iter_records(self.store, txn, registry=registry)]
            ids += [rid for rid in records.refused_record_ids(self.store, txn, registry) if rid not in ids]
            for record_id in ids:
                self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)

    def _rebuild_revoked(self, txn: Txn, batch: _Batch, cause: Envelope, origin: str) -> None:
        """After a statement about a key: if the key is revoked, its applied
        changes past their cutoffs no longer count, so the records they
        touched are rebuilt from the changes that remain valid."""
        while batch.stated:
            for key_did in sorted(self.trust.affected_by_revocation(batch.stated.pop())):
                self._rebuild_revoked_key(txn, batch, key_did, cause, origin)

    def _rebuild_revoked_key(self, txn: Txn, batch: _Batch, subject: str, cause: Envelope,
                             origin: str) -> None:
        revoked = self.trust.revoked(subject)
        if revoked is None:
            return
        targets: set[tuple[str, str]] = set()
        for registry, authors in chains.heads(self.store, txn).items():
            head = authors.get(subject, 0)
            if registry == MEMBERS_REGISTRY or head <= revoked.cutoff(registry):
                continue
            for _, cid in chains.links_after(self.store, txn, registry, subject, revoked.cutoff(registry)):
                body = self._change_body(txn, batch, cid)
                if records.counts(self.store, txn, registry, body.record, cid, body.change_hash):
                    targets.add((registry, body.record))
        for registry, record_id in sorted(targets):
            self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)

    def _rebuild(self, txn: Txn, batch: _Batch, registry: str, record_id: str, *,
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
                        *records.snapshot_changes(self.store, txn, registry, record_id)}
        refused = records.refused_changes(self.store, txn, registry, record_id)
        envs = [self._stored_envelope(txn, batch, cid) for cid in applied_cids | set(refused.values())]
        envs.sort(key=lambda e: (tuple(e.body.hlc), e.cid))
        desc = self._registry(txn, registry)
        live: list[tuple[Envelope | Draft, bytes]] = []  # with the hash of its Automerge change
        live_hashes: set[bytes] = set()
        refused_now: dict[bytes, bytes] = {}
        blob = b""
        state: dict[str, Any] | None = None
        for env in envs:
            body = env.body
            try:
                if any(dep in refused_now for dep in body.deps) or not set(body.deps) <= live_hashes:
                    raise PolicyDenied("it builds on a refused change")
                am_hash, am_change = _automerge_of(env)
                if registry != MEMBERS_REGISTRY:
                    self.trust.check_chain(body.author, registry, body.seq)
                candidate = RecordDoc.apply(blob, am_change).materialize()
                at_ms = body.hlc[0]
                if body.is_genesis:
                    claim = read_snapshot(body.payload, kind=body.kind, schema=body.schema) if body.is_snapshot \
                        else RecordDoc.apply(None, am_change).materialize()
                    created = claim["created"] if isinstance(claim.get("created"), dict) else {}
                    statement = read_statement(body.kind, record_id, claim["fields"]) \
                        if registry == MEMBERS_REGISTRY else None
                    # WAIT cannot happen here: the change was applied or judged
                    # once, so its signer's delegations were known then.
                    access.check_create(self.trust, desc, author=body.author, record_id=record_id,
                                        owner=claim.get("owner"), created_by=created.get("by"), at_ms=at_ms,
                                        statement=statement, policy=self.policy, kind=body.kind,
                                        fields=claim.get("fields"))
                    if state is not None and state.get("owner") != claim.get("owner"):
                        raise NotOwner(f"{registry}/{record_id} belongs to {state.get('owner')}, whose create "
                                       f"came first")
                else:
                    if state is None:
                        raise NotOwner(f"{registry}/{record_id} has no valid create")
                    access.check_modify(self.trust, desc, op=body.op, author=body.author,
                                        before={**state, "registry": registry, "id": record_id}, after=candidate,
                                        at_ms=at_ms, policy=self.policy)
            except (PolicyDenied, MalformedInput):
                refused_now[_automerge_of(env)[0]] = env.cid
                self.metrics["trust.refused_on_rebuild"] += int(env.cid in applied_cids)
                continue
            blob += am_change
            live.append((env, am_hash))
            live_hashes.add(am_hash)
            state = candidate
        # The record's bookkeeping, rewritten.
        records.clear_change_index(store, txn, registry, record_id)
        for env, am_hash in live:
            records.mark_applied(store, txn, registry, record_id, am_hash, env.cid)
            if env.body.is_snapshot:
                records.mark_snapshot(store, txn, registry, record_id, env.cid)
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
            if old is not None:
                records.delete_record(self.store, txn, old)
        else:
            doc = RecordDoc.load(blob)
            records.put_document(store, txn, registry, record_id, stored_doc(doc.save()))
            latest = max((env for env, _ in live), key=lambda e: (tuple(e.body.hlc), e.id))
            record = {**self._materialized(doc.materialize(), latest, None), "revision": len(live)}
            records.put_record(self.store, txn, old, record)
        batch.docs.pop((registry, record_id), None)
        if registry == regs.REGISTRY_OF_REGISTRIES:
            self._registry_cache.pop(record_id, None)
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

    def _feed_event(self, txn: Txn, batch: _Batch, env: Envelope, registry: str, record_id: str,
                    event: str, origin: str, *, kind: str | None = None, history: bool = True) -> None:
        body = env.body
        self._batch_feed_seq += 1
        seq = self._batch_feed_seq
        feed.append(self.store, txn, feed.FeedEvent(seq, event, registry, record_id, kind or body.kind, env.id,
                                                    body.author, body.hlc, origin))
        if history:
            records.add_history(self.store, txn, registry, record_id, seq, env.cid)
        batch.committed.feed_seqs.append(seq)

    def _check_state(self, env: Envelope, state: dict[str, Any], desc: regs.RegistryDescriptor) -> dict[str, Any]:
        """A remote change's resulting record state, checked as a local write
        would be: fixed kind, the kind's schema, the size cap, an owner, and
        tags and links by the rules of local writes."""
        body = env.body
        if state.get("kind") != body.kind:
            raise ValidationError(f"change turns a {state.get('kind')!r} record into {body.kind!r}; kinds are fixed")
        schema = state.get("schema")
        if type(schema) is not int:
            raise ValidationError(f"record schema version {schema!r} is not an integer")
        kind = self.catalog.get(body.kind, schema)
        tags, links = state.get("tags"), state.get("links")
        if not isinstance(tags, list) or _checked_tags(tags) != tags:
            raise ValidationError("record tags must be valid, unique tag names, at most "
                                  f"{limits.MAX_TAGS}")
        if not isinstance(links, list) or _checked_links(links) != links:
            raise ValidationError(f"record links must be {{rel, registry, record}}, at most {limits.MAX_LINKS}")
        self.catalog.validate(kind.name, kind.version, state.get("fields"))
        # The size cap holds for what a remote change makes, as for a local
        # write (an update of a small record, or a payload that expands).
        _checked_fields(state.get("fields"), desc.max_record_bytes)
        if not isinstance(state.get("owner"), str):
            raise ValidationError("record has no owner")
        return state

    def _park(self, txn: Txn, env: Envelope, waiting_key: bytes) -> IngestResult:
        if pending.park(self.store, txn, waiting_key, env.cid, env.wire, cap=MAX_PENDING):
            self.metrics["remote.parked"] += 1
        return IngestResult("pending", env.id)

    def _release(self, txn: Txn, batch: _Batch, first: Envelope | None, peer: str) -> list[str]:
        """Apply parked changes that waited for ``first`` or for a delegation
        this batch committed (and, transitively, for those)."""
        released: list[str] = []
        work: list[Envelope | None] = [first]
        while work or batch.delegated:
            prefixes = [pending.on_delegation(subject) for subject in batch.delegated]
            batch.delegated.clear()
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
                if result.status in ("applied", "refused"):
                    self._apply_policies(txn, batch, env, peer)
                    self._rebuild_revoked(txn, batch, env, peer)
                    released.append(env.id)
                    work.append(env)
        return released

    def _keep_evidence(self, txn: Txn, batch: _Batch, env: Envelope, other_cid: bytes | None) -> None:
        """File both changes under their own sequence numbers: two with one
        seq (equivocation), or a change and the held link its ``prev``
        does not name (a broken chain: a fork one link earlier)."""
        body = env.body
        pending.keep_evidence(self.store, txn, body.registry, body.author, body.seq, env.cid, env.wire)
        if other_cid and other_cid not in batch.drafts:  # a draft is this node's own: never equivocation
            other = changes.envelope(self.store, txn, other_cid)
            if other is not None:
                pending.keep_evidence(self.store, txn, body.registry, body.author, other.body.seq, other_cid,
                                      other.wire)

    # ------------------------------------------------------------ commit (shared)

    def _commit(self, txn: Txn, batch: _Batch, env: Envelope | Draft, doc: RecordDoc | None,
                old: dict[str, Any] | None, *, origin: str, requested_by: str | None,
                state: dict[str, Any], statement: Statement | None = None,
                automerge: tuple[bytes, bytes] | None = None) -> tuple[int, dict[str, Any]]:
        """Store one change and what it makes. ``doc`` is the record's
        document with the change applied, None for a snapshot create of a
        record that has no document; ``automerge`` the (hash, change) the
        document gained, when that is not the envelope's own payload (a
        snapshot's genesis change, merged into an existing document)."""
        store = self.store
        body = env.body
        reg, rec = body.registry, body.record
        if isinstance(env, Envelope):  # this node's drafts are stored when the batch signs them
            changes.put_received(store, txn, env)
        chains.link(store, txn, reg, body.author, body.seq, env.cid)
        batch.heads[(reg, body.author)] = self._chain_heads[(reg, body.author)] = (body.seq, env.cid)
        if body.is_snapshot:
            records.mark_snapshot(store, txn, reg, rec, env.cid)
        if automerge is None and not body.is_snapshot:
            automerge = (body.change_hash, body.payload)
        if doc is not None and automerge is not None:
            stored = append_to_stored(records.get_document(store, txn, reg, rec), automerge[1])
            records.put_document(store, txn, reg, rec, stored if stored is not None else stored_doc(doc.save()))
            records.mark_applied(store, txn, reg, rec, automerge[0], env.cid)
            batch.docs[(reg, rec)] = doc
        record = self._materialized(state, env, old)
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
        self.metrics[f"write.{body.op}"] += 1
        if reg == regs.REGISTRY_OF_REGISTRIES:
            self._registry_cache.pop(rec, None)
        if reg == POLICIES_REGISTRY:
            batch.policies_changed = True
        if statement is not None and self.trust.add(statement):
            # Nothing can fail after this point of the op; a later failure of
            # the batch reloads the trust state from the store.
            self.metrics[f"trust.{statement.kind}"] += 1
            # Changes parked for this key, or for any key of this org (an
            # invitation admits them all), may go on now.
            batch.delegated.extend(sorted(self.trust.affected_by_revocation(statement.subject)))
            batch.stated.append(statement.subject)
        return seq, record

    def _materialized(self, state: dict[str, Any], env: Envelope | Draft, old: dict[str, Any] | None) -> dict[str, Any]:
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
            revision=(old["revision"] if old else 0) + 1,
        ))

    # ------------------------------------------------------------ lookups

    def _head(self, txn: Txn, batch: _Batch, registry: str, author: str) -> tuple[int, bytes]:
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
        # Writer thread only: readers use regs.lookup, which caches nothing.
        cached = self._registry_cache.get(name)
        if cached is not None:
            return cached
        desc = regs.lookup(self.store, txn, name)
        if not desc.builtin:
            self._registry_cache[name] = desc
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
        self._registry(txn, registry)
        record = records.get_record(self.store, txn, registry, record_id)
        if record is None or record["deleted"]:
            raise NotFound(f"no record {registry}/{record_id}" + (" (it was deleted)" if record else ""))
        return record

    def _doc_for_write(self, txn: Txn, batch: _Batch, registry: str, record_id: str) -> RecordDoc:
        doc = self._document(txn, batch, registry, record_id)
        if doc is None:
            raise NotFound(f"no document for {registry}/{record_id}")
        doc.fork_with_actor(self.actor)
        return doc

    def _document(self, txn: Txn, batch: _Batch, registry: str, record_id: str) -> RecordDoc | None:
        """The record's Automerge document; built (and stored) from its
        snapshot creates when it has none yet, None when it has neither."""
        doc = batch.docs.get((registry, record_id))
        if doc is not None:
            return doc
        stored = records.get_document(self.store, txn, registry, record_id)
        if stored is not None:
            doc = RecordDoc.load(doc_bytes(stored))
        else:
            geneses = []
            for cid in sorted(records.snapshot_changes(self.store, txn, registry, record_id)):
                body = self._change_body(txn, batch, cid)
                genesis = genesis_change(read_snapshot(body.payload, kind=body.kind, schema=body.schema), body.author)
                geneses.append(genesis.raw_bytes)
                records.mark_applied(self.store, txn, registry, record_id, genesis.hash, cid)
            if not geneses:
                return None
            blob = b"".join(geneses)
            records.put_document(self.store, txn, registry, record_id, stored_doc(b"") + blob)
            doc = RecordDoc.apply(None, blob)
            self.metrics["docs.built_from_snapshot"] += 1
        batch.docs[(registry, record_id)] = doc
        return doc

    def _change_body(self, txn: Txn, batch: _Batch, cid: bytes) -> Any:
        made = batch.drafts.get(cid)
        if made is not None:
            return made.body
        body = changes.body(self.store, txn, cid)
        if body is None:
            raise NotFound(f"change {cid_to_str(cid)} is not stored")
        return body

    def _stored_envelope(self, txn: Txn, batch: _Batch, cid: bytes) -> Envelope | Draft:
        made = batch.drafts.get(cid)
        if made is not None:
            return made
        env = changes.envelope(self.store, txn, cid)
        if env is None:
            raise NotFound(f"change {cid_to_str(cid)} is not stored")
        return env

    def _special_checks(self, registry: str, record_id: str, kind: str,
                        fields: Mapping[str, Any]) -> Statement | None:
        """Rules of the built-in registries that describe the grid itself;
        a grid.members record is read (and its signature checked) as the
        statement it carries."""
        if registry == MEMBERS_REGISTRY:
            return read_statement(kind, record_id, fields)
        if registry == regs.REGISTRY_OF_REGISTRIES:
            regs.check_new_descriptor(record_id, fields, self.catalog)
        elif registry == regs.KINDS_REGISTRY:
            self._register_kind(record_id, fields)
        return None

    def _load_trust(self) -> None:
        """Fold every statement in grid.members into a fresh trust state.
        Each was checked when it was stored; one that no longer reads (a
        damaged store) is counted and left out, never trusted."""
        trust = self.trust.fresh()
        with self.store.read() as txn:
            for record in records.iter_records(self.store, txn, registry=MEMBERS_REGISTRY):
                try:
                    trust.add(read_statement(record["kind"], record["id"], record["fields"]))
                except RegistryError:
                    self.metrics["trust.unreadable_statements"] += 1
        self.trust = trust

    def _register_kind(self, record_id: str, fields: Mapping[str, Any]) -> None:
        """Add a user kind to the catalog, or raise why not. Runs before the
        kind's record is written (local and remote alike), so a kind the
        catalog refuses is never stored. Registering an identical kind again
        is a no-op, so replays and retries are harmless."""
        expected = f"{fields.get('name')}.v{fields.get('version')}"
        if record_id != expected:
            raise ValidationError(f"a kind definition's id must be NAME.vVERSION ({expected!r})")
        # A kind's home registry is informational for user kinds (records go
        # wherever a registry lists the kind); default to a per-kind name.
        home = fields.get("registry") or f"user.{fields['name']}"
        self.catalog.register(KindSchema(name=fields["name"], version=int(fields["version"]), registry=home,
                                         schema=fields["schema"], description=fields.get("description", ""),
                                         builtin=False))

    def _load_user_kinds(self) -> None:
        with self.store.read() as txn:
            for record in records.iter_records(self.store, txn, registry=regs.KINDS_REGISTRY):
                if not record["deleted"]:
                    try:
                        self._register_kind(record["id"], record["fields"])
                    except RegistryError:
                        self.metrics["kinds.unloadable"] += 1

    # ------------------------------------------------------------ replication reads

    def version_vector(self, registry: str | None = None) -> dict[str, dict[str, int]]:
        """registry -> author -> highest contiguous sequence held here: the
        last link of each chain (a skip-scan, one seek per chain)."""
        with self.store.read() as txn:
            return chains.heads(self.store, txn, registry)

    def replicated_vector(self, registries: Iterable[str] | None = None, *,
                          reader: str | None = None) -> dict[str, dict[str, int]]:
        """The version vector of every registry this node shares with peers
        (replication scope other than "local"), or of the ones named. With a
        ``reader`` (the org of the peer asking), private registries that org
        may not read are left out: they are never offered, so never sent."""
        vector = self.version_vector()
        wanted = set(registries) if registries is not None else None
        out = {}
        with self.store.read() as txn:
            for registry, authors in vector.items():
                if wanted is not None and registry not in wanted:
                    continue
                try:
                    desc = regs.lookup(self.store, txn, registry)
                except RegistryError:
                    continue
                if desc.replication == "local" or (reader is not None and not desc.readable_by(reader)):
                    continue
                out[registry] = authors
        return out

    def envelopes_after(self, registry: str, author: str, after_seq: int, *, limit: int = 1000,
                        max_bytes: int = 4 * 2**20) -> list[bytes]:
        """The author's changes in ``registry`` with seq > after_seq, in chain order, bounded."""
        out: list[bytes] = []
        size = 0
        with self.store.read() as txn:
            for _, cid in chains.links_after(self.store, txn, registry, author, after_seq):
                wire = changes.wire(self.store, txn, cid)
                if wire is None:
                    continue
                if out and size + len(wire) > max_bytes:
                    break
                out.append(wire)
                size += len(wire)
                if len(out) >= limit:
                    break
        return out


def _automerge_of(env: Envelope | Draft) -> tuple[bytes, bytes]:
    """The (hash, bytes) of the Automerge change a change stands for: its
    payload, or for a snapshot the genesis change it implies."""
    body = env.body
    if not body.is_snapshot:
        return body.change_hash, body.payload
    genesis = genesis_change(read_snapshot(body.payload, kind=body.kind, schema=body.schema), body.author)
    return genesis.hash, genesis.raw_bytes


def _state_of(old: Mapping[str, Any], *, schema: int | None = None, fields: Mapping[str, Any] | None = None,
              tags: list[str] | None = None, links: list[dict[str, str]] | None = None,
              deleted: bool | None = None) -> dict[str, Any]:
    """The document state after a local edit, computed from the state before
    it and the edit, so local writes never re-read the Automerge document.
    (A test checks it equals the document's own materialization.)"""
    return {
        "kind": old["kind"],
        "schema": old["schema"] if schema is None else schema,
        "owner": old["owner"],
        "tags": old["tags"] if tags is None else tags,
        "links": old["links"] if links is None else links,
        "fields": old["fields"] if fields is None else fields,
        "deleted": old["deleted"] if deleted is None else deleted,
        "created": {"at": old["created_at"], "by": old["created_by"]},
    }


# ------------------------------------------------------------ input checks


def _checked_fields(fields: Any, cap: int = limits.MAX_RECORD_BYTES) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise ValidationError("record fields must be a JSON object",
                              details=[{"path": "", "message": "not an object"}])
    try:
        size = len(pack(fields))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise ValidationError(f"record fields are not JSON values: {exc}") from None
    if size > cap:
        raise TooLarge(f"record fields take {size} bytes; the cap is {cap}"
                       + ("" if cap == limits.MAX_RECORD_BYTES else " (the registry's max_record_bytes)"))
    return dict(fields)


def _checked_tags(tags: Iterable[str]) -> list[str]:
    out = sorted({names.tag(t) for t in tags})
    if len(out) > limits.MAX_TAGS:
        raise ValidationError(f"{len(out)} tags exceed the cap of {limits.MAX_TAGS}")
    return out


def _checked_links(links: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    out = []
    for link in links:
        if not isinstance(link, Mapping) or set(link) != {"rel", "registry", "record"}:
            raise ValidationError("a link is {rel, registry, record}")
        names.tag(link["rel"])
        names.registry_name(link["registry"])
        names.record_id(link["record"])
        out.append({"rel": link["rel"], "registry": link["registry"], "record": link["record"]})
    if len(out) > limits.MAX_LINKS:
        raise ValidationError(f"{len(out)} links exceed the cap of {limits.MAX_LINKS}")
    return out


def _target_of(op: Operation) -> tuple[str, str]:
    if isinstance(op, (Update, Delete)):
        return (str(op.registry), str(op.record_id))
    if isinstance(op, Put):
        return (str(op.registry), str(op.record_id or ""))
    return ("", "")


def _actor_of(op: Operation, default: str) -> str:
    if isinstance(op, Remote):
        return f"peer:{op.peer}"
    return getattr(op, "actor", None) or default


def _try_id(wire: bytes) -> str | None:
    return id_of(wire)
