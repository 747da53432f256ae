"""Erasure: a record's whole history removed for data that must go (docs/erasure.md).

A delete is a signed tombstone: the record's earlier changes, and the
personal data they carry, stay in every store and are served to every peer
that syncs. An erasure removes the bytes. It is asked for with an erasure
notice, a record of ``grid.erasures`` signed like any other, so it reaches
every node by gossip and sync and is judged by each:

- the notice counts on a node when its signer speaks for the org that
  created the record (its create holds the id; not by the rules of a
  delete: _may_erase); every node holds the notice, refused where it does
  not count, and judged again when a rebuild or a create of the record
  may have given the id to its org;
- it names the create it erases, so a node that never held it settles
  create races against it, and erases at once a record it does not hold;
  changes that arrive later are erased on arrival when they are the
  erased record's (_under_erasure), and judged as any change otherwise;
- honoured, it removes every change body of the record (each change keeps
  its ID in its author's chain: storage/erasures.py), its document, its
  materialized state, history, indexes, parked changes and evidence (not
  another org's losing create of the id: its bytes are that org's), and
  burns the record's id;
- the chain positions it lists let a node that never saw those changes
  link past them without their bytes (only positions of the signer's own
  org count, and each node's supplement for its own org's chains: an org
  may vouch for its own chains, never for another's);
- the blobs it names are purged by the node after the commit (legal holds
  there win: the node keeps the bytes and audits why).

An erasure cannot be undone: deleting the notice does not bring the record
back, and a revocation of the notice's signer does not either.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from registrygrid.crdt import disputes
from registrygrid.crdt.record import RecordDoc
from registrygrid.crdt.snapshot import read_snapshot
from registrygrid.blobs.digest import parse_cid
from registrygrid.engine import registries as regs
from registrygrid.engine.batch import Batch
from registrygrid.engine.core import EngineCore
from registrygrid.engine.ops import Erase, ErasedRecord, IngestResult, Put, Update, WriteResult
from registrygrid.engine.values import automerge_of
from registrygrid.errors import (
    MalformedInput,
    NotFound,
    NotOwner,
    PolicyDenied,
    RecordErased,
    RegistryError,
    ValidationError,
)
from registrygrid.protocol import base32, names
from registrygrid.protocol.envelope import Draft, Envelope, cid_from_str, cid_to_str, open_envelope
from registrygrid.storage import chains, changes, erasures, feed, idempotency, pending, records
from registrygrid.storage.store import Txn
from registrygrid.trust.policy import POLICIES_REGISTRY
from registrygrid.trust.state import Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY

ERASURES_REGISTRY = "grid.erasures"
ERASURE_KIND = "erasure"
# The actor of the one local edit of a notice there is: a node's own
# supplement to it (_supplement). Any other is refused (LocalWrites._edited).
SUPPLEMENT_ACTOR = "erasure"
# Registries whose records the grid runs on: every node folds them into its
# trust, catalog, descriptors, rules or disputes, and none holds personal
# data. Erasing one would change what other records mean.
UNERASABLE = frozenset({MEMBERS_REGISTRY, regs.KINDS_REGISTRY, regs.REGISTRY_OF_REGISTRIES, POLICIES_REGISTRY,
                        disputes.DISPUTES_REGISTRY, ERASURES_REGISTRY})


def erasure_id(registry: str, record: str, org: str) -> str:
    """The notice's record id: one per erased record and org, so the notices
    of one org's nodes are one record, and a notice another org filed first
    (refused where the record is the owner's) never holds the owner's id."""
    digest = hashlib.sha256(f"registrygrid/erasure\x00{registry}\x00{record}\x00{org}".encode()).digest()
    return "erasure-" + base32.encode_bytes(digest[:20])


@dataclass(frozen=True)
class ErasureNotice:
    id: str
    registry: str
    record: str
    org: str  # the org the notice speaks for (its signer's)
    # (who vouches, author, ((first, last), ...)): the notice's own list (its
    # org vouches), then each node's supplement (that node's key vouches).
    positions: tuple[tuple[str, str, tuple[tuple[int, int], ...]], ...]
    blobs: tuple[str, ...]
    reason: str
    # The erased record's create that holds the id, (clock, change ID): a
    # node that never saw it settles a create race against it all the same.
    # The earliest of ``create`` and the ``creates`` nodes of the org added.
    create: tuple[tuple[int, int], bytes] | None = None

    @classmethod
    def read(cls, record_id: str, fields: Mapping[str, Any]) -> ErasureNotice:
        """A notice's fields, checked beyond its schema: its id names its
        record, and each range runs forward."""
        registry, record, org = str(fields["registry"]), str(fields["record"]), str(fields["org"])
        if record_id != erasure_id(registry, record, org):
            raise ValidationError(f"an erasure notice of {registry}/{record} for {org} has id "
                                  f"{erasure_id(registry, record, org)}, not {record_id}")
        if registry in UNERASABLE:
            raise ValidationError(f"records of {registry} describe the grid itself (trust, kinds, registries, "
                                  "policies, disputes, erasures) and cannot be erased; delete them instead",
                                  details=[{"path": "registry", "message": "not erasable"}])
        positions = []
        supplements = fields.get("supplements") or {}
        for voucher, entry in [*((org, e) for e in fields.get("positions") or ()),
                               *((node, e) for node in sorted(supplements) for e in supplements[node])]:
            ranges = tuple((int(first), int(last)) for first, last in entry["seqs"])
            if any(first > last for first, last in ranges):
                raise ValidationError(f"erasure notice {record_id}: a range of {entry['author']} runs backwards")
            positions.append((str(voucher), str(entry["author"]), ranges))
        create = None
        creates = fields.get("creates") or {}
        for named in [fields.get("create"), *(creates[node] for node in sorted(creates))]:
            if named is not None:
                key = ((int(named["hlc"][0]), int(named["hlc"][1])), cid_from_str(named["change"]))
                create = key if create is None or key < create else create
        return cls(record_id, registry, record, org, tuple(positions), tuple(fields.get("blobs") or ()),
                   str(fields.get("reason") or ""), create)

    def vouches(self, orgs_of: Callable[[str], Collection[str]]) -> list[tuple[str, str, tuple[tuple[int, int], ...]]]:
        """The positions whose vouching counts: an org vouches for its own
        chains only, and a node (a supplement) for its own org's chains, so
        one org can never make another org's changes vanish on a node that
        never saw them."""
        out = []
        for voucher, author, ranges in self.positions:
            orgs = orgs_of(author)
            if voucher in orgs if voucher == self.org else any(org in orgs for org in orgs_of(voucher)):
                out.append((voucher, author, ranges))
        return out


def positions_of(pairs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """(author, seq) pairs as the notice lists them: per author, sorted
    ranges of consecutive sequence numbers."""
    by_author: dict[str, list[int]] = defaultdict(list)
    for author, seq in pairs:
        by_author[author].append(seq)
    out = []
    for author in sorted(by_author):
        ranges: list[list[int]] = []
        for seq in sorted(set(by_author[author])):
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1][1] = seq
            else:
                ranges.append([seq, seq])
        out.append({"author": author, "seqs": ranges})
    return out


class Erasing(EngineCore):
    """Erasure notices asked for, judged, honoured (mixed into Engine)."""

    _has_erasures: bool  # any erasure held: the checks below cost a lookup only then

    # ---- asking: a local Erase writes the notice

    def _erase(self, txn: Txn, batch: Batch, op: Erase) -> WriteResult:
        registry = names.registry_name(op.registry)
        record_id = names.record_id(op.record_id)
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in op.reason):
            # The reason goes into the notice every node keeps and into each
            # node's audit ledger: a NUL or an escape code went there as it came.
            raise ValidationError("an erasure's reason is one line of text: no control characters",
                                  details=[{"path": "/reason", "message": "control character"}])
        for n, blob in enumerate(op.blobs):
            # Parsed, not only shaped: a notice naming a string no CID reads
            # as was signed, kept for good and replicated.
            try:
                if not isinstance(blob, str):
                    raise ValidationError("not a string")
                parse_cid(blob)
            except ValidationError:
                raise ValidationError(f"blobs/{n}: {str(blob)[:80]!r} is not a blob CID",
                                      details=[{"path": f"/blobs/{n}", "message": "not a blob CID"}]) from None
        notice_id = erasure_id(registry, record_id, self.owner)
        held = erasures.mark(self.store, txn, registry, record_id)
        if held is not None and held[1] == erasures.ERASED:
            return WriteResult("unchanged", ERASURES_REGISTRY, notice_id, None, None)
        target = records.get_record(self.store, txn, registry, record_id)
        if target is None:
            self._registry(txn, registry)  # an unknown registry says so
            raise NotFound(f"no record {registry}/{record_id}")
        # The places of the changes it erases: not another org's losing
        # create of the id, nor what was built on it (kept: _erase_record).
        kept = set(self._others_evidence(txn, batch, registry, record_id, self.owner).values())
        pairs = []
        for cid in self._record_change_ids(txn, registry, record_id):
            body = self._held_body(txn, batch, cid)
            if body is not None and cid not in kept:
                pairs.append((body.author, body.seq))
        # The maps that nodes add their supplements to, made with the notice:
        # two nodes that each made one would race, and one's entries be lost.
        fields: dict[str, Any] = {"registry": registry, "record": record_id, "org": self.owner,
                                  "positions": positions_of(pairs), "supplements": {}, "creates": {}}
        create = self._winning_create(txn, batch, registry, record_id)
        if create is not None:
            fields["create"] = {"change": cid_to_str(create[1]), "hlc": list(create[0])}
        if op.blobs:
            fields["blobs"] = list(op.blobs)
        if op.reason:
            fields["reason"] = op.reason
        return self._put(txn, batch, Put(ERASURES_REGISTRY, ERASURE_KIND, fields, record_id=notice_id,  # type: ignore[attr-defined]
                                         actor=op.actor, roles=op.roles))

    # ---- judging: before a notice is stored (local and remote alike)

    def _check_erasure_notice(self, txn: Txn, record_id: str, fields: Mapping[str, Any], author: str,
                              at_ms: int, *, local: bool = False) -> Verdict:
        """Refuse a notice for an org its signer does not speak for; WAIT
        while its signer's delegation is unknown. A local one is refused
        too (NotOwner) for a record another org created. A peer's is not:
        whose the record is can change here (a create race settled late),
        so the notice is committed on every node alike, and counts where
        and once its org's create holds the id (_judge_notice)."""
        notice = ErasureNotice.read(record_id, fields)
        speaks = self.trust.check_speaks_for(author, notice.org, at_ms)
        if speaks is Verdict.WAIT or not local:
            return speaks
        target = records.get_record(self.store, txn, notice.registry, notice.record)
        if target is not None:
            self._may_erase(notice, author, target, at_ms)
        return speaks

    def _may_erase(self, notice: ErasureNotice, author: str, target: dict[str, Any], at_ms: int) -> bool:
        """Whether ``author`` may erase ``target``: it speaks for the notice's
        org, and that org created the record (its create holds the id).
        False while its delegation is missing; raises when refused.

        Not by the registry's write or access policy, which may let other
        orgs delete the record: a delete is a tombstone, an erasure removes
        bytes for good. An org erases what it created; judged by the rules
        of a delete, a notice would count where a node held a policy that
        lets its signer delete and not where a concurrent change of it did
        not, and nothing could reconcile the two afterwards."""
        if target.get("owner") != notice.org:
            raise NotOwner(f"{notice.registry}/{notice.record} belongs to {target.get('owner')}: an org erases "
                           f"only the records it created, and {notice.org} did not create this one")
        return self.trust.check_speaks_for(author, notice.org, at_ms) is not Verdict.WAIT

    # ---- honouring: once the notice is committed

    def _after_erasure_notice(self, txn: Txn, batch: Batch, env: Envelope | Draft, record: dict[str, Any],
                              origin: str, own: dict[str, Any] | None = None) -> None:
        """A notice was committed: vouch for its positions, and judge it now
        against its record if that is held (its signer's authority over its
        org was checked before commit; whose the record is, here)."""
        notice = self._notice(txn, batch, record)
        self._has_erasures = True
        listed = list(notice.positions)
        if own is not None and not own.get("deleted"):
            # A supplement as its author wrote it (``own``): what it adds
            # counts even where the record shows another create's fields.
            made = ErasureNotice.read(record["id"], own["fields"])
            listed += made.positions
            if made.create is not None and (notice.create is None or made.create < notice.create):
                notice = replace(notice, create=made.create)
        body = env.body
        if body.is_snapshot:
            # Two nodes of one org may file the one notice (its id is the
            # record's and the org's) at once: the record then shows one
            # create's positions where they conflict, so each create's own
            # positions count too.
            listed += _claimed(record["id"], body)
        # Whose keys' places the notice's signers vouch for: by the orgs each
        # key spoke for up to this change, not by this node's clock (a key's
        # delegation may expire between two nodes' readings).
        at = env.body.hlc[0]
        vouched = replace(notice, positions=tuple(listed)).vouches(lambda did: self.trust.orgs_ever(did, at))
        self.metrics["erasure.positions_not_vouched"] += len(listed) - len(vouched)
        if body.is_snapshot:
            vouched += self._vouched_by_refused(txn, batch, record["id"])
        for _, chain_author, ranges in vouched:
            for first, last in ranges:
                erasures.vouch(self.store, txn, notice.registry, chain_author, first, last, notice.id,
                               notice.record)
        if env.body.op != "create":  # a supplement (below): its positions are vouched for
            self._drop_parked(txn, notice)
            for _, chain_author, _ in vouched:
                self._link_vouched(txn, batch, notice.registry, chain_author, origin)
            self._earlier_create_named(txn, batch, notice, env, origin)
            return
        held = erasures.mark(self.store, txn, notice.registry, notice.record)
        if held is not None and held[1] == erasures.ERASED and held[0] == notice.id:
            # Another create of a notice that erased the record here (two
            # nodes of its org filed it at once): the places it lists may
            # hold parked changes of the record, which go, as a
            # supplement's do.
            self._drop_parked(txn, notice)
        elif held is not None and held[1] == erasures.ERASED:
            self._second_notice(txn, batch, notice, env, origin)
        elif records.get_record(self.store, txn, notice.registry, notice.record) is not None:
            self._judge_notice(txn, batch, notice, env, origin)
        elif notice.create is not None:
            # Not held, but the notice names the create that holds the id:
            # erased as if held, the race settled against it.
            self._erase_record(txn, batch, notice, env, origin)
        else:
            # Not held (a notice from before notices named their create):
            # what of it arrives is erased on arrival (a create first lets
            # the notice be judged); parked changes go now.
            erasures.set_mark(self.store, txn, notice.registry, notice.record, notice.id, erasures.WAITING)
            self._drop_parked(txn, notice)
        for _, chain_author, _ in vouched:
            self._link_vouched(txn, batch, notice.registry, chain_author, origin)

    def _second_notice(self, txn: Txn, batch: Batch, notice: ErasureNotice, env: Envelope | Draft,
                       origin: str) -> None:
        """Another org's notice of a record erased here already (both orgs
        created the id, and both erased it): its own org's creates, which
        lost the race, are erased as it asks; and if the create it names is
        the earliest, its org holds the id, the yardstick of later races."""
        if notice.create is not None:
            self._hold_if_earlier(txn, notice.registry, notice.record, notice.id, notice.org, notice.create)
        self._erase_own_losers(txn, batch, notice, env, origin)

    def _notice(self, txn: Txn, batch: Batch, record: dict[str, Any]) -> ErasureNotice:
        """The notice a record of grid.erasures holds, with the earliest
        create that any of its creates names: two nodes of one org may file
        the notice at once, each naming the create it held, and the record
        shows one create's fields."""
        notice = ErasureNotice.read(record["id"], record["fields"])
        for cid in records.applied_ids(self.store, txn, ERASURES_REGISTRY, notice.id):
            body = self._held_body(txn, batch, cid)
            if body is not None and body.is_snapshot:
                claim = read_snapshot(body.payload, kind=body.kind, schema=body.schema)
                named = ErasureNotice.read(notice.id, claim["fields"]).create
                if named is not None and (notice.create is None or named < notice.create):
                    notice = replace(notice, create=named)
        return notice

    def _judge_waiting(self, txn: Txn, batch: Batch, registry: str, record_id: str, origin: str) -> None:
        """A change of a record whose notice waited was just committed: judge
        the notice against the record now held, and erase it if it counts.
        A notice refused because another org's create held the id is judged
        again once its own org's record holds it (an earlier create of it
        arrived: the race went the other way), as where that create came
        first."""
        held = erasures.mark(self.store, txn, registry, record_id)
        target = records.get_record(self.store, txn, registry, record_id)
        if held is None or (held[1] == erasures.ERASED and target is None):
            return  # erased: a record here again is another org's earlier create (_erased_race)
        stored = records.get_record(self.store, txn, ERASURES_REGISTRY, held[0])
        if stored is None:
            return
        notice = self._notice(txn, batch, stored)
        if target is None:
            # Refused against a record that no longer counts (its create was
            # refused since, by a rule that came late): the create the
            # notice names holds the id now.
            cid = records.applied_ids(self.store, txn, ERASURES_REGISTRY, notice.id)
            if held[1] == erasures.REFUSED and notice.create is not None and cid:
                self._erase_record(txn, batch, notice, self._stored_envelope(txn, batch, cid[0]), origin)
            return
        if target["owner"] != notice.org:
            # Not this notice's org's record: its owner's own notice, if it
            # filed one (both orgs created the id and erased it), is the one
            # that counts.
            owners = records.get_record(self.store, txn, ERASURES_REGISTRY,
                                        erasure_id(registry, record_id, target["owner"]))
            if owners is not None:
                notice = self._notice(txn, batch, owners)
            elif held[1] == erasures.REFUSED and not self._named_create_first(txn, batch, notice):
                return  # still another org's record, whose create came first
        cid = records.applied_ids(self.store, txn, ERASURES_REGISTRY, notice.id)
        if cid:
            self._judge_notice(txn, batch, notice, self._stored_envelope(txn, batch, cid[0]), origin,
                               again=held[1] == erasures.REFUSED)

    def _named_create_first(self, txn: Txn, batch: Batch, notice: ErasureNotice) -> bool:
        """Whether the create the notice names is earlier than the one that
        holds its record's id here: the notice was refused against an
        earlier create of a third org that stopped counting since (a rule
        that came late refused it), and the record held now lost the race
        to the erased create (_judge_notice settles it so)."""
        held = self._winning_create(txn, batch, notice.registry, notice.record)
        return notice.create is not None and held is not None and notice.create < held

    def _judge_notice(self, txn: Txn, batch: Batch, notice: ErasureNotice, env: Envelope | Draft, origin: str,
                      *, again: bool = False) -> None:
        """Erase the notice's record, held here, if the notice counts for it;
        else mark the notice refused here (audited once)."""
        target = records.get_record(self.store, txn, notice.registry, notice.record)
        assert target is not None
        if target["owner"] != notice.org and notice.create is not None:
            held = self._winning_create(txn, batch, notice.registry, notice.record)
            if held is not None and notice.create < held:
                # The erased record's create came first (its bytes were gone
                # before they reached here): the record held lost the race
                # to it, as where that create arrived. Rebuilt against it,
                # the record counts for nothing; then erased.
                erasures.set_mark(self.store, txn, notice.registry, notice.record, notice.id, erasures.ERASED,
                                  (notice.org, *notice.create))
                self._rebuild(txn, batch, notice.registry, notice.record, cause=env, origin=origin)  # type: ignore[attr-defined]
                self._erase_record(txn, batch, notice, env, origin)
                return
        try:
            if not self._may_erase(notice, env.body.author, target, env.body.hlc[0]):
                return  # its signer's delegation has not arrived: judged again at the next change
        except PolicyDenied as exc:  # NotOwner too: the notice does not count here
            erasures.set_mark(self.store, txn, notice.registry, notice.record, notice.id, erasures.REFUSED)
            if not again:
                self.metrics["erasure.refused"] += 1
                self.audit.append(txn, at_ms=self.now_ms(), actor=env.body.author, action="deny",
                                  target=f"{notice.registry}/{notice.record}",
                                  reason=f"erasure notice {notice.id} not honoured: {exc}"[:512])
            self._erase_own_losers(txn, batch, notice, env, origin)
            if records.refused_changes(self.store, txn, notice.registry, notice.record):
                # Changes refused while the erased create held the id (a
                # create of the org that holds it now, later than that one)
                # may count now that the earlier create came in.
                self._rebuild(txn, batch, notice.registry, notice.record, cause=env, origin=origin)  # type: ignore[attr-defined]
            return
        self._erase_record(txn, batch, notice, env, origin)

    def _erase_record(self, txn: Txn, batch: Batch, notice: ErasureNotice, env: Envelope | Draft,
                      origin: str) -> None:
        """Remove every byte of the record's history from this store, in the
        batch's transaction, and burn its id."""
        store, registry, record_id = self.store, notice.registry, notice.record
        target = records.get_record(store, txn, registry, record_id)
        erased = 0
        erased_here: list[tuple[str, int]] = []
        counted = set(records.applied_ids(store, txn, registry, record_id))
        # The earliest create known to hold the id, kept so a create of
        # another org that arrives later is settled as the race it is, not
        # dropped (_erased_race): named by the notice, or by another org's
        # notice that erased the id here first; or held here, where this
        # node names it in the notice (of the notice's org: _supplement), or
        # the notice names none (from before notices named their create).
        # Not a create held here and named nowhere: it holds the id by the
        # rules this node knows now, and a rule that came late and refused
        # it (a write policy) could not undo that once its bytes are gone,
        # while every other node settles against the creates named.
        winner: tuple[str, tuple[int, int], bytes] | None = erasures.erased_create(store, txn, registry, record_id)
        if notice.create is not None and (winner is None or notice.create < (winner[1], winner[2])):
            winner = (notice.org, *notice.create)
        names_held = notice.org == self.owner or notice.create is None
        others = self._others_evidence(txn, batch, registry, record_id, notice.org)
        for cid in self._record_change_ids(txn, registry, record_id):
            body = self._held_body(txn, batch, cid)
            if body is None or cid in others.values():
                continue
            if body.is_genesis and cid in counted and target is not None and names_held and \
                    (winner is None or (tuple(body.hlc), cid) < (winner[1], winner[2])):
                winner = (target["owner"], (body.hlc[0], body.hlc[1]), cid)
            am_hash = automerge_of(self._stored_envelope(txn, batch, cid))[0] if body.is_snapshot \
                else body.change_hash
            changes.put_erased(store, txn, cid)
            erasures.put_change(store, txn, cid, registry, record_id, body.author, body.seq, notice.id)
            erasures.put_hash(store, txn, registry, record_id, am_hash, notice.id)
            erased_here.append((body.author, body.seq))
            erased += 1
        for feed_seq, _ in records.history(store, txn, registry, record_id):
            records.drop_history(store, txn, registry, record_id, feed_seq)
        records.clear_change_index(store, txn, registry, record_id)
        for am_hash, cid in others.items():
            records.mark_refused(store, txn, registry, record_id, am_hash, cid)
        records.put_frontiers(store, txn, registry, record_id, {})
        records.delete_document(store, txn, registry, record_id)
        if target is not None:
            records.delete_record(store, txn, target)
        self.metrics["erasure.answers_forgotten"] += idempotency.forget_answers_about(store, txn, registry,
                                                                                      record_id)
        batch.forget_doc((registry, record_id))
        batch.erased_records.add((registry, record_id))
        parked = self._drop_parked(txn, notice)
        evidence = self._drop_evidence(txn, registry, record_id)
        self._supplement(txn, batch, notice, erased_here, winner)
        erasures.set_mark(store, txn, registry, record_id, notice.id, erasures.ERASED, winner)
        self._batch_feed_seq += 1
        seq = self._batch_feed_seq
        body = env.body
        feed.append(store, txn, feed.FeedEvent(seq, "erased", registry, record_id,
                                               target["kind"] if target else body.kind, env.id, body.author, body.hlc,
                                               origin))
        batch.committed.feed_seqs.append(seq)
        batch.committed.registries.add(registry)
        batch.committed.erased.append(ErasedRecord(registry, record_id, notice.id, notice.blobs))
        self.metrics["erasure.records"] += 1
        self.metrics["erasure.changes"] += erased
        self.audit.append(txn, at_ms=self.now_ms(), actor=body.author, action="erase",
                          target=f"{registry}/{record_id}",
                          reason=(f"erasure notice {notice.id} ({origin}): {erased} changes, {parked} parked "
                                  f"and {evidence} evidence entries erased; {notice.reason}")[:512],
                          change=env.id)

    def _others_evidence(self, txn: Txn, batch: Batch, registry: str, record_id: str, org: str) -> dict[bytes, bytes]:
        """Automerge hash -> change id of the record's refused changes that
        another org's create roots: a create of the id that lost the race to
        ``org``'s, and what was built on it. Their bytes are that org's, not
        the erased record's, and an erasure by ``org`` could not vouch for
        their places in their authors' chains (an org vouches for its own):
        erased, they would leave a gap no node that never saw them could
        link past. They stay, as the evidence they were, unless their org
        erased the record too (its own notice asks for them)."""
        return self._rooted_evidence(txn, batch, registry, record_id, lambda owner: owner != org and records.get_record(
            self.store, txn, ERASURES_REGISTRY, erasure_id(registry, record_id, owner)) is None)

    def _rooted_evidence(self, txn: Txn, batch: Batch, registry: str, record_id: str,
                         chosen: Callable[[Any], bool]) -> dict[bytes, bytes]:
        """Automerge hash -> change id of the record's refused changes rooted
        at a create whose owner ``chosen`` picks: those creates, and what
        was built on them."""
        kept: dict[bytes, bytes] = {}
        waiting: list[tuple[bytes, bytes, Any]] = []
        for am_hash, cid in records.refused_changes(self.store, txn, registry, record_id).items():
            body = self._held_body(txn, batch, cid)
            if body is None:
                continue
            if body.is_snapshot:
                if chosen(read_snapshot(body.payload, kind=body.kind, schema=body.schema).get("owner")):
                    kept[am_hash] = cid
            elif body.deps:
                waiting.append((am_hash, cid, body))
        grown = True
        while grown:  # what builds on a chosen change, in any order
            grown = False
            for am_hash, cid, body in waiting:
                if am_hash not in kept and any(dep in kept for dep in body.deps):
                    kept[am_hash] = cid
                    grown = True
        return kept

    def _under_erasure(self, txn: Txn, batch: Batch, env: Envelope, held: tuple[str, str],
                       peer: str) -> IngestResult | None:
        """A change of a record a notice names arrived: settled here when the
        notice decides it, else None (ingested as any change).

        - Erased: a create of another org earlier than the erased one owns
          the id and comes in (_erased_race); a later one lost the race, and
          it and what is built on it are kept as evidence (_loses_to_erased).
          A create of the erased record's org is kept as an ID only, and
          settles no race here: only a create a notice names does (its own
          node names it, in ``creates``, if it held the id there). Judged
          here, it would count by the rules this node knows now, which a
          rule that comes late (a write policy that refuses it) could never
          undo, its bytes gone: seed 8104 of test_erasure_histories.py.
        - Waiting for its record: a create comes in (the notice is judged
          then).
        - Refused (another org's create holds the id): a create of the
          notice's org that lost that race is kept as an ID only.
        - Erased, a change built on a refused one (another org's losing
          create), all its dependencies here, is kept as evidence.
        - Any state: a change built on a change erased here, or at a place
          in its author's chain a notice vouches was the record's, is kept
          as an ID only (it would wait for erased changes forever); so is,
          erased, a change past its author's revocation cutoff. Any
          other change comes in, and waits for its dependencies: it may be
          built on another org's create on its way."""
        body = env.body
        notice_id, state = held
        if body.is_snapshot:
            if state == erasures.ERASED:
                if self._erased_race(txn, env):
                    return None
                lost = self._loses_to_erased(txn, env)
                if lost is not None:
                    return self._keep_refused(txn, batch, env, lost, peer)  # type: ignore[attr-defined]
            elif state == erasures.WAITING or not self._erased_as_own(txn, batch, env, notice_id):
                return None
        elif state == erasures.ERASED and self._builds_on_refused(txn, body):
            return self._keep_refused(txn, batch, env, PolicyDenied("it builds on a refused change"), peer)  # type: ignore[attr-defined]
        elif not self._built_on_erased(txn, body) and not (
                state == erasures.ERASED and self._past_cutoff(body.registry, body.author, body.seq)):  # type: ignore[attr-defined]
            # (Past its author's revocation cutoff, it counts nowhere
            # whatever it builds on: it would wait for good for an erased
            # create this node never held.)
            return None
        self._keep_erased(txn, batch, env, notice_id)
        return IngestResult("erased", env.id)

    def _builds_on_refused(self, txn: Txn, body: Any) -> bool:
        """Whether every dependency of a change is here, and one is refused
        (a losing create of another org, or what was built on it). A change
        with a dependency still on its way waits for it, as any change does:
        refused now, nothing would judge it again once it came."""
        refused = False
        for dep in body.deps:
            if records.is_refused(self.store, txn, body.registry, body.record, dep):
                refused = True
            elif not records.is_applied(self.store, txn, body.registry, body.record, dep):
                return False
        return refused

    def _built_on_erased(self, txn: Txn, body: Any) -> bool:
        """Whether a change (not a create) of a record a notice names is the
        erased record's: built on a change erased here, or at a place in its
        author's chain that a notice vouches was the record's (a node that
        never saw its dependencies knows it so). Else it may be built on
        another org's create on its way: it waits for its dependencies."""
        if any(erasures.is_erased_hash(self.store, txn, body.registry, body.record, dep) for dep in body.deps):
            return True
        vouched = erasures.vouched(self.store, txn, body.registry, body.author, body.seq)
        return vouched is not None and vouched[1] == body.record

    def _earlier_create_named(self, txn: Txn, batch: Batch, notice: ErasureNotice, env: Envelope | Draft,
                              origin: str) -> None:
        """A supplement may name a create of the record earlier than those
        known here: erased, it is the id's holder from then on; refused, the
        notice is judged again against it (the record held may have lost
        the race to it)."""
        held = erasures.mark(self.store, txn, notice.registry, notice.record)
        if notice.create is None or held is None or held[0] != notice.id:
            return
        if held[1] == erasures.ERASED:
            self._hold_if_earlier(txn, notice.registry, notice.record, notice.id, notice.org, notice.create)
        elif held[1] == erasures.REFUSED:
            holder = self._winning_create(txn, batch, notice.registry, notice.record)
            if holder is not None and notice.create < holder:
                self._judge_notice(txn, batch, notice, env, origin, again=True)

    def _hold_if_earlier(self, txn: Txn, registry: str, record_id: str, notice_id: str, org: Any,
                         create: tuple[tuple[int, int], bytes]) -> None:
        """An erased id's holder becomes ``org``'s create ``create`` (clock,
        change ID) if it is earlier than the one kept: the yardstick of
        later races. One a supplement names, or another org's notice of
        the id naming an earlier create: a create every node learns of, so
        each settles its races alike."""
        erased = erasures.erased_create(self.store, txn, registry, record_id)
        if erased is None or create < (erased[1], erased[2]):
            erasures.set_mark(self.store, txn, registry, record_id, notice_id, erasures.ERASED, (org, *create))

    def _erased_as_own(self, txn: Txn, batch: Batch, env: Envelope, notice_id: str) -> bool:
        """Under a notice refused here (another org's create holds the id):
        whether the create ``env`` is of the notice's org and later than the
        one that holds the id: that org's own record, which the notice
        erases all the same (_erase_own_losers)."""
        body = env.body
        stored = records.get_record(self.store, txn, ERASURES_REGISTRY, notice_id)
        holder = self._winning_create(txn, batch, body.registry, body.record)
        if stored is None or holder is None:
            return False
        owner = read_snapshot(body.payload, kind=body.kind, schema=body.schema).get("owner")
        return owner == stored["fields"].get("org") and ((body.hlc[0], body.hlc[1]), env.cid) > holder

    def _erase_own_losers(self, txn: Txn, batch: Batch, notice: ErasureNotice, env: Envelope | Draft,
                          origin: str) -> None:
        """The notice does not count here (another org's create holds the
        id), but its org's own creates of the id that lost that race, and
        what was built on them, are its org's bytes: erased, as on a node
        that honoured the notice before the earlier create arrived."""
        registry, record_id = notice.registry, notice.record
        own = self._rooted_evidence(txn, batch, registry, record_id, lambda owner: owner == notice.org)
        if not own:
            return
        erased_here = []
        for am_hash, cid in own.items():
            body = self._held_body(txn, batch, cid)
            changes.put_erased(self.store, txn, cid)
            erasures.put_change(self.store, txn, cid, registry, record_id, body.author, body.seq, notice.id)
            erasures.put_hash(self.store, txn, registry, record_id, am_hash, notice.id)
            records.unmark_refused(self.store, txn, registry, record_id, am_hash)
            erased_here.append((body.author, body.seq))
        self._supplement(txn, batch, notice, erased_here)
        self.metrics["erasure.changes"] += len(own)
        self.audit.append(txn, at_ms=self.now_ms(), actor=env.body.author, action="erase",
                          target=f"{registry}/{record_id}",
                          reason=(f"erasure notice {notice.id} ({origin}): the record is another org's; "
                                  f"{len(own)} changes of {notice.org}'s own creates of it erased")[:512],
                          change=env.id)

    def _loses_to_erased(self, txn: Txn, env: Envelope) -> RegistryError | None:
        """Why a create of an erased record is kept as evidence rather than
        as an ID only: it is another org's than the erased record's, and
        later than its create (it lost the race, and its bytes are its
        org's). None for a create of the erased record's org (dropped)."""
        body = env.body
        erased = erasures.erased_create(self.store, txn, body.registry, body.record)
        owner = read_snapshot(body.payload, kind=body.kind, schema=body.schema).get("owner")
        if erased is not None and owner != erased[0]:
            return NotOwner(f"{body.registry}/{body.record} belongs to {erased[0]}, whose create came first "
                            f"(the record was erased since); a create of the same id by {owner} is refused")
        return None

    def _supplement(self, txn: Txn, batch: Batch, notice: ErasureNotice, erased_here: list[tuple[str, int]],
                    winner: tuple[str, tuple[int, int], bytes] | None = None) -> None:
        """This node erased changes of its org's keys whose positions the
        notice does not list (its signer never saw them: an edit made here
        meanwhile, or by another org's key where the record let other orgs
        edit it), or a create of the record earlier than the one the notice
        names (made by another node of the notice's org): other nodes could
        never link past those positions, nor settle a create race against
        that create. The node lists them in the notice, under its own key
        (supplements, creates; a node of another org may write its own
        supplement and nothing else), so concurrent additions merge. Never
        fails the erasure: a node that may not write it counts it and goes
        on."""
        # The notice's own positions of its org's chains were vouched for
        # before the erasure (_after_erasure_notice): what is not is missing.
        # A node lists those of its own org's chains (a node of another org
        # than the notice's: edits its keys made of the erased record).
        missing = [(author, seq) for author, seq in erased_here
                   if erasures.vouched(self.store, txn, notice.registry, author, seq) is None
                   and self.owner in self.trust.orgs_ever(author, self.now_ms())]
        earlier = notice.org == self.owner and winner is not None and winner[0] == notice.org and \
            (notice.create is None or (winner[1], winner[2]) < notice.create)
        if not missing and not earlier:
            return
        current = records.get_record(self.store, txn, ERASURES_REGISTRY, notice.id)
        if current is None:
            return
        patch: dict[str, Any] = {}
        if missing:
            mine = {(e["author"], s) for e in (current["fields"].get("supplements") or {}).get(self.key.did, ())
                    for first, last in e["seqs"] for s in range(first, last + 1)}
            supplements = dict(current["fields"].get("supplements") or {})
            supplements[self.key.did] = positions_of(sorted(mine | set(missing)))
            patch["supplements"] = supplements
        if earlier:
            assert winner is not None
            creates = dict(current["fields"].get("creates") or {})
            creates[self.key.did] = {"change": cid_to_str(winner[2]), "hlc": list(winner[1])}
            patch["creates"] = creates
        try:
            self._update(txn, batch, Update(ERASURES_REGISTRY, notice.id,  # type: ignore[attr-defined]
                                            patch=patch, actor=SUPPLEMENT_ACTOR))
            self.metrics["erasure.supplemented"] += len(missing) + int(earlier)
        except RegistryError as exc:
            self.metrics[f"erasure.unsupplemented.{exc.code}"] += 1
            if missing:
                # Written once this node's key may write again (a renewed
                # delegation): until then no node may vouch for these places.
                erasures.owe(self.store, txn, notice.id, missing)

    def _pay_owed_supplements(self, txn: Txn, batch: Batch) -> None:
        """A statement about this node's key was committed (its delegation
        renewed, say): the supplements it could not write are written now,
        or owed again."""
        for notice_id, places in erasures.owed(self.store, txn):
            erasures.paid(self.store, txn, notice_id)
            current = records.get_record(self.store, txn, ERASURES_REGISTRY, notice_id)
            if current is None or current["deleted"]:
                continue
            try:
                notice = ErasureNotice.read(notice_id, current["fields"])
            except (ValidationError, KeyError, TypeError):
                continue
            self._supplement(txn, batch, notice, places)

    def _record_change_ids(self, txn: Txn, registry: str, record_id: str) -> list[bytes]:
        """Every change of the record held here: applied (its history) and
        refused (kept as evidence in its author's chain)."""
        ids = dict.fromkeys(cid for _, cid in records.history(self.store, txn, registry, record_id))
        ids.update(dict.fromkeys(records.applied_changes(self.store, txn, registry, record_id).values()))
        ids.update(dict.fromkeys(records.refused_changes(self.store, txn, registry, record_id).values()))
        return list(ids)

    def _winning_create(self, txn: Txn, batch: Batch, registry: str,
                        record_id: str) -> tuple[tuple[int, int], bytes] | None:
        """(clock, change ID) of the create that holds the record's id here:
        the earliest of those that count."""
        found = None
        for cid in records.applied_ids(self.store, txn, registry, record_id):
            body = self._held_body(txn, batch, cid)
            if body is not None and body.is_genesis:
                key = ((body.hlc[0], body.hlc[1]), cid)
                found = key if found is None or key < found else found
        return found

    def _held_body(self, txn: Txn, batch: Batch, cid: bytes) -> Any:
        """A change's body, or None when it is erased (or never seen)."""
        made = batch.drafts.get(cid)
        return made.body if made is not None else changes.body(self.store, txn, cid)

    def _drop_parked(self, txn: Txn, notice: ErasureNotice) -> int:
        """Parked changes of the erased record go: creates of the notice's
        org, and changes built on erased ones or at places a notice vouches
        for (_built_on_erased). The others wait on: another org's create
        may be on its way. Each one dropped was verified when parked, so
        its author vouches for its position: the gap it leaves is linked
        past without it (storage/erasures.py)."""
        dropped = 0
        for cid, wire in list(pending.parked(self.store, txn)):
            env = open_envelope(wire, verify=False)
            body = env.body
            if (body.registry, body.record) != (notice.registry, notice.record):
                continue
            if not (read_snapshot(body.payload, kind=body.kind, schema=body.schema).get("owner") == notice.org
                    if body.is_snapshot else self._built_on_erased(txn, body)):
                # Another org's create (the race against the erased one is
                # settled when it comes in), or a change that may be built
                # on one: not the notice's, judged when what it needs comes.
                continue
            pending.unpark(self.store, txn, cid)
            erasures.vouch(self.store, txn, body.registry, body.author, body.seq, body.seq, notice.id, body.record)
            dropped += 1
        return dropped

    def _drop_evidence(self, txn: Txn, registry: str, record_id: str) -> int:
        """Evidence (equivocations, broken chains) holding the record's changes goes;
        a report already filed in grid.disputes keeps the IDs."""
        stale = []
        for k, wire in pending.evidence_in(self.store, txn, registry):
            if open_envelope(wire, verify=False).body.record == record_id:
                stale.append(k)
        for k in stale:
            pending.drop_evidence(self.store, txn, k)
        return len(stale)

    # ---- chains past erased positions

    def _after_refused_supplement(self, txn: Txn, batch: Batch, env: Envelope, origin: str) -> None:
        """A change of a notice was kept as evidence, not applied: a
        supplement built on a create that counts nowhere here (its signer's
        revocation cut it, say, while another create of the notice counts)
        is refused with it. Its signer's vouching for its own org's chains
        is not that create's to take back: it counts as the signer wrote it,
        unless the signer's own chain does not count there (revoked past its
        cutoff, quarantined). Else a node that judged the supplement refused
        from the start would never link past the places it lists, which a
        node that counted it before the revocation came has linked past.
        Where no create of the notice counts, the notice erases nothing
        (one that comes to count reads it then: _after_erasure_notice), but
        the signer's word on its own chain still links past the places it
        erased itself, whose bytes may be gone everywhere: a change that
        comes for one is taken in (nothing erased its record here:
        RemoteIngest._arrived_unseen)."""
        current = records.get_record(self.store, txn, ERASURES_REGISTRY, env.body.record)
        counts_here = current is not None and not current["deleted"]
        found = self._refused_supplement(txn, batch, env)
        if found is None:
            return
        notice, vouched = found
        if not counts_here:
            vouched = [entry for entry in vouched if entry[0] == entry[1] == env.body.author]
            if not vouched:
                return
        self._has_erasures = True
        for _, chain_author, ranges in vouched:
            for first, last in ranges:
                erasures.vouch(self.store, txn, notice.registry, chain_author, first, last, notice.id,
                               notice.record)
        self.metrics["erasure.refused_supplement_vouched"] += 1
        if counts_here:
            self._drop_parked(txn, notice)
        for chain_author in sorted({author for _, author, _ in vouched}):
            self._link_vouched(txn, batch, notice.registry, chain_author, origin)

    def _vouched_by_refused(self, txn: Txn, batch: Batch,
                            notice_id: str) -> list[tuple[str, str, tuple[tuple[int, int], ...]]]:
        """The positions that the notice's refused supplements vouch for
        (_after_refused_supplement): read again when a create of the notice
        comes to count, or a delegation comes."""
        out = []
        for cid in records.refused_changes(self.store, txn, ERASURES_REGISTRY, notice_id).values():
            found = self._refused_supplement(txn, batch, self._stored_envelope(txn, batch, cid))
            out += found[1] if found is not None else []
        return out

    def _refused_supplement(self, txn: Txn, batch: Batch, env: Envelope | Draft) -> tuple[
            ErasureNotice, list[tuple[str, str, tuple[tuple[int, int], ...]]]] | None:
        """The notice a refused update of grid.erasures makes, as its signer
        saw it, and the positions of its signer's own supplement whose
        vouching counts (by the orgs the signer spoke for up to then); None
        when there are none, or the signer's chain does not count there."""
        body = env.body
        if body.registry != ERASURES_REGISTRY or body.is_snapshot or body.op != "update":
            return None
        try:
            self.trust.check_chain(body.author, body.registry, body.seq)
        except RegistryError:
            return None
        own = self._as_its_signer_saw_it(txn, batch, env)
        if own is None or own.get("deleted"):
            return None
        try:
            made = ErasureNotice.read(body.record, own["fields"])
        except (ValidationError, KeyError, TypeError):
            return None
        # Only what the signer wrote under its own key: the rest of what it
        # saw is other signers' (the create it built on among them).
        mine = replace(made, positions=tuple(p for p in made.positions if p[0] == body.author))
        vouched = mine.vouches(lambda did: self.trust.orgs_ever(did, body.hlc[0]))
        return (made, vouched) if vouched else None

    def _as_its_signer_saw_it(self, txn: Txn, batch: Batch, env: Envelope | Draft) -> dict[str, Any] | None:
        """The record as a change that is not in its document made it: its
        own deps (applied or refused changes of the record held here),
        replayed in causal order; None when one of them is not held."""
        body = env.body
        held = {**records.refused_changes(self.store, txn, body.registry, body.record),
                **records.applied_changes(self.store, txn, body.registry, body.record)}
        for cid in records.applied_ids(self.store, txn, body.registry, body.record):
            # A snapshot create is marked only once the document is built.
            held.setdefault(automerge_of(self._stored_envelope(txn, batch, cid))[0], cid)
        needed: dict[bytes, Any] = {}
        wanted = list(body.deps)
        while wanted:
            am_hash = wanted.pop()
            if am_hash in needed:
                continue
            if am_hash not in held:
                return None
            dep = self._stored_envelope(txn, batch, held[am_hash])
            needed[am_hash] = dep
            wanted.extend(dep.body.deps)
        # A change's clock is above those of the changes it builds on.
        ordered = sorted(needed.values(), key=lambda dep: (tuple(dep.body.hlc), dep.cid))
        try:
            doc = RecordDoc.apply(None, b"".join(automerge_of(dep)[1] for dep in [*ordered, env]))
            return doc.materialize(heads=[body.change_hash])
        except (MalformedInput, ValueError):
            return None

    def _vouch_for_key(self, txn: Txn, batch: Batch, key_did: str, origin: str) -> None:
        """A statement about ``key_did`` was committed: the positions of its
        chains that notices list, or that it lists in a supplement, were
        skipped if they came before the key's delegation (an org or a node
        vouches for its own org's chains only, and the key's org was unknown
        then). They count now, and the chains are linked past them: else a
        node that never saw those erased changes would lack them for good."""
        if not self._has_erasures:
            return
        if not self.trust.orgs_ever(key_did, self.now_ms()):
            return
        for record in records.iter_records(self.store, txn, registry=ERASURES_REGISTRY):
            try:
                notice = ErasureNotice.read(record["id"], record["fields"])
            except (ValidationError, KeyError, TypeError):
                continue  # not a notice this node honours (it was refused on arrival)
            # Every change's own claim counts, as when it was committed: a
            # create that lost a race lists positions the record may not
            # show, and so may a supplement written into that create's fields.
            listed = list(notice.positions)
            doc = None
            for cid in records.applied_ids(self.store, txn, ERASURES_REGISTRY, notice.id):
                body = self._stored_envelope(txn, batch, cid).body
                if body.is_snapshot:
                    listed += _claimed(notice.id, body)
                    continue
                doc = doc or self._document(txn, batch, ERASURES_REGISTRY, notice.id)
                own = doc.materialize(heads=[body.change_hash]) if doc is not None else None
                if own is not None and not own.get("deleted"):
                    try:
                        listed += ErasureNotice.read(notice.id, own["fields"]).positions
                    except (ValidationError, KeyError, TypeError):
                        continue  # not a view this node honoured when it was committed
            at = record["updated_hlc"][0]  # the notice's last change: as when it was committed (ever since)
            vouched = replace(notice, positions=tuple(listed)).vouches(lambda did: self.trust.orgs_ever(did, at))
            vouched += self._vouched_by_refused(txn, batch, notice.id)
            linked: set[str] = set()
            for voucher, author, ranges in vouched:
                if key_did not in (voucher, author):
                    continue
                for first, last in ranges:
                    erasures.vouch(self.store, txn, notice.registry, author, first, last, notice.id, notice.record)
                linked.add(author)
            for author in sorted(linked):
                self._link_vouched(txn, batch, notice.registry, author, origin)

    def _link_vouched(self, txn: Txn, batch: Batch, registry: str, author: str, origin: str) -> int:
        """Link the chain past the positions notices vouch for that follow its
        head (their IDs unseen until the author's next change names them),
        then release what waited for them; how many were linked."""
        linked = self._fill_vouched(txn, batch, registry, author)
        if linked:
            self._release(txn, batch, None, origin)  # type: ignore[attr-defined]
        return linked

    def _fill_vouched(self, txn: Txn, batch: Batch, registry: str, author: str) -> int:
        linked = 0
        while True:
            seq, _ = self._head(txn, batch, registry, author)
            if erasures.vouched(self.store, txn, registry, author, seq + 1) is None:
                return linked
            chains.link(self.store, txn, registry, author, seq + 1, erasures.UNSEEN)
            batch.heads[(registry, author)] = self._chain_heads[(registry, author)] = (seq + 1, erasures.UNSEEN)
            batch.unblocked.append(pending.after_link(registry, author, seq + 1))
            self.metrics["erasure.positions_linked"] += 1
            linked += 1

    def _learn_unseen(self, txn: Txn, batch: Batch, registry: str, author: str, seq: int, cid: bytes,
                      record: str | None = None) -> None:
        """Change ``seq`` of the chain, linked unseen, is ``cid``: named by the
        author's next change (its ``prev``) or arrived itself (``record``:
        its own). Its ID replaces the unseen link; its bytes are not kept."""
        found = erasures.vouched(self.store, txn, registry, author, seq)
        notice, vouched_record = found if found is not None else ("", "")
        chains.link(self.store, txn, registry, author, seq, cid)
        if not changes.has(self.store, txn, cid):
            changes.put_erased(self.store, txn, cid)
            erasures.put_change(self.store, txn, cid, registry, record or vouched_record, author, seq, notice)
        head = self._head(txn, batch, registry, author)
        if head[0] == seq:
            batch.heads[(registry, author)] = self._chain_heads[(registry, author)] = (seq, cid)
        if record is not None and record != vouched_record:
            # The notice's signer vouched for a change of another record:
            # it lied about its own chain. The change stays out (the chain
            # moved past it); say so.
            self.metrics["erasure.vouched_wrongly"] += 1
            self.audit.append(txn, at_ms=self.now_ms(), actor=author, action="deny",
                              target=f"{registry}/{record}",
                              reason=f"erasure notice {notice} vouched for change {seq} of {author}, a change of "
                                     f"{record}, not of {vouched_record}: it is not applied here")

    def _erased_twin(self, txn: Txn, batch: Batch, env: Envelope, head_seq: int) -> tuple[int, bytes] | None:
        """``env`` is another change at a place of its author's chain that
        this node holds without bytes (erased): the author signed two
        changes there, a cloned key. Nobody can prove it with the erased
        one, whose bytes are gone on every node that held it, so no report
        will ever quarantine it, and the nodes that took ``env`` first count
        it. So this node takes ``env`` in at that place as if it were next
        (returns the chain's head before the place), where the erased change
        was its head, and ``env`` follows the link before it: records end
        alike on both sides. (The erased change counts nowhere; its ID stays
        known as erased.) Where this node holds its branch's next change,
        that change and ``env`` prove the fork (the next one's ``prev`` is
        not ``env``): it reports it (returns None: an equivocation, as
        any). Where every place after it is held without bytes too, it
        takes ``env`` in as where the erased change is its head. Before
        2026-12-05 both sides ended apart for good (cloned-key histories
        with erasures, seeds 72064, 72075; with the places after it erased
        too, 73211, in a federation)."""
        body = env.body
        registry, author = body.registry, body.author
        other = chains.at(self.store, txn, registry, author, body.seq)
        if other is None or other == erasures.UNSEEN or changes.body(self.store, txn, other) is not None \
                or erasures.change(self.store, txn, other) is None:
            return None  # held with its bytes: proven as any equivocation
        if body.seq < head_seq:
            after = chains.at(self.store, txn, registry, author, body.seq + 1)
            if after is not None and changes.body(self.store, txn, after) is not None:
                self._report_equivocation(txn, batch, env, after)  # type: ignore[attr-defined]
                return None
            if any(link is None or changes.body(self.store, txn, link) is not None
                   for link in (chains.at(self.store, txn, registry, author, seq)
                                for seq in range(body.seq + 1, head_seq + 1))):
                return None  # a held change further on may prove it: an equivocation, as any
            # Every place after it is held without bytes too (erased, or
            # gone at peers): they count nowhere and stay as they are, and
            # so does the head (commit moves a head forward only).
        before = chains.at(self.store, txn, registry, author, body.seq - 1) if body.seq > 1 else b""
        if before is None or before == erasures.UNSEEN or (body.prev or b"") != before:
            return None  # the fork began earlier: an equivocation, as any
        self.metrics["erasure.erased_twin_taken"] += 1
        self.audit.append(txn, at_ms=self.now_ms(), actor=author, action="remote", target=f"{registry}/{body.record}",
                          reason=f"{author} signed change {body.seq} of {registry} twice; the one held here is "
                                 f"erased, so the fork can't be proven: {env.id} takes its place")
        return body.seq - 1, before

    def _keep_erased(self, txn: Txn, batch: Batch, env: Envelope, notice: str) -> None:
        """A change of an erased record arrived (from a peer that had not
        honoured the notice yet; or at a place linked past without it): its
        ID takes its place in the chain, its bytes are dropped."""
        body = env.body
        chains.link(self.store, txn, body.registry, body.author, body.seq, env.cid)
        if self._head(txn, batch, body.registry, body.author)[0] <= body.seq:
            batch.heads[(body.registry, body.author)] = self._chain_heads[(body.registry, body.author)] = \
                (body.seq, env.cid)
        changes.put_erased(self.store, txn, env.cid)
        erasures.put_change(self.store, txn, env.cid, body.registry, body.record, body.author, body.seq, notice)
        # A change built on this one is known for what it is when it comes.
        erasures.put_hash(self.store, txn, body.registry, body.record, automerge_of(env)[0], notice)
        self.metrics["erasure.dropped_on_arrival"] += 1

    def _erased_race(self, txn: Txn, env: Envelope) -> bool:
        """A create of an erased id by another org than the erased record's,
        and earlier than its create: it owns the id (the earliest create
        wins, as in any create race), so the erasure did not cover it: True,
        and the notice is judged against this record once it is in
        (_judge_waiting). Refused on its own account (a rule), it leaves the
        erasure as it was. False for anything else of the id."""
        body = env.body
        if not body.is_snapshot:
            return False
        erased = erasures.erased_create(self.store, txn, body.registry, body.record)
        if erased is None:
            return False
        owner = read_snapshot(body.payload, kind=body.kind, schema=body.schema).get("owner")
        if owner == erased[0] or (tuple(body.hlc), env.cid) >= (erased[1], erased[2]):
            return False
        self.metrics["erasure.create_race_won"] += 1
        return True

    # ---- undoing: a notice that stops counting (its signer's key revoked before it)

    def _void_notice(self, txn: Txn, batch: Batch, notice_id: str, old: dict[str, Any], cause: Envelope | Draft,
                     origin: str) -> None:
        """The notice ``old`` showed no longer counts here (a rebuild left it
        no valid create: its signer's key was revoked with a cutoff before
        it). A node that took the revocation first refused it and kept the
        record; this one erased it. So the id is free again (state *void*),
        the record is judged anew without the erased create (another org's
        create that lost to it may hold the id now), and each change it
        erased here is taken again when its bytes arrive from a peer that
        kept them (_restore; sync asks for them by ID: Engine.wanted)."""
        fields = old.get("fields") or {}
        registry, record_id = fields.get("registry"), fields.get("record")
        erasures.put_void(self.store, txn, notice_id)
        self.metrics["erasure.voided"] += 1
        held = erasures.mark(self.store, txn, registry, record_id) if isinstance(registry, str) \
            and isinstance(record_id, str) else None
        if held is None or held[0] != notice_id:
            return
        erasures.set_mark(self.store, txn, registry, record_id, notice_id, erasures.VOID)
        self.audit.append(txn, at_ms=self.now_ms(), actor=cause.body.author, action="update",
                          target=f"{registry}/{record_id}",
                          reason=f"erasure notice {notice_id} no longer counts: its changes are taken again "
                                 "from peers that kept them", change=cause.id)
        if records.refused_changes(self.store, txn, registry, record_id):
            self._rebuild(txn, batch, registry, record_id, cause=cause, origin=origin)  # type: ignore[attr-defined]

    def _restorable(self, txn: Txn, cid: bytes, env: Envelope | None = None) -> bool:
        """Whether ``cid`` is a change this node erased by a notice that no
        longer counts, whose record no other notice erased since; or, erased
        since by another org's notice (its bytes were still gone when that
        notice came), a create that came before the one that notice names:
        it wins the id back, as such a create does on first arrival
        (_erased_race). Without ``env`` (what to ask peers for), maybe."""
        if not changes.is_erased(self.store, txn, cid):
            return False
        known = erasures.change(self.store, txn, cid)
        if known is None or not erasures.is_void(self.store, txn, known["notice"]):
            return False
        held = erasures.mark(self.store, txn, known["registry"], known["record"])
        if held is None or not erasures.burned(held[1]):
            return True
        return held[0] != known["notice"] and (env is None or self._erased_race(txn, env))

    def _restore(self, txn: Txn, batch: Batch, env: Envelope, peer: str) -> IngestResult:
        """Take again a change erased by a notice that no longer counts: its
        bytes are stored at the place its ID kept in its author's chain, and
        its record is rebuilt from every change held of it, as on a node
        that never erased it (verified on arrival, judged by the rebuild)."""
        body = env.body
        am_hash = automerge_of(env)[0]
        changes.put_received(self.store, txn, env)
        erasures.drop_change(self.store, txn, env.cid)
        erasures.drop_hash(self.store, txn, body.registry, body.record, am_hash)
        records.mark_refused(self.store, txn, body.registry, body.record, am_hash, env.cid)  # until judged
        self._rebuild(txn, batch, body.registry, body.record, cause=env, origin=peer)  # type: ignore[attr-defined]
        self.metrics["erasure.restored"] += 1
        if records.is_applied(self.store, txn, body.registry, body.record, am_hash):
            self._after_restored(txn, batch, env, peer)
            return IngestResult("applied", env.id)
        return IngestResult("refused", env.id)

    def _after_restored(self, txn: Txn, batch: Batch, env: Envelope, peer: str) -> None:
        """What a commit does after a notice or a report counts, for one taken
        in at a place linked past (a rebuild only makes its record): a reader
        that linked past another reader's notice of a private record on a
        non-reader's word (engine/subjects.py) took the notice and kept the
        record it erases, for good."""
        body = env.body
        record = records.get_record(self.store, txn, body.registry, body.record)
        if record is None or record["deleted"]:
            return
        if body.registry == ERASURES_REGISTRY:
            self._after_erasure_notice(txn, batch, env, record, peer)
        elif body.registry == disputes.DISPUTES_REGISTRY:
            self._after_dispute_record(txn, batch, record["kind"], body.record, record["fields"])  # type: ignore[attr-defined]

    def _refuse_if_erased(self, txn: Txn, registry: str, record_id: str) -> None:
        """A local write of an id an erasure notice names (erased, or waiting
        for its record) is refused: the id is burned."""
        if not self._has_erasures:
            return
        held = erasures.mark(self.store, txn, registry, record_id)
        if held is not None and erasures.burned(held[1]):
            raise RecordErased(f"{registry}/{record_id} was erased (notice {held[0]}); its id cannot be used again",
                               details={"notice": held[0]})


def _claimed(notice_id: str, body: Any) -> tuple[tuple[str, str, tuple[tuple[int, int], ...]], ...]:
    """The positions a create of the notice lists itself (its snapshot's
    fields), whatever the record shows after a race of creates."""
    claim = read_snapshot(body.payload, kind=body.kind, schema=body.schema)
    return ErasureNotice.read(notice_id, claim["fields"]).positions
