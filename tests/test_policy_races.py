"""Property: records are a pure function of the set of changes when versions
of an access policy RACE (two nodes of the registry owner's org edit the
policy without having seen each other's edit).

Three nodes: A (federation admin org), B1 and B2 (two keys of the member org
that owns b.models and its access policy "p"). Random steps: policy
put/edit/delete by B1 or B2, record creates/updates/deletes by anyone, and
partial syncs between random pairs. Then: (1) after full sync rounds the
three nodes hold the same records and changes; (2) fresh replicas fed every
change in random orders / batchings (with duplicates) end with the same
records; (3) grid.policies/p is the same everywhere; (4) a create made
strictly after every policy change (by ms) is present exactly when the final
policy allows it (4a: only where every node had seen every policy change
before the create; 4b: every such create, as docs/trust.md states it).

MAX_EXAMPLES (env) sets the number of histories (default 15)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import open_envelope
from registrygrid.record import replicated_content
from registrygrid.sdk import LocalRegistry
from tests.test_policy import ADMIN_ORG, GENESIS, MEMBER_ORG, MODELS, deliver, node, wires
from tests.test_policy_versions import edit_record, random_batches

RULES = {
    "pricing-b-only": {"id": "pricing-b-only", "effect": "forbid", "actions": ["create", "update"],
                       "fields": ["pricing"], "except": {"orgs": [MEMBER_ORG.did]}},
    "no-delete": {"id": "no-delete", "effect": "forbid", "actions": ["delete"]},
    "no-create": {"id": "no-create", "effect": "forbid", "actions": ["create"]},
    "no-update": {"id": "no-update", "effect": "forbid", "actions": ["update"]},
    "curate": {"id": "curate", "effect": "permit", "actions": ["update"], "subjects": {"roles": ["federation-admin"]}},
}
RULE_NAMES = sorted(RULES)
NODES = ("a", "b1", "b2")
PAIRS = [(x, y) for x in NODES for y in NODES if x < y]


def policy_fields(rule_names: frozenset[str]) -> dict[str, Any]:
    return {"name": "p", "policy_type": "access", "targets": [MODELS],
            "access": {"rules": [RULES[n] for n in sorted(rule_names)]}}


step = st.one_of(
    st.tuples(st.just("policy"), st.sampled_from(["b1", "b2"]), st.sampled_from(["put", "edit", "edit", "delete"]),
              st.frozensets(st.sampled_from(RULE_NAMES), min_size=1, max_size=3)),
    st.tuples(st.just("create"), st.sampled_from(NODES), st.booleans()),  # with pricing?
    st.tuples(st.just("update"), st.sampled_from(NODES), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from(NODES), st.integers(0, 7)),
    st.tuples(st.just("sync"), st.sampled_from(PAIRS), st.sampled_from(["<", ">", "<>"])),
)
history_st = st.lists(st.tuples(step, st.sampled_from([True, True, True, False])), min_size=6, max_size=16)


def stored(grid: LocalRegistry) -> frozenset[bytes]:
    """Every change the node stores, applied or kept refused as evidence
    (the feed, ``wires``, lists only changes that were applied at some time,
    so a change refused on arrival is stored but not listed)."""
    from registrygrid.storage import changes
    with grid.store.read() as txn:
        out = [changes.wire(grid.store, txn, cid) for cid in changes.iter_ids(grid.store, txn)]
    return frozenset(w for w in out if w)


def new_wires(grid: LocalRegistry, known: set[bytes]) -> list[bytes]:
    return [w for w in wires(grid) if w not in known]


def policy_raw(grid: LocalRegistry) -> Any:
    try:
        return grid.get("grid.policies", "p", include_deleted=True)
    except RegistryError:
        return None


def policy_record(grid: LocalRegistry) -> Any:
    try:
        return replicated_content(grid.get("grid.policies", "p", include_deleted=True))
    except RegistryError as e:
        return type(e).__name__


def rules_of(record: Any) -> frozenset[str] | None:
    """The rule names a materialized policy record holds; None if none/deleted."""
    if not isinstance(record, dict) or record.get("deleted"):
        return None
    access = (record.get("fields") or {}).get("access") or {}
    return frozenset(r["id"] for r in access.get("rules") or ())


def run_history(grids: dict[str, LocalRegistry], history: list[Any], log: list[str]) -> dict[str, Any]:
    ids: list[str] = ["m1"]
    creates: list[dict[str, Any]] = []
    versions: list[tuple[tuple[int, int], str, frozenset[str] | None]] = []  # clock, author, rules (None: deleted)
    policy_wires: set[bytes] = set()
    counter = 0
    races = 0
    for (op, *args), gap in history:
        if gap:
            time.sleep(0.002)
        try:
            if op == "policy":
                who, how, rules = args
                g = grids[who]
                known = set(wires(g))
                raced = not policy_wires <= stored(g)  # an edit made without seeing another one
                live = rules_of(policy_raw(g)) is not None
                if not live:  # absent or deleted here: (re)create
                    g.put("grid.policies", "policy", policy_fields(rules), id="p")
                    how = "put"
                elif how == "delete":
                    g.delete("grid.policies", "p")
                    rules = None
                else:
                    g.update("grid.policies", "p", fields=policy_fields(rules))
                made = [(w, open_envelope(w).body) for w in new_wires(g, known)]
                made = [(w, x) for w, x in made if x.registry == "grid.policies"]
                assert len(made) <= 1, made
                if not made:
                    log.append(f"{who} policy {how} unchanged")
                    continue
                policy_wires.add(made[0][0])
                races += raced
                versions.append((tuple(made[0][1].hlc), who, rules))
                log.append(f"{who} policy {how} {sorted(rules) if rules is not None else None} @ {made[0][1].hlc}"
                           + (" RACED" if raced else ""))
            elif op == "create":
                who, pricing = args
                counter += 1
                rid = f"{who}x{counter}"
                fields = {"name": rid, **({"pricing": {"per_call": counter}} if pricing else {})}
                g = grids[who]
                known = set(wires(g))
                seen_by_all = all(policy_wires <= stored(x) for x in grids.values())
                g.put(MODELS, "tool", fields, id=rid)
                made = [open_envelope(w).body for w in new_wires(g, known)]
                made = [x for x in made if x.registry == MODELS and x.record == rid]
                assert len(made) == 1
                ids.append(rid)
                creates.append({"id": rid, "who": who, "pricing": pricing, "hlc": tuple(made[0].hlc),
                                "seen_by_all": seen_by_all})
                log.append(f"{who} create {rid} pricing={pricing} @ {made[0].hlc} policy-seen-by-all={seen_by_all}")
            elif op in ("update", "delete"):
                counter += op == "update"
                log.append(edit_record(grids, op, args, ids, counter))
            else:
                (x, y), how = args
                if "<" in how:
                    deliver(grids[x], grids[y])
                if ">" in how:
                    deliver(grids[y], grids[x])
                log.append(f"sync {x}{how}{y}")
        except RegistryError as refused:  # PolicyDenied, NotOwner, NotFound, AlreadyExists...
            log.append(f"refused {op} {args}: {type(refused).__name__}: {str(refused)[:80]}")
    event(f"policy races: {min(races, 3)}{'+' if races > 3 else ''}")
    return {"creates": creates, "versions": versions, "races": races}


def forbidden_create(rules: frozenset[str] | None, author: str, pricing: bool) -> bool:
    if not rules:
        return False
    return "no-create" in rules or ("pricing-b-only" in rules and pricing and author == "a")


def present(grid: LocalRegistry, rid: str) -> bool:
    try:
        grid.get(MODELS, rid, include_deleted=True)
        return True
    except RegistryError:
        return False


def converge(grids: dict[str, LocalRegistry]) -> None:
    for _ in range(5):
        for x, y in PAIRS:
            deliver(grids[x], grids[y])
            deliver(grids[y], grids[x])
        sets = [stored(g) for g in grids.values()]
        digests = {g.state_digest() for g in grids.values()}
        if len(set(sets)) == 1 and len(digests) == 1:
            return


def show_record(g: LocalRegistry, registry: str, rid: str) -> Any:
    try:
        r = g.get(registry, rid, include_deleted=True)
        return (r["deleted"], r["fields"])
    except RegistryError as e:
        return type(e).__name__


def explain(grids: dict[str, LocalRegistry], facts: dict[str, Any], log: list[str]) -> str:
    lines = ["history:", *("  " + x for x in log), "versions: " + repr(facts["versions"]), "records:"]
    for rid in sorted({"m1", *(c["id"] for c in facts["creates"])}):
        lines.append(f"  {rid}: " + " | ".join(f"{n}={show_record(g, MODELS, rid)}" for n, g in grids.items()))
    lines.append("  p: " + " | ".join(f"{n}={show_record(g, 'grid.policies', 'p')}" for n, g in grids.items()))
    return "\n".join(lines)


@pytest.mark.timeout(600)
@settings(max_examples=int(os.environ.get("MAX_EXAMPLES", "15")), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(history=history_st, data=st.data())
def test_records_are_a_pure_function_of_the_changes_when_policy_versions_race(history: list[Any], data: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        grids = {"a": node(Path(root) / "a", ADMIN_ORG), "b1": node(Path(root) / "b1", MEMBER_ORG),
                 "b2": node(Path(root) / "b2", MEMBER_ORG)}
        log: list[str] = []
        facts: dict[str, Any] = {"creates": [], "versions": []}
        try:
            grids["b1"].create_registry(MODELS, ["tool"])
            grids["b1"].put(MODELS, "tool", {"name": "m1", "pricing": {"per_call": 1}}, id="m1")
            converge(grids)
            facts = run_history(grids, history, log)
            converge(grids)
            # (1) the authors converge
            wire_sets = {n: stored(g) for n, g in grids.items()}
            assert len(set(wire_sets.values())) == 1, "stored changes differ\n" + explain(grids, facts, log)
            digests = {n: g.state_digest() for n, g in grids.items()}
            assert len(set(digests.values())) == 1, f"digests differ {digests}\n" + explain(grids, facts, log)
            digest = digests["a"]
            # (3) the policy record is the same on every node
            p_final = {n: policy_record(g) for n, g in grids.items()}
            assert p_final["a"] == p_final["b1"] == p_final["b2"], "policy p differs\n" + explain(grids, facts, log)
            final_rules = rules_of(policy_raw(grids["a"]))
            # (4) creates made strictly after every policy change follow the final policy
            last_ms = max((v[0][0] for v in facts["versions"]), default=-1)
            for c in facts["creates"]:
                if c["hlc"][0] <= last_ms:
                    continue
                forbidden = forbidden_create(final_rules, c["who"], c["pricing"])
                event(f"oracle (4{'a' if c['seen_by_all'] else 'b'}) checked, forbidden={forbidden}")
                for n, g in grids.items():
                    tag = "4a" if c["seen_by_all"] else "4b"
                    assert present(g, c["id"]) is (not forbidden), (
                        f"({tag}) {c['id']} by {c['who']} pricing={c['pricing']} @ {c['hlc']} on {n}: present="
                        f"{present(g, c['id'])}, final rules {sorted(final_rules or ())} say forbidden={forbidden}\n"
                        + explain(grids, facts, log))
            # (2) fresh replicas, every change in random orders / batchings, with duplicates
            everything = sorted(set().union(*wire_sets.values()))
            n_replicas = data.draw(st.integers(2, 3), label="replicas")
            for i in range(n_replicas):
                batches = random_batches(data, everything, i)
                with LocalRegistry.open_path(Path(root) / f"r{i}", federation=GENESIS) as replica:
                    for batch in batches:
                        replica.execute([Remote(w, "p") for w in batch])
                    got = replica.state_digest()
                    if got != digest:
                        diff = []
                        for rid in sorted({"m1", *(c["id"] for c in facts["creates"])}):
                            if show_record(replica, MODELS, rid) != show_record(grids["a"], MODELS, rid):
                                diff.append((rid, "replica", show_record(replica, MODELS, rid),
                                             "authors", show_record(grids["a"], MODELS, rid)))
                        if policy_record(replica) != p_final["a"]:
                            diff.append(("p", "replica", policy_record(replica), "authors", p_final["a"]))
                        raise AssertionError(f"replica {i} ({len(batches)} batches) diverged: {diff}\n"
                                             + explain(grids, facts, log))
        finally:
            for g in grids.values():
                g.close()
