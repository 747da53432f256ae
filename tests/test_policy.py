"""Access policies: replicated rules in grid.policies, one decision for every path.

A federation of two orgs: A is its admin, B a member. B owns the registry
``b.models``. Policies permit federation admins to curate B's records and
forbid anyone but a record's owner to change ``pricing``. Real LMDB
stores; changes cross between them as envelopes peers would send."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import NotOwner, PolicyDenied
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import cid_from_str, open_envelope
from registrygrid.sdk import LocalRegistry
from registrygrid.trust.federation import genesis_record, invitation_record, invite, make_genesis
from registrygrid.trust.statements import (
    FEDERATION_KIND,
    INVITATION_KIND,
    MEMBERS_REGISTRY,
    REVOCATION_KIND,
    revocation_record,
    sign_revocation,
)

MODELS = "b.models"
ADMIN_ORG, MEMBER_ORG = KeyPair(b"\x31" * 32), KeyPair(b"\x32" * 32)
GENESIS = make_genesis("grid", [ADMIN_ORG], now=1_767_225_600)
INVITATION = invite(GENESIS, MEMBER_ORG.did, ADMIN_ORG, now=1_767_225_600)

CURATE = {"id": "admins-curate", "effect": "permit", "actions": ["update"], "subjects": {"roles": ["federation-admin"]}}
PRICING = {"id": "pricing-owner-only", "effect": "forbid", "actions": ["create", "update"], "fields": ["pricing"],
           "except": {"roles": ["record-owner"]}}


def node(path: Path, org: KeyPair, key: KeyPair | None = None) -> LocalRegistry:
    key = key or KeyPair.generate()
    grid = LocalRegistry.open_path(path, key, delegation=sign_delegation(org, key.did, ["node", "writer"]),
                                   federation=GENESIS)
    grid.put(MEMBERS_REGISTRY, FEDERATION_KIND, genesis_record(GENESIS)[1], id=genesis_record(GENESIS)[0])
    grid.put(MEMBERS_REGISTRY, INVITATION_KIND, invitation_record(INVITATION)[1], id=invitation_record(INVITATION)[0])
    return grid


def wires(grid: LocalRegistry) -> list[bytes]:
    return [grid.change(cid_from_str(e.change)) for e in grid.changes(0, limit=10_000)]  # type: ignore[misc]


def deliver(target: LocalRegistry, source: LocalRegistry) -> list[Any]:
    return target.execute([Remote(w, "peer") for w in wires(source)])


def policy(grid: LocalRegistry, policy_id: str, *rules: dict[str, Any], targets: tuple[str, ...] = (MODELS,)) -> None:
    grid.put("grid.policies", "policy", {"name": policy_id, "policy_type": "access", "targets": list(targets),
                                         "access": {"rules": list(rules)}}, id=policy_id)


@pytest.fixture
def federation(tmp_path: Path) -> Any:
    a, b = node(tmp_path / "a", ADMIN_ORG), node(tmp_path / "b", MEMBER_ORG)
    b.create_registry(MODELS, ["tool"])
    b.put(MODELS, "tool", {"name": "m1", "pricing": {"per_call": 1}}, id="m1")
    deliver(a, b)
    deliver(b, a)
    yield a, b
    a.close()
    b.close()


def test_without_policies_another_org_may_not_update(federation: Any) -> None:
    a, _ = federation
    with pytest.raises(NotOwner):
        a.update(MODELS, "m1", patch={"description": "curated"})


def test_a_registry_owners_field_rule_and_an_admins_permit_apply_on_every_path(federation: Any) -> None:
    a, b = federation
    policy(a, "curation", CURATE)  # an admin's policy: counts
    policy(b, "pricing", PRICING)  # the registry owner's: counts for its registry
    deliver(a, b)
    deliver(b, a)
    a.update(MODELS, "m1", patch={"description": "curated"})  # permitted: admins curate
    with pytest.raises(PolicyDenied, match="pricing-owner-only") as refused:
        a.update(MODELS, "m1", patch={"pricing": {"per_call": 0}})
    assert refused.value.details == {"rule": "pricing#pricing-owner-only"}
    b.update(MODELS, "m1", patch={"pricing": {"per_call": 2}})  # the owner may
    assert "rejected" not in {r.status for r in deliver(b, a) + deliver(a, b)}
    assert a.get(MODELS, "m1")["fields"] == b.get(MODELS, "m1")["fields"] == {
        "name": "m1", "pricing": {"per_call": 2}, "description": "curated"}
    # A forged pricing change from A (its own checks bypassed) is refused where it arrives, whole.
    permits = [r for r in a.engine.policy.rules[MODELS] if r.effect == "permit"]
    a.engine.policy = type(a.engine.policy)(rules={MODELS: permits})  # A's node drops the forbid
    a.update(MODELS, "m1", patch={"pricing": {"per_call": 0}, "description": "cheap"})
    result = b.execute([Remote(wires(a)[-1], "peer")])[0]
    assert result.status == "refused" and result.error.details == {"rule": "pricing#pricing-owner-only"}
    assert b.get(MODELS, "m1")["fields"]["description"] == "curated"  # the rest of it refused too


def test_a_policy_from_an_org_that_neither_administers_nor_owns_the_registry_does_not_count(
        tmp_path: Path, federation: Any) -> None:
    a, b = federation
    policy(a, "not-yours", PRICING, targets=("grid.tools",))  # grid.tools: built in, admins only: counts
    with node(tmp_path / "c", MEMBER_ORG) as c:  # a node of B (not an admin) rules grid.tools: does not count
        policy(c, "b-rules-tools", {"id": "no-creates", "effect": "forbid", "actions": ["create"]},
              targets=("grid.tools",))
        c.put("grid.tools", "tool", {"name": "free"}, id="free")  # B's "no creates" rule did not count
    assert "grid.tools" in a.engine.policy.registries()


def test_explain_names_the_rule_that_decides(federation: Any) -> None:
    a, b = federation
    policy(a, "curation", CURATE)
    policy(b, "pricing", PRICING)
    deliver(a, b)
    deliver(b, a)
    a_key = a.engine.key.did
    assert a.explain(a_key, "update", MODELS, "m1", fields=["description"])["rule"] == "curation#admins-curate"
    denied = a.explain(a_key, "update", MODELS, "m1", fields=["pricing"])
    assert not denied["allowed"] and denied["rule"] == "pricing#pricing-owner-only"
    assert a.explain(b.engine.key.did, "update", MODELS, "m1", fields=["pricing"])["rule"] == "builtin:owner"
    assert a.explain(a_key, "delete", MODELS, "m1") == {**a.explain(a_key, "delete", MODELS, "m1"),
                                                         "allowed": False, "rule": "builtin:owner-only"}
    stranger = KeyPair.generate().did
    assert a.explain(stranger, "create", MODELS)["rule"] == "builtin:unknown-signer"
    # grid.members holds signed statements: an AssertionError (HTTP 500) before.
    for action in ("create", "update", "delete"):
        statement = a.explain(a_key, action, MEMBERS_REGISTRY)
        assert statement["rule"] == "builtin:statement" and "signed statements" in statement["reason"]


@settings(max_examples=20, deadline=None)
@given(order=st.permutations(range(5)))
def test_a_policy_gives_the_same_records_whatever_order_it_arrives_in(order: list[int]) -> None:
    with tempfile.TemporaryDirectory() as root:
        a, b = node(Path(root) / "a", ADMIN_ORG), node(Path(root) / "b", MEMBER_ORG)
        try:
            b.create_registry(MODELS, ["tool"])
            b.put(MODELS, "tool", {"name": "m1"}, id="m1")
            deliver(a, b)
            policy(a, "curation", CURATE)
            time.sleep(0.005)  # a rule judges writes of the milliseconds after its version's
            a.update(MODELS, "m1", patch={"description": "curated"})  # counts only under the policy
            b.update(MODELS, "m1", patch={"version": "2"})
            everything = list(dict.fromkeys(wires(a) + wires(b)))
            base = [w for w in everything if w not in wires(a)[-2:] and w not in wires(b)[-1:]]
            late = wires(a)[-2:] + wires(b)[-1:] + [everything[0], everything[-1]]
            results = []
            for i in range(2):
                with LocalRegistry.open_path(Path(root) / f"r{i}", federation=GENESIS) as replica:
                    replica.execute([Remote(w, "p") for w in base])
                    sequence = late if i == 0 else [late[j] for j in order]
                    for wire in sequence:
                        replica.execute([Remote(wire, "p")])
                    results.append((replica.state_digest(), replica.get(MODELS, "m1")["fields"]))
            assert results[0] == results[1]
            assert results[0][1] == {"name": "m1", "description": "curated", "version": "2"}
        finally:
            a.close()
            b.close()


def test_rgrid_policy_explain_prints_the_decision_and_exits_77_when_denied(rgrid: Any, tmp_path: Path) -> None:
    import json

    from registrygrid.errors import EX_NOPERM
    from registrygrid.home import Home

    home = tmp_path / "home"
    created = Home(home).init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        grid.put("grid.tools", "tool", {"name": "t"}, id="t")
    allowed = rgrid("policy", "explain", created["node"], "update", "grid.tools/t", "--field", "name", "--json",
                    home=home)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["rule"] == "builtin:owner"
    denied = rgrid("policy", "explain", KeyPair.generate().did, "delete", "grid.tools/t", "--json", home=home)
    assert denied.returncode == EX_NOPERM and json.loads(denied.stdout)["allowed"] is False


def test_a_rule_matches_attributes_the_admins_signed_into_an_invitation(tmp_path: Path) -> None:
    eu_org = KeyPair(b"\x34" * 32)
    eu_invitation = invite(GENESIS, eu_org.did, ADMIN_ORG, attributes={"jurisdiction": "eu"}, now=1_767_225_600)
    with node(tmp_path / "a", ADMIN_ORG) as a, node(tmp_path / "b", MEMBER_ORG) as b:
        key = KeyPair.generate()
        eu = LocalRegistry.open_path(tmp_path / "eu", key, delegation=sign_delegation(eu_org, key.did, ["node"]),
                                     federation=GENESIS)
        try:
            for grid in (a, b, eu):
                grid.put(MEMBERS_REGISTRY, INVITATION_KIND, invitation_record(eu_invitation)[1],
                         id=invitation_record(eu_invitation)[0])
            b.create_registry(MODELS, ["tool"])
            b.put(MODELS, "tool", {"name": "m1"}, id="m1")
            policy(a, "eu-curates", {"id": "eu", "effect": "permit", "actions": ["update"],
                                     "subjects": {"attributes": {"jurisdiction": ["eu"]}}})
            for source in (a, b):
                deliver(eu, source)
            eu.update(MODELS, "m1", patch={"gdpr": True})  # permitted: the admins vouched for its jurisdiction
            assert eu.explain(key.did, "update", MODELS, "m1")["rule"] == "eu-curates#eu"
            deliver(a, b)
            with pytest.raises(NotOwner):  # the admin org's node holds no such attribute
                a.update(MODELS, "m1", patch={"x": 1})
        finally:
            eu.close()


def test_a_local_rule_about_bridge_tokens_never_judges_changes_from_peers(federation: Any) -> None:
    a, b = federation
    policy(b, "b-local", {"id": "no-app-updates", "effect": "forbid", "actions": ["update"],
                          "except": {"roles": ["app:admin"]}})
    deliver(a, b)
    b.update(MODELS, "m1", patch={"v": 1})  # the operator (SDK): no token, local rules don't apply
    from registrygrid.engine.ops import Update

    refused = b.execute([Update(MODELS, "m1", patch={"v": 2}, roles=("app:writer",))])[0]
    assert isinstance(refused, PolicyDenied) and refused.details == {"rule": "b-local#no-app-updates"}
    # a peer's change is judged by replicated rules only
    with node(Path(tempfile.mkdtemp()) / "b2", MEMBER_ORG) as b2:
        deliver(b2, b)
        b2.update(MODELS, "m1", patch={"v": 3})
        result = deliver(b, b2)[-1]
        assert result.status == "applied" and b.get(MODELS, "m1")["fields"]["v"] == 3


def test_a_revoked_keys_edit_of_a_policy_stops_counting_on_the_nodes_that_applied_it(tmp_path: Path) -> None:
    """k, a key of the registry owner's org, rewrites its access policy to
    forbid creates; the org then revokes k from its first change on. b and
    a had applied k's edit: the revocation rebuilds the policy record
    without it, and the rules in force must follow that record (they stayed
    the revoked ones: b could not create, and a refused b's create that a
    fresh node, which never applied k's edit, counts)."""
    a, b, k = node(tmp_path / "a", ADMIN_ORG), node(tmp_path / "b", MEMBER_ORG), node(tmp_path / "k", MEMBER_ORG)
    try:
        b.create_registry(MODELS, ["tool"])
        policy(b, "rules", CURATE)
        deliver(k, b)
        k.update("grid.policies", "rules", fields={
            "name": "rules", "policy_type": "access", "targets": [MODELS],
            "access": {"rules": [{"id": "no-creates", "effect": "forbid", "actions": ["create"]}]}})
        deliver(b, k)
        with pytest.raises(PolicyDenied):
            b.put(MODELS, "tool", {"name": "early"}, id="early")
        deliver(a, b)
        record_id, fields = revocation_record(sign_revocation(MEMBER_ORG, k.engine.key.did, {}, reason="lost"))
        b.put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, id=record_id)
        assert b.get("grid.policies", "rules")["fields"]["access"]["rules"] == [CURATE]
        b.put(MODELS, "tool", {"name": "m2"}, id="m2")
        deliver(a, b)
        deliver(b, a)
        assert a.get(MODELS, "m2")["owner"] == MEMBER_ORG.did
        with LocalRegistry.open_path(tmp_path / "fresh", federation=GENESIS) as fresh:
            fresh.execute([Remote(w, "p") for w in reversed(list(dict.fromkeys(wires(a) + wires(b) + wires(k))))])
            assert fresh.get(MODELS, "m2")["owner"] == MEMBER_ORG.did
            assert fresh.state_digest() == a.state_digest() == b.state_digest()
    finally:
        for grid in (a, b, k):
            grid.close()


def test_an_edit_built_on_a_refused_create_waits_for_its_signers_delegation_before_it_is_kept(
        tmp_path: Path) -> None:
    """The owner makes a rule against creates, then repeals it; b2 creates
    m2 in the owner's members registry after the repeal, having heard of
    neither; b3 (b2's org) deletes m2, built on that create. A replica
    takes the rule, the create (refused: the replica knows of no repeal),
    b3's delete before b3's delegation, then the repeal (the create counts:
    the rule no longer stood when it was made; the record is rebuilt) and
    b3's delegation last. b3's delete was kept refused at once (no record to
    place its signer against), so the rebuild could not judge it and it
    stayed refused for good: the replica showed m2, which every other node
    shows deleted."""
    owner = node(tmp_path / "owner", ADMIN_ORG)
    b2, b3 = node(tmp_path / "b2", MEMBER_ORG), node(tmp_path / "b3", MEMBER_ORG)
    try:
        owner.create_registry(MODELS, ["tool"], write_policy="members")
        for target in (b2, b3):
            deliver(target, owner)
        known = set(wires(owner))
        policy(owner, "rules", {"id": "no-creates", "effect": "forbid", "actions": ["create"]})
        rule = [w for w in wires(owner) if w not in known]
        known = set(wires(owner))
        time.sleep(0.005)
        owner.update("grid.policies", "rules", fields={"name": "rules", "policy_type": "access",
                                                       "targets": [MODELS], "access": {"rules": [CURATE]}})
        repeal = [w for w in wires(owner) if w not in known]
        time.sleep(0.005)
        b2.put(MODELS, "tool", {"name": "m2"}, id="m2")  # b2 has heard of neither
        create = [w for w in wires(b2) if open_envelope(w).body.record == "m2"]
        deliver(b3, b2)
        b3.delete(MODELS, "m2")
        delete = [w for w in wires(b3) if open_envelope(w).body.record == "m2" and w not in create]
        everything = list(dict.fromkeys(wires(owner) + wires(b2) + wires(b3)))
        b3_delegation = [w for w in everything if open_envelope(w).body.registry == MEMBERS_REGISTRY
                         and open_envelope(w).body.author == b3.engine.key.did]
        first = [w for w in everything if w not in rule + create + delete + repeal + b3_delegation]
        with LocalRegistry.open_path(tmp_path / "replica", federation=GENESIS) as replica:
            for batch in (first, rule, create, delete, repeal, b3_delegation):
                replica.execute([Remote(w, "p") for w in batch])
            for source in (b2, b3):
                deliver(owner, source)
            assert owner.get(MODELS, "m2", include_deleted=True)["deleted"] is True
            assert replica.get(MODELS, "m2", include_deleted=True)["deleted"] is True
            assert replica.state_digest() == owner.state_digest()
    finally:
        for grid in (owner, b2, b3):
            grid.close()


def test_a_permit_to_update_is_no_permit_to_delete_even_in_an_update_that_deletes(
        federation: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Policies judge a change by its op. An admin that may curate (update)
    another org's record may not delete it; before, an "update" from a node
    built to also write ``deleted`` passed as an update, and deleted B's
    record on every node. Now every node rejects it: only a delete deletes."""
    from automerge.core import ROOT, ScalarType

    from registrygrid.crdt import record as record_module

    a, b = federation
    policy(a, "curation", CURATE)
    deliver(a, b)
    deliver(b, a)
    with pytest.raises(NotOwner):
        a.delete(MODELS, "m1")  # no rule lets an admin delete another org's record
    honest_sync = record_module._sync_map

    def sync_and_delete(tx: Any, obj: bytes, wanted: Any, depth: int, *args: Any) -> None:
        honest_sync(tx, obj, wanted, depth, *args)
        if depth == 1:
            tx.put(ROOT, "deleted", ScalarType.Boolean, True)

    with monkeypatch.context() as hostile_build:
        hostile_build.setattr(record_module, "_sync_map", sync_and_delete)
        a.update(MODELS, "m1", patch={"description": "curated"})
    result = b.execute([Remote(wires(a)[-1], "peer")])[0]
    assert result.status == "rejected" and "only a delete deletes" in str(result.error)
    assert b.get(MODELS, "m1")["fields"]["name"] == "m1"


def test_an_edit_of_a_policy_judges_the_changes_after_it_and_its_old_rules_those_before(federation: Any) -> None:
    # The rules of a policy's latest version judged every change since its
    # creation: a rule an edit added erased (on every node) a record made
    # and acknowledged before the edit, and a rule an edit or a delete
    # dropped un-refused changes made while it stood.
    a, b = federation
    no_delete = {"id": "no-delete", "effect": "forbid", "actions": ["delete"]}
    b_prices = {"id": "pricing-b-only", "effect": "forbid", "actions": ["create", "update"], "fields": ["pricing"],
                "except": {"orgs": [MEMBER_ORG.did]}}
    policy(b, "pricing", no_delete)
    deliver(a, b)
    a.put(MODELS, "tool", {"name": "a1", "pricing": {"per_call": 3}}, id="a1")  # allowed when it was made
    deliver(b, a)
    time.sleep(0.002)  # the edit's clock is past a1's
    b.update("grid.policies", "pricing", patch={"access": {"rules": [no_delete, b_prices]}})
    deliver(a, b)
    assert a.get(MODELS, "a1")["fields"]["pricing"] == {"per_call": 3}
    assert b.get(MODELS, "a1")["fields"]["pricing"] == {"per_call": 3}
    with pytest.raises(PolicyDenied, match="pricing-b-only"):
        a.put(MODELS, "tool", {"name": "a2", "pricing": {"per_call": 1}}, id="a2")
    # A's node forgets the edit and makes a2 anyway: refused where it lands.
    a.engine.policy = type(a.engine.policy)(rules={MODELS: [r for r in a.engine.policy.rules[MODELS]
                                                            if r.id != "pricing-b-only"]})
    a.put(MODELS, "tool", {"name": "a2", "pricing": {"per_call": 1}}, id="a2")
    assert b.execute([Remote(wires(a)[-1], "peer")])[0].status == "refused"
    time.sleep(0.002)
    b.delete("grid.policies", "pricing")  # the rule ends here; what it refused while it stood stays refused
    deliver(b, a)
    deliver(a, b)
    for grid in (a, b):
        with pytest.raises(Exception, match="no record"):
            grid.get(MODELS, "a2")
        assert grid.get(MODELS, "a1")["fields"]["pricing"] == {"per_call": 3}
    assert a.state_digest() == b.state_digest()
    a.put(MODELS, "tool", {"name": "a3", "pricing": {"per_call": 1}}, id="a3")  # after the delete: no rule
    deliver(b, a)
    assert b.get(MODELS, "a3")["fields"]["pricing"] == {"per_call": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["create", "edit"])
def test_a_policy_that_governs_policies_settles_and_never_judges_the_change_that_made_it(
        federation: Any, way: str) -> None:
    # It refused its own create (or edit), which took its rules away, which
    # let the change count again, which brought them back: the write path
    # spun for good, every later write with it.
    a, _ = federation
    closed = {"id": "closed", "effect": "forbid", "actions": ["create", "update"], "kinds": ["policy"]}
    if way == "create":
        policy(a, "lock", closed, targets=("grid.policies",))
    else:
        policy(a, "lock", {"id": "no-delete", "effect": "forbid", "actions": ["delete"]}, targets=("grid.policies",))
        time.sleep(0.002)
        a.update("grid.policies", "lock", patch={"access": {"rules": [closed]}})
    assert a.get("grid.policies", "lock")["fields"]["access"]["rules"] == [closed]
    time.sleep(0.002)
    with pytest.raises(PolicyDenied, match="lock#closed"):
        policy(a, "another", CURATE)
    assert a.engine.metrics["policy.unsettled"] == 0


def test_where_two_nodes_created_one_policy_the_earlier_creates_version_judges_what_came_before_the_later(
        tmp_path: Path, federation: Any) -> None:
    # The first version stood from the record's created_at, the winning
    # (later) create's time: the earlier create's rules judged nothing, and a
    # write they had refused counted once the later create arrived.
    a, b = federation
    a2 = node(tmp_path / "a2", ADMIN_ORG)
    try:
        for one, other in ((a, a2), (b, a2), (a2, a), (a2, b)):
            deliver(one, other)
        a_prices = {"id": "pricing-a-only", "effect": "forbid", "actions": ["create", "update"],
                    "fields": ["pricing"], "except": {"orgs": [ADMIN_ORG.did]}}
        policy(a, "pol", a_prices)
        time.sleep(0.005)
        b.put(MODELS, "tool", {"name": "bx", "pricing": {"per_call": 9}}, id="bx")  # B has not heard of it
        time.sleep(0.005)
        policy(a2, "pol", {"id": "no-delete", "effect": "forbid", "actions": ["delete"]})  # nor has a2
        for _ in range(2):
            for one, other in ((a, b), (b, a), (a2, a), (a, a2), (a2, b), (b, a2)):
                deliver(one, other)
        for grid in (a, b, a2):
            with pytest.raises(Exception, match="no record"):
                grid.get(MODELS, "bx")
        assert a.state_digest() == b.state_digest() == a2.state_digest()
    finally:
        a2.close()
