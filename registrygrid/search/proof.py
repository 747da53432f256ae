"""Checking a record another node sent: rebuilt here from its signed changes.

A federated search hit (protocol/federated_search.py) carries a record's
changes, not the record. ``rebuild_record`` opens each one (its batch
signature, its canonical form), checks that each is a change of this
record, judges each signer's right to make it by this node's trust state,
the registry's descriptor and the access policies at the change's own
time (trust/access.py, as ingest does), replays them (the create's
snapshot, then each Automerge change on the one before), and builds the
record from the result (engine/commit.py ``materialized``). So what it
shows was signed by writers with standing, and nothing of the peer's own
making.

What it cannot check alone, and does not pretend to:

* that no later change exists: a peer can be behind, or leave changes out,
  as any replica can; the answer says how far each peer's index got;
* a record whose history forked (two edits made concurrently): the
  registry's conflict policy settles a fork (crdt/resolver.py) with
  history a hit does not carry, so such a record is refused here
  (``Unverifiable``) and shown by nodes that hold its registry.

No trio and no network: node/federated_search.py calls it on a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from registrygrid.crdt.record import RecordDoc
from registrygrid.crdt.snapshot import genesis_change, read_snapshot
from registrygrid.engine import registries as regs
from registrygrid.engine.commit import materialized
from registrygrid.engine.ingest import check_automerge_header
from registrygrid.errors import RegistryError, Unverifiable
from registrygrid.protocol.envelope import Envelope, open_envelope
from registrygrid.trust import access
from registrygrid.trust.state import Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY, read_statement


def rebuild_record(engine: Any, registry: str, record_id: str, wires: Sequence[bytes]) -> dict[str, Any]:
    """The record ``wires`` (its changes, create first, each after those it
    depends on) make, judged by ``engine``'s trust state, descriptors and
    policies; Unverifiable saying why not."""
    if not wires:
        raise Unverifiable("it sent none of the record's changes")
    try:
        envelopes = [open_envelope(wire) for wire in wires]
    except RegistryError as exc:  # a forged or damaged change: its signature or its form
        raise Unverifiable(f"a change does not verify: {exc.code}: {exc.message}") from None
    ids = set()
    for env in envelopes:
        body = env.body
        if (body.registry, body.record) != (registry, record_id):
            raise Unverifiable(f"change {env.id} is of {body.registry}/{body.record}, not {registry}/{record_id}")
        if env.cid in ids:
            raise Unverifiable(f"change {env.id} was sent twice")
        ids.add(env.cid)
    try:
        with engine.store.read() as txn:
            desc = regs.lookup(engine.store, txn, registry)
        record = _replay(engine, desc, envelopes)
    except Unverifiable:
        raise
    except RegistryError as exc:
        raise Unverifiable(f"{exc.code}: {exc.message}") from None
    if record["deleted"]:
        raise Unverifiable(f"its changes delete {registry}/{record_id}")
    return record


def _replay(engine: Any, desc: regs.RegistryDescriptor, envelopes: list[Envelope]) -> dict[str, Any]:
    genesis = envelopes[0].body
    if not genesis.is_genesis:
        raise Unverifiable(f"its first change ({envelopes[0].id}) is not the record's create")
    if genesis.kind not in desc.kinds:
        raise Unverifiable(f"registry {desc.name} does not hold kind {genesis.kind!r}")
    doc: RecordDoc | None = None
    if genesis.is_snapshot:
        state = read_snapshot(genesis.payload, kind=genesis.kind, schema=genesis.schema)
    else:  # a create of wire format 1: an Automerge change of its own
        check_automerge_header(genesis)
        doc = RecordDoc.apply(None, genesis.payload)
        state = doc.materialize()
    created = state.get("created") if isinstance(state.get("created"), dict) else {}
    statement = read_statement(genesis.kind, genesis.record, state["fields"]) \
        if desc.name == MEMBERS_REGISTRY else None
    _check_signer(engine, envelopes[0], access.check_create(
        engine.trust.at_place(genesis.author, genesis.registry, genesis.seq), desc, author=genesis.author, record_id=genesis.record, owner=state.get("owner"),
        created_by=created.get("by"), at_ms=genesis.hlc[0], statement=statement, policy=engine.policy,
        kind=genesis.kind, fields=state.get("fields")))
    record = materialized(state, envelopes[0], None)
    for env in envelopes[1:]:
        body = env.body
        if body.is_genesis:
            raise Unverifiable(f"a second create ({env.id}): two creates raced, and its history forked")
        if body.kind != genesis.kind:
            raise Unverifiable(f"change {env.id} turns a {genesis.kind!r} record into {body.kind!r}")
        check_automerge_header(body)
        if doc is None:
            doc = RecordDoc.apply(None, genesis_change(state, genesis.author).raw_bytes)
        if sorted(body.deps) != sorted(doc.heads()):
            # Built on less (or other) than all the changes before it: a
            # concurrent edit, which the registry's conflict policy settles.
            raise Unverifiable(f"change {env.id} was made concurrently with another: its history forked, and "
                               "only a node holding the registry settles it")
        doc = RecordDoc.apply(doc.save(), body.payload)
        after = doc.materialize()
        _check_signer(engine, env, access.check_modify(
            engine.trust.at_place(body.author, body.registry, body.seq), desc, op=body.op, author=body.author, before=record, after=after, at_ms=body.hlc[0],
            policy=engine.policy))
        record = materialized(after, env, record)
    return record


def _check_signer(engine: Any, env: Envelope, verdict: Verdict) -> None:
    """The signer had standing for this change (``verdict``: its access
    judgement, a refusal raised already) and was not revoked or
    quarantined at its sequence number."""
    body = env.body
    if verdict is Verdict.WAIT:
        raise Unverifiable(f"the delegation of {body.author}, who signed change {env.id}, is not known here")
    if body.registry != MEMBERS_REGISTRY:  # statements carry their own authority
        engine.trust.check_chain(body.author, body.registry, body.seq)
