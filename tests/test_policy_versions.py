"""Property: records are a pure function of the set of changes, under
per-version access policies (each version of a policy judges the changes
whose clock falls while it stood).

Random histories on two authors (A: federation admin; B: owns b.models and
its access policy "p"), then: the authors converge; fresh replicas fed every
change in random orders / batchings (with duplicates) end with the authors'
records; and record creates are present/absent as the version of the policy
in force at their clock says."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import open_envelope
from registrygrid.sdk import LocalRegistry
from tests.test_policy import ADMIN_ORG, GENESIS, MEMBER_ORG, MODELS, deliver, node, wires

RULES = {
    "pricing-b-only": {"id": "pricing-b-only", "effect": "forbid", "actions": ["create", "update"],
                       "fields": ["pricing"], "except": {"orgs": [MEMBER_ORG.did]}},
    "no-delete": {"id": "no-delete", "effect": "forbid", "actions": ["delete"]},
    "no-create": {"id": "no-create", "effect": "forbid", "actions": ["create"]},
    "curate": {"id": "curate", "effect": "permit", "actions": ["update"], "subjects": {"roles": ["federation-admin"]}},
}
RULE_NAMES = sorted(RULES)


def policy_fields(rule_names: frozenset[str] | tuple[str, ...]) -> dict[str, Any]:
    return {"name": "p", "policy_type": "access", "targets": [MODELS],
            "access": {"rules": [RULES[n] for n in sorted(rule_names)]}}


step = st.one_of(
    st.tuples(st.just("policy"), st.sampled_from(["put", "edit", "delete"]),
              st.frozensets(st.sampled_from(RULE_NAMES), min_size=1)),
    st.tuples(st.just("create"), st.sampled_from("ab"), st.booleans()),  # with pricing?
    st.tuples(st.just("update"), st.sampled_from("ab"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("delete"), st.sampled_from("ab"), st.integers(0, 7)),
    st.tuples(st.just("sync"), st.sampled_from(["a<b", "b<a", "both"])),
)
history_st = st.lists(st.tuples(step, st.sampled_from([True, True, True, False])), min_size=6, max_size=12)


def new_wires(grid: LocalRegistry, known: set[bytes]) -> list[bytes]:
    return [w for w in wires(grid) if w not in known]


def edit_record(grids: dict[str, LocalRegistry], op: str, args: Any, ids: list[str], counter: int) -> str:
    """An update (its pricing, or its description, to ``counter``) or a
    delete of one of ``ids`` by one node; the step's log line."""
    who, idx, *pricing = args
    rid = ids[idx % len(ids)]
    if op == "delete":
        grids[who].delete(MODELS, rid)
        return f"{who} delete {rid}"
    patch = {"pricing": {"per_call": counter}} if pricing[0] else {"description": f"d{counter}"}
    grids[who].update(MODELS, rid, patch=patch)
    return f"{who} update {rid} {patch}"


def run_history(a: LocalRegistry, b: LocalRegistry, history: list[Any], log: list[str]) -> dict[str, Any]:
    grids = {"a": a, "b": b}
    ids: list[str] = ["m1"]
    creates: list[tuple[str, str, bool, int]] = []  # id, author, pricing, hlc ms
    versions: list[tuple[tuple[int, int], frozenset[str] | None]] = []  # policy changes: clock, rules (None: deleted)
    policy_state: str = "absent"  # absent | live | deleted
    counter = 0
    for (op, *args), gap in history:
        if gap:
            time.sleep(0.002)
        try:
            if op == "policy":
                how, rules = args
                known = set(wires(b))
                if how == "put" or policy_state != "live":
                    if policy_state == "live":
                        b.update("grid.policies", "p", fields=policy_fields(rules))
                    else:
                        b.put("grid.policies", "policy", policy_fields(rules), id="p")
                elif how == "edit":
                    b.update("grid.policies", "p", fields=policy_fields(rules))
                else:
                    b.delete("grid.policies", "p")
                    rules = None
                made = [open_envelope(w).body for w in new_wires(b, known)]
                made = [x for x in made if x.registry == "grid.policies"]
                assert len(made) <= 1, made
                if not made:  # the same fields again: no change
                    log.append(f"b policy {how} unchanged")
                    continue
                versions.append((tuple(made[0].hlc), rules))
                policy_state = "deleted" if rules is None else "live"
                log.append(f"b policy {how} {sorted(rules) if rules is not None else None} @ {made[0].hlc}")
            elif op == "create":
                who, pricing = args
                counter += 1
                rid = f"{who}{counter}"
                fields = {"name": rid, **({"pricing": {"per_call": counter}} if pricing else {})}
                known = set(wires(grids[who]))
                grids[who].put(MODELS, "tool", fields, id=rid)
                made = [open_envelope(w).body for w in new_wires(grids[who], known)]
                made = [x for x in made if x.registry == MODELS and x.record == rid]
                assert len(made) == 1
                ids.append(rid)
                creates.append((rid, who, pricing, made[0].hlc[0]))
                log.append(f"{who} create {rid} pricing={pricing} @ {made[0].hlc}")
            elif op in ("update", "delete"):
                counter += op == "update"
                log.append(edit_record(grids, op, args, ids, counter))
            else:
                (how,) = args
                if how in ("a<b", "both"):
                    deliver(a, b)
                if how in ("b<a", "both"):
                    deliver(b, a)
                log.append(f"sync {how}")
        except RegistryError as refused:  # PolicyDenied, NotOwner, NotFound, AlreadyExists...
            log.append(f"refused {op} {args}: {type(refused).__name__}")
    return {"creates": creates, "versions": versions}


def forbidden_create(versions: list[tuple[tuple[int, int], frozenset[str] | None]], author: str, pricing: bool,
                     at_ms: int) -> bool | None:
    """Whether the version of p in force at ``at_ms`` forbids the create.
    None when the clock is ambiguous (equal ms to a policy change)."""
    if any(v[0][0] == at_ms for v in versions):
        return None
    before = [rules for clock, rules in sorted(versions) if clock[0] <= at_ms]
    rules = before[-1] if before else None
    if not rules:
        return False
    return "no-create" in rules or ("pricing-b-only" in rules and pricing and author == "a")


def present(grid: LocalRegistry, rid: str) -> bool:
    try:
        grid.get(MODELS, rid, include_deleted=True)
        return True
    except RegistryError:
        return False


def random_batches(data: Any, everything: list[bytes], i: int) -> list[list[bytes]]:
    """Every change in a drawn order, some delivered twice at random places,
    cut into drawn batches: how a replica may meet them."""
    order = data.draw(st.permutations(range(len(everything))), label=f"order{i}")
    dup = data.draw(st.lists(st.integers(0, len(everything) - 1), max_size=6), label=f"dups{i}")
    sequence = [everything[j] for j in order]
    for j in dup:  # redeliver some changes at random places
        pos = data.draw(st.integers(0, len(sequence)), label="dup-pos")
        sequence.insert(pos, everything[j])
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(sequence) - 1)), max_size=8), label=f"cuts{i}")))
    batches, start = [], 0
    for c in cuts + [len(sequence)]:
        if c > start:
            batches.append(sequence[start:c])
            start = c
    return batches


def converge(a: LocalRegistry, b: LocalRegistry) -> None:
    for _ in range(4):
        deliver(a, b)
        deliver(b, a)
        if set(wires(a)) == set(wires(b)) and a.state_digest() == b.state_digest():
            return


@pytest.mark.timeout(600)
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(history=history_st, data=st.data())
def test_records_are_a_pure_function_of_the_changes_under_policy_versions(history: list[Any], data: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        a, b = node(Path(root) / "a", ADMIN_ORG), node(Path(root) / "b", MEMBER_ORG)
        log: list[str] = []
        try:
            b.create_registry(MODELS, ["tool"])
            b.put(MODELS, "tool", {"name": "m1", "pricing": {"per_call": 1}}, id="m1")
            deliver(a, b)
            deliver(b, a)
            facts = run_history(a, b, history, log)
            converge(a, b)
            digest = a.state_digest()
            assert digest == b.state_digest(), log
            # The oracle: a create is kept exactly when the version in force at its clock allows it.
            for rid, who, pricing, at_ms in facts["creates"]:
                forbidden = forbidden_create(facts["versions"], who, pricing, at_ms)
                if forbidden is None:
                    continue
                for grid in (a, b):
                    assert present(grid, rid) is (not forbidden), (rid, who, pricing, at_ms, facts["versions"], log)
            everything = list(dict.fromkeys(wires(a) + wires(b)))
            n_replicas = data.draw(st.integers(2, 3), label="replicas")
            for i in range(n_replicas):
                batches = random_batches(data, everything, i)
                with LocalRegistry.open_path(Path(root) / f"r{i}", federation=GENESIS) as replica:
                    for batch in batches:
                        replica.execute([Remote(w, "p") for w in batch])
                    got = replica.state_digest()
                    if got != digest:
                        diff = []
                        for rid in sorted({"m1", *(c[0] for c in facts["creates"])}):
                            def show(g: LocalRegistry) -> Any:
                                try:
                                    r = g.get(MODELS, rid, include_deleted=True)
                                    return (r["deleted"], r["fields"])
                                except RegistryError as e:
                                    return type(e).__name__
                            if show(replica) != show(a):
                                diff.append((rid, "replica", show(replica), "author", show(a)))
                        raise AssertionError(f"replica {i} diverged: {diff}\n" + "\n".join(log))
                    for rid, who, pricing, at_ms in facts["creates"]:
                        forbidden = forbidden_create(facts["versions"], who, pricing, at_ms)
                        if forbidden is not None:
                            assert present(replica, rid) is (not forbidden)
        finally:
            a.close()
            b.close()
