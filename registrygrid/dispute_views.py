"""Disputes as people read them: listings, details, and the resolution to file.

Reads only (a read transaction, no writer caches), shared by the SDK, the
CLI and the HTTP bridge. A field dispute is found through the records that
hold it (the ``d`` index of storage/records.py); an equivocation through its
report in grid.disputes. Each comes with its resolutions, newest last, and
whether each one counts (its author may decide, crdt/disputes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from registrygrid.crdt import disputes, resolver
from registrygrid.crdt.conflicts import ABSENT, value_at
from registrygrid.crdt.record import RecordDoc, doc_bytes
from registrygrid.crdt.resolver import unpointer
from registrygrid.engine import registries as regs
from registrygrid.errors import NotFound, PolicyDenied, RegistryError, ValidationError
from registrygrid.protocol.envelope import cid_from_str
from registrygrid.schemas.catalog import SchemaCatalog
from registrygrid.storage import changes, records
from registrygrid.storage.store import Store
from registrygrid.trust import access
from registrygrid.trust.state import TrustState

STATUSES = ("disputed", "resolved", "quarantined")


def list_disputes(store: Store, trust: TrustState, *, status: str | None = None) -> list[dict[str, Any]]:
    """Every dispute this node knows, field disputes then equivocations, each
    in id order; ``status`` keeps one status."""
    with store.read() as txn:
        out = [_field_dispute(store, txn, trust, d, reg, rec, detailed=False)
               for d, reg, rec in records.iter_disputes(store, txn)]
        out += [_equivocation(store, txn, trust, record, detailed=False) for record in _reports(store, txn)]
    return [d for d in out if d is not None and (status is None or d["status"] == status)]


def show_dispute(store: Store, trust: TrustState, dispute: str, catalog: SchemaCatalog) -> dict[str, Any]:
    """One dispute in full: every competing write or envelope, a diff, and
    its resolutions. NotFound names the listing to look in."""
    with store.read() as txn:
        holders = records.records_disputing(store, txn, dispute)
        if holders:
            found = _field_dispute(store, txn, trust, dispute, *holders[0], detailed=True, catalog=catalog)
            if found is not None:
                return found
        report = records.get_record(store, txn, disputes.DISPUTES_REGISTRY, dispute)
        if report is None:
            report = _refused_report(store, txn, dispute)
        if report is not None and report["kind"] == disputes.REPORT_KIND:
            return _equivocation(store, txn, trust, report, detailed=True)
    raise NotFound(f"no dispute {dispute!r} on this node; `rgrid disputes list` shows the open ones")


def resolution_fields(store: Store, trust: TrustState, catalog: SchemaCatalog, dispute: str, *, author: str,
                      at_ms: int, value: Any = ABSENT, removed: bool = False, note: str = "") -> dict[str, Any]:
    """The fields of a resolution ``author`` may file now; PolicyDenied when
    its resolution would not count, ValidationError when it says nothing,
    SchemaViolation when the record it settles would break its kind."""
    found = show_dispute(store, trust, dispute, catalog)
    if found["type"] == "equivocation":
        if value is not ABSENT or removed:
            raise ValidationError("an equivocation is acknowledged, not given a value: resolve it without one")
        if not access.may_resolve(trust, author, at_ms, registry_owner=None, owners=found["author_orgs"]):
            raise PolicyDenied(f"only a federation admin or the equivocating key's org may resolve {dispute}")
        fields: dict[str, Any] = {"dispute": dispute, "outcome": "quarantine"}
    else:
        if value is ABSENT and not removed:
            raise ValidationError("give the value the field takes (or removed) to resolve a field dispute")
        if value is not ABSENT and removed:  # it was filed as a removal, the value dropped without a word
            raise ValidationError("give a value or removed, not both")
        if not access.may_resolve(trust, author, at_ms, registry_owner=found["registry_owner"],
                                  owners=(found["record_owner"],)):
            raise PolicyDenied(f"only a federation admin, the owner org of {found['registry']} or of the record "
                               f"may resolve {dispute}")
        _check_settled_record(store, catalog, found, value, removed)
        fields = {"dispute": dispute, "outcome": "value"}
        if removed:
            fields["removed"] = True
        else:
            fields["value"] = value
    if note:
        fields["note"] = note
    # Where it goes: to the orgs that may read the disputed registry only
    # (engine/subjects.py); a resolution of a private registry's dispute
    # went to every member, its value too.
    fields["registry"] = found["registry"]
    return fields


def _check_settled_record(store: Store, catalog: SchemaCatalog, found: dict[str, Any], value: Any,
                          removed: bool) -> None:
    """Refuse a resolution that would leave its record unsound (a required
    field removed, a value of the wrong type, links or a creation no write
    made): the record would show it on every node, and each later update of
    it would be refused for what nobody could then change back. The rule
    that makes such a resolution count nowhere (engine/settle.py)."""
    with store.read() as txn:
        record = records.get_record(store, txn, found["registry"], found["record"])
    if record is None:
        return
    settled = resolver.FieldConflict(path=found["path"], rule="manual", status="resolved",
                                     value=None if removed else value, removed=removed, writes=found["writes"])
    refusal = disputes.settlement_refusal(record, settled, catalog)
    if refusal is not None:
        raise refusal


# ---------------------------------------------------------------- the two kinds


def _field_dispute(store: Store, txn: Any, trust: TrustState, dispute: str, registry: str, record_id: str, *,
                   detailed: bool, catalog: SchemaCatalog | None = None) -> dict[str, Any] | None:
    record = records.get_record(store, txn, registry, record_id)
    if record is None:
        return None
    conflict = next((c for c in record["conflicts"] if c.get("dispute") == dispute), None)
    if conflict is None:
        return None
    try:
        desc = regs.lookup(store, txn, registry)
    except RegistryError:
        return None
    out: dict[str, Any] = {
        "id": dispute, "type": "field", "status": conflict["status"], "registry": registry, "record": record_id,
        "path": conflict["path"], "rule": conflict["rule"], "shows": None if conflict["removed"] else conflict["value"],
        "removed": conflict["removed"], "resolved_by": conflict.get("resolved_by"),
        "writes": conflict["writes"], "registry_owner": desc.owner, "record_owner": record["owner"],
    }
    if detailed:
        before = _value_before(store, txn, registry, record_id, conflict)
        out["was"] = None if before is ABSENT else before
        out["diff"] = disputes.field_diff(out["was"], conflict["writes"])
        # While the record shows the dispute open, no resolution counts,
        # whoever filed it: one whose value would leave the record outside
        # its kind is set aside (engine/settle.py _schema_breaking).
        resolved = conflict["status"] == "resolved"

        def counts(author: str | None, at: int, fields: dict[str, Any]) -> bool:
            # As engine/settle.py decides: its author may, it decides a value,
            # and the record stays sound with it.
            if not (resolved and fields.get("outcome") == "value" and access.may_resolve(
                    trust, author, at, registry_owner=desc.owner, owners=(record["owner"],))):
                return False
            removed = bool(fields.get("removed"))
            settled = resolver.FieldConflict(path=conflict["path"], rule="manual", status="resolved",
                                             value=None if removed else fields.get("value"), removed=removed,
                                             writes=conflict["writes"])
            return catalog is None or disputes.settlement_refusal(record, settled, catalog) is None

        out["resolutions"] = _resolutions(store, txn, dispute, counts)
    return out


def _equivocation(store: Store, txn: Any, trust: TrustState, report: dict[str, Any], *,
                  detailed: bool) -> dict[str, Any]:
    fields = report["fields"]
    author = fields["author"]
    orgs = set(trust.orgs_of(author, report["created_at"] or 0)) | {author}

    def counts(by: str | None, at: int, fields: dict[str, Any]) -> bool:
        return fields.get("outcome") == "quarantine" and access.may_resolve(trust, by, at, registry_owner=None,
                                                                             owners=orgs)

    resolutions = _resolutions(store, txn, report["id"], counts)
    out: dict[str, Any] = {
        "id": report["id"], "type": "equivocation",
        "status": "resolved" if any(r["counts"] for r in resolutions) else "quarantined",
        "author": author, "author_orgs": sorted(orgs), "registry": fields["registry"], "seq": fields["seq"],
        "reported_by": report["created_by"], "reported_at": report["created_at"],
        "quarantine": f"{author}'s changes in {fields['registry']} from #{fields['seq']} on do not count",
    }
    if detailed:
        try:
            found = disputes.read_report(report["id"], fields)
            out["changes"] = [disputes.describe_change(e) for e in found.envelopes]
            out["envelopes"] = fields["envelopes"]
            out["why"] = disputes.why(found)
        except RegistryError as exc:
            out["changes"], out["error"] = [], exc.message
            out["why"] = f"the report does not hold: {exc.message}"
        out["resolutions"] = resolutions
    return out


def _reports(store: Store, txn: Any) -> Iterator[dict[str, Any]]:
    """Every report record, then every report kept only refused (its filer
    could not write grid.disputes): it quarantines all the same, so it is
    listed, read from its change."""
    yield from records.iter_records(store, txn, registry=disputes.DISPUTES_REGISTRY, kind=disputes.REPORT_KIND)
    for record_id in records.refused_record_ids(store, txn, disputes.DISPUTES_REGISTRY):
        if records.get_record(store, txn, disputes.DISPUTES_REGISTRY, record_id) is None:
            report = _refused_report(store, txn, record_id)
            if report is not None:
                yield report


def _refused_report(store: Store, txn: Any, record_id: str) -> dict[str, Any] | None:
    """A report no record holds, as a record would show it, from the first
    of its refused creates whose evidence holds."""
    for cid in sorted(records.refused_changes(store, txn, disputes.DISPUTES_REGISTRY, record_id).values()):
        env = changes.envelope(store, txn, cid)
        found = disputes.report_in(env) if env is not None else None
        if found is not None:
            return {"id": record_id, "kind": disputes.REPORT_KIND, "fields": disputes.report_fields(*found.envelopes),
                    "created_by": env.body.author, "created_at": env.body.hlc[0]}
    return None


def _resolutions(store: Store, txn: Any, dispute: str,
                 counts: Callable[[str | None, int, dict[str, Any]], bool]) -> list[dict[str, Any]]:
    found = []
    for rec in records.iter_records(store, txn, registry=disputes.DISPUTES_REGISTRY, tag=dispute):
        fields = rec["fields"]
        if rec["kind"] != disputes.RESOLUTION_KIND or fields.get("dispute") != dispute:
            continue
        found.append({"id": rec["id"], "change": rec["change_id"], "by": rec["created_by"],
                      "at": rec["created_at"], "hlc": rec["updated_hlc"], "outcome": fields.get("outcome"),
                      "value": fields.get("value"), "removed": bool(fields.get("removed")),
                      "note": fields.get("note", ""), "counts": counts(rec["created_by"], rec["created_at"] or 0, fields)})
    return sorted(found, key=lambda r: (r["hlc"], r["change"]))


def _value_before(store: Store, txn: Any, registry: str, record_id: str, conflict: dict[str, Any]) -> Any:
    """The value the first of the competing writes replaced: the field as its
    author saw it."""
    stored = records.get_document(store, txn, registry, record_id)
    writes = [w for w in conflict["writes"] if w.get("change")]
    if stored is None or not writes:
        return ABSENT
    first = min(writes, key=lambda w: (w["hlc"], w["change"]))
    try:
        env = changes.envelope(store, txn, cid_from_str(first["change"]))
    except RegistryError:
        return ABSENT
    if env is None:
        return ABSENT
    doc = RecordDoc.load(doc_bytes(stored)).doc
    return value_at(doc, tuple(unpointer(conflict["path"])), list(env.body.deps))
