"""Offline re-verification of a whole store (`rgrid verify`).

Checks, for every stored change: it decodes, its inclusion path leads to a
batch root its author signed (each distinct root's signature is checked
once), and its ID is the hash of its body; every stored batch that keeps its
leaves has them hash to its root. Each author's chain in each registry runs
1, 2, 3 ... with every ``prev`` naming the change before. Then every record
must be what its Automerge document (or, before its first update, its
snapshot) says, except at the paths whose writes conflict, where the
record shows its conflict rule's choice. An erased change is counted, not read: its entry must name
an erasure, and its ID still links its chain. Stops at the first bad item
and names it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from registrygrid.crdt import resolver
from registrygrid.crdt.record import RecordDoc, doc_bytes, same_value
from registrygrid.crdt.snapshot import genesis_change, read_snapshot
from registrygrid.errors import IntegrityError, RegistryError
from registrygrid.protocol.envelope import cid_to_str, open_envelope
from registrygrid.protocol.merkle import MerkleTree
from registrygrid.storage import chains as stored_chains
from registrygrid.storage import changes as stored_changes
from registrygrid.storage import erasures
from registrygrid.storage import records as stored_records
from registrygrid.storage.store import Store


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    changes: int
    chains: int
    records: int
    problem: str | None = None
    where: str | None = None
    erased: int = 0  # changes held without their bytes (erasure notices: docs/erasure.md)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changes": self.changes, "chains": self.chains, "records": self.records,
                "erased": self.erased, "problem": self.problem, "where": self.where}


def _tags_as_stored(shown: list[str], stored: list[str], path: list[str]) -> list[str]:
    """Tags are a set, kept as a sorted list: a conflict at ``/tags/NAME``
    decides that one tag's membership (crdt/resolver.py ``apply``), and one
    at ``/tags`` (two creates' tag sets) the whole set."""
    if len(path) == 1:
        return list(stored)
    tags = set(shown)
    if path[1] in stored:
        tags.add(path[1])
    else:
        tags.discard(path[1])
    return sorted(tags)


def verify_store(store: Store) -> VerifyReport:
    changes = chains = records = erased = 0
    with store.read() as txn:
        for root, _size, leaves in stored_changes.iter_batches(store, txn):
            if leaves and (len(leaves) % 36 or MerkleTree([leaves[i:i + 36] for i in range(0, len(leaves), 36)]).root
                           != root):
                return VerifyReport(False, changes, chains, records, "a batch's leaves do not hash to its root",
                                    f"batch {root.hex()}")
        for stored_id in list(stored_changes.iter_ids(store, txn)):
            try:
                wire = stored_changes.wire(store, txn, stored_id)
            except Exception as exc:  # damaged bytes: whatever the decoder says, name the change
                return VerifyReport(False, changes, chains, records, f"stored change does not decode: {exc}",
                                    f"change {cid_to_str(stored_id)}")
            if wire is None and stored_changes.is_erased(store, txn, stored_id):
                if erasures.change(store, txn, stored_id) is None:
                    return VerifyReport(False, changes, chains, records, "an erased change no erasure names",
                                        f"change {cid_to_str(stored_id)}")
                erased += 1
                continue
            try:
                env = open_envelope(wire)  # type: ignore[arg-type]
            except RegistryError as exc:  # open_envelope raises nothing else, for any bytes
                return VerifyReport(False, changes, chains, records, f"{exc.code}: {exc.message}",
                                    f"change {cid_to_str(stored_id)}")
            if env.cid != stored_id:
                return VerifyReport(False, changes, chains, records, "stored under an ID that is not its hash",
                                    f"change {cid_to_str(stored_id)}")
            changes += 1
        last: tuple[tuple[str, str], int, bytes] | None = None  # ((registry, author), seq, cid)
        try:
            for registry, author, seq, cid in stored_chains.iter_links(store, txn):
                chain = (registry, author)
                body = stored_changes.body(store, txn, cid)
                where = f"chain {registry} {author} seq {seq}"
                expected_prev = last[2] if last is not None and last[0] == chain else b""
                expected_seq = last[1] + 1 if last is not None and last[0] == chain else 1
                if seq != expected_seq:
                    return VerifyReport(False, changes, chains, records, f"chain skips to {seq} from {expected_seq - 1}", where)
                if body is None:
                    # An erased change keeps its ID in the chain (its successor's
                    # prev still checks it); an unseen one, a notice's word.
                    erased_here = (cid == erasures.UNSEEN and erasures.vouched(store, txn, registry, author, seq)) \
                        or stored_changes.is_erased(store, txn, cid)
                    if not erased_here:
                        return VerifyReport(False, changes, chains, records, "chain names a change that is not stored",
                                            where)
                elif body.seq != seq:
                    return VerifyReport(False, changes, chains, records, f"chain skips to {seq} from {expected_seq - 1}", where)
                elif body.prev != expected_prev and expected_prev != erasures.UNSEEN:
                    return VerifyReport(False, changes, chains, records, "prev does not name the previous change", where)
                if last is None or last[0] != chain:
                    chains += 1
                last = (chain, seq, cid)
        except IntegrityError as exc:  # a chain key naming a DID code the store lacks
            return VerifyReport(False, changes, chains, records, exc.message, "chains")
        try:
            for k, record in stored_records.iter_stored(store, txn):
                registry, record_id = k.decode().split("\x00", 1)
                saved = stored_records.get_document(store, txn, registry, record_id)
                where = f"record {registry}/{record_id}"
                try:
                    if saved is not None:
                        state = RecordDoc.load(doc_bytes(saved)).materialize()
                    else:
                        state = _snapshot_state(store, txn, registry, record_id)
                except Exception as exc:
                    return VerifyReport(False, changes, chains, records, f"document does not load: {exc}", where)
                # A path whose writes conflict shows what the registry's conflict
                # rule chose (engine/settle.py), not Automerge's own pick; the
                # record lists each such path, so those are taken as stored.
                for conflict in record.get("conflicts") or ():
                    path = resolver.unpointer(conflict["path"])
                    state = copy.deepcopy(state)
                    if path[0] == "tags":
                        state["tags"] = _tags_as_stored(state.get("tags") or [], record.get("tags") or [], path)
                    else:
                        resolver.put_in(state, path, resolver.get_in(record, path))
                for name in ("kind", "owner", "fields", "tags", "links", "deleted"):
                    if not same_value(state.get(name), record.get(name)):  # [1] is not [true]
                        return VerifyReport(False, changes, chains, records,
                                            f"stored {name} differs from its document", where)
                records += 1
        except IntegrityError as exc:  # a stored record's bytes do not decompress
            return VerifyReport(False, changes, chains, records, exc.message, exc.details.get("where", "records"))
    return VerifyReport(True, changes, chains, records, erased=erased)


def _snapshot_state(store: Store, txn: Any, registry: str, record_id: str) -> dict[str, Any]:
    """A record with no document yet: what its snapshot creates say."""
    bodies = [stored_changes.body(store, txn, cid)
              for cid in stored_records.applied_ids(store, txn, registry, record_id)]
    if not bodies or None in bodies:
        raise ValueError("record has neither a document nor a stored snapshot")
    states = [read_snapshot(b.payload, kind=b.kind, schema=b.schema) for b in bodies]  # type: ignore[union-attr]
    if len(states) == 1:
        return states[0]
    geneses = [genesis_change(state, b.author).raw_bytes for state, b in zip(states, bodies)]  # type: ignore[union-attr]
    return RecordDoc.apply(None, b"".join(geneses)).materialize()
