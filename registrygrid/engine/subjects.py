"""Records of built-in registries that speak of another registry's content
are served only where that registry may be read (docs/trust.md, "Private
registries").

An equivocation report (grid.disputes) carries both of a forked author's
signed changes, content and all; a dispute resolution the value a disputed
field takes; an erasure notice (grid.erasures) the erased record's id, its
reason and its authors' places. Built-in registries go to every member, so
for a private registry these went to every member too, whose nodes never
hold the registry itself. Now such a record goes only to the orgs that may
read the registry it speaks of (its *subject*), and never leaves the node
for a local one.

The record's changes still hold their places in their authors' chains in
the built-in registry: a responder names the places it keeps from a peer as
gone there (engine/gone.py), so the peer links past them and its author's
later changes go on; it asks for them on every sync, so a peer that lies
only delays them, and a reader added later gets them. Which orgs may read a
registry is its descriptor's word, the same on every node: what a record
is served to never depends on who serves it.

A record's subject is fixed by its create: the report's and the notice's
``registry``, and a resolution's (filed since 2026-12-06; one filed before
names only its dispute, whose records this node may know). A record with
no subject found (an older resolution of a dispute this node does not
know) goes to everyone, as before; one whose subject's descriptor this node
lacks goes to no one until it arrives.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

from registrygrid.crdt.disputes import DISPUTES_REGISTRY
from registrygrid.engine import registries as regs
from registrygrid.engine.erasure import ERASURES_REGISTRY
from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import open_envelope
from registrygrid.storage import changes, records
from registrygrid.storage.store import Store, Txn

SUBJECT_REGISTRIES = frozenset({DISPUTES_REGISTRY, ERASURES_REGISTRY})

# A record's subject could not be read from anything this node holds.
_UNKNOWN = ""


def subjects_of(store: Store, txn: Txn, registry: str, record_id: str, depth: int = 0) -> tuple[str | None, ...]:
    """The registries that record ``registry``/``record_id`` speaks of: from
    its materialized fields, or from its create (a create kept refused has
    no materialized record). Mostly one; a report of a fork in a subject
    registry carries two of its changes, and speaks of what they speak of.
    None: it names none (a resolution filed before they did, of a dispute
    this node does not know); _UNKNOWN: nothing held says."""
    fields = _fields_of(store, txn, registry, record_id)
    return (_UNKNOWN,) if fields is None else _named_in(store, txn, fields, depth)


def _named_in(store: Store, txn: Txn, fields: dict[str, Any], depth: int) -> tuple[str | None, ...]:
    named = fields.get("registry")
    if isinstance(named, str):
        evidence = fields.get("envelopes")
        if named not in SUBJECT_REGISTRIES or not isinstance(evidence, list):
            return (named,)
        # A fork of a filer's chain of reports or notices: its two changes
        # carry what they speak of (a private resolution's value), base64.
        if depth >= _MAX_DEPTH:
            return (_UNKNOWN,)
        found: list[str | None] = []
        for text in evidence:
            found += _carried(store, txn, text, depth + 1)
        return tuple(found) or (_UNKNOWN,)
    dispute = fields.get("dispute")
    if isinstance(dispute, str):
        disputing = records.records_disputing(store, txn, dispute)
        if disputing:
            return (disputing[0][0],)
    return (None,)


def _carried(store: Store, txn: Txn, text: Any, depth: int) -> tuple[str | None, ...]:
    """What a change a report carries speaks of: its own fields if it is a
    create, else its record's as held here."""
    from registrygrid.crdt.snapshot import snapshot_state  # the snapshot codec imports the schemas

    try:
        body = open_envelope(base64.b64decode(text, validate=True), verify=False).body
    except (RegistryError, ValueError, TypeError):
        return (_UNKNOWN,)
    if body.registry not in SUBJECT_REGISTRIES:
        return (body.registry,)
    if body.is_snapshot:
        try:
            claim, _ = snapshot_state(body.payload, kind=body.kind, schema=body.schema)
        except (RegistryError, KeyError, TypeError, ValueError):
            return (_UNKNOWN,)
        if isinstance(claim.get("fields"), dict):
            return _named_in(store, txn, claim["fields"], depth)
        return (_UNKNOWN,)
    return subjects_of(store, txn, body.registry, body.record, depth)


# A report of a fork of reports of forks...: past this, sent to no one.
_MAX_DEPTH = 3


def _fields_of(store: Store, txn: Txn, registry: str, record_id: str) -> dict[str, Any] | None:
    record = records.get_record(store, txn, registry, record_id)
    if record is not None and isinstance(record.get("fields"), dict):
        return record["fields"]
    from registrygrid.crdt.snapshot import snapshot_state  # the snapshot codec imports the schemas

    held = {**records.applied_changes(store, txn, registry, record_id),
            **records.refused_changes(store, txn, registry, record_id)}
    for cid in held.values():
        env = changes.envelope(store, txn, cid)
        if env is None or not env.body.is_snapshot:
            continue
        try:
            claim, _ = snapshot_state(env.body.payload, kind=env.body.kind, schema=env.body.schema)
        except (RegistryError, KeyError, TypeError, ValueError):
            continue
        if isinstance(claim.get("fields"), dict):
            return claim["fields"]
    return None


def may_serve(store: Store, txn: Txn, subject: str | None, reader: str | None) -> bool:
    """May a record speaking of ``subject`` go to nodes of org ``reader``
    (None: to every member at once, as gossip does)?"""
    if subject is None:
        return True
    if subject == _UNKNOWN:
        return False
    try:
        desc = regs.lookup(store, txn, subject, include_deleted=True)
    except RegistryError:
        return False  # its descriptor has not arrived here: served once it has
    if reader is None:
        return desc.replication not in ("private", "local")
    return desc.readable_by(reader)


class Withheld:
    """Which stored changes of the subject registries go not to ``reader``
    (an org; None: every member, for gossip), judged record by record and
    remembered for one answer (one read transaction's worth of work)."""

    def __init__(self, store: Store, reader: str | None, metrics: Counter[str] | None = None) -> None:
        self.store = store
        self.reader = reader
        self._judged: dict[tuple[str, str], bool] = {}
        self.metrics = metrics  # counts the changes kept back (sync.subject_withheld), where given

    def record(self, txn: Txn, registry: str, record_id: str) -> bool:
        """Whether ``registry``/``record_id``'s changes are kept from the reader."""
        if registry not in SUBJECT_REGISTRIES:
            return False
        key = (registry, record_id)
        kept = self._judged.get(key)
        if kept is None:
            kept = self._judged[key] = not all(
                may_serve(self.store, txn, subject, self.reader)
                for subject in subjects_of(self.store, txn, registry, record_id))
        return kept

    def wire(self, txn: Txn, wire: bytes) -> bool:
        """Whether the stored change ``wire`` is kept from the reader (counted)."""
        body = open_envelope(wire, verify=False).body
        kept = self.record(txn, body.registry, body.record)
        if kept and self.metrics is not None:
            self.metrics["sync.subject_withheld"] += 1
        return kept

    def change(self, txn: Txn, cid: bytes) -> bool:
        """Whether stored change ``cid`` is kept from the reader (one whose
        bytes are gone here is sent to no one anyway)."""
        body = changes.body(self.store, txn, cid)
        return body is not None and self.record(txn, body.registry, body.record)




class ServedTo:
    """The engine as a sync responder sees it when it answers a node of org
    ``reader`` (protocol/sync.py ChangeSource): the subject registries'
    changes kept from that org are neither sent, nor sent by ID, nor shown
    as forks, and their places are named gone (``Engine.gone_places``)."""

    def __init__(self, engine: Any, reader: str) -> None:
        self.engine = engine
        self.reader = reader
        self.withheld = Withheld(engine.store, reader, engine.metrics)

    def replicated_vector(self, registries: Any, *, reader: str | None = None) -> Any:
        return self.engine.replicated_vector(registries, reader=self.reader)

    def envelopes_after(self, registry: str, author: str, after_seq: int, *, limit: int,
                        max_bytes: int) -> list[bytes]:
        return self.engine.envelopes_after(registry, author, after_seq, limit=limit, max_bytes=max_bytes,
                                           withheld=self.withheld)

    def gone_places(self, lacking: Any) -> Any:
        return self.engine.gone_places(lacking, withheld=self.withheld)

    # Judged before each change counts against the answer's bytes: withheld
    # ones filtered after took the whole budget, and what the reader may
    # have never came.
    def other_links(self, vector: Any, heads: Any, *, max_bytes: int) -> list[bytes]:
        return self.engine.other_links(vector, heads, max_bytes=max_bytes, withheld=self.withheld)

    def unreported_forks(self, registries: Any, *, max_bytes: int) -> list[bytes]:
        return self.engine.unreported_forks(registries, max_bytes=max_bytes, withheld=self.withheld)

    def wanted_links(self, wanted: Any, *, max_bytes: int) -> list[bytes]:
        return self.engine.wanted_links(wanted, max_bytes=max_bytes, withheld=self.withheld)
