"""Trust between organizations: delegations that travel, record ownership,
revocation cutoffs, expiry. Real LMDB stores in temporary directories;
changes cross between them as the envelopes peers would send."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import (
    DelegationExpired,
    KeyRevoked,
    MalformedInput,
    NotFound,
    NotOwner,
    PolicyDenied,
    SignatureInvalid,
)
from registrygrid.home import Home
from registrygrid.membership import federate
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import cid_from_str, open_envelope
from registrygrid.sdk import LocalRegistry
from registrygrid.trust.state import TrustState, Verdict
from tests.test_engine import wires_in_feed_order
from registrygrid.trust.statements import (
    DELEGATION_KIND,
    MEMBERS_REGISTRY,
    REVOCATION_KIND,
    delegation_record,
    read_statement,
    revocation_record,
    sign_revocation,
)
from tests.arrival_orders import first_and_rest, replicas_agree_in_any_order
from tests.doc_checks import assert_documents_in_memory_are_as_stored

TOOLS = "grid.tools"
YEAR = 365 * 24 * 3600


def org_node(path: Path, org: KeyPair, key: KeyPair | None = None, **delegation: Any) -> LocalRegistry:
    """A store whose key is a node of ``org``, with its delegation published."""
    key = key or KeyPair.generate()
    grid = LocalRegistry.open_path(path, key, owner=org.did)
    publish(grid, sign_delegation(org, key.did, ["node", "writer"], **delegation))
    return grid


def publish(grid: LocalRegistry, statement: Any) -> str:
    make = delegation_record if hasattr(statement, "claims") and hasattr(statement.claims, "roles") \
        else revocation_record
    record_id, fields = make(statement)
    kind = DELEGATION_KIND if make is delegation_record else REVOCATION_KIND
    grid.put(MEMBERS_REGISTRY, kind, fields, id=record_id)
    return record_id


def feed_wires(grid: LocalRegistry) -> list[bytes]:
    out = []
    for event in grid.changes(since=0, limit=10_000):
        wire = grid.change(cid_from_str(event.change))
        assert wire is not None
        out.append(wire)
    return out


def deliver(target: LocalRegistry, source: LocalRegistry) -> list[Any]:
    return target.execute([Remote(w, "peer") for w in feed_wires(source)])


def statuses(results: list[Any]) -> list[str]:
    return [r.status for r in results]


def store_snapshot(grid: LocalRegistry) -> tuple[str, int]:
    return grid.state_digest(), grid.feed_head()


@pytest.fixture
def org_a() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def org_b() -> KeyPair:
    return KeyPair.generate()


# ================================================================ statements


def test_a_delegation_record_reads_back_as_the_statement_its_org_signed(org_a: KeyPair) -> None:
    node = KeyPair.generate()
    record_id, fields = delegation_record(sign_delegation(org_a, node.did, ["node", "writer"]))
    statement = read_statement(DELEGATION_KIND, record_id, fields)
    assert (statement.org, statement.subject) == (org_a.did, node.did)
    assert statement.delegation is not None and statement.delegation.roles == ("node", "writer")


def test_a_delegation_whose_fields_differ_from_what_was_signed_is_malformed(org_a: KeyPair) -> None:
    record_id, fields = delegation_record(sign_delegation(org_a, KeyPair.generate().did, ["writer"]))
    with pytest.raises(MalformedInput, match="roles"):
        read_statement(DELEGATION_KIND, record_id, {**fields, "roles": ["admin", "writer"]})


def test_a_statement_under_another_record_id_is_malformed(org_a: KeyPair) -> None:
    _, fields = delegation_record(sign_delegation(org_a, KeyPair.generate().did, ["writer"]))
    with pytest.raises(MalformedInput, match="address"):
        read_statement(DELEGATION_KIND, "st-someotherid", fields)


def test_a_statement_signed_by_another_key_than_its_org_is_refused(org_a: KeyPair, org_b: KeyPair) -> None:
    delegation = sign_delegation(org_a, KeyPair.generate().did, ["writer"])
    forged = type(delegation)(body=delegation.body, signature=org_b.sign(delegation.body))
    record_id, fields = delegation_record(forged)
    with pytest.raises(SignatureInvalid):
        read_statement(DELEGATION_KIND, record_id, fields)


def test_revocation_round_trips_and_keeps_its_cutoffs(org_a: KeyPair) -> None:
    node = KeyPair.generate()
    record_id, fields = revocation_record(sign_revocation(org_a, node.did, {TOOLS: 3}, reason="stolen"))
    statement = read_statement(REVOCATION_KIND, record_id, fields)
    assert statement.revocation is not None and statement.revocation.cutoffs == {TOOLS: 3}
    assert base64.b64decode(fields["statement"])


# ================================================================ trust state


def _statements(org: KeyPair, node: KeyPair) -> list[Any]:
    now = int(time.time())
    return [
        read_statement(DELEGATION_KIND, *delegation_record(
            sign_delegation(org, node.did, ["writer"], now=now - 10 * YEAR, valid_for=YEAR))),
        read_statement(DELEGATION_KIND, *delegation_record(sign_delegation(org, node.did, ["node"], now=now - 60))),
        read_statement(REVOCATION_KIND, *revocation_record(sign_revocation(org, node.did, {TOOLS: 5, "grid.x": 2}))),
        read_statement(REVOCATION_KIND, *revocation_record(sign_revocation(org, node.did, {TOOLS: 7}))),
    ]


@settings(max_examples=30, deadline=None)
@given(order=st.permutations(range(4)))
def test_trust_answers_are_the_same_whatever_order_statements_arrive_in(order: list[int]) -> None:
    org, node = KeyPair(b"\x01" * 32), KeyPair(b"\x02" * 32)
    statements = _statements(org, node)
    state = TrustState.of(statements[i] for i in order)
    now_ms = int(time.time() * 1000)
    assert state.check_speaks_for(node.did, org.did, now_ms) is Verdict.ALLOWED
    assert state.orgs_of(node.did, now_ms) == {node.did, org.did}
    revoked = state.revoked(node.did)  # its only delegator's word: the whole key
    assert revoked is not None and revoked.by == [org.did]
    # The lower cutoff of the two revocations wins; a registry one leaves out is cut at 0.
    assert (revoked.cutoff(TOOLS), revoked.cutoff("grid.x"), revoked.cutoff("grid.y")) == (5, 0, 0)
    state.check_chain(node.did, TOOLS, 5)
    with pytest.raises(KeyRevoked):
        state.check_chain(node.did, TOOLS, 6)
    with pytest.raises(KeyRevoked):
        state.at_place(node.did, TOOLS, 6).check_speaks_for(node.did, org.did, now_ms)
    assert state.at_place(node.did, TOOLS, 6).orgs_of(node.did, now_ms) == {node.did}


def test_a_key_with_no_known_delegation_waits_and_one_outside_its_window_is_refused(org_a: KeyPair) -> None:
    node = KeyPair.generate()
    state = TrustState()
    now_ms = int(time.time() * 1000)
    assert state.check_speaks_for(node.did, org_a.did, now_ms) is Verdict.WAIT
    state.add(read_statement(DELEGATION_KIND, *delegation_record(
        sign_delegation(org_a, node.did, ["writer"], now=time.time() - 2 * YEAR, valid_for=YEAR))))
    with pytest.raises(DelegationExpired, match="rgrid org renew"):
        state.check_speaks_for(node.did, org_a.did, now_ms)
    # The change's own time decides, not the receiver's clock.
    assert state.check_speaks_for(node.did, org_a.did, now_ms - int(1.5 * YEAR * 1000)) is Verdict.ALLOWED


def test_a_revocation_by_an_org_that_never_delegated_the_key_does_not_count(org_a: KeyPair, org_b: KeyPair) -> None:
    node = KeyPair.generate()
    state = TrustState()
    state.add(read_statement(DELEGATION_KIND, *delegation_record(sign_delegation(org_a, node.did, ["writer"]))))
    state.add(read_statement(REVOCATION_KIND, *revocation_record(sign_revocation(org_b, node.did, {}))))
    state.check_chain(node.did, TOOLS, 100)


def test_a_key_keeps_its_delegations_for_readers_on_other_threads_while_statements_arrive(org_a: KeyPair) -> None:
    """The committer adds statements while other threads read the state
    (the p2p hello's admission, the guard, the bridge's explain). Before, a
    key's delegations were sorted in place, and a list being sorted looks
    empty to another thread: a member was read as delegated by nobody."""
    import sys
    import threading

    node = KeyPair.generate()
    statements = [read_statement(DELEGATION_KIND, *delegation_record(sign_delegation(org, node.did, ["writer"])))
                  for org in [org_a, *(KeyPair.generate() for _ in range(150))]]
    state = TrustState.of(statements[:1])
    now = int(time.time() * 1000)
    lost, done = [0], threading.Event()

    def read() -> None:
        while not done.is_set():
            if org_a.did not in state.orgs_of(node.did, now):
                lost[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for statement in statements[1:]:
            state.add(statement)
    finally:
        done.set()
        reader.join(10)
        sys.setswitchinterval(interval)
    assert lost[0] == 0, f"a reader saw the key's delegation by {org_a.did} gone {lost[0]} times"
    assert len(state.orgs_of(node.did, now)) == len(statements) + 1  # every org, and the key itself


def test_a_reader_delegation_does_not_let_a_key_write(org_a: KeyPair) -> None:
    node = KeyPair.generate()
    state = TrustState.of([read_statement(DELEGATION_KIND, *delegation_record(
        sign_delegation(org_a, node.did, ["reader"])))])
    with pytest.raises(NotOwner, match="no role that writes"):
        state.check_speaks_for(node.did, org_a.did, int(time.time() * 1000))


# ================================================================ ownership, local and remote


def test_a_record_belongs_to_the_org_of_the_node_that_created_it(tmp_path: Path, org_a: KeyPair) -> None:
    with org_node(tmp_path / "a", org_a) as grid:
        record = grid.put(TOOLS, "tool", {"name": "ocr"}, id="ocr").record
        assert record is not None
        assert record["owner"] == org_a.did and record["created_by"] == grid.engine.key.did


def test_another_orgs_node_may_not_update_or_delete_a_record(tmp_path: Path, org_a: KeyPair,
                                                              org_b: KeyPair) -> None:
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "b", org_b) as b:
        a.put(TOOLS, "tool", {"name": "ocr"}, id="ocr")
        assert set(statuses(deliver(b, a))) == {"applied"}
        before = store_snapshot(b)
        with pytest.raises(NotOwner, match="belongs to"):
            b.update(TOOLS, "ocr", patch={"name": "mine"})
        with pytest.raises(NotOwner):
            b.delete(TOOLS, "ocr")
        assert store_snapshot(b) == before
        assert b.engine.metrics["rejected.not_owner"] == 2


def test_a_remote_update_of_another_orgs_record_is_refused_and_audited(tmp_path: Path, org_a: KeyPair,
                                                                      org_b: KeyPair) -> None:
    # Org B's node forges what its own engine would refuse: it edits its copy
    # of A's record under its own key with the engine's checks bypassed.
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "b", org_b) as b:
        a.put(TOOLS, "tool", {"name": "ocr"}, id="ocr")
        deliver(b, a)
        deliver(a, b)  # A knows B's node
        b.engine.trust.check_speaks_for = lambda *args, **kw: Verdict.ALLOWED  # type: ignore[method-assign]
        b.update(TOOLS, "ocr", patch={"name": "hijacked"})
        b.delete(TOOLS, "ocr")
        del b.engine.trust.check_speaks_for  # B behaves again
        b.put(TOOLS, "tool", {"name": "b-own"}, id="b-own")
        before = store_snapshot(a)
        results = deliver(a, b)
        # Both are refused and kept as evidence in B's chain, not applied
        # (the delete builds on the refused update); B's own record after
        # them still follows its chain (docs/trust.md, "refused changes").
        assert statuses(results[-3:]) == ["refused", "refused", "applied"]
        assert [r.error.code for r in results[-3:-1]] == ["not_owner", "policy_denied"]
        assert a.get(TOOLS, "ocr")["fields"]["name"] == "ocr"
        assert a.get(TOOLS, "b-own")["owner"] == org_b.did
        assert a.engine.metrics["rejected.not_owner"] == 1
        denials = [e for e in a.audit_log(limit=1000) if e.action == "deny"]
        assert sum("not_owner" in e.reason for e in denials) == 1
        # Nothing but B's own record changed A's records.
        tools = {r["id"]: r["fields"] for r in a.list(TOOLS).items}
        assert tools == {"ocr": {"name": "ocr"}, "b-own": {"name": "b-own"}}
        assert before[1] + 1 == a.feed_head()


def test_a_remote_create_claiming_another_org_is_refused(tmp_path: Path, org_a: KeyPair, org_b: KeyPair) -> None:
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "b", org_b) as b:
        deliver(a, b)  # A knows B's node and its delegation
        b.engine.owner = org_a.did  # B's node claims its records belong to org A
        b.engine.trust.check_speaks_for = lambda *args, **kw: Verdict.ALLOWED  # type: ignore[method-assign]
        b.put(TOOLS, "tool", {"name": "fake"}, id="fake")
        results = deliver(a, b)
        assert [r.error.code for r in results if r.status == "refused"] == ["not_owner"]
        with pytest.raises(NotFound):
            a.get(TOOLS, "fake")


@pytest.mark.parametrize("first", ["earlier", "later"])
def test_two_orgs_creating_one_registry_end_with_the_earlier_ones_rules_for_every_record(
        tmp_path: Path, org_a: KeyPair, org_b: KeyPair, first: str) -> None:
    """A and B each create shared.x (write policy owner) before they meet,
    A first, and each puts a record in it. A's descriptor wins everywhere, so
    B's record, which only B's own descriptor allowed, is refused on every
    node; B judged it by B's descriptor when it wrote it, and judges it
    again once A's arrives (once it stayed in B's store, and only there)."""
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "b", org_b) as b, \
            org_node(tmp_path / "c", org_a) as c:
        for target, source in ((a, b), (b, a), (c, a), (c, b)):
            deliver(target, source)
        a.create_registry("shared.x", ["tool"], write_policy="owner")
        a.put("shared.x", "tool", {"name": "from-a"}, id="ra")
        time.sleep(0.005)  # B's create is the later one on any clock
        b.create_registry("shared.x", ["tool"], write_policy="owner")
        b.put("shared.x", "tool", {"name": "from-b"}, id="rb")
        order = [(a, b), (b, a)] if first == "earlier" else [(b, a), (a, b)]
        for target, source in [*order, (c, b), (c, a)]:
            assert "rejected" not in statuses(deliver(target, source))
        for grid in (a, b, c):
            assert grid.describe_registry("shared.x")["owner"] == org_a.did
            assert [r["id"] for r in grid.list("shared.x").items] == ["ra"]
        assert a.state_digest() == b.state_digest()  # (c holds its own delegation besides)


@pytest.mark.parametrize("b_writes", ["before", "after"])
def test_a_change_is_judged_by_the_write_policy_in_force_when_it_was_made_whatever_the_arrival_order(
        tmp_path: Path, org_a: KeyPair, org_b: KeyPair, b_writes: str) -> None:
    """A's registry is open; A tightens it to owner while B, not having
    seen that, puts a record in it, before or after by the clock. Replica c
    gets A's changes first, d gets B's first: both hold B's record if B
    wrote it before the tightening, neither if after (once, whichever came
    first decided)."""
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "b", org_b) as b, \
            LocalRegistry.open_path(tmp_path / "c", KeyPair.generate()) as c, \
            LocalRegistry.open_path(tmp_path / "d", KeyPair.generate()) as d:
        deliver(b, a)
        a.create_registry("open.x", ["tool"], write_policy="open")
        deliver(b, a)
        if b_writes == "before":
            b.put("open.x", "tool", {"name": "by-b"}, id="rb")
            time.sleep(0.005)
            a.update("grid.registries", "open.x", patch={"write_policy": "owner"})
        else:
            a.update("grid.registries", "open.x", patch={"write_policy": "owner"})
            time.sleep(0.005)
            b.put("open.x", "tool", {"name": "by-b"}, id="rb")
        for replica, sources in ((c, (a, b)), (d, (b, a))):
            for source in sources:
                assert "rejected" not in statuses(deliver(replica, source))
        held = [[r["id"] for r in grid.list("open.x").items] for grid in (c, d)]
        assert held == ([["rb"], ["rb"]] if b_writes == "before" else [[], []])
        assert c.state_digest() == d.state_digest()


def test_two_nodes_of_one_org_edit_each_others_records(tmp_path: Path, org_a: KeyPair) -> None:
    with org_node(tmp_path / "1", org_a) as one, org_node(tmp_path / "2", org_a) as two:
        one.put(TOOLS, "tool", {"name": "ocr"}, id="ocr")
        deliver(two, one)
        two.update(TOOLS, "ocr", patch={"version": "2"})
        assert "rejected" not in statuses(deliver(one, two))
        assert one.get(TOOLS, "ocr")["fields"]["version"] == "2"


def test_a_change_whose_signers_delegation_has_not_arrived_waits_for_it(tmp_path: Path, org_a: KeyPair) -> None:
    with org_node(tmp_path / "1", org_a) as one, org_node(tmp_path / "2", org_a) as two, \
            LocalRegistry.open_path(tmp_path / "r") as replica:
        one.put(TOOLS, "tool", {"name": "ocr"}, id="ocr")
        deliver(two, one)
        two.update(TOOLS, "ocr", patch={"version": "2"})
        two_wires = feed_wires(two)
        delegation_of_two, update = two_wires[0], two_wires[-1]
        replica.execute([Remote(w, "p") for w in feed_wires(one)])
        assert statuses(replica.execute([Remote(update, "p")])) == ["pending"]
        assert replica.engine.metrics["remote.waiting_delegation"] == 1
        result = replica.execute([Remote(delegation_of_two, "p")])[0]
        assert result.status == "applied" and len(result.released) == 1
        assert replica.get(TOOLS, "ocr")["fields"]["version"] == "2"


def test_an_owner_registry_replicates_between_two_nodes_of_its_org(tmp_path: Path, org_a: KeyPair,
                                                                   org_b: KeyPair) -> None:
    with org_node(tmp_path / "1", org_a) as one, org_node(tmp_path / "2", org_a) as two, \
            org_node(tmp_path / "b", org_b) as other:
        one.put("grid.registries", "registry", {"name": "acme.models", "kinds": ["tool"], "write_policy": "owner"},
                id="acme.models")
        one.put("acme.models", "tool", {"name": "m1"}, id="m1")
        deliver(two, one)
        two.put("acme.models", "tool", {"name": "m2"}, id="m2")
        assert "rejected" not in statuses(deliver(one, two))
        assert {r["id"] for r in one.list("acme.models").items} == {"m1", "m2"}
        deliver(other, one)
        with pytest.raises(PolicyDenied, match="owner org"):
            other.put("acme.models", "tool", {"name": "x"}, id="x")


def test_a_grid_members_statement_is_never_updated_or_deleted(tmp_path: Path, org_a: KeyPair) -> None:
    with org_node(tmp_path / "a", org_a) as grid:
        record_id = grid.list(MEMBERS_REGISTRY).items[0]["id"]
        with pytest.raises(PolicyDenied, match="never"):
            grid.delete(MEMBERS_REGISTRY, record_id)


def test_no_org_can_create_another_orgs_own_record_in_grid_orgs(tmp_path: Path, org_a: KeyPair,
                                                                 org_b: KeyPair) -> None:
    with org_node(tmp_path / "b", org_b) as b:
        with pytest.raises(NotOwner):
            b.put("grid.orgs", "org", {"name": "squat"}, id=org_a.did)


# ================================================================ revocation and expiry


def test_changes_of_a_revoked_key_past_its_cutoff_are_refused(tmp_path: Path, org_a: KeyPair) -> None:
    stolen = KeyPair.generate()
    with org_node(tmp_path / "thief", org_a, stolen) as thief, org_node(tmp_path / "a", org_a) as a:
        thief.put(TOOLS, "tool", {"name": "before"}, id="before")
        deliver(a, thief)
        seq = a.engine.version_vector(TOOLS)[TOOLS][stolen.did]
        publish(a, sign_revocation(org_a, stolen.did, {TOOLS: seq}, reason="key stolen"))
        thief.put(TOOLS, "tool", {"name": "after"}, id="after")
        results = deliver(a, thief)
        assert [r.error.code for r in results if r.status == "refused"] == ["key_revoked"]
        assert a.get(TOOLS, "before")["fields"]["name"] == "before"
        # The revocation reaches the thief's node too, which then refuses its own writes.
        deliver(thief, a)
        with pytest.raises(KeyRevoked):
            thief.put(TOOLS, "tool", {"name": "more"}, id="more")


@pytest.mark.parametrize("roles", [["reader"], ["node", "writer"]])
def test_a_new_delegation_of_a_key_judges_its_changes_of_its_time_alike_whichever_came_first(
        tmp_path: Path, org_a: KeyPair, roles: list[str]) -> None:
    # The org gives its device's key new roles (a reader now) while the
    # device, offline, writes on. A node that took the new delegation first
    # refused the write; one that took the write first kept it for good (no
    # statement but a revocation judged stored changes again): the
    # federation split. A delegation that changes nothing keeps every write.
    device_key = KeyPair.generate()
    now = time.time()
    with org_node(tmp_path / "device", org_a, device_key, now=now - 120) as device, \
            org_node(tmp_path / "admin", org_a) as admin:
        device.put(TOOLS, "tool", {"name": "before"}, id="before")
        time.sleep(1.01 - time.time() % 1)  # delegations start on a whole second: the next one
        new_roles = sign_delegation(org_a, device_key.did, roles)
        device.put(TOOLS, "tool", {"name": "offline"}, id="offline")  # it has not heard of them
        deliver(admin, device)
        statement_id = publish(admin, new_roles)
        write_first, statement_first = (LocalRegistry.open_path(tmp_path / name) for name in ("w", "s"))
        with write_first, statement_first:
            first, others = first_and_rest(TOOLS, device, admin)
            statement_wires = [w for w in first if open_envelope(w).body.record == statement_id]
            first = [w for w in first if w not in statement_wires]
            for replica, order in ((write_first, others + statement_wires), (statement_first, statement_wires + others)):
                replica.execute([Remote(w, "p") for w in first])
                replica.execute([Remote(w, "p") for w in order])
            deliver(device, admin)  # the device hears of its new roles at last
            kept = "writer" in roles
            for grid in (device, admin, write_first, statement_first):
                assert grid.get(TOOLS, "before")["fields"]["name"] == "before"
                if kept:
                    assert grid.get(TOOLS, "offline")["fields"]["name"] == "offline"
                else:
                    with pytest.raises(NotFound):
                        grid.get(TOOLS, "offline")
            assert write_first.state_digest() == statement_first.state_digest()


def test_a_revoked_keys_edit_of_a_registrys_rules_no_longer_judges_the_changes_of_its_time(
        tmp_path: Path, org_a: KeyPair) -> None:
    """k (org A) drops kind tool from A's registry; w, which never saw that,
    then creates a tool; A revokes k from its first change on. A node that
    got k's edit and w's create before the revocation refused the create by
    k's version of the rules: the revocation rebuilds the descriptor without
    it, and the changes of its time are judged again (the create counts, as
    on a node that got the revocation first). The latest descriptor was the
    same before and after, so only its history told."""
    k, w = KeyPair.generate(), KeyPair.generate()
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "k", org_a, k) as kn, \
            org_node(tmp_path / "w", org_a, w) as wn, LocalRegistry.open_path(tmp_path / "late") as late, \
            LocalRegistry.open_path(tmp_path / "early") as early:
        a.create_registry("a.things", ["cluster", "tool"], write_policy="members")
        deliver(kn, a)
        deliver(wn, a)
        kn.update("grid.registries", "a.things", patch={"kinds": ["cluster"]})
        time.sleep(0.005)  # w's create is later: k's version of the rules was in force
        wn.put("a.things", "tool", {"name": "t"}, id="t")
        time.sleep(0.005)
        a.update("grid.registries", "a.things", patch={"kinds": ["cluster"]})  # the latest version, either way
        deliver(late, a), deliver(late, kn), deliver(late, wn)
        assert [r["id"] for r in late.iter_all("a.things")] == []  # refused by k's version
        revocation = publish(a, sign_revocation(org_a, k.did, {}, reason="lost"))
        deliver(late, a)
        assert late.get(MEMBERS_REGISTRY, revocation)
        deliver(early, a), deliver(early, wn), deliver(early, kn)
        for node in (late, early):
            assert node.get("a.things", "t")["owner"] == org_a.did
        assert late.state_digest() == early.state_digest()


def test_a_revoked_keys_edit_of_a_registrys_conflict_rules_stops_settling_its_records(
        tmp_path: Path, org_a: KeyPair) -> None:
    """k (org A) changes how A's registry settles a price from max to min,
    after a and w wrote two prices concurrently; A revokes k. A node that got
    k's edit first showed the min: the revocation rebuilds the descriptor
    without it, and its records are settled again by the rules that count
    (the max), as on a node that got the revocation first."""
    k, w = KeyPair.generate(), KeyPair.generate()
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "k", org_a, k) as kn, \
            org_node(tmp_path / "w", org_a, w) as wn, LocalRegistry.open_path(tmp_path / "late") as late, \
            LocalRegistry.open_path(tmp_path / "early") as early:
        a.create_registry("a.prices", ["cluster"], write_policy="members",
                          conflict_policy={"fields": {"price": "max"}})
        a.put("a.prices", "cluster", {"name": "p", "price": 1}, id="p")
        deliver(kn, a), deliver(wn, a)
        wn.update("a.prices", "p", patch={"price": 2})
        a.update("a.prices", "p", patch={"price": 3})  # concurrent with w's
        time.sleep(0.005)
        kn.update("grid.registries", "a.prices", patch={"conflict_policy": {"fields": {"price": "min"}}})
        deliver(late, a), deliver(late, wn), deliver(late, kn)
        assert late.get("a.prices", "p")["fields"]["price"] == 2  # settled by k's rules
        revocation = publish(a, sign_revocation(org_a, k.did, {}, reason="lost"))
        deliver(late, a)
        assert late.get(MEMBERS_REGISTRY, revocation)
        deliver(early, a), deliver(early, wn), deliver(early, kn)
        for node in (late, early):
            assert node.get("a.prices", "p")["fields"]["price"] == 3
        assert late.state_digest() == early.state_digest()


def test_an_expired_delegation_refuses_writes_with_a_hint_but_the_store_still_opens(tmp_path: Path,
                                                                                  org_a: KeyPair) -> None:
    key = KeyPair.generate()
    with org_node(tmp_path / "a", org_a, key, now=time.time() - 2 * YEAR, valid_for=YEAR) as grid:
        with pytest.raises(DelegationExpired, match="rgrid org renew"):
            grid.put(TOOLS, "tool", {"name": "x"})
        publish(grid, sign_delegation(org_a, key.did, ["node", "writer"]))  # renewed
        assert grid.put(TOOLS, "tool", {"name": "x"}).status == "created"


def test_a_home_publishes_its_org_and_delegation(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    created = home.init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        members = grid.list(MEMBERS_REGISTRY).items
        assert [(m["fields"]["org"], m["fields"]["subject"]) for m in members] == [(created["org"], created["node"])]
        org = grid.get("grid.orgs", created["org"])
        assert org["fields"]["name"] == "acme" and org["owner"] == created["org"]
    with LocalRegistry.open_home(home) as grid:  # publishing again is a no-op
        assert len(grid.list(MEMBERS_REGISTRY).items) == 1


def test_two_nodes_of_one_org_opened_before_they_meet_show_one_org_record_without_a_conflict(
        tmp_path: Path) -> None:
    """Only the home that made the org's key creates the org's own record:
    a second node of the org (`rgrid init --org-key`) replicates it, so the
    founder's name stands and no node shows a race of two creates."""
    founder, joined = Home(tmp_path / "founder"), Home(tmp_path / "joined")
    created = founder.init(org_name="acme")
    joined.init(org_key_file=founder.org_key_path)
    with LocalRegistry.open_home(founder) as a, LocalRegistry.open_home(joined) as b:
        with pytest.raises(NotFound):
            b.get("grid.orgs", created["org"])
        for source, target in ((a, b), (b, a)):
            target.execute([Remote(w, "peer") for w in wires_in_feed_order(source)])
        shown = [grid.get("grid.orgs", created["org"]) for grid in (a, b)]
        assert shown[0] == shown[1]
        assert shown[0]["fields"]["name"] == "acme" and shown[0]["conflicts"] == []
    assert founder.org().org_record_published and not joined.org().org_record_published


def test_the_founder_home_creates_the_org_record_once_even_on_a_new_store(tmp_path: Path) -> None:
    """A node that lost its store gets the org's record back from its peers;
    creating it again would race the original."""
    home = Home(tmp_path / "home")
    created = home.init(org_name="acme")
    with LocalRegistry.open_home(home) as grid:
        assert grid.get("grid.orgs", created["org"])["fields"]["name"] == "acme"
    shutil.rmtree(home.store_path)
    with LocalRegistry.open_home(home) as grid:
        with pytest.raises(NotFound):
            grid.get("grid.orgs", created["org"])


def test_statements_two_nodes_of_an_org_both_publish_are_one_record_each_without_a_conflict(
        tmp_path: Path) -> None:
    """Every node of a founder org publishes the federation's genesis, every
    node of an invited org its invitation, each before it has met the
    others: the same signed statement created twice is no conflict."""
    homes = [Home(tmp_path / name) for name in ("f1", "f2", "o1", "o2")]
    homes[0].init(org_name="founder")
    homes[1].init(org_key_file=homes[0].org_key_path)
    homes[2].init(org_name="other")
    homes[3].init(org_key_file=homes[2].org_key_path)
    federate(homes, "fed")
    grids = [LocalRegistry.open_home(home) for home in homes]
    try:
        for _ in range(2):
            for source in grids:
                for target in grids:
                    if target is not source:
                        target.execute([Remote(w, "peer") for w in wires_in_feed_order(source)])
        shown = [grid.list(MEMBERS_REGISTRY).items for grid in grids]
        assert all(items == shown[0] for items in shown)
        kinds = sorted(m["kind"] for m in shown[0])
        assert kinds == ["delegation"] * 4 + ["federation", "invitation"]
        for grid in grids:
            assert grid.list(None, conflicted=True).items == []
    finally:
        for grid in grids:
            grid.close()


def test_a_home_written_before_the_founder_mark_is_the_founder_when_it_made_the_org_key(tmp_path: Path) -> None:
    founder, joined = Home(tmp_path / "founder"), Home(tmp_path / "joined")
    founder.init(org_name="acme")
    joined.init(org_key_file=founder.org_key_path)
    for home in (founder, joined):
        data = json.loads((home.path / "org.json").read_text())
        del data["founder"]
        (home.path / "org.json").write_text(json.dumps(data))
    assert founder.org().founder and not joined.org().founder


def test_a_home_whose_delegation_expired_opens_reads_and_writes_again_once_renewed(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    created = home.init(org_name="acme")
    org_key = KeyPair(bytes.fromhex(json.loads(home.org_key_path.read_text())["seed"]))
    home.set_delegation(sign_delegation(org_key, created["node"], ["node", "writer"],
                                        now=time.time() - 2 * YEAR, valid_for=YEAR))
    with LocalRegistry.open_home(home) as grid:  # opens and reads
        assert grid.list(MEMBERS_REGISTRY).items
        with pytest.raises(DelegationExpired, match="rgrid org renew"):
            grid.put(TOOLS, "tool", {"name": "x"})
    home.set_delegation(sign_delegation(org_key, created["node"], ["node", "writer"]))
    with LocalRegistry.open_home(home) as grid:
        assert grid.put(TOOLS, "tool", {"name": "x"}).status == "created"
        assert grid.get("grid.orgs", created["org"])  # published now that the node may write


# ================================================================ records are a pure function of valid changes


def _revocation_scenario(root: Path) -> tuple[list[bytes], dict[str, Any]]:
    """Every envelope of a small federation in which org O revokes its node
    K1 while K1 keeps writing, O's node K2 builds on K1's changes before and
    after the cutoff, and org P's node K3 races O for one record id and
    tries to edit O's record. Returns the envelopes and the records every
    replica must end with."""
    org_o, org_p = KeyPair(b"\x11" * 32), KeyPair(b"\x12" * 32)
    k1, k2, k3 = (KeyPair(bytes([0x20 + i]) * 32) for i in range(3))
    n1, n2, n3 = (org_node(root / name, org, key) for name, org, key in
                  (("k1", org_o, k1), ("k2", org_o, k2), ("k3", org_p, k3)))
    try:
        n1.put(TOOLS, "tool", {"name": "r1"}, id="r1")
        n1.put(TOOLS, "tool", {"name": "r2"}, id="r2")
        deliver(n2, n1)
        n2.update(TOOLS, "r1", patch={"by_k2": 1})  # valid: builds on K1's valid create
        cutoff = n1.engine.version_vector(TOOLS)[TOOLS][k1.did]
        n1.update(TOOLS, "r1", patch={"by_k1": "late"})  # past the cutoff: invalid
        n1.update(TOOLS, "r2", patch={"by_k1": "late"})
        n1.put(TOOLS, "tool", {"name": "r3"}, id="r3")
        deliver(n2, n1)
        n2.update(TOOLS, "r2", patch={"by_k2": 2})  # builds on K1's invalid update: invalid
        n2.put(TOOLS, "tool", {"name": "r4"}, id="r4")
        n2.put(TOOLS, "tool", {"name": "race-o"}, id="race")
        n3.put(TOOLS, "tool", {"name": "race-p"}, id="race")
        deliver(n3, n2)
        n3.engine.trust.check_speaks_for = lambda *args, **kw: Verdict.ALLOWED  # type: ignore[method-assign]
        n3.update(TOOLS, "r1", patch={"by_k3": "hijack"})  # another org's record: invalid
        publish(n2, sign_revocation(org_o, k1.did, {TOOLS: cutoff}, reason="stolen"))
        wires: dict[bytes, bytes] = {}
        for grid in (n1, n2, n3):
            for wire in feed_wires(grid):
                wires.setdefault(wire, wire)
        race_creates = [env for env in map(open_envelope, wires) if env.body.record == "race"]
        winner = min(race_creates, key=lambda env: (tuple(env.body.hlc), env.cid)).body
        expected = {
            "r1": {"name": "r1", "by_k2": 1},
            "r2": {"name": "r2"},
            "r4": {"name": "r4"},
            "race": {"name": "race-o" if winner.author == k2.did else "race-p"},
        }
        return list(wires), expected
    finally:
        for grid in (n1, n2, n3):
            grid.close()


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_records_are_the_same_on_every_node_whatever_order_revocations_and_races_arrive_in(
        data: st.DataObject) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        wires, expected = _revocation_scenario(Path(root))
        digests, contents = [], []
        for i in range(3):
            order = wires if i == 0 else data.draw(st.permutations(wires), label=f"order{i}")
            cuts = sorted(set(data.draw(st.lists(st.integers(0, len(order)), max_size=4), label=f"cuts{i}")))
            with LocalRegistry.open_path(Path(root) / f"replica{i}") as replica:
                bounds = [0, *cuts, len(order)]
                for start, end in zip(bounds, bounds[1:], strict=False):
                    if start < end:
                        results = replica.execute([Remote(w, "p") for w in order[start:end]])
                        assert "rejected" not in statuses(results), [r.error for r in results]
                with replica.store.read() as txn:
                    assert txn.stat(replica.store.db["pending"])["entries"] == 0
                live = {r["id"]: r["fields"] for r in replica.list(TOOLS).items}
                assert live == expected
                if i == 0:  # in feed order, K1's late changes land before the revocation: rebuilt away
                    assert replica.engine.metrics["trust.refused_on_rebuild"] >= 3
                digests.append(replica.state_digest())
                contents.append(list(replica.iter_all(include_deleted=True)))
                assert_documents_in_memory_are_as_stored(replica)
        assert len(set(digests)) == 1
        assert all(c == contents[0] for c in contents)


def _write_policy_scenario(root: Path) -> tuple[list[bytes], list[bytes], dict[str, Any]]:
    """Org O's open registry, tightened to owner and later opened again,
    while org P's node writes without seeing either: its changes count
    where they were made while the registry was open. Returns what a
    replica gets first (members, the descriptor's create), the rest, and
    the records every replica must end with."""
    org_o, org_p = KeyPair(b"\x13" * 32), KeyPair(b"\x14" * 32)
    o, p = org_node(root / "o", org_o), org_node(root / "p", org_p)
    try:
        deliver(o, p)
        o.create_registry("open.x", ["tool"], write_policy="open")
        o.put("open.x", "tool", {"name": "by-o"}, id="ro")
        deliver(p, o)
        p.put("open.x", "tool", {"name": "p-before"}, id="p1")
        time.sleep(0.005)
        o.update("grid.registries", "open.x", patch={"write_policy": "owner"})
        time.sleep(0.005)
        p.put("open.x", "tool", {"name": "p-during"}, id="p2")
        p.update("open.x", "p1", patch={"edited": True})  # during: refused, p1 stays as created
        time.sleep(0.005)
        o.update("grid.registries", "open.x", patch={"write_policy": "open"})
        time.sleep(0.005)
        p.put("open.x", "tool", {"name": "p-after"}, id="p3")
        first, rest = first_and_rest("open.x", o, p)
        expected = {"ro": {"name": "by-o"}, "p1": {"name": "p-before"}, "p3": {"name": "p-after"}}
        return first, rest, expected
    finally:
        o.close()
        p.close()


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_records_are_the_same_on_every_node_whatever_order_write_policy_changes_arrive_in(
        data: st.DataObject) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        first, rest, expected = _write_policy_scenario(Path(root))

        def check(replica: LocalRegistry) -> None:
            assert {r["id"]: r["fields"] for r in replica.list("open.x").items} == expected

        replicas_agree_in_any_order(Path(root), first, rest, data, check)


def test_an_expired_node_is_still_admitted_at_the_handshake_so_it_syncs(org_a: KeyPair) -> None:
    from registrygrid.trust.admission import check_admission, encode_proof
    from registrygrid.trust.federation import make_genesis

    genesis = make_genesis("grid", [org_a])
    node_key = KeyPair.generate()
    expired = sign_delegation(org_a, node_key.did, ["node", "writer"], now=time.time() - 2 * YEAR, valid_for=YEAR)
    trust = TrustState(federation=genesis.claims, federation_id=genesis.id)
    admitted = check_admission(trust, node_key.did, genesis.id, encode_proof(expired.encode(), None, genesis.encode()))
    assert admitted.org == org_a.did
    # ... while what it writes now is refused by its delegation's window.
    trust.add(read_statement(DELEGATION_KIND, *delegation_record(expired)))
    with pytest.raises(DelegationExpired):
        trust.check_speaks_for(node_key.did, org_a.did, int(time.time() * 1000))


def test_a_federated_store_reopened_without_its_genesis_stays_in_its_federation(
        tmp_path: Path, org_a: KeyPair, org_b: KeyPair) -> None:
    """The store records the federation its node was opened in, so a later
    open that names none (a tool's, a test's bare ``open_path``) judges as
    the federation does: a change of an org outside it does not count.
    Before, the federation lived in the engine only, and such an open
    counted every key's changes, as a node outside any federation does
    (the search harness of session 28 fell into this)."""
    from registrygrid.trust.federation import make_genesis

    genesis = make_genesis("grid", [org_a])
    key = KeyPair.generate()
    member = LocalRegistry.open_path(tmp_path / "a", key, delegation=sign_delegation(org_a, key.did, ["node", "writer"]),
                                     federation=genesis)
    member.create_registry("open.x", ["cluster"], write_policy="members")
    outsider = org_node(tmp_path / "b", org_b)
    deliver(outsider, member)
    outsider.put("open.x", "cluster", {"name": "of-B"}, id="r")
    member.close()

    reopened = LocalRegistry.open_path(tmp_path / "a", key)
    try:
        assert reopened.engine.federation == (genesis.claims, genesis.id)
        assert (reopened.stats()["federation"], reopened.stats()["federation_id"]) == ("grid", genesis.id)
        assert outsider.stats()["federation"] == "-"  # opened bare, never in one
        deliver(reopened, outsider)
        with pytest.raises(NotFound):
            reopened.get("open.x", "r")
    finally:
        reopened.close()
        outsider.close()


def test_a_store_opened_in_another_federation_records_that_one_and_an_unreadable_record_is_refused(
        tmp_path: Path, org_a: KeyPair) -> None:
    """Joining another federation (a home's `rgrid federation join`) opens
    the store with the new genesis: the store's record follows it. A record
    this version cannot read is an integrity error, not a silent open
    outside every federation."""
    from registrygrid.engine.engine import FEDERATION
    from registrygrid.errors import IntegrityError
    from registrygrid.trust.federation import make_genesis

    first, second = make_genesis("grid", [org_a]), make_genesis("other", [org_a])
    key = KeyPair.generate()
    LocalRegistry.open_path(tmp_path / "a", key, federation=first).close()
    LocalRegistry.open_path(tmp_path / "a", key, federation=second).close()
    with LocalRegistry.open_path(tmp_path / "a", key) as reopened:
        assert reopened.engine.federation == (second.claims, second.id)
        with reopened.store.write() as txn:
            reopened.store.put_meta(txn, FEDERATION, {"id": second.id, "claims": b"\x01"})
    with pytest.raises(IntegrityError, match="records its federation"):
        LocalRegistry.open_path(tmp_path / "a", key)


# ================================================================ whose word cuts a key

def _delegation(org: KeyPair, key: str, roles: tuple[str, ...] = ("node", "writer")) -> Any:
    return read_statement(DELEGATION_KIND, *delegation_record(sign_delegation(org, key, list(roles))))


def _revocation(org: KeyPair, key: str, cutoffs: dict[str, int] | None = None) -> Any:
    return read_statement(REVOCATION_KIND, *revocation_record(sign_revocation(org, key, cutoffs or {})))


def _federation(founder: KeyPair, *members: KeyPair) -> TrustState:
    from registrygrid.trust.federation import invite, invitation_record, make_genesis
    from registrygrid.trust.statements import INVITATION_KIND

    genesis = make_genesis("grid", [founder])
    state = TrustState(federation=genesis.claims, federation_id=genesis.id)
    for member in members:
        state.add(read_statement(INVITATION_KIND, *invitation_record(invite(genesis, member.did, founder))))
    return state


def test_an_org_a_federation_admin_removed_writes_nothing_through_a_key_it_delegates_later(
        org_a: KeyPair, org_b: KeyPair) -> None:
    # The removal named B's keys known then; a key B delegated afterwards was
    # named by no revocation, so check_chain let its changes through and the
    # handshake admitted it.
    from registrygrid.errors import NotMember
    from registrygrid.trust.admission import check_admission, encode_proof

    from registrygrid.trust.federation import make_genesis

    genesis = make_genesis("grid", [org_a, org_b], admins=[org_a.did])  # B a founder: no invitation to show
    state = TrustState(federation=genesis.claims, federation_id=genesis.id)
    state.add(_revocation(org_a, org_b.did))  # the admin removes B
    later = KeyPair.generate()
    delegation = sign_delegation(org_b, later.did, ["node", "writer"])
    genesis_id = state.federation_id
    assert genesis_id is not None
    with pytest.raises(NotMember, match="revoked"):  # before its delegation reached this node ...
        check_admission(state, later.did, genesis_id, encode_proof(delegation.encode(), None, None))
    state.add(read_statement(DELEGATION_KIND, *delegation_record(delegation)))
    with pytest.raises(KeyRevoked):
        state.check_speaks_for(later.did, org_b.did, int(time.time() * 1000))
    state.add(_revocation(org_b, later.did, {TOOLS: 10**6}))  # its own org's word gives it no cutoffs
    with pytest.raises(KeyRevoked):
        state.check_speaks_for(later.did, org_b.did, int(time.time() * 1000))
    with pytest.raises(NotMember, match="revoked"):  # ... and after
        check_admission(state, later.did, genesis_id, encode_proof(delegation.encode(), None, None))


def test_another_org_that_delegates_a_nodes_key_cannot_revoke_it_nor_take_it_down_by_leaving(
        tmp_path: Path, org_a: KeyPair, org_b: KeyPair) -> None:
    # Anyone may delegate any key (a delegation needs only its org's
    # signature): org B delegated A's node key, revoked it with no cutoffs,
    # and every node refused every change of A's node, its records gone.
    with org_node(tmp_path / "a", org_a) as a, org_node(tmp_path / "b", org_b) as b, \
            LocalRegistry.open_path(tmp_path / "c", KeyPair.generate()) as c:
        a.put(TOOLS, "tool", {"name": "mine"}, id="mine")
        a_node = a.engine.key.did
        publish(b, sign_delegation(org_b, a_node, ["reader"]))
        publish(b, sign_revocation(org_b, a_node, {}))
        publish(b, sign_revocation(org_b, org_b.did, {}))  # ... and B leaves, taking "its" keys along
        for source in (a, b):
            deliver(c, source)
        deliver(a, b)
        a.put(TOOLS, "tool", {"name": "later"}, id="later")
        deliver(c, a)
        assert sorted(r["id"] for r in c.list(TOOLS).items) == ["later", "mine"]
        # A's own word still ends its delegation: A's node's later changes are refused everywhere.
        seq = c.engine.version_vector(TOOLS)[TOOLS][a_node]
        publish(a, sign_revocation(org_a, a_node, {TOOLS: seq}, reason="key stolen"))
        a_refused = None
        try:
            a.put(TOOLS, "tool", {"name": "after"}, id="after")
        except KeyRevoked as exc:
            a_refused = exc
        assert a_refused is not None and org_a.did in a_refused.message
        deliver(c, a)
        assert sorted(r["id"] for r in c.list(TOOLS).items) == ["later", "mine"]


def test_a_change_for_an_org_whose_delegation_of_its_key_comes_later_counts_whatever_the_order(
        tmp_path: Path, org_a: KeyPair, org_b: KeyPair) -> None:
    # K speaks for A and for B. Where A's delegation came, then K's create of
    # a record of B's, then B's delegation, the create was refused (K was
    # known, for another org) and stayed refused; where B's came first, it
    # counted: two nodes holding the same changes showed different records.
    key = KeyPair.generate()
    with org_node(tmp_path / "k", org_a, key) as k, org_node(tmp_path / "b", org_b) as b:
        publish(b, sign_delegation(org_b, key.did, ["node", "writer"]))
        k.engine.owner = org_b.did  # K writes for B
        deliver(k, b)
        k.put(TOOLS, "tool", {"name": "for-b"}, id="kb1")
        by_k, by_b = feed_wires(k), feed_wires(b)
    of_a = by_k[0]
    create = next(w for w in by_k if open_envelope(w).body.record == "kb1")
    digests = []
    for name, order in (("late", [[of_a], [create], by_b]), ("early", [by_b, [of_a], [create]])):
        with LocalRegistry.open_path(tmp_path / name, KeyPair.generate()) as replica:
            for batch in order:
                replica.execute([Remote(w, "p") for w in batch])
            assert replica.get(TOOLS, "kb1")["owner"] == org_b.did, name
            digests.append(replica.state_digest())
    assert digests[0] == digests[1]
