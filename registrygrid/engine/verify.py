"""Offline re-verification of a whole store (`rgrid verify`).

Checks, for every stored change: it decodes, its signature verifies, its ID
is the hash of its bytes, and each author's chain in each registry runs
1, 2, 3 ... with every ``prev`` naming the change before. Then every record's
Automerge document must materialize to the stored record. Stops at the first
bad item and names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registrygrid.crdt.record import RecordDoc, doc_bytes
from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import change_id, cid_to_str, open_envelope
from registrygrid.storage.store import SEP, Store, from_u64, unpack


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    changes: int
    chains: int
    records: int
    problem: str | None = None
    where: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changes": self.changes, "chains": self.chains, "records": self.records,
                "problem": self.problem, "where": self.where}


def verify_store(store: Store) -> VerifyReport:
    changes = chains = records = 0
    with store.read() as txn:
        for stored_id, wire in txn.cursor(db=store.db["changes"]):
            try:
                open_envelope(wire)
            except RegistryError as exc:  # open_envelope raises nothing else, for any bytes
                return VerifyReport(False, changes, chains, records, f"{exc.code}: {exc.message}",
                                    f"change {cid_to_str(stored_id)}")
            if change_id(wire) != stored_id:
                return VerifyReport(False, changes, chains, records, "stored under an ID that is not its hash",
                                    f"change {cid_to_str(stored_id)}")
            changes += 1
        last: tuple[bytes, int, bytes] | None = None  # (registry+author, seq, cid)
        for k, cid in txn.cursor(db=store.db["chains"]):
            chain, seq = k[:-9], from_u64(k[-8:])
            wire = txn.get(cid, db=store.db["changes"])
            where = "chain " + chain.replace(SEP, b" ").decode() + f" seq {seq}"
            if wire is None:
                return VerifyReport(False, changes, chains, records, "chain names a change that is not stored", where)
            body = open_envelope(wire, verify=False).body
            expected_prev = last[2] if last is not None and last[0] == chain else b""
            expected_seq = last[1] + 1 if last is not None and last[0] == chain else 1
            if seq != expected_seq or body.seq != seq:
                return VerifyReport(False, changes, chains, records, f"chain skips to {seq} from {expected_seq - 1}", where)
            if body.prev != expected_prev:
                return VerifyReport(False, changes, chains, records, "prev does not name the previous change", where)
            if last is None or last[0] != chain:
                chains += 1
            last = (chain, seq, cid)
        for k, raw in txn.cursor(db=store.db["records"]):
            saved = txn.get(k, db=store.db["docs"])
            where = "record " + k.replace(SEP, b"/").decode()
            if saved is None:
                return VerifyReport(False, changes, chains, records, "record has no document", where)
            try:
                state = RecordDoc.load(doc_bytes(saved)).materialize()
            except Exception as exc:
                return VerifyReport(False, changes, chains, records, f"document does not load: {exc}", where)
            record = unpack(raw)
            for name in ("kind", "owner", "fields", "tags", "links", "deleted"):
                if state.get(name) != record.get(name):
                    return VerifyReport(False, changes, chains, records,
                                        f"stored {name} differs from its document", where)
            records += 1
    return VerifyReport(True, changes, chains, records)
