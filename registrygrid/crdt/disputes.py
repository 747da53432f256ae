"""Disputes: what the conflict policy cannot settle alone, and their evidence.

Two kinds, both listed by ``rgrid disputes`` and ``/v1/disputes``:

* **Field disputes.** A field whose conflict rule is ``manual`` and whose
  concurrent writes differ (crdt/resolver.py). Every node derives the same
  dispute, with the same id, from the same changes, so opening one needs no
  message. It is answered by a signed ``dispute-resolution`` record in
  ``grid.disputes``, tagged with the dispute's id.
* **Equivocations.** An author that signed two different changes with one
  (registry, sequence). The node that sees both files an
  ``equivocation-report`` in ``grid.disputes`` holding both signed
  envelopes; every node that stores the report checks them itself
  (``read_report``), and then quarantines the author's changes in that
  registry from that sequence on. A change whose ``prev`` is not the ID of
  the author's change one sequence before it proves the same of that
  sequence (it names a second change there), so that pair is a report too:
  peers that only sync never meet two changes with one sequence, since a
  version vector asks for the positions after the ones held.

Sans-IO: ids, evidence encoding and checking, and the human-readable diff.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from registrygrid.errors import RegistryError, ValidationError
from registrygrid.protocol import base32
from registrygrid.protocol.envelope import Envelope, open_envelope

DISPUTES_REGISTRY = "grid.disputes"
RESOLUTION_KIND = "dispute-resolution"
REPORT_KIND = "equivocation-report"
# The report's schema bound on each base64 envelope (equivocation-report.v1.json):
# two of them fit a record (protocol.limits.MAX_RECORD_BYTES, 128 KiB).
MAX_EVIDENCE_CHARS = 60_000


def equivocation_id(author: str, registry: str, seq: int, change_ids: Sequence[str]) -> str:
    """The id every node gives the dispute over one equivocation."""
    text = "\0".join(["equivocation", author, registry, str(seq), *sorted(change_ids)])
    return "dispute-" + base32.encode_bytes(hashlib.sha256(text.encode()).digest()[:20])


@dataclass(frozen=True)
class Equivocation:
    """Two authenticated envelopes of one author in one registry that cannot
    both be in its chain: two with sequence ``seq``, or change ``seq`` and a
    change ``seq + 1`` whose ``prev`` names another change ``seq``."""

    author: str
    registry: str
    seq: int
    envelopes: tuple[Envelope, Envelope]

    @property
    def dispute(self) -> str:
        return equivocation_id(self.author, self.registry, self.seq, [e.id for e in self.envelopes])


def report_fields(first: Envelope, second: Envelope) -> dict[str, Any]:
    """The fields of an equivocation report over two changes that prove a
    fork (``proves_fork``); ValidationError if the evidence does not fit a
    record (then no report is filed: the refusal is still counted and
    audited where it was seen)."""
    pair = sorted((first, second), key=lambda e: e.id)
    wires = [base64.b64encode(e.wire).decode() for e in pair]
    if any(len(w) > MAX_EVIDENCE_CHARS for w in wires):
        raise ValidationError("the two envelopes are too large to file as an equivocation report")
    body = first.body
    return {"author": body.author, "registry": body.registry, "seq": min(first.body.seq, second.body.seq),
            "changes": [e.id for e in pair], "envelopes": wires}


def proves_fork(first: Envelope, second: Envelope) -> bool:
    """Whether two changes of one author in one registry cannot both be in
    its chain: they differ with one sequence, or the later of two adjacent
    ones names as its ``prev`` a change other than the earlier."""
    a, b = sorted((first, second), key=lambda e: e.body.seq)
    if (a.body.author, a.body.registry) != (b.body.author, b.body.registry) or a.id == b.id:
        return False
    return a.body.seq == b.body.seq or (b.body.seq == a.body.seq + 1 and b.body.prev != a.cid)


def why(found: Equivocation) -> str:
    """Why the report's two changes prove that its author signed two changes
    with one sequence, in words."""
    a, b = sorted(found.envelopes, key=lambda e: e.body.seq)
    if a.body.seq == b.body.seq:
        return (f"both changes are signed by {found.author} with sequence {found.seq} in {found.registry}, "
                f"but they differ ({a.id} vs {b.id}): a key signs one change per sequence, "
                "so two mean a cloned key or a faulty node")
    return (f"change #{b.body.seq} ({b.id}), signed by {found.author} in {found.registry}, names as its "
            f"predecessor a change other than its #{a.body.seq} ({a.id}): the key signed two changes with "
            f"sequence {found.seq}, which means a cloned key or a faulty node")


def read_report(record_id: str, fields: Mapping[str, Any]) -> Equivocation:
    """The equivocation a report proves, after checking it as its own
    evidence: both envelopes decode and their signatures hold, both are the
    named author's with the named registry and sequence, they differ, and
    the record's id is the dispute's. A ValidationError says what fails."""
    try:
        envelopes = tuple(open_envelope(base64.b64decode(w, validate=True)) for w in fields["envelopes"])
    except RegistryError as exc:
        raise ValidationError(f"an equivocation report's envelope does not verify: {exc.message}") from None
    except (ValueError, TypeError, KeyError):
        raise ValidationError("an equivocation report's envelopes must be two base64 envelopes") from None
    first, second = envelopes
    for env in envelopes:
        body = env.body
        if (body.author, body.registry) != (fields["author"], fields["registry"]) \
                or body.seq not in (fields["seq"], fields["seq"] + 1):
            raise ValidationError("an equivocation report's envelopes must both be the named author's, in the "
                                  "named registry, with the named sequence (or the one after it)")
    if first.id == second.id:
        raise ValidationError("an equivocation report needs two different changes")
    if min(first.body.seq, second.body.seq) != fields["seq"] or not proves_fork(first, second):
        raise ValidationError("an equivocation report needs two changes with the named sequence, or one with it "
                              "and one after it whose prev names another change")
    if sorted(fields["changes"]) != sorted([first.id, second.id]):
        raise ValidationError("an equivocation report's change ids must be its envelopes' ids")
    found = Equivocation(fields["author"], fields["registry"], fields["seq"], (first, second))
    if record_id != found.dispute:
        raise ValidationError(f"an equivocation report's id must be its dispute's id ({found.dispute})")
    return found


def report_in(env: Envelope) -> Equivocation | None:
    """The equivocation a grid.disputes change files as a report, if it is
    the create of one whose evidence holds; else None. Read from the change
    itself: a report kept refused proves its equivocation all the same."""
    from registrygrid.crdt.snapshot import snapshot_state  # the snapshot codec imports the schemas

    body = env.body
    if body.registry != DISPUTES_REGISTRY or body.kind != REPORT_KIND or not body.is_snapshot:
        return None
    try:
        claim, _ = snapshot_state(body.payload, kind=body.kind, schema=body.schema)
        return read_report(body.record, claim["fields"])
    except (RegistryError, KeyError, TypeError):
        return None


def check_resolution(fields: Mapping[str, Any], tags: Sequence[str]) -> None:
    """A resolution is tagged with its dispute's id (so a node finds it by
    the tag index) and says what it decides."""
    if list(tags) != [fields["dispute"]]:
        raise ValidationError(f"a dispute resolution must carry exactly one tag, its dispute's id "
                              f"({fields['dispute']})")
    if fields["outcome"] == "value" and "value" not in fields and not fields.get("removed"):
        raise ValidationError("a resolution with outcome value needs a value, or removed: true")


def settlement_refusal(record: Mapping[str, Any], conflict: Any, catalog: Any) -> RegistryError | None:
    """Why the record would be unsound with ``conflict``'s resolution in
    place (``conflict``: a resolver.FieldConflict, its value the one
    decided), or None. Under ``/fields`` the fields must stay an object of
    the record's kind (SchemaViolation; a kind this node does not know is
    not judged). Elsewhere (the whole ``/links``, ``/tags`` or ``/created``
    two creates wrote) a resolution picks one of the values the concurrent
    writes made: nothing else is checked to be a record's links, tags or
    creation (ValidationError). A pure function of the record and the
    resolution, so every node judges it alike."""
    from registrygrid.crdt import resolver
    from registrygrid.errors import SchemaViolation

    path = resolver.unpointer(conflict.path)
    if path[:1] == ["fields"]:
        fields = resolver.apply({"fields": record.get("fields") or {}}, [conflict]).get("fields", resolver.ABSENT)
        if not isinstance(fields, dict):
            return SchemaViolation(f"resolving {conflict.path} this way leaves the record's fields "
                                   f"{'removed' if fields is resolver.ABSENT else 'not an object'}",
                                   details=[{"path": conflict.path, "message": "fields must be an object"}])
        try:
            catalog.validate(record.get("kind"), record.get("schema", 1), fields)
        except SchemaViolation as exc:
            return exc
        except RegistryError:
            return None  # a kind this node does not know (yet): its schema can't be judged here
        return None
    for write in conflict.writes:
        if conflict.removed and write.get("removed"):
            return None
        if not conflict.removed and not write.get("removed") and resolver.same(write.get("value"), conflict.value):
            return None
    return ValidationError(f"{conflict.path} is resolved by choosing one of the values its concurrent writes made "
                           "(`rgrid disputes show` lists them), not another value",
                           details=[{"path": conflict.path, "message": "not one of the written values"}])


def describe_change(env: Envelope) -> dict[str, Any]:
    """What a person needs to tell two changes apart."""
    body = env.body
    return {"change": env.id, "author": body.author, "registry": body.registry, "record": body.record,
            "op": body.op, "seq": body.seq, "hlc": list(body.hlc), "kind": body.kind, "size": len(env.wire)}


def field_diff(before: Any, writes: Sequence[Mapping[str, Any]]) -> list[str]:
    """A field dispute as lines a person reads: old -> each new value, who, when."""
    lines = [f"was: {short_json(before)}"]
    for write in writes:
        value = "(removed)" if write.get("removed") else short_json(write.get("value"))
        lines.append(f"-> {value}   by {write.get('author')} at hlc {write.get('hlc')} (change {write.get('change')})")
    return lines


def short_json(value: Any, limit: int = 120) -> str:
    """A value as compact JSON, cut to ``limit`` characters for a line of text."""
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= limit else text[:limit - 3] + "..."
