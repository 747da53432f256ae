"""A registry's own rules judge each remote change by what it made of what
its author saw, and a change they refuse is kept as evidence.

A registry's kinds and ``max_record_bytes`` are its rules, changed by its
descriptor; a record's kind and the tags it may carry are fixed by the
grid. Two things can make an honest change break one of them on arrival:
its author had not seen the registry drop a kind or lower its cap, or it
raced another change and their merge is beyond a cap neither broke. Every
node must judge such a change alike whatever else it holds, and a change
refused must stay in its author's chain, or the author's later changes
would wait for it forever. Real LMDB stores exchanging real envelopes.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.crdt.change import _uleb, read_header
from registrygrid.crdt.record import RecordDoc, actor_for
from registrygrid.crdt.snapshot import genesis_change, read_snapshot
from registrygrid.engine.ops import Remote
from registrygrid.identity.keys import KeyPair, public_key_from_did
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import open_envelope, seal
from registrygrid.protocol.hlc import Hlc
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import pending
from registrygrid.trust.statements import MEMBERS_REGISTRY
from tests.arrival_orders import first_and_rest, replicas_agree_in_any_order
from tests.test_trust import deliver, feed_wires, org_node, statuses

ORG_O, ORG_P = KeyPair(b"\x21" * 32), KeyPair(b"\x22" * 32)
REG = "rules.x"


@dataclass
class Stores:
    """O's two nodes, P's node, and a replica that only takes what it is given."""

    o: LocalRegistry
    o2: LocalRegistry
    p: LocalRegistry
    replica: LocalRegistry

    def registry(self, kinds: list[str], **options: Any) -> None:
        """O creates REG; its other node and P hear of it (the replica does not)."""
        self.o.create_registry(REG, kinds, **options)
        deliver(self.p, self.o)
        deliver(self.o2, self.o)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    made = Stores(org_node(tmp_path / "o", ORG_O), org_node(tmp_path / "o2", ORG_O), org_node(tmp_path / "p", ORG_P),
                  LocalRegistry.open_path(tmp_path / "replica"))
    deliver(made.p, made.o)
    deliver(made.o2, made.o)
    yield made
    for grid in (made.o, made.o2, made.p, made.replica):
        grid.close()


def shown(grid: LocalRegistry) -> dict[str, tuple[str, dict[str, Any]]]:
    return {r["id"]: (r["kind"], r["fields"]) for r in grid.list(REG).items}


def _tightening_scenario(root: Path) -> tuple[list[bytes], list[bytes], dict[str, Any]]:
    """Org O's registry holds clusters and tools, with a 2 KiB cap. O and P
    each grow one record concurrently (within the cap, their merge beyond
    it), then O drops tools and lowers the cap to 1 KiB while P, which has
    not seen that, writes a tool, an oversized cluster, an update of the
    shared record, and one more cluster. Returns what a replica gets first
    (members, the registry's create), the rest, and the records every
    replica must end with."""
    o, p = org_node(root / "o", ORG_O), org_node(root / "p", ORG_P)
    try:
        deliver(p, o)
        o.create_registry(REG, ["cluster", "tool"], write_policy="members", limits={"max_record_bytes": 2048})
        o.put(REG, "cluster", {"name": "shared"}, id="shared")
        deliver(p, o)
        deliver(o, p)
        o.update(REG, "shared", patch={"from_o": "o" * 1200})
        p.update(REG, "shared", patch={"from_p": "p" * 1200})  # concurrent: 2,422 bytes merged
        p.put(REG, "tool", {"name": "t-before", "description": "a tool"}, id="t-before")
        time.sleep(0.005)
        o.update("grid.registries", REG, patch={"kinds": ["cluster"], "limits": {"max_record_bytes": 1024}})
        time.sleep(0.005)
        p.put(REG, "tool", {"name": "t-after", "description": "a tool"}, id="t-after")  # kind dropped
        p.put(REG, "cluster", {"name": "big-after", "notes": "x" * 1500}, id="big-after")  # over 1 KiB
        p.update(REG, "shared", patch={"from_p": "short"})  # what p saw, within 1 KiB
        p.put(REG, "cluster", {"name": "small-after"}, id="small-after")
        first, rest = first_and_rest(REG, o, p)
        expected = {"shared": ("cluster", {"name": "shared", "from_o": "o" * 1200, "from_p": "short"}),
                    "t-before": ("tool", {"name": "t-before", "description": "a tool"}),
                    "small-after": ("cluster", {"name": "small-after"})}
        return first, rest, expected
    finally:
        o.close()
        p.close()


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_records_are_the_same_on_every_node_whatever_order_a_registrys_tightening_arrives_in(
        data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as root:
        first, rest, expected = _tightening_scenario(Path(root))

        def check(replica: LocalRegistry) -> None:
            assert shown(replica) == expected
            # Every change is kept, the two refused ones too, and nothing waits.
            assert all(replica.change(open_envelope(w).cid) == w for w in first + rest)
            with replica.store.read() as txn:
                assert not pending.any_waiting(replica.store, txn)

        replicas_agree_in_any_order(Path(root), first, rest, data, check)


def test_concurrent_tag_adds_beyond_the_tag_cap_land_on_every_node(stores: Stores) -> None:
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster"], write_policy="members")
    base = [f"t{i}" for i in range(limits.MAX_TAGS - 2)]
    o.put(REG, "cluster", {"name": "x"}, id="x", tags=base)
    deliver(p, o)
    o.update(REG, "x", tags=[*base, "o1", "o2"])
    p.update(REG, "x", tags=[*base, "p1", "p2"])  # each at the cap; both: 66 tags
    for target, source in ((o, p), (p, o), (replica, p), (replica, o)):
        assert "rejected" not in statuses(deliver(target, source))
    tags = [set(grid.get(REG, "x")["tags"]) for grid in (o, p, replica)]
    assert tags[0] == tags[1] == tags[2] == {*base, "o1", "o2", "p1", "p2"}


def test_a_create_race_of_one_id_with_two_kinds_keeps_the_earliest_and_the_losers_chain_goes_on(stores: Stores) -> None:
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster", "tool"], write_policy="members")
    o.put(REG, "cluster", {"name": "x"}, id="x")
    time.sleep(0.005)
    p.put(REG, "tool", {"name": "x", "description": "a tool"}, id="x")
    p.put(REG, "cluster", {"name": "y"}, id="y")  # after its lost create, in the same chain
    for target, source in ((o, p), (p, o), (replica, p), (replica, o)):
        assert "rejected" not in statuses(deliver(target, source))
    for grid in (o, p, replica):
        assert shown(grid) == {"x": ("cluster", {"name": "x"}), "y": ("cluster", {"name": "y"})}
        assert grid.get(REG, "x")["owner"] == ORG_O.did



def _rewritten(raw: bytes, *, seq: int, start_op: int) -> bytes:
    """An uncompressed Automerge change chunk with another seq and start op
    (each one byte, as in ``raw``), checksummed again: what a hostile node
    crafts by hand; no document makes it (crdt/change.py has the layout)."""
    length, start = _uleb(raw, 9)
    count, i = _uleb(raw, start)
    actor_len, i = _uleb(raw, i + 32 * count)
    at_seq = i + actor_len
    at_start_op = _uleb(raw, at_seq)[1]
    assert _uleb(raw, at_start_op)[1] == at_start_op + 1 and seq < 128 and start_op < 128
    out = bytearray(raw)
    out[at_seq], out[at_start_op] = seq, start_op
    out[4:8] = hashlib.sha256(bytes(out[8:])).digest()[:4]
    return bytes(out)


def test_an_authors_change_crafted_beside_its_own_earlier_one_is_judged_with_it(stores: Stores) -> None:
    """Judged on its own history, could each of an author's changes fit the
    size cap while their merge grows without bound? No: Automerge counts an
    actor's earlier changes (lower seq) as seen by its later ones, whatever
    their deps say, so a change crafted beside its author's earlier one is
    judged on both, and refused here as a write over the cap."""
    o, replica = stores.o, stores.replica
    o.create_registry(REG, ["cluster"], write_policy="members", limits={"max_record_bytes": 2048})
    o.put(REG, "cluster", {"name": "x"}, id="x")
    o.update(REG, "x", patch={"one": "a" * 1200})
    created, first = [open_envelope(w) for w in feed_wires(o)[-2:]]
    author = created.body.author
    genesis = genesis_change(read_snapshot(created.body.payload, kind="cluster", schema=1), author)
    # Beside ``first`` rather than after it: built on the genesis alone,
    # then its seq and op counters moved on as if it followed ``first``.
    beside = RecordDoc.apply(None, genesis.raw_bytes).fork_with_actor(actor_for(public_key_from_did(author)))
    made = beside.update(fields={"name": "x", "two": "b" * 1200})
    both = RecordDoc.apply(None, genesis.raw_bytes)
    both.add_change(first.body.payload)
    (first_change,) = both.doc.get_changes([genesis.hash])
    crafted = _rewritten(made.raw_bytes, seq=3, start_op=first_change.max_op + 1)
    both.add_change(crafted)  # Automerge alone takes it: 2,422 bytes of fields
    crafted_hash = read_header(crafted).hash
    assert sorted(both.heads()) == sorted([first.body.change_hash, crafted_hash])  # concurrent, by deps
    # Yet its own history holds ``first``, which its deps do not name.
    assert sorted(both.materialize(heads=[crafted_hash])["fields"]) == ["name", "one", "two"]
    wire = seal(o.engine.key, registry=REG, record="x", op="update", kind="cluster",
                schema=1, seq=first.body.seq + 1, prev=first.cid, hlc=Hlc(first.body.hlc[0] + 1, 0),
                deps=[genesis.hash], change_hash=crafted_hash, payload=crafted).wire
    results = replica.execute([Remote(w, "o") for w in feed_wires(o)] + [Remote(wire, "o")])
    assert "rejected" not in statuses(results[:-1])
    assert results[-1].status == "refused" and "take 2422 bytes" in results[-1].error.message
    assert sorted(replica.get(REG, "x")["fields"]) == ["name", "one"]



def test_a_change_that_arrives_before_its_registrys_descriptor_waits_for_it(stores: Stores) -> None:
    """Gossip messages may arrive out of order: a record can reach a node
    before its registry's descriptor. It waits, with its author's later
    changes, and the descriptor releases them all; rejected, it would hold
    them back until sync offered it again."""
    o, replica = stores.o, stores.replica
    o.create_registry(REG, ["cluster"], write_policy="members")
    o.put(REG, "cluster", {"name": "v"}, id="v")
    o.put(REG, "cluster", {"name": "w"}, id="w")
    wires = feed_wires(o)
    descriptor = [w for w in wires if open_envelope(w).body.record == REG]
    early = replica.execute([Remote(w, "o") for w in wires if w not in descriptor])
    assert statuses(early)[-2:] == ["pending", "pending"]
    assert replica.engine.metrics["remote.waiting_registry"] == 1  # the first; the second waits for it
    (late,) = replica.execute([Remote(w, "o") for w in descriptor])
    assert late.status == "applied" and len(late.released) == 2
    assert replica.list(REG).items == o.list(REG).items
    with replica.store.read() as txn:
        assert not pending.any_waiting(replica.store, txn)



def test_a_record_of_a_kind_its_registry_dropped_can_still_be_deleted_everywhere(stores: Stores) -> None:
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster", "tool"], write_policy="members")
    p.put(REG, "tool", {"name": "t", "description": "a tool"}, id="t")
    deliver(o, p)
    o.update("grid.registries", REG, patch={"kinds": ["cluster"]})
    deliver(p, o)
    p.delete(REG, "t")  # no new tools, no edits of them; clearing one away is fine
    for target, source in ((o, p), (replica, o)):
        assert "rejected" not in statuses(deliver(target, source))
    for grid in (o, p, replica):
        assert grid.get(REG, "t", include_deleted=True)["deleted"] is True



def test_two_creates_of_one_id_with_two_kinds_by_one_org_keep_the_earliest(stores: Stores) -> None:
    """Creates of one org merge, but a record has one kind: Automerge's
    pick of it and the conflict rule's could differ, and records would be
    judged by either. They race as wholes, like two orgs' creates."""
    o1, o2, replica = stores.o, stores.o2, stores.replica
    stores.registry(["cluster", "tool"], write_policy="members")
    o1.put(REG, "cluster", {"name": "x"}, id="x")
    time.sleep(0.005)
    o2.put(REG, "tool", {"name": "x", "description": "a tool"}, id="x")
    o2.update(REG, "x", patch={"name": "y"})  # on its own create: refused with it
    for target, source in ((replica, o2), (replica, o1), (o1, o2), (o2, o1)):
        assert "rejected" not in statuses(deliver(target, source))
    for grid in (o1, o2, replica):
        assert shown(grid) == {"x": ("cluster", {"name": "x"})}
    assert len({grid.state_digest() for grid in (o1, o2, replica)}) == 1


def test_a_create_its_own_node_refused_and_made_again_ends_the_same_everywhere(stores: Stores) -> None:
    """P creates t as a tool, not knowing its registry dropped tools; once
    it learns that, its own node refuses the create, and P creates t again
    as a cluster. Both geneses are P's first Automerge change of t: a
    replica that still holds the first cannot add the second to one
    document, so it keeps it and judges both in clock order."""
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster", "tool"], write_policy="members")
    deliver(replica, o)
    o.update("grid.registries", REG, patch={"kinds": ["cluster"]})
    time.sleep(0.005)
    p.put(REG, "tool", {"name": "t", "description": "a tool"}, id="t")
    assert "rejected" not in statuses(deliver(replica, p))  # the replica has not seen the drop
    assert shown(replica) == {"t": ("tool", {"name": "t", "description": "a tool"})}
    deliver(p, o)
    assert shown(p) == {}  # its own create, refused by the rule of its time
    p.put(REG, "cluster", {"name": "t"}, id="t")
    (again,) = [w for w in feed_wires(p) if open_envelope(w).body.registry == REG][-1:]
    (kept,) = replica.execute([Remote(again, "p")])  # the drop has not reached the replica yet
    assert kept.status == "refused"  # kept, and judged again with the first create when the drop comes
    assert "rejected" not in statuses(deliver(replica, o))
    deliver(o, p)
    for grid in (o, p, replica):
        assert shown(grid) == {"t": ("cluster", {"name": "t"})}
    assert len({grid.state_digest() for grid in (o, p, replica)}) == 1



def test_a_descriptor_version_that_arrives_after_a_later_one_judges_the_changes_of_its_time(
        stores: Stores) -> None:
    """Two nodes of O open its registry concurrently (only owners then edit
    their records): o1 first (v1), o2 later, describing it too (v2). P
    edits O's record in between, seeing neither. A replica that gets v2
    before v1 shows the same registry after v1 as before it, yet v1 decides
    P's edit, made in its time."""
    o1, o2, p, replica = stores.o, stores.o2, stores.p, stores.replica
    stores.registry(["cluster"], write_policy="members")
    o1.put(REG, "cluster", {"name": "x"}, id="x")
    for target in (o2, p, replica):
        deliver(target, o1)
    o1.update("grid.registries", REG, patch={"write_policy": "open"})  # v1
    time.sleep(0.005)
    p.update(REG, "x", patch={"by": "p"})  # p has seen neither version
    time.sleep(0.005)
    o2.update("grid.registries", REG, patch={"write_policy": "open", "description": "x"})  # v2, beside v1
    for source in (p, o2, o1):  # p's edit, then v2, then v1: late
        assert "rejected" not in statuses(deliver(replica, source))
    for target, source in ((o1, o2), (o1, p), (o2, o1)):
        deliver(target, source)
    for grid in (o1, o2, replica):
        assert shown(grid) == {"x": ("cluster", {"name": "x"})}
    assert len({grid.state_digest() for grid in (o1, o2, replica)}) == 1



def test_a_change_a_registry_rule_refuses_waits_for_its_signers_delegation_first(stores: Stores) -> None:
    """Kept at once, a later rebuild would judge a change whose signer it
    cannot place; so it waits for the signer's delegation, as a change the
    rules let through does, and is judged when it comes."""
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster", "tool"], write_policy="members")
    o.update("grid.registries", REG, patch={"kinds": ["cluster"]})
    time.sleep(0.005)
    p.put(REG, "tool", {"name": "t", "description": "a tool"}, id="t")  # p has not seen the drop
    p.put(REG, "cluster", {"name": "c"}, id="c")
    deliver(replica, o)
    ours = [w for w in feed_wires(p) if open_envelope(w).body.registry == REG]
    early = replica.execute([Remote(w, "p") for w in ours])
    assert statuses(early) == ["pending", "pending"]
    assert replica.engine.metrics["remote.waiting_delegation"] == 1  # the tool; the cluster waits for it
    assert "rejected" not in statuses(deliver(replica, p))  # p's delegation, and what waited for it
    assert replica.engine.metrics["rejected.policy_denied"] == 1  # the tool, judged now: kept as evidence
    assert shown(replica) == {"c": ("cluster", {"name": "c"})}



def test_a_create_racing_a_held_record_waits_for_its_signers_delegation_before_the_race_is_settled(
        stores: Stores) -> None:
    """P, not having seen O restrict its registry to O's own records,
    creates x; O creates x after it. P's create is the earlier one but
    counts nowhere (the rule of its time refuses it), so x is O's. A replica
    that gets P's create before P's delegation must not settle the race
    without it: it waits, then judges."""
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster"], write_policy="members")
    o.update("grid.registries", REG, patch={"write_policy": "owner"})
    time.sleep(0.005)
    p.put(REG, "cluster", {"name": "by p"}, id="x")
    time.sleep(0.005)
    o.put(REG, "cluster", {"name": "by o"}, id="x")
    deliver(replica, o)
    ours = [w for w in feed_wires(p) if open_envelope(w).body.registry == REG]
    assert statuses(replica.execute([Remote(w, "p") for w in ours])) == ["pending"]
    assert "rejected" not in statuses(deliver(replica, p))
    deliver(o, p)
    for grid in (o, replica):
        assert shown(grid) == {"x": ("cluster", {"name": "by o"})}
        assert grid.get(REG, "x")["owner"] == ORG_O.did


def test_a_change_whose_dependencies_are_missing_waits_for_them_before_any_rule_refuses_it(
        stores: Stores) -> None:
    """O drops tools from its registry and adds them back; O's other node,
    having seen both, creates a tool, and P edits it. A replica that has
    only seen the drop gets P's edit before the create: judged then, by the
    rules it knows so far, it would be refused for good (the create's
    arrival rebuilds nothing). It waits for the create like any change
    missing its deps."""
    o, o2, p, replica = stores.o, stores.o2, stores.p, stores.replica
    stores.registry(["cluster", "tool"], write_policy="members")
    deliver(replica, o)
    o.update("grid.registries", REG, patch={"kinds": ["cluster"]})
    time.sleep(0.005)
    o.update("grid.registries", REG, patch={"kinds": ["cluster", "tool"]})
    deliver(o2, o)
    time.sleep(0.005)
    o2.put(REG, "tool", {"name": "t", "description": "a tool"}, id="t")
    deliver(p, o2)
    p.update(REG, "t", patch={"description": "edited"})
    drop, back = [w for w in feed_wires(o) if open_envelope(w).body.record == REG][-2:]
    (create,) = [w for w in feed_wires(o2) if open_envelope(w).body.registry == REG]
    (edit,) = [w for w in feed_wires(p) if open_envelope(w).body.registry == REG and w != create]
    members = [w for w in feed_wires(p) if open_envelope(w).body.registry == MEMBERS_REGISTRY]  # every delegation
    assert "rejected" not in statuses(replica.execute([Remote(w, "o") for w in [*members, drop]]))
    for batch, outcome in (([edit], ["pending"]), ([back], ["applied"]), ([create], ["applied"])):
        assert statuses(replica.execute([Remote(w, "o") for w in batch])) == outcome
    assert shown(replica) == shown(p) == {"t": ("tool", {"name": "t", "description": "edited"})}


def test_an_access_policy_that_arrives_before_its_registrys_descriptor_counts_once_it_comes(
        stores: Stores) -> None:
    """A policy counts where its org owns the registries it targets, which a
    node learns from their descriptors: one that came first counts from the
    moment the descriptor arrives, as everywhere else."""
    o, p, replica = stores.o, stores.p, stores.replica
    stores.registry(["cluster"], write_policy="members")
    o.put("grid.policies", "policy", {"name": "no-creates", "policy_type": "access", "targets": [REG],
                                      "access": {"rules": [{"id": "none", "effect": "forbid",
                                                            "actions": ["create"]}]}}, id="no-creates")
    time.sleep(0.005)
    p.put(REG, "cluster", {"name": "x"}, id="x")  # p has not seen the policy
    ours = feed_wires(o)
    descriptor = [w for w in ours if open_envelope(w).body.record == REG]
    for batch in ([w for w in ours if w not in descriptor], descriptor, feed_wires(p)):
        assert "rejected" not in statuses(replica.execute([Remote(w, "o") for w in batch]))
    deliver(o, p)
    assert shown(replica) == shown(o) == {}


def test_the_same_edit_made_again_after_a_late_rule_refused_it_is_a_new_change(stores: Stores) -> None:
    """P re-creates its deleted record while O's registry is, for a moment,
    writable by O only; P hears of that rule (and of its end) afterwards,
    and its own node refuses the re-create and drops it from the record's
    document. P then makes the same edit again: automerge 1.0.0rc1 dates
    every change 0, so it would repeat the refused change to the byte, and
    every node holding the first would reject the second envelope of it
    (and hold back P's later changes). It is made distinct instead, and
    counts everywhere."""
    stores.registry(["cluster"], write_policy="members")
    stores.p.put(REG, "cluster", {"name": "again"}, id="again")
    stores.p.delete(REG, "again")
    time.sleep(0.005)
    stores.o.update("grid.registries", REG, patch={"write_policy": "owner"})
    time.sleep(0.005)
    stores.p.put(REG, "cluster", {"name": "again"}, id="again")  # refused by the rule it has not heard of
    time.sleep(0.005)
    stores.o.update("grid.registries", REG, patch={"write_policy": "members"})
    deliver(stores.o, stores.p)
    deliver(stores.p, stores.o)
    assert stores.p.get(REG, "again", include_deleted=True)["deleted"]  # its re-create was refused at home
    stores.p.put(REG, "cluster", {"name": "again"}, id="again")
    stores.p.put(REG, "cluster", {"name": "later"}, id="later")
    for node in (stores.o, stores.o2, stores.replica):
        assert "rejected" not in statuses(deliver(node, stores.p))
        assert not node.get(REG, "again")["deleted"] and node.get(REG, "later")["owner"] == ORG_P.did


@pytest.mark.parametrize("swap", [False, True])
def test_a_late_change_is_judged_by_its_time_s_descriptor_as_its_conflict_rule_settled_it(
        tmp_path: Path, swap: bool) -> None:
    """o and o2 (one org) set REG's size cap at once: 1 KiB, then 64 KiB
    (later: last-writer-wins shows it). P, having seen both, creates a
    2 KB record; o then edits the descriptor again. A replica that takes
    P's create after that edit judges it by the version of its time, which
    must be the one the record showed then (64 KiB), not Automerge's own
    pick among the two caps (1 KiB for one order of the two keys): the
    replica refused what every other node counts."""
    keys = (KeyPair(b"\x41" * 32), KeyPair(b"\x42" * 32))
    k1, k2 = keys[::-1] if swap else keys
    with org_node(tmp_path / "o", ORG_O, k1) as o, org_node(tmp_path / "o2", ORG_O, k2) as o2, \
            org_node(tmp_path / "p", ORG_P) as p, LocalRegistry.open_path(tmp_path / "replica") as replica:
        o.create_registry(REG, ["tool"], write_policy="members", limits={"max_record_bytes": 4096})
        deliver(o2, o)
        o.update("grid.registries", REG, patch={"limits": {"max_record_bytes": 1024}})
        time.sleep(0.005)
        o2.update("grid.registries", REG, patch={"limits": {"max_record_bytes": 65536}})
        deliver(o, o2)
        assert o.get("grid.registries", REG)["fields"]["limits"] == {"max_record_bytes": 65536}
        deliver(p, o)
        time.sleep(0.005)
        p.put(REG, "tool", {"name": "t", "description": "d" * 2000}, id="t")
        time.sleep(0.005)
        o.update("grid.registries", REG, patch={"description": "edited since"})
        deliver(replica, o)
        assert "refused" not in statuses(deliver(replica, p))
        deliver(o, p)
        for grid in (o, replica):
            assert grid.get(REG, "t")["owner"] == ORG_P.did
        assert replica.state_digest() == o.state_digest()
