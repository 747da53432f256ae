"""The write path: one road for every change, local or remote.

``Engine.run(ops)`` runs a batch of operations in ONE durable LMDB
transaction (group commit: one fsync for the batch), answers each operation
on its own (a rejected operation leaves no trace but its audit entry, and
never spoils its neighbours) and returns what the batch committed.

The parts, one module each:
  local.py    local writes prepared: names, kind, schema, size, ownership,
              policy -> a snapshot (create) or an Automerge change (edit)
              -> a draft change;
  ingest.py   remote changes: verify -> dedupe -> chain -> payload -> deps
              (or park) -> trust and policy (or park, or keep as refused)
              -> commit -> release what waited;
  rebuild.py  records rebuilt from their valid changes when rules change;
  commit.py   what one change writes, and the batch's one signature over
              this node's drafts;
  core.py     shared state and lookups that see the batch's own writes.

Every check that can fail runs before the operation's first put, so a
failure never leaves a half-applied change inside the batch.

The engine does no networking and no waiting: the node runs it on a worker
thread behind a queue; the SDK calls it directly; simulations drive it too.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import msgspec

from registrygrid.crdt import disputes
from registrygrid.crdt.record import (
    actor_for,
)
from registrygrid.engine import registries as regs
from registrygrid.engine import subjects
from registrygrid.engine.batch import Batch
from registrygrid.engine.commit import Committing
from registrygrid.engine.disputes import Disputing
from registrygrid.engine.doc_cache import DocumentCache
from registrygrid.engine.erasure import Erasing
from registrygrid.engine.gone import GonePlaces
from registrygrid.engine.ingest import MAX_PENDING, RemoteIngest  # noqa: F401 (re-exported)
from registrygrid.engine.local import LocalWrites
from registrygrid.engine.ops import (
    AuditNote,
    ExpireParked,
    Committed,
    Delete,
    Erase,
    Executed,
    IngestResult,
    LinkPastGone,
    Operation,
    Outcome,
    Put,
    Remembered,
    Remote,
    Update,
    WriteResult,
)
from registrygrid.engine.kinds import Kinds
from registrygrid.engine.rebuild import Rebuilds
from registrygrid.engine.settle import Settling
from registrygrid.engine.values import canonical, merge_patch, record_digest  # noqa: F401 (re-exported)
from registrygrid.errors import (
    Conflict,
    IntegrityError,
    RegistryError,
    StorageFailed,
    ValidationError,
)
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import (
    id_of,
    is_legacy_wire,
    open_envelope,
    signatures_hold,
)
from registrygrid.protocol.hlc import Hlc, HybridClock, wall_clock_ms
from registrygrid.protocol.sync import head_tag
from registrygrid.schemas import SchemaCatalog
from registrygrid.storage import chains, changes, erasures, feed, idempotency, pending, records
from registrygrid.storage.audit import AuditLedger
from registrygrid.storage.store import Store, StoreFull, Txn
from registrygrid.trust.federation import GenesisBody
from registrygrid.trust.policy import PolicySet
from registrygrid.trust.state import TrustState
from registrygrid.trust.statements import MEMBERS_REGISTRY, read_statement

# Meta key: set while a store made anew recovers its node's history (begin_recovery).
RECOVERING = "recovering"
# Meta key: the federation the store's node was last opened in (its id, name
# and genesis claims), so that an open that names none stays in it.
FEDERATION = "federation"

# Remote changes of one batch have their signatures checked on this many
# threads before the batch is applied (the machine has 2 cores; each check
# is ~50-90 us of libsodium with the GIL released). Batches smaller than
# PARALLEL_VERIFY_MIN_OPS are checked inline: handing them over costs more
# than it saves.
PARALLEL_VERIFY_THREADS = 2
PARALLEL_VERIFY_MIN_OPS = 32


class Engine(LocalWrites, RemoteIngest, Rebuilds, Kinds, Settling, Disputing, Erasing, GonePlaces, Committing):
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
        self.federation = self._store_federation(store, federation)
        self.trust = TrustState(*(self.federation or (None, None)))
        # Access rules of grid.policies in force (trust/policy.py).
        self.policy = PolicySet()
        self.audit = AuditLedger(store)
        with store.read() as txn:
            self.clock = HybridClock(now_ms, Hlc(*store.get_meta(txn, "hlc", [0, 0])))
            self._has_erasures = erasures.any_held(store, txn)
        self._reset_caches()
        self._load_user_kinds()
        self._load_trust()
        with store.read() as txn:
            self.policy = self._policies(txn)
            indexed = store.get_meta(txn, records.CONFLICTED_INDEX, False)
            # Set while a store made anew recovers the history its node's key
            # signed before (LocalRegistry.open_home): no local write signs.
            self.recovering = store.get_meta(txn, RECOVERING)
        if not indexed:
            self._build_conflicted_index()

    def _store_federation(self, store: Store, given: tuple[GenesisBody, str] | None,
                          ) -> tuple[GenesisBody, str] | None:
        """The federation this store's node is in: ``given`` (its home's, or
        the genesis a caller passed), which the store then records; with
        none given, the one the store recorded. Before, the federation lived
        in the engine only, so a federated store reopened without its
        genesis (a bare ``open_path`` of a tool or a test) judged changes as
        a node outside any federation, counting every key's, and ended apart
        from its peers. A node that joins another federation passes the new
        one, which replaces the record (membership changes take effect when
        a node opens, docs/trust.md)."""
        with store.read() as txn:
            recorded = store.get_meta(txn, FEDERATION)
        if given is None:
            if recorded is None:
                return None  # never in a federation: every org counts
            try:
                return msgspec.msgpack.decode(recorded["claims"], type=GenesisBody), str(recorded["id"])
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError) as exc:
                raise IntegrityError(f"the store in {store.path} records its federation in a form this version "
                                     f"cannot read ({exc})") from None
        claims, federation_id = given
        if not (isinstance(recorded, dict) and recorded.get("id") == federation_id) and not store.readonly:
            recorded = {"id": federation_id, "name": claims.name, "claims": msgspec.msgpack.encode(claims)}
            store.transact(lambda txn: store.put_meta(txn, FEDERATION, recorded))
            self.metrics["store.federation_recorded"] += 1
        return given

    def begin_recovery(self, *, restored: bool = False) -> None:
        """This store was made anew for a node whose key signed changes
        before (``restored``: or brought back from a backup, after which the
        key may have signed more): until ``end_recovery``, local writes are
        refused, so the key never signs a sequence number its peers already
        hold (which they would report as equivocation and quarantine). A
        restore always begins anew: a backup of a store that was recovering
        then carries a sync that says nothing of what the key signed since."""
        if self.recovering is not None and not restored:
            return  # opened again before anything synced: the recovery began when it began
        recovering: dict[str, Any] = {"key": self.key.did, "since_ms": self.now_ms()}
        if restored:
            recovering["restored"] = True
        self.store.transact(lambda txn: self.store.put_meta(txn, RECOVERING, recovering))
        self.recovering = recovering

    def note_recovery_synced(self) -> None:
        """A sync session with a peer completed while the store recovers:
        what that peer holds of this key is here now. A restored store's
        recovery ends only after one (``end_recovery``)."""
        recovering = self.recovering
        if recovering is None or recovering.get("synced_ms"):
            return
        noted = {**recovering, "synced_ms": self.now_ms()}
        self.store.transact(lambda txn: self.store.put_meta(txn, RECOVERING, noted))
        self.recovering = noted

    def end_recovery(self, *, none_kept: bool = False, required: dict[str, int] | None = None) -> dict[str, int]:
        """The operator says the node's history is back (synced from peers,
        or there was none to lose): writes resume after the last change of
        its key held here. Those last changes, by registry.

        Refused (Conflict) while the store holds no change of its key at
        all, or fewer than ``required`` (registry -> last sequence number:
        what the home saw it hold), unless ``none_kept`` (no peer kept
        them): its next write would take a sequence number of a chain its
        peers hold, which they report as equivocation and quarantine the
        key for."""
        def resume(txn: Txn) -> dict[str, dict[str, int]]:
            heads = chains.heads(self.store, txn)
            short = {r: s for r, s in (required or {}).items() if heads.get(r, {}).get(self.key.did, 0) < s}
            if self.recovering is not None and not none_kept and short:
                registry, seq = next(iter(sorted(short.items())))
                raise Conflict(f"this store holds {heads.get(registry, {}).get(self.key.did, 0)} of the changes "
                               f"{self.key.did} signed in {registry}, where it held {seq} before: start the node in "
                               "its federation until they are back, or pass --none-kept if no peer kept them",
                               details={"short": {r: [heads.get(r, {}).get(self.key.did, 0), s]
                                                  for r, s in sorted(short.items())}})
            if self.recovering is not None and not none_kept and self.recovering.get("restored") \
                    and not self.recovering.get("synced_ms"):
                # Its mark came with the backup: it says nothing of what the
                # key signed after it, which only its peers know.
                raise Conflict("this store was restored from a backup, and its key may have signed changes after "
                               "it that only its peers hold: start the node in its federation until it has synced "
                               "with a peer (`rgrid stats`: sync.completed), stop it, then run this again; or pass "
                               "--none-kept if the node has no peers")
            if self.recovering is not None and not none_kept \
                    and not any(self.key.did in authors for authors in heads.values()):
                raise Conflict(f"this store holds none of the changes {self.key.did} signed yet: start the node "
                               "in its federation until they are back (`rgrid stats`: recovering 1 until you run "
                               "this), or pass --none-kept if no peer kept any of them")
            self.store.delete_meta(txn, RECOVERING)
            return heads

        heads = self.store.transact(resume)
        self.recovering = None
        self._chain_heads.clear()
        return {registry: authors[self.key.did] for registry, authors in sorted(heads.items())
                if self.key.did in authors}

    def _build_conflicted_index(self) -> None:
        """The index of records that show conflicts, for a store written
        before it existed (storage/records.py): once, as the store opens."""
        indexed = self.store.transact(partial(records.build_conflicted_index, self.store))
        self.metrics["store.conflicted_indexed"] += indexed

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
                with cyclic_gc_paused():
                    return self._execute_once(ops, publish)
            except StoreFull:
                self.metrics["store.map_grown"] += 1
                self.store.grow()
            except StorageFailed:
                self.metrics["store.write_failed"] += 1
                raise

    def _execute_once(self, ops: Sequence[Operation], publish: bool) -> Executed:
        ops = self._check_signatures_in_parallel(ops)
        batch = Batch()
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
        for key in batch.dropped_docs:
            self._doc_cache.discard(key)
        for key, stored in batch.doc_values.items():
            self._doc_cache.keep(key, stored, batch.docs[key])
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

    def close(self) -> None:
        if self._verify_pool is not None:
            self._verify_pool.shutdown()
            self._verify_pool = None

    def _run_one(self, txn: Txn, batch: Batch, op: Operation) -> Outcome:
        try:
            if isinstance(op, Put):
                return self._put(txn, batch, op)
            if isinstance(op, Update):
                return self._update(txn, batch, op)
            if isinstance(op, Delete):
                return self._delete(txn, batch, op)
            if isinstance(op, Erase):
                return self._erase(txn, batch, op)
            if isinstance(op, Remote):
                return self._remote(txn, batch, op)
            if isinstance(op, LinkPastGone):
                return self._link_past_gone(txn, batch, op)
            if isinstance(op, ExpireParked):
                return self._expire_parked(txn, batch, op)
            if isinstance(op, Remembered):
                return self._remembered(txn, batch, op)
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
            batch.forget_doc(target)
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
                reason=exc.audit_reason()[:512],
            )
            if isinstance(op, Remote):
                return IngestResult("rejected", _try_id(op.wire), error=exc)
            return exc

    def _remembered(self, txn: Txn, batch: Batch, op: Remembered) -> Outcome:
        """The write, then (if it was made) its answer under its idempotency key."""
        outcome = self._run_one(txn, batch, op.op)
        if isinstance(outcome, WriteResult):
            status, body, headers = op.answer(outcome)
            idempotency.remember(self.store, txn, op.token_id, op.key, idempotency.Entry(
                op.expires_at, op.request_hash, {}, status, body, headers))
        return outcome

    def _reset_caches(self) -> None:
        self._chain_heads: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._registry_cache: dict[str, regs.RegistryDescriptor] = {}
        self._doc_cache = DocumentCache()
        self._version_cache: dict[tuple[str, str, tuple[bytes, ...]], list] = {}  # EngineCore._versions
        with self.store.read() as txn:
            self.feed_seq = feed.last_seq(self.store, txn)
        self._batch_feed_seq = self.feed_seq

    # ------------------------------------------------------------ local writes

    # ------------------------------------------------------------ remote changes

    # ------------------------------------------------------------ refused changes and rebuilds

    # ------------------------------------------------------------ commit (shared)

    # ------------------------------------------------------------ lookups

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
            # Proven equivocations quarantine their authors (crdt/disputes.py).
            for record in records.iter_records(self.store, txn, registry=disputes.DISPUTES_REGISTRY,
                                               kind=disputes.REPORT_KIND):
                try:
                    found = disputes.read_report(record["id"], record["fields"])
                except RegistryError:
                    self.metrics["equivocation.unreadable_reports"] += 1
                    continue
                trust.quarantine(found.author, found.registry, found.seq)
            # Reports kept refused prove their equivocations too (engine/disputes.py).
            for record_id in records.refused_record_ids(self.store, txn, disputes.DISPUTES_REGISTRY):
                for cid in records.refused_changes(self.store, txn, disputes.DISPUTES_REGISTRY, record_id).values():
                    env = changes.envelope(self.store, txn, cid)
                    found = disputes.report_in(env) if env is not None else None
                    if found is not None:
                        trust.quarantine(found.author, found.registry, found.seq)
            # And so do reports held as evidence (another branch of a forked
            # filer's chain): the two signed changes prove it, whoever carried them.
            for _, wire in pending.evidence_in(self.store, txn, disputes.DISPUTES_REGISTRY):
                found = disputes.report_in(open_envelope(wire, verify=False))
                if found is not None:
                    trust.quarantine(found.author, found.registry, found.seq)
        self.trust = trust

    def _load_user_kinds(self) -> None:
        with self.store.read() as txn:
            for record in records.iter_records(self.store, txn, registry=regs.KINDS_REGISTRY):
                # A deleted one too: deletes of kind records are refused now
                # (EngineCore._registry_refusal), but one a store applied
                # before left the kind with the nodes that ran on: loaded,
                # every node holds it again.
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
                    desc = regs.lookup(self.store, txn, registry, include_deleted=True)
                except RegistryError:
                    continue
                if desc.replication == "local" or (reader is not None and not desc.readable_by(reader)):
                    continue
                out[registry] = authors
        return out

    def envelopes_after(self, registry: str, author: str, after_seq: int, *, limit: int = 1000,
                        max_bytes: int = 4 * 2**20, withheld: subjects.Withheld | None = None) -> list[bytes]:
        """The author's changes in ``registry`` with seq > after_seq, in chain
        order, bounded; none that ``withheld`` keeps from its reader."""
        out: list[bytes] = []
        size = 0
        if withheld is not None and registry not in subjects.SUBJECT_REGISTRIES:
            withheld = None
        with self.store.read() as txn:
            for _, cid in chains.links_after(self.store, txn, registry, author, after_seq):
                wire = changes.wire(self.store, txn, cid)
                if wire is None:
                    continue
                if withheld is not None and withheld.wire(txn, wire):
                    continue
                if out and size + len(wire) > max_bytes:
                    break
                out.append(wire)
                size += len(wire)
                if len(out) >= limit:
                    break
        return out

    def head_tags(self, vector: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, bytes]]:
        """The head tag (protocol/sync.py) of each chain ``vector`` names, as
        held now: what a pass's first sync request sends, so that a peer
        holding another branch of a fork of the same length shows it."""
        with self.store.read() as txn:
            links = chains.head_links(self.store, txn)
        return {registry: {author: head_tag(links[registry][author][1]) for author, seq in authors.items()
                           if links.get(registry, {}).get(author, (0, b""))[0] == seq}
                for registry, authors in vector.items()}

    def other_links(self, vector: Mapping[str, Mapping[str, int]], heads: Mapping[str, Mapping[str, bytes]], *,
                    max_bytes: int, withheld: subjects.Withheld | None = None) -> list[bytes]:
        """Our changes at the positions a peer's ``vector`` names, where its
        head tag is not ours: the peer holds another branch of a fork. Sent
        even where this node knows the fork already: its own report may not
        count elsewhere (its key may be the forked one), and a peer that
        knows it too takes the change as a duplicate (held as evidence)."""
        out: list[bytes] = []
        size = 0
        with self.store.read() as txn:
            for registry, tags in sorted(heads.items()):
                for author, tag in sorted(tags.items()):
                    seq = vector.get(registry, {}).get(author, 0)
                    if seq < 1:
                        continue
                    link = chains.at(self.store, txn, registry, author, seq)
                    if link is None or head_tag(link) == tag:
                        continue
                    wire = changes.wire(self.store, txn, link)  # None: erased, or linked unseen
                    if wire is None or (out and size + len(wire) > max_bytes) \
                            or (withheld is not None and withheld.wire(txn, wire)):
                        continue
                    out.append(wire)
                    size += len(wire)
        self.metrics["sync.forks_shown"] += len(out)
        return out


def _target_of(op: Operation) -> tuple[str, str]:
    if isinstance(op, (Update, Delete, Erase)):
        return (str(op.registry), str(op.record_id))
    if isinstance(op, Put):
        return (str(op.registry), str(op.record_id or ""))
    return ("", "")


def _actor_of(op: Operation, default: str) -> str:
    if isinstance(op, (Remote, LinkPastGone)):
        return f"peer:{op.peer}"
    return getattr(op, "actor", None) or default


def _try_id(wire: bytes) -> str | None:
    return id_of(wire)


# Batches running now, across every engine of the process, and whether the
# cyclic collector was on before the first of them paused it.
_gc_pause = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch runs. A batch of a few
    thousand changes allocates some hundred thousand short-lived containers,
    and every 700 of them start a collection, some of which walk the whole
    heap: ~6% of a batched write's time (bench_core). What a batch leaves
    for the collector (its garbage holds few cycles) waits until it ends.
    Reference counting still frees everything else at once. Counted, so
    engines of one process that run batches at once (tests, simulations)
    switch the collector back on only when the last one ends."""
    global _gc_pausers, _gc_was_enabled
    with _gc_pause:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_pause:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()
