"""Two creates of one user kind version: every node ends with one definition.

Two orgs (or two nodes of one org) that both publish ``widget`` v1 before
they meet: each node's catalog follows the ``grid.kinds`` record it shows
once the race settles (the earliest create's, between orgs), and every
record of that kind is judged by that definition, so every node holds the
same kinds and the same records whatever order the changes reached it in.
Real LMDB stores exchanging real envelopes.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import NotFound
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import open_envelope
from registrygrid.sdk import LocalRegistry
from tests.test_conflicts import NODE_A, NODE_B, NODE_C, ORG_A, ORG_B, wires

SIZE_AS_NUMBER = {"type": "object", "required": ["name"],
                  "properties": {"name": {"type": "string"}, "size": {"type": "integer"}}}
SIZE_AS_WORD = {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "size": {"type": "string"}}}


def node(root: Path, name: str, key: KeyPair, org: KeyPair | None) -> LocalRegistry:
    delegation = sign_delegation(org, key.did, ["node", "writer"]) if org is not None else None
    return LocalRegistry.open_path(root / name, key, delegation=delegation)


def deliver(source: LocalRegistry, target: LocalRegistry) -> None:
    """Everything ``source`` holds, to ``target``: a change its kind's schema
    refuses is refused and kept as evidence, never rejected (dropped)."""
    results = target.execute([Remote(w, "peer") for w in wires(source)])
    assert {r.status for r in results} <= {"applied", "duplicate", "refused"}, [r.error for r in results]


def publish_widgets(a: LocalRegistry, b: LocalRegistry) -> None:
    """a, then b (later on any clock), each define widget v1 their own way,
    make a registry of widgets and put one valid under its own definition only."""
    a.register_kind("widget", 1, SIZE_AS_NUMBER)
    a.create_registry("a.widgets", ["widget"], write_policy="members")
    a.put("a.widgets", "widget", {"name": "v", "size": 3}, id="v")
    time.sleep(0.005)
    b.register_kind("widget", 1, SIZE_AS_WORD)
    b.create_registry("b.widgets", ["widget"], write_policy="members")
    b.put("b.widgets", "widget", {"name": "w", "size": "large"}, id="w")


def widgets_of(a: LocalRegistry) -> None:
    """a defines widget v1, makes a registry of widgets and puts one, "v"."""
    a.register_kind("widget", 1, SIZE_AS_NUMBER)
    a.create_registry("a.widgets", ["widget"], write_policy="members")
    a.put("a.widgets", "widget", {"name": "v", "size": 3}, id="v")


def shown(grid: LocalRegistry) -> tuple[Any, ...]:
    widgets = []
    for registry in ("a.widgets", "b.widgets"):
        try:
            widgets += [(registry, r["id"], r["fields"]) for r in grid.list(registry).items]
        except NotFound:
            pass
    return grid.kind("widget", 1)["schema"], widgets, grid.state_digest()


@pytest.mark.parametrize("first", ["a", "b"])
def test_two_orgs_defining_one_kind_version_end_with_the_earliest_definition_everywhere(
        tmp_path: Path, first: str) -> None:
    a, b = node(tmp_path, "a", NODE_A, ORG_A), node(tmp_path, "b", NODE_B, ORG_B)
    replica = node(tmp_path, "replica", NODE_C, None)
    grids = [a, b, replica]
    try:
        deliver(a, b)
        deliver(b, a)  # each knows the other's delegation
        publish_widgets(a, b)
        order = [(a, b), (b, a)] if first == "a" else [(b, a), (a, b)]
        for source, target in [*order, (b, replica), (a, replica)]:
            deliver(source, target)  # b's create of the kind, and its widget, are refused everywhere
        views = [shown(grid) for grid in grids]
        assert views[0] == views[1] == views[2]
        schema, widgets, _ = views[0]
        assert schema["properties"]["size"] == {"type": "integer"}  # a's: the earlier create
        assert widgets == [("a.widgets", "v", {"name": "v", "size": 3})]
        assert b.stats()["metric.kinds.redefined"] == 1

        # b's chain went on past its refused widget: a widget valid under the
        # definition every node holds now reaches everyone.
        b.put("b.widgets", "widget", {"name": "u", "size": 7}, id="u")
        for target in (a, replica):
            deliver(b, target)
        assert all(grid.get("b.widgets", "u")["fields"] == {"name": "u", "size": 7} for grid in grids)
        assert a.state_digest() == b.state_digest() == replica.state_digest()
    finally:
        for grid in grids:
            grid.close()


def test_two_nodes_of_one_org_defining_one_kind_version_agree_on_the_one_their_record_shows(
        tmp_path: Path) -> None:
    a, a2 = node(tmp_path, "a", NODE_A, ORG_A), node(tmp_path, "a2", KeyPair(b"\xa4" * 32), ORG_A)
    try:
        deliver(a, a2)
        deliver(a2, a)
        publish_widgets(a, a2)
        deliver(a, a2)
        deliver(a2, a)
        assert shown(a) == shown(a2)
        record = a.get("grid.kinds", "widget.v1")
        assert shown(a)[0] == record["fields"]["schema"] == SIZE_AS_WORD  # the later create, last-writer-wins
        assert shown(a)[1] == [("b.widgets", "w", {"name": "w", "size": "large"})]
    finally:
        a.close()
        a2.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_arrival_order_of_a_kind_race_gives_the_same_kinds_and_records(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        a, b = node(base, "a", NODE_A, ORG_A), node(base, "b", NODE_B, ORG_B)
        replicas: list[LocalRegistry] = []
        try:
            deliver(a, b)
            deliver(b, a)
            publish_widgets(a, b)
            b.put("b.widgets", "widget", {"name": "n", "size": "small"}, id="n")
            everything: dict[bytes, bytes] = {}
            for grid in (a, b):
                for wire in wires(grid):
                    everything.setdefault(open_envelope(wire).cid, wire)
            members = [w for w in everything.values() if open_envelope(w).body.registry == "grid.members"]
            rest = [w for w in everything.values() if w not in members]
            views = []
            for i in range(3):
                rnd = data.draw(st.randoms(use_true_random=True), label=f"order{i}")
                order = members + rnd.sample(rest, len(rest))
                replica = node(base, f"replica{i}", KeyPair(bytes([0xd0 + i]) * 32), None)
                replicas.append(replica)
                cuts = sorted({rnd.randint(0, len(order)) for _ in range(rnd.randint(0, 3))})
                for start, end in itertools.pairwise([0, *cuts, len(order)]):
                    if start < end:
                        replica.execute([Remote(w, "p") for w in order[start:end]])
                # A registry's descriptor may come after its records in a
                # random order (sync sends descriptors first): send again.
                replica.execute([Remote(w, "p") for w in order])
                views.append(shown(replica))
            assert views[0] == views[1] == views[2]
            assert views[0][0]["properties"]["size"] == {"type": "integer"}
        finally:
            for grid in [a, b, *replicas]:
                grid.close()


def test_a_record_that_arrives_before_its_user_kinds_definition_waits_for_it(tmp_path: Path) -> None:
    """Gossip messages may arrive out of order, and a sync response is cut
    at its budget: a record of a user kind can reach a node before the
    kind's definition. It waits for it, and so do its author's later
    changes; the definition releases them all."""
    a = node(tmp_path, "a", NODE_A, ORG_A)
    replica = node(tmp_path, "replica", KeyPair(b"\x7c" * 32), None)
    try:
        widgets_of(a)
        a.put("a.widgets", "widget", {"name": "w", "size": 4}, id="w")
        everything = wires(a)
        definition = [w for w in everything if open_envelope(w).body.registry == "grid.kinds"]
        rest = [w for w in everything if w not in definition]
        early = replica.execute([Remote(w, "peer") for w in rest])
        assert [r.status for r in early[-2:]] == ["pending", "pending"]
        assert replica.engine.metrics["remote.waiting_kind"] == 1  # the first; the second waits for it
        (late,) = replica.execute([Remote(w, "peer") for w in definition])
        assert late.status == "applied" and len(late.released) == 2
        assert sorted(r["id"] for r in replica.list("a.widgets").items) == ["v", "w"]
        assert replica.list("a.widgets").items == a.list("a.widgets").items
    finally:
        a.close()
        replica.close()


def test_a_kind_version_is_never_deleted_so_every_node_holds_it_and_the_records_of_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete of a kind's record was accepted: nodes that ran on kept the
    kind, a node that opened its store after the delete lost it, and the
    records of it made elsewhere waited there for a definition for good."""
    import types

    from registrygrid.engine import local, registries
    from registrygrid.errors import PolicyDenied

    a = node(tmp_path, "a", NODE_A, ORG_A)
    replica = node(tmp_path, "replica", KeyPair(b"\x7c" * 32), None)
    try:
        widgets_of(a)
        deliver(a, replica)
        digest = a.state_digest()
        with pytest.raises(PolicyDenied, match="published once"):
            a.delete("grid.kinds", "widget.v1")
        assert a.state_digest() == digest
        # A node of an older version deletes it all the same: refused where it lands.
        monkeypatch.setattr(local, "regs", types.SimpleNamespace(**{**vars(registries), "KINDS_REGISTRY": "-"}))
        a.delete("grid.kinds", "widget.v1")
        monkeypatch.undo()
        (result,) = replica.execute([Remote(wires(a)[-1], "peer")])
        assert result.status == "refused" and "published once" in result.error.message
        a.put("a.widgets", "widget", {"name": "w", "size": 4}, id="w")
        deliver(a, replica)
        replica.close()
        replica = node(tmp_path, "replica", KeyPair(b"\x7c" * 32), None)  # opened again: the kind is there
        assert replica.kind("widget", 1)["schema"] == SIZE_AS_NUMBER
        assert sorted(r["id"] for r in replica.list("a.widgets").items) == ["v", "w"]
        a.close()
        a = node(tmp_path, "a", NODE_A, ORG_A)  # the node that applied the delete loads the kind too
        assert a.kind("widget", 1)["schema"] == SIZE_AS_NUMBER
    finally:
        a.close()
        replica.close()
