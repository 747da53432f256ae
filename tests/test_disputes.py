"""Disputes: manual conflicts answered by signed resolutions, and equivocations
proven, replicated and quarantined. Real stores exchanging real envelopes."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import pytest

from registrygrid.engine.ops import LinkPastGone, Remote
from registrygrid.engine.subjects import ServedTo
from registrygrid.errors import NotFound, PolicyDenied, Quarantined, RecordErased, ValidationError
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import open_envelope
from registrygrid.protocol.sync import GonePlace, answer_sync
from registrygrid.protocol.sync_session import Applied, Start, SyncSession, run_session
from registrygrid.sdk import LocalRegistry
from registrygrid.trust.statements import MEMBERS_REGISTRY, REVOCATION_KIND, revocation_record, sign_revocation
from tests.test_conflicts import (
    NODE_A,
    NODE_B,
    NODE_C,
    ORG_A,
    ORG_B,
    REG,
    Pair,
    deliver,
    exchange,
    wires,
)

FIELDS = "grid.clusters"


@pytest.fixture
def manual(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path, {"fields": {"price": "manual"}})
    made.create({"price": 1})
    made.race({"price": 2}, {"price": 3})
    made.converge()
    yield made
    made.close()


def test_a_manual_conflict_is_one_dispute_with_the_same_id_on_every_node(manual: Pair) -> None:
    listed = [g.disputes() for g in (manual.a, manual.b, manual.c)]
    assert listed[0] == listed[1] == listed[2]
    (dispute,) = listed[0]
    assert dispute["type"] == "field" and dispute["status"] == "disputed"
    assert (dispute["registry"], dispute["record"], dispute["path"]) == (REG, "x", "/fields/price")
    assert {w["value"] for w in dispute["writes"]} == {2, 3}


def test_showing_a_dispute_gives_a_diff_from_the_old_value_to_each_new_one(manual: Pair) -> None:
    (listed,) = manual.c.disputes()
    shown = manual.c.dispute(listed["id"])
    assert shown["was"] == 1
    assert shown["diff"][0] == "was: 1"
    assert {line.split()[1] for line in shown["diff"][1:]} == {"2", "3"}
    assert all(NODE_A.did in line or NODE_B.did in line for line in shown["diff"][1:])
    assert shown["resolutions"] == []


def test_the_owner_resolves_and_every_node_shows_the_resolved_value(manual: Pair) -> None:
    (listed,) = manual.a.disputes()
    manual.a.resolve_dispute(listed["id"], value=7, note="the list price")
    record = manual.converge()
    assert record["fields"]["price"] == 7
    (conflict,) = record["conflicts"]
    assert conflict["status"] == "resolved" and conflict["resolved_by"]
    for grid in (manual.a, manual.b, manual.c):
        shown = grid.dispute(listed["id"])
        assert shown["status"] == "resolved"
        assert [(r["value"], r["counts"], r["note"]) for r in shown["resolutions"]] == [(7, True, "the list price")]
    assert manual.c.disputes(status="disputed") == []


def test_a_later_resolution_replaces_an_earlier_one_and_both_stay_in_the_history(manual: Pair) -> None:
    (listed,) = manual.a.disputes()
    manual.a.resolve_dispute(listed["id"], value=7)
    manual.a.resolve_dispute(listed["id"], removed=True)
    record = manual.converge()
    assert "price" not in record["fields"]
    assert len(manual.b.dispute(listed["id"])["resolutions"]) == 2


def test_a_party_that_may_not_decide_is_refused_and_its_filed_resolution_does_not_count(manual: Pair) -> None:
    (listed,) = manual.b.disputes()
    with pytest.raises(PolicyDenied):
        manual.b.resolve_dispute(listed["id"], value=99)  # org B owns neither the registry nor the record
    # Filed anyway, past the SDK's check: stored, listed, but it decides nothing.
    manual.b.put("grid.disputes", "dispute-resolution", {"dispute": listed["id"], "outcome": "value", "value": 99},
                 tags=[listed["id"]])
    record = manual.converge()
    assert record["fields"]["price"] != 99
    assert [r["counts"] for r in manual.a.dispute(listed["id"])["resolutions"]] == [False]


def test_a_resolution_that_arrives_before_the_conflict_still_decides_it(tmp_path: Path) -> None:
    pair = Pair(tmp_path, {"fields": {"price": "manual"}})
    try:
        pair.create({"price": 1})
        pair.race({"price": 2}, {"price": 3})
        deliver(pair.a, pair.b)
        (listed,) = pair.b.disputes()
        deliver(pair.b, pair.a)
        pair.a.resolve_dispute(listed["id"], value=5)
        # c hears the resolution first, the competing writes after.
        resolution = wires(pair.a)[-1]
        assert pair.c.execute([Remote(resolution, "p")])[0].status == "applied"
        assert pair.converge()["fields"]["price"] == 5
    finally:
        pair.close()


def test_a_resolution_gives_a_value_or_a_removal_not_both(manual: Pair) -> None:
    (listed,) = manual.a.disputes()
    with pytest.raises(ValidationError, match="not both"):  # the value was dropped without a word
        manual.a.resolve_dispute(listed["id"], value=5, removed=True)
    assert manual.a.dispute(listed["id"])["resolutions"] == []


def test_a_resolution_must_be_tagged_with_its_dispute(manual: Pair) -> None:
    (listed,) = manual.a.disputes()
    with pytest.raises(ValidationError):
        manual.a.put("grid.disputes", "dispute-resolution", {"dispute": listed["id"], "outcome": "value", "value": 1})


DEALS = "acme.deals"


def _a_private_and_a_shared_dispute(tmp_path: Path) -> tuple[Pair, str, str]:
    """A manual conflict of a and b over x's price in DEALS (a's, private,
    b's org its reader) and another in the shared REG (c holds REG only).
    Returns the pair and the two disputes' ids."""
    pair = Pair(tmp_path, {"fields": {"price": "manual"}})
    a, b = pair.a, pair.b
    a.create_registry(DEALS, ["cluster"], write_policy="members", conflict_policy={"fields": {"price": "manual"}},
                      replication="private", readers=[ORG_B.did])
    a.put(DEALS, "cluster", {"name": "x", "price": 1}, id="x")
    exchange(a, b)
    a.update(DEALS, "x", patch={"price": 2})
    b.update(DEALS, "x", patch={"price": 3})
    exchange(a, b)
    pair.create({"price": 1})
    pair.race({"price": 2}, {"price": 3})
    pair.converge()
    (secret,) = [d["id"] for d in a.disputes() if d["registry"] == DEALS]
    (shared,) = [d["id"] for d in a.disputes() if d["registry"] == REG]
    return pair, secret, shared


def test_a_resolution_of_a_private_registrys_dispute_is_served_to_its_readers_only(tmp_path: Path) -> None:
    """A resolution carries the value the disputed field takes; filed in
    grid.disputes, which goes to every member, it went to nodes of orgs that
    may not read the registry. It names its registry now, and a node keeps
    it from the others: their chain of its filer's resolutions goes on past
    its place (named gone), so the shared registry's resolution after it
    still reaches them."""
    outsider = KeyPair(b"\xd1" * 32).did
    pair, secret, shared = _a_private_and_a_shared_dispute(tmp_path)
    try:
        a, b, c = pair.a, pair.b, pair.c
        a.resolve_dispute(secret, value=777_001, note="the confidential price")
        a.resolve_dispute(shared, value=5)
        sync(a, c, reader=outsider)
        kept = [r["fields"] for r in c.iter_all("grid.disputes", include_deleted=True)]
        assert [(f["dispute"], f["registry"]) for f in kept] == [(shared, REG)]
        assert c.get(REG, "x")["fields"]["price"] == 5
        assert not any(b"777001" in wire or b"confidential" in wire for wire in wires(c))
        sync(a, b, reader=ORG_B.did)
        assert b.get(DEALS, "x")["fields"]["price"] == 777_001
        assert sorted(r["fields"]["registry"] for r in b.iter_all("grid.disputes")) == sorted([DEALS, REG])
    finally:
        pair.close()


def test_a_fork_of_a_filers_resolutions_is_reported_to_the_private_registrys_readers_only(tmp_path: Path) -> None:
    """A clone of a's key resolves a private registry's dispute at the place
    where a resolved a shared one: the report of that fork of grid.disputes
    carries both signed resolutions, the private value too. Judged by the
    report's own registry (grid.disputes, shared), it went to everyone."""
    pair, secret, shared = _a_private_and_a_shared_dispute(tmp_path)
    try:
        a, b, c = pair.a, pair.b, pair.c
        twin = LocalRegistry.open_path(tmp_path / "twin", NODE_A,
                                       delegation=sign_delegation(ORG_A, NODE_A.did, ["node", "writer"]))
        twin.execute([Remote(w, "a") for w in wires(a)])
        twin.resolve_dispute(secret, value=777_001, note="the confidential price")
        forked = wires(twin)[-1]
        twin.close()
        a.resolve_dispute(shared, value=5)
        a.execute([Remote(forked, "twin")])
        assert ("equivocation", "grid.disputes") in {(d["type"], d["registry"]) for d in a.disputes()}

        def reports(grid: LocalRegistry) -> list[dict[str, Any]]:
            return [r for r in grid.iter_all("grid.disputes") if r["kind"] == "equivocation-report"]

        for _ in range(2):
            sync(a, c, reader=KeyPair(b"\xd1" * 32).did)
            sync(a, b, reader=ORG_B.did)
        assert reports(c) == [] and c.get(REG, "x")["fields"]["price"] == 5
        assert [r["fields"]["registry"] for r in reports(b)] == ["grid.disputes"]
    finally:
        pair.close()


def test_changes_kept_from_a_reader_take_none_of_its_answers_bytes(tmp_path: Path) -> None:
    """A change asked for by ID that a node keeps from the asker's org was
    cut at the answer's byte budget before it was kept back: a large one
    took the whole answer, and what the asker may have never came."""
    pair, secret, shared = _a_private_and_a_shared_dispute(tmp_path)
    try:
        a = pair.a
        a.resolve_dispute(secret, value="confidential " * 400)
        a.resolve_dispute(shared, value=5)
        author = a.engine.key.did
        head = a.engine.version_vector()["grid.disputes"][author]
        kept, wanted = (open_envelope(w).cid for w in a.engine.envelopes_after("grid.disputes", author, head - 2,
                                                                                limit=2))
        asked = {"grid.disputes": {author: [(head - 1, kept), (head, wanted)]}}
        served = ServedTo(a.engine, KeyPair(b"\xd1" * 32).did).wanted_links(asked, max_bytes=1000)
        assert [open_envelope(w).cid for w in served] == [wanted]
        assert a.engine.metrics["sync.subject_withheld"] >= 1
    finally:
        pair.close()


def test_a_reader_that_linked_past_another_readers_notice_on_an_outsiders_word_honours_it_when_it_comes(
        tmp_path: Path) -> None:
    """(a 10-minute soak of four node processes) An outsider's node names
    the place of b's notice of a private record gone (kept from it); a,
    the other reader, links past it there, then takes it from b. Taken in
    that way, the notice's record was made but the erasure was not
    carried out: a kept the erased record for good."""
    outsider = KeyPair(b"\xd1" * 32).did
    pair, _, _ = _a_private_and_a_shared_dispute(tmp_path)
    try:
        a, b, c = pair.a, pair.b, pair.c
        b.put(DEALS, "cluster", {"name": "b's secret"}, id="y")
        b.put(REG, "cluster", {"name": "b's shared"}, id="z")
        exchange(a, b)
        sync(b, c, reader=outsider)
        b.erase(DEALS, "y", reason="private")
        b.erase(REG, "z", reason="shared")
        sync(b, c, reader=outsider)  # c: the shared notice, the private one's place gone
        sync(c, a, reader=ORG_A.did)  # a links past the place on c's word
        with pytest.raises(RecordErased):
            a.get(REG, "z")
        assert a.get(DEALS, "y")["fields"]["name"] == "b's secret"  # not yet: a lacks the notice
        sync(b, a, reader=ORG_A.did)  # a asks b for the place, and takes the notice
        with pytest.raises(RecordErased):
            a.get(DEALS, "y")
        assert a.state_digest() == b.state_digest()
    finally:
        pair.close()


# ================================================================ equivocation


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[tuple[LocalRegistry, LocalRegistry, LocalRegistry, LocalRegistry]]:
    """One key of org A running on two nodes (a cloned key), an honest node
    c of org B, and a replica d."""
    cloned = KeyPair(b"\x77" * 32)
    delegation = sign_delegation(ORG_A, cloned.did, ["node", "writer"])
    one = LocalRegistry.open_path(tmp_path / "one", cloned, delegation=delegation)
    two = LocalRegistry.open_path(tmp_path / "two", cloned, owner=ORG_A.did)
    feed(one, two)  # the key's delegation, published once
    c = LocalRegistry.open_path(tmp_path / "c", NODE_C, delegation=sign_delegation(ORG_B, NODE_C.did,
                                                                                    ["node", "writer", "admin"]))
    d = LocalRegistry.open_path(tmp_path / "d", KeyPair(b"\x78" * 32))
    grids = (one, two, c, d)
    yield grids
    for grid in grids:
        grid.close()


def feed(source: LocalRegistry, target: LocalRegistry) -> None:
    """Everything ``source`` holds, to ``target``, refusals allowed (an
    equivocation is refused by design)."""
    target.execute([Remote(w, "peer") for w in wires(source)])


def _equivocate(one: LocalRegistry, two: LocalRegistry) -> None:
    one.put(FIELDS, "cluster", {"name": "resize"}, id="f1")
    two.put(FIELDS, "cluster", {"name": "crop"}, id="f2")  # the same key, sequence 1 again
    one.put(FIELDS, "cluster", {"name": "blur"}, id="f3")


def test_an_equivocation_is_reported_replicated_and_quarantined_on_every_node(twins) -> None:
    one, two, c, d = twins
    _equivocate(one, two)
    feed(one, c)
    results = c.execute([Remote(w, "two") for w in wires(two)])
    assert "rejected" in {r.status for r in results}
    (dispute,) = c.disputes()
    assert dispute["type"] == "equivocation" and dispute["status"] == "quarantined"
    assert (dispute["registry"], dispute["seq"]) == (FIELDS, 1)
    # The report replicates; d learns the equivocation from it alone.
    feed(one, d)
    feed(c, d)
    assert d.disputes() == c.disputes()
    for grid in (c, d):
        assert grid.list(FIELDS).items == []  # every change of the key there from #1 on is quarantined
    shown = d.dispute(dispute["id"])
    assert sorted(ch["record"] for ch in shown["changes"]) == ["f1", "f2"]
    assert "cloned key" in shown["why"]
    assert all(open_envelope(base64.b64decode(e)) for e in shown["envelopes"])


def test_a_quarantined_keys_later_changes_are_refused_with_a_typed_error(twins) -> None:
    one, two, c, _ = twins
    _equivocate(one, two)
    feed(one, c)
    feed(two, c)
    one.put(FIELDS, "cluster", {"name": "sharpen"}, id="f4")
    results = c.execute([Remote(w, "one") for w in wires(one)])
    refused = [r for r in results if r.status == "refused"]
    assert refused and all(isinstance(r.error, Quarantined) for r in refused)
    assert c.list(FIELDS).items == []


def test_the_order_things_arrive_in_does_not_change_what_is_quarantined(twins) -> None:
    one, two, c, d = twins
    _equivocate(one, two)
    feed(two, c)
    feed(one, c)  # c detects and reports
    report = [w for w in wires(c) if open_envelope(w).body.registry == "grid.disputes"]
    # d gets the report before any of the key's changes.
    d.execute([Remote(w, "c") for w in wires(c) if open_envelope(w).body.registry == "grid.members"])
    d.execute([Remote(w, "c") for w in report])
    feed(one, d)
    feed(two, d)
    assert d.list(FIELDS).items == c.list(FIELDS).items == []
    assert d.disputes() == c.disputes()


SHARED = "shared.notes"


def _forked_with_an_honest_writer_on_each_side(twins) -> tuple[LocalRegistry, ...]:  # type: ignore[no-untyped-def]
    """c (org B) opens a registry any member may write; the cloned key signs
    sequence 1 there twice: ``one`` makes n1, ``two`` makes n2. c takes
    two's branch and builds on it; d holds one's branch."""
    one, two, c, d = twins
    c.create_registry(SHARED, ["cluster"], write_policy="members")
    for grid in (one, two, d):
        feed(c, grid)
    one.put(SHARED, "cluster", {"name": "one"}, id="n1")
    two.put(SHARED, "cluster", {"name": "two"}, id="n2")
    feed(two, c)
    feed(one, d)
    return one, two, c, d


def _but_the_key_in(grid: LocalRegistry, key: str, registry: str) -> list[bytes]:
    """What ``grid`` holds, less the key's changes in ``registry``: what sync
    sends a peer whose vector already holds that chain as far (a branch of
    its own)."""
    return [w for w in wires(grid) if (open_envelope(w).body.author, open_envelope(w).body.registry)
            != (key, registry)]


def test_an_honest_change_built_on_the_other_branch_of_a_fork_is_refused_and_its_authors_chain_goes_on(
        twins) -> None:
    one, two, c, d = _forked_with_an_honest_writer_on_each_side(twins)
    cloned = one.engine.key.did
    c.update(SHARED, "n2", patch={"seen": True})  # built on two's change, which d never holds
    c.put(SHARED, "cluster", {"name": "c's own"}, id="c1")
    d.execute([Remote(w, "c") for w in _but_the_key_in(c, cloned, SHARED)])
    with pytest.raises(NotFound):  # c's chain waits behind the change built on the unknown branch
        d.get(SHARED, "c1")
    feed(one, c)  # c sees both branches: it reports the equivocation
    (dispute,) = c.disputes()
    d.execute([Remote(w, "c") for w in _but_the_key_in(c, cloned, SHARED)])
    # The report carries two's change: d knows it never counts, so what
    # builds on it is refused as on c, and c's later change goes on.
    assert d.disputes() == c.disputes()
    assert d.get(SHARED, "c1")["fields"]["name"] == "c's own"
    assert d.engine.version_vector()[SHARED][c.engine.key.did] == c.engine.version_vector()[SHARED][c.engine.key.did]
    assert d.state_digest() == c.state_digest()


def test_a_change_past_the_fork_that_the_chain_cannot_take_still_settles_what_builds_on_it(twins) -> None:
    one, two, c, d = _forked_with_an_honest_writer_on_each_side(twins)
    cloned = one.engine.key.did
    two.put(SHARED, "cluster", {"name": "two again"}, id="n3")  # sequence 2 on two's branch
    feed(two, c)
    c.update(SHARED, "n3", patch={"seen": True})
    c.put(SHARED, "cluster", {"name": "c's own"}, id="c1")
    feed(one, c)  # reported
    # d takes c's report and changes first, then the key's sequence 2 of
    # two's branch (its prev is not d's sequence 1: a broken chain).
    d.execute([Remote(w, "c") for w in _but_the_key_in(c, cloned, SHARED)])
    with pytest.raises(NotFound):
        d.get(SHARED, "c1")
    results = d.execute([Remote(w, "two") for w in wires(two) if open_envelope(w).body.registry == SHARED])
    assert "chain_broken" in {r.error.code for r in results if r.status == "rejected"}
    assert d.get(SHARED, "c1")["fields"]["name"] == "c's own"
    feed(d, c)  # d reported the broken chain too (sequence 2's prev is not d's 1)
    assert d.state_digest() == c.state_digest()


def sync(source: LocalRegistry, target: LocalRegistry, *, reader: str | None = None) -> list[Any]:
    """One anti-entropy session, as a node runs it (protocol/sync_session.py):
    ``target`` gets what its version vector lacks, and with its first request
    sends its chains' head tags, so a peer holding another branch of a fork
    at a position it holds shows its change there, and asks by ID for the
    other branch's changes its evidence names but it lacks (and others:
    Engine.wanted); of those, it links past the ones ``source`` says are
    gone where it was. It ends as the node's does: when nothing is left, or
    nothing more can be applied.
    Returns the outcomes of every change applied."""
    outcomes: list[Any] = []
    served = source.engine if reader is None else ServedTo(source.engine, reader)  # as a node serves ``reader``'s org

    def apply(envelopes: list[bytes]) -> Applied:
        results = target.execute([Remote(w, "peer") for w in envelopes])
        outcomes.extend(results)
        return Applied.of(results)

    def link_gone(places: list[GonePlace]) -> Applied:
        results = target.execute([LinkPastGone(place, "peer") for place in places])
        outcomes.extend(results)
        return Applied.of(results)

    vector = target.engine.replicated_vector()
    run_session(SyncSession("fed"), vector=target.engine.replicated_vector, apply=apply,
                exchange=lambda request: answer_sync(request, served, federation="fed", reader=reader),
                start=Start(vector, target.engine.head_tags(vector), target.engine.wanted()), link_gone=link_gone)
    return outcomes


def test_a_change_whose_prev_is_not_the_held_link_proves_the_fork_and_quarantines_from_the_link_before(
        twins) -> None:
    one, two, c, _ = twins
    c.create_registry(SHARED, ["cluster"], write_policy="members")
    for grid in (one, two):
        feed(c, grid)
    one.put(SHARED, "cluster", {"name": "one"}, id="n1")
    two.put(SHARED, "cluster", {"name": "two"}, id="n2")
    two.put(SHARED, "cluster", {"name": "two again"}, id="n3")  # sequence 2, after two's own 1
    feed(one, c)  # c holds one's sequence 1, and never sees two's
    results = c.execute([Remote(w, "two") for w in wires(two) if open_envelope(w).body.seq == 2
                         and open_envelope(w).body.registry == SHARED])
    assert [r.error.code for r in results] == ["chain_broken"]
    (dispute,) = c.disputes()
    # Sequence 2 names as its predecessor a change other than the sequence 1
    # c holds: the key signed two changes with sequence 1.
    assert (dispute["type"], dispute["registry"], dispute["seq"]) == ("equivocation", SHARED, 1)
    assert c.list(SHARED).items == []
    assert "names as its predecessor" in c.dispute(dispute["id"])["why"]


def test_two_branches_of_the_same_length_meet_through_the_head_tags_of_a_sync_request(twins) -> None:
    one, two, c, _ = twins
    c.create_registry(SHARED, ["cluster"], write_policy="members")
    for grid in (one, two):
        feed(c, grid)
    one.put(SHARED, "cluster", {"name": "one"}, id="n1")
    two.put(SHARED, "cluster", {"name": "two"}, id="n2")  # sequence 1 again
    sync(one, c)
    assert c.engine.replicated_vector() == two.engine.replicated_vector()  # equal vectors: nothing lacks
    sync(two, c)  # two's change at c's head goes first: c meets both
    (dispute,) = c.disputes()
    assert (dispute["registry"], dispute["seq"]) == (SHARED, 1)
    assert c.list(SHARED).items == []
    sync(c, two)  # the report reaches the key's own node: nothing of either branch counts there either
    sync(two, c)
    assert c.disputes() == two.disputes()
    assert two.list(SHARED).items == []
    assert c.state_digest() == two.state_digest()
    # Each pass still shows the other branch (and the key's own node, the
    # evidence of its fork); a node that knows the fork holds it all
    # already, and takes it as duplicates.
    assert {r.status for r in sync(two, c)} == {"duplicate"}


def test_reports_walk_back_to_where_a_fork_began_so_both_sides_count_the_same_changes(
        twins, tmp_path: Path) -> None:
    one, two, c, _ = twins
    e = LocalRegistry.open_path(tmp_path / "e", KeyPair(b"\x79" * 32),
                                delegation=sign_delegation(ORG_B, KeyPair(b"\x79" * 32).did, ["node", "writer"]))
    try:
        c.create_registry(SHARED, ["cluster"], write_policy="members")
        for grid in (one, two, e):
            feed(c, grid)
        feed(c, e)
        one.put(SHARED, "cluster", {"name": "before the clone"}, id="k1")
        feed(one, two)  # the clone is made after sequence 1
        for n in (2, 3):
            one.put(SHARED, "cluster", {"name": f"one {n}"}, id=f"a{n}")
        for n in (2, 3, 4):
            two.put(SHARED, "cluster", {"name": f"two {n}"}, id=f"b{n}")
        # Peers that only sync: c holds one's branch (to 3), e two's (to 4).
        sync(one, c)
        sync(two, e)
        for _ in range(4):
            sync(e, c)  # c gets two's sequence 4 only: its prev is not c's 3
            sync(c, e)
        quarantined = [{(d["registry"], d["seq"]) for d in grid.disputes() if d["type"] == "equivocation"}
                       for grid in (c, e)]
        assert quarantined[0] == quarantined[1]
        assert min(seq for _, seq in quarantined[0]) == 2  # where the branches part, not where it was seen
        assert [r["id"] for r in c.list(SHARED).items] == [r["id"] for r in e.list(SHARED).items] == ["k1"]
        assert c.state_digest() == e.state_digest()
    finally:
        e.close()


def test_a_fork_only_a_revoked_node_holds_from_its_start_is_walked_back_by_asking_for_its_links(
        twins, tmp_path: Path) -> None:
    """The other branch's only holder may not file reports (its key was
    revoked), and an honest node meets that branch only where the heads
    part: the change it gets names as its prev a change it lacks, so its
    report cannot be walked further back from its own evidence. Its next
    sync asks for that change by ID, and the holder sends it and the links
    before it: the quarantine reaches where the fork began on both."""
    one, two, c, _ = twins
    holder = KeyPair(b"\x7d" * 32)
    b = LocalRegistry.open_path(tmp_path / "b", holder,
                                delegation=sign_delegation(ORG_B, holder.did, ["node", "writer"]))
    try:
        c.create_registry(SHARED, ["cluster"], write_policy="members")
        for grid in (one, two, b):
            feed(c, grid)
        for n in (1, 2, 3):
            one.put(SHARED, "cluster", {"name": f"one {n}"}, id=f"a{n}")
        for n in (1, 2, 3, 4):
            two.put(SHARED, "cluster", {"name": f"two {n}"}, id=f"b{n}")  # the clone's branch, from sequence 1
        sync(one, c)
        sync(two, b)  # b alone holds the clone's branch
        record_id, fields = revocation_record(sign_revocation(ORG_B, holder.did, {}, reason="a lost laptop"))
        c.put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, id=record_id)
        sync(c, b)
        sync(b, c)  # c gets the clone's sequence 4 only: its prev is a change c lacks
        for _ in range(3):
            sync(b, c)
            sync(c, b)
        starts = [min(d["seq"] for d in grid.disputes() if d["type"] == "equivocation") for grid in (b, c)]
        assert starts == [1, 1]  # where the fork began, not where the heads parted
        assert b.list(SHARED).items == c.list(SHARED).items == []
        assert b.state_digest() == c.state_digest()
        assert c.engine.wanted() == {}  # nothing of the other branch is missing any more
    finally:
        b.close()


def _fork_in_two_registries(one: LocalRegistry, two: LocalRegistry, c: LocalRegistry,
                            others: tuple[LocalRegistry, ...]) -> Callable[[LocalRegistry, str], list[Remote]]:
    """The cloned key forks in FIELDS and in SHARED (one's branch of SHARED
    the longer, so no head tag shows a node holding it the other); each copy
    reports the fork in FIELDS it sees, so its chain of grid.disputes forks
    too. Returns how to take one registry's changes of a node."""
    c.create_registry(SHARED, ["cluster"], write_policy="members")
    for grid in (one, two, *others):
        feed(c, grid)
    for grid, name in ((one, "one"), (two, "two")):
        grid.put(FIELDS, "cluster", {"name": name}, id=f"f-{name}")
        grid.put(SHARED, "cluster", {"name": name}, id=f"s-{name}")
    one.update(SHARED, "s-one", patch={"name": "one, again"})

    def of(source: LocalRegistry, registry: str) -> list[Remote]:
        return [Remote(w, "peer") for w in wires(source) if open_envelope(w).body.registry == registry]

    one.execute(of(two, FIELDS))
    time.sleep(0.005)  # two's report on another clock: in one millisecond the clones' reports are one change
    two.execute(of(one, FIELDS))
    return of


def _member_of_b(tmp_path: Path) -> LocalRegistry:
    holder = KeyPair(b"\x7e" * 32)
    return LocalRegistry.open_path(tmp_path / "b", holder,
                                   delegation=sign_delegation(ORG_B, holder.did, ["node", "writer"]))


def _revoke(c: LocalRegistry, b: LocalRegistry) -> None:
    """c publishes the revocation of b's key (org B's), and b takes it."""
    record_id, fields = revocation_record(sign_revocation(ORG_B, b.engine.key.did, {}, reason="a lost laptop"))
    c.put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, id=record_id)
    sync(c, b)


def _quarantined_alike_from_the_start(x: LocalRegistry, y: LocalRegistry) -> None:
    """Both know the three forks from #1, count nothing of SHARED, and hold the same records."""
    forks = [{(d["registry"], d["seq"]) for d in grid.disputes() if d["type"] == "equivocation"} for grid in (x, y)]
    assert forks[0] == forks[1] and {(SHARED, 1), (FIELDS, 1), ("grid.disputes", 1)} <= forks[0]
    assert x.list(SHARED).items == y.list(SHARED).items == []
    assert x.state_digest() == y.state_digest()


def test_a_report_only_the_forked_keys_own_chain_carries_counts_on_the_revoked_node_holding_its_other_branch(
        twins, tmp_path: Path) -> None:
    """A report in one branch of the cloned key's own chain of grid.disputes
    reaches a node holding the other branch as evidence at most; here that
    node is also revoked, so it can't report the fork itself. It shows the
    forks it holds evidence of to its peers instead, and the honest node
    reports them in its own chain, which every node holds alike (before
    2026-12-04 the revoked node counted the forked key's changes in SHARED)."""
    one, two, c, _ = twins
    b = _member_of_b(tmp_path)
    try:
        of = _fork_in_two_registries(one, two, c, (b,))
        _revoke(c, b)  # before b sees any fork
        sync(one, c)
        sync(two, b)  # b alone holds two's branch
        sync(b, c)  # c meets the fork of grid.disputes: the key's changes there stop counting
        one.execute(of(two, SHARED))  # one reports the fork in SHARED, in its branch of grid.disputes
        sync(one, c)  # c takes that report kept refused
        for _ in range(3):
            sync(c, b)
            sync(b, c)
        _quarantined_alike_from_the_start(b, c)
    finally:
        b.close()


def of(source: LocalRegistry, registry: str) -> list[Remote]:
    """The changes of ``registry`` that ``source`` holds, as remote ops."""
    return [Remote(w, "peer") for w in wires(source) if open_envelope(w).body.registry == registry]


def _one_reports_a_fork_in_fields(one: LocalRegistry, two: LocalRegistry) -> None:
    """The cloned key forks in FIELDS, and one reports it (its grid.disputes #1)."""
    one.put(FIELDS, "cluster", {"name": "one"}, id="f-one")
    two.put(FIELDS, "cluster", {"name": "two"}, id="f-two")
    one.execute(of(two, FIELDS))


def test_a_report_the_forked_key_holds_only_as_its_other_branchs_evidence_still_quarantines_there(
        twins, tmp_path: Path) -> None:
    """The cloned key forks in FIELDS, and one reports it (its grid.disputes
    #1). Then it forks in SHARED, and two, which never saw one's report,
    reports that (its own grid.disputes #1). one holds two's report only as
    the other branch's evidence, and may not file its own (its key is
    quarantined in grid.disputes): it quarantines SHARED on that report's
    evidence all the same, as every other node does, and again after a
    restart. Before, one kept counting its own change in SHARED that every
    other node refused (a cloned-key history, seed 59006)."""
    import shutil

    one, two, c, d = twins
    key = one.engine.key.did
    c.create_registry(SHARED, ["cluster"], write_policy="members")
    for grid in (one, two, d):
        feed(c, grid)

    _one_reports_a_fork_in_fields(one, two)
    one.put(SHARED, "cluster", {"name": "one"}, id="s-one")
    two.put(SHARED, "cluster", {"name": "two"}, id="s-two")
    two.execute(of(one, SHARED))  # two reports the fork in SHARED
    assert one.engine.trust.quarantined_since(key, SHARED) is None
    one.execute(of(two, "grid.disputes"))
    assert one.engine.trust.quarantined_since(key, SHARED) == 1
    for source in (one, two, c):
        feed(source, d)
    assert d.engine.trust.quarantined_since(key, SHARED) == 1
    assert one.list(SHARED).items == d.list(SHARED).items == []
    shutil.copytree(tmp_path / "one", tmp_path / "one-restarted")  # as the node's store is after a restart
    reopened = LocalRegistry.open_path(tmp_path / "one-restarted", KeyPair(b"\x77" * 32))
    try:
        assert reopened.engine.trust.quarantined_since(key, SHARED) == 1 and reopened.verify().ok
    finally:
        reopened.close()


def test_a_quarantine_that_a_report_held_as_evidence_makes_weighs_the_access_policies_again(
        twins, tmp_path: Path) -> None:
    """The cloned key forks in grid.policies: one's policy forbids creates
    in its registry, and two reports the fork (its grid.disputes #1). b,
    whose key is revoked so that it files nothing, holds one's branch of
    grid.disputes, so it holds two's report only as that branch's evidence.
    The quarantine the report makes cuts one's policy on b, so the rules in
    force are weighed again at once: c's create counts on b, as on every
    other node. Before, b kept the forbidding rule in force until a later
    change or a restart made it weigh them again (a cloned-key history,
    seed 1, once reports held as evidence counted)."""
    one, two, c, _ = twins
    key = one.engine.key.did
    own = "a.tools"
    b = _member_of_b(tmp_path)
    try:
        for grid in (one, two, b):
            feed(c, grid)  # c's delegation
        one.create_registry(own, ["cluster"], write_policy="open")
        for grid in (two, c, b):
            feed(one, grid)

        _one_reports_a_fork_in_fields(one, two)
        forbid = [{"id": "no-creates", "effect": "forbid", "actions": ["create"]}]
        one.put("grid.policies", "policy", {"name": "rules", "policy_type": "access", "targets": [own],
                                            "access": {"rules": forbid}}, id="rules")
        two.put("grid.policies", "policy", {"name": "notes", "policy_type": "access", "targets": [own], "access": {
            "rules": [{"id": "any-edit", "effect": "permit", "actions": ["update"]}]}}, id="notes")
        two.execute(of(one, "grid.policies"))  # two reports the fork in grid.policies (its grid.disputes #1)
        c.put(own, "cluster", {"name": "c's"}, id="by-c")
        _revoke(c, b)
        for source in (one, c):
            feed(source, b)
        assert b.list(own).items == []  # one's rule forbids it

        (report,) = {r.wire: r for r in of(two, "grid.disputes") if open_envelope(r.wire).body.author == key}.values()
        (outcome,) = b.execute([report])  # b holds one's grid.disputes #1: two's is the other branch's
        assert outcome.status == "rejected" and outcome.error.code == "equivocation"
        assert b.engine.trust.quarantined_since(key, "grid.policies") == 1
        assert [r["id"] for r in b.list(own).items] == ["by-c"]
        for source in (two, c):
            feed(source, one)
        assert [r["id"] for r in one.list(own).items] == ["by-c"]
    finally:
        b.close()


def _served(grid: LocalRegistry, registry: str | None = None) -> list[Remote]:
    """What ``grid`` still serves (an erased change is served by nobody)."""
    from tests.test_erasure import wires as kept_wires

    return [Remote(w, "peer") for w in kept_wires(grid)
            if registry is None or open_envelope(w).body.registry == registry]


@pytest.mark.parametrize("one_takes_s", [False, True])
def test_a_fork_whose_one_side_is_erased_everywhere_ends_alike_on_both_sides(twins, one_takes_s: bool) -> None:
    """The cloned key creates r on one and s on two, both its change #1 in
    FIELDS, and A erases r (one's node). No node can prove that fork: r's
    bytes are gone wherever they were. c takes s first and counts it; d
    takes r and the notice first, and one holds r erased itself. Both then
    take s in at the erased place, as if they had taken it first: every
    node counts s and no r. Before, d and one refused s as an equivocation
    for good (cloned-key histories with erasures, seeds 72064, 72075)."""
    one, two, c, d = twins
    _fork_with_r_erased(twins, r_updated=False)
    if one_takes_s:
        one.execute(_served(two, FIELDS))
    (taken,) = d.execute(_served(two, FIELDS))
    assert taken.status == "applied"
    _all_end_with_s_alone(twins)
    assert d.engine.metrics["erasure.erased_twin_taken"] == 1


def _fork_with_r_erased(twins: tuple[LocalRegistry, ...], *, r_updated: bool) -> None:
    """The cloned key creates r on one (and updates it if ``r_updated``)
    and s on two, from its change #1 in FIELDS; c takes s, d takes one's
    branch; A erases r, and c and d take the notice."""
    one, two, c, d = twins
    for grid in (one, two, d):
        feed(c, grid)  # c's delegation
    for grid in (c, d):
        grid.execute(_served(one, MEMBERS_REGISTRY))  # the cloned key's
    one.put(FIELDS, "cluster", {"name": "r"}, id="r")
    if r_updated:
        one.update(FIELDS, "r", patch={"name": "r2"})
    two.put(FIELDS, "cluster", {"name": "s"}, id="s")
    c.execute(_served(two, FIELDS))
    d.execute(_served(one, FIELDS))
    one.erase(FIELDS, "r", reason="a request")
    for grid in (c, d):
        grid.execute(_served(one, "grid.erasures"))


def _all_end_with_s_alone(twins: tuple[LocalRegistry, ...]) -> None:
    """After every node took what every node serves: s and no r, no dispute."""
    for grid in twins:
        for source in twins:
            grid.execute(_served(source))
    for grid in twins:
        assert [r["id"] for r in grid.list(FIELDS).items] == ["s"] and grid.disputes() == []
        assert grid.verify().ok
    assert len({grid.state_digest() for grid in twins}) == 1


def test_a_fork_whose_one_side_and_all_after_it_are_erased_ends_alike_on_both_sides(twins) -> None:
    """As above, but one's branch goes on in r (an update, its change #2),
    erased with r: d and one hold both places without bytes, so nothing
    proves the fork there either. Both take s in at place #1 and keep #2
    erased (it counts nowhere): every node counts s and no r. Before, d and
    one refused s for good, since the erased place was not their head
    (cloned-key histories with erasures in a federation, seed 73211)."""
    one, two, c, d = twins
    _fork_with_r_erased(twins, r_updated=True)
    for grid in (one, d):
        (taken,) = grid.execute(_served(two, FIELDS))
        assert taken.status == "applied"
    _all_end_with_s_alone(twins)
    key = one.engine.key.did
    assert one.engine.version_vector()[FIELDS][key] == d.engine.version_vector()[FIELDS][key] == 2


def test_a_fork_at_an_erased_place_is_proven_by_the_change_after_it(twins) -> None:
    """As above, but one's branch goes on past r (t, its change #2, names
    r's). d, which holds t, meets s: s and t prove the fork (t's prev is not
    s), so d reports it, and c, which held s only, quarantines it too."""
    one, two, c, d = twins
    for grid in (one, two, d):
        feed(c, grid)
    for grid in (c, d):
        grid.execute(_served(one, MEMBERS_REGISTRY))
    one.put(FIELDS, "cluster", {"name": "r"}, id="r")
    one.put(FIELDS, "cluster", {"name": "t"}, id="t")
    two.put(FIELDS, "cluster", {"name": "s"}, id="s")
    c.execute(_served(two, FIELDS))
    d.execute(_served(one, FIELDS))
    one.erase(FIELDS, "r", reason="a request")
    d.execute(_served(one, "grid.erasures"))
    (met,) = d.execute(_served(two, FIELDS))
    assert met.status == "rejected" and met.error.code == "equivocation"
    (dispute,) = d.disputes()
    assert (dispute["registry"], dispute["seq"]) == (FIELDS, 1)
    c.execute(_served(d, "grid.disputes"))
    key = one.engine.key.did
    assert c.engine.trust.quarantined_since(key, FIELDS) == d.engine.trust.quarantined_since(key, FIELDS) == 1
    assert c.list(FIELDS).items == d.list(FIELDS).items == []


def test_a_report_taken_before_the_fork_of_its_carrier_was_known_counts_on_the_node_that_met_that_fork(
        twins) -> None:
    """The same report, taken as a record before the fork of the key's chain
    of grid.disputes is known: that fork's quarantine refuses it there, and
    the node that met that fork holds it as evidence only, and never held
    the other branch of SHARED. Reports walk on until both count nothing
    of SHARED."""
    one, two, c, d = twins
    of = _fork_in_two_registries(one, two, c, (d,))
    one.execute(of(two, SHARED))  # one reports the fork in SHARED, in its branch of grid.disputes
    sync(one, c)  # c takes it as a record
    d.execute(of(two, "grid.disputes"))  # d holds two's branch of grid.disputes
    sync(c, d)  # the report arrives past d's head, naming a prev d lacks: d reports that fork
    for _ in range(3):
        sync(d, c)
        sync(c, d)
    _quarantined_alike_from_the_start(c, d)


def test_a_fork_only_a_revoked_node_meets_is_shown_to_its_peers_which_report_it(twins, tmp_path: Path) -> None:
    """The cloned key's chain of grid.disputes forks, and the honest node
    holds the longer branch, so no sync brings it the other. The node that
    holds the other branch meets the fork but, revoked, can't report it: it
    shows the fork's two changes with a pass's first answer instead, and
    the honest node reports it (then files again the report its branch
    carried, which the quarantine refuses)."""
    one, two, c, _ = twins
    b = _member_of_b(tmp_path)
    try:
        of = _fork_in_two_registries(one, two, c, (b,))
        _revoke(c, b)
        one.execute(of(two, SHARED))  # one's branch of grid.disputes is the longer: it reports SHARED too
        sync(one, c)
        sync(two, b)
        for _ in range(3):
            sync(c, b)  # b meets the fork of grid.disputes (a broken chain), and may not report it
            sync(b, c)
        _quarantined_alike_from_the_start(b, c)
        assert b.engine.unreported_forks({"grid.disputes"}, max_bytes=2**20) == []  # reported now
    finally:
        b.close()


def test_a_report_quarantines_alike_whether_its_filer_was_revoked_before_or_after_it_arrived(
        twins, tmp_path: Path) -> None:
    """A report is its own evidence: the change that files it quarantines the
    key it proves forked even where the change itself is refused (here its
    filer's key was revoked), so the order of the report and the revocation
    changes nothing."""
    one, two, c, _ = twins
    reporter = KeyPair(b"\x7a" * 32)
    r = LocalRegistry.open_path(tmp_path / "r", reporter,
                                delegation=sign_delegation(ORG_B, reporter.did, ["node", "writer"]))
    first, second = (LocalRegistry.open_path(tmp_path / name, KeyPair(bytes([n]) * 32))
                     for name, n in (("first", 0x7b), ("second", 0x7c)))
    try:
        feed(one, r)
        feed(r, c)
        _equivocate(one, two)
        feed(one, r)
        feed(two, r)  # r reports
        reported = [w for w in wires(r) if open_envelope(w).body.registry == "grid.disputes"]
        record_id, fields = revocation_record(sign_revocation(ORG_B, reporter.did, {}, reason="a lost laptop"))
        c.put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, id=record_id)
        (revoked,) = [w for w in wires(c) if open_envelope(w).body.kind == REVOCATION_KIND]
        known = [w for w in [*wires(c), *wires(r), *wires(one)] if w not in [*reported, revoked]]
        first.execute([Remote(w, "p") for w in [*known, *reported, revoked]])
        second.execute([Remote(w, "p") for w in [*known, revoked, *reported]])
        for grid in (first, second):
            assert grid.list(FIELDS).items == []  # the key's changes from #1 on are quarantined
            # Listed though no record holds it: read from the refused change.
            assert {(d["type"], d["status"], d["seq"]) for d in grid.disputes()} == {("equivocation", "quarantined", 1)}
        assert first.disputes() == second.disputes()
        assert first.state_digest() == second.state_digest()
    finally:
        for grid in (r, first, second):
            grid.close()


def test_a_forged_equivocation_report_is_refused(twins) -> None:
    one, two, c, d = twins
    _equivocate(one, two)
    feed(one, c)
    feed(two, c)
    (dispute,) = c.disputes()
    fields = dict(c.get("grid.disputes", dispute["id"])["fields"])
    tampered = bytearray(base64.b64decode(fields["envelopes"][0]))
    tampered[-5] ^= 1  # one bit of a signature
    fields["envelopes"] = [base64.b64encode(bytes(tampered)).decode(), fields["envelopes"][1]]
    with pytest.raises(ValidationError):
        d.put("grid.disputes", "equivocation-report", fields, id=dispute["id"])
    assert d.disputes() == []


def test_an_admin_acknowledges_an_equivocation_and_the_quarantine_stays(twins) -> None:
    one, two, c, _ = twins
    _equivocate(one, two)
    feed(one, c)
    feed(two, c)
    (dispute,) = c.disputes()
    # c's org (B) is neither an admin nor the key's org here: refused.
    with pytest.raises(PolicyDenied):
        c.resolve_dispute(dispute["id"])
    feed(c, one)
    feed(one, c)
    one.resolve_dispute(dispute["id"], note="key rotated")  # the key's own org acknowledges
    feed(one, c)
    assert c.dispute(dispute["id"])["status"] == "resolved"
    assert c.list(FIELDS).items == []


def test_no_record_but_the_report_takes_an_equivocations_dispute_id(twins) -> None:
    # The id is public (a hash of the two change ids): the cloned key filed
    # a resolution under it before its fork spread, every node took the
    # report as filed already, nothing was quarantined, and the nodes kept
    # the two branches apart for good.
    from registrygrid.crdt.disputes import DISPUTES_REGISTRY, RESOLUTION_KIND, equivocation_id

    one, two, c, _ = twins
    left = one.put(FIELDS, "cluster", {"name": "left"}, id="f1")
    right = two.put(FIELDS, "cluster", {"name": "right"}, id="f2")
    squatted = equivocation_id(one.engine.key.did, FIELDS, 1, [left.change_id, right.change_id])
    with pytest.raises(ValidationError, match="equivocation reports"):
        one.put(DISPUTES_REGISTRY, RESOLUTION_KIND, {"dispute": squatted, "outcome": "quarantine"},
                id=squatted, tags=[squatted])
    feed(one, c)
    c.execute([Remote(w, "two") for w in wires(two)])
    (dispute,) = c.disputes()
    assert (dispute["id"], dispute["status"]) == (squatted, "quarantined")


def test_a_resolution_that_would_break_the_records_kind_does_not_count_whoever_filed_it(tmp_path: Path) -> None:
    # The bridge and the SDK's resolve refuse it, but one filed past them (an
    # SDK put, or a peer's change) removed a required field on every node,
    # and each later update of the record was refused for it.
    made = Pair(tmp_path, {"fields": {"name": "manual"}})
    try:
        made.create({})
        made.race({"name": "left"}, {"name": "right"})
        made.converge()
        (listed,) = made.a.disputes()
        with pytest.raises(ValidationError):
            made.a.resolve_dispute(listed["id"], removed=True)
        made.a.put("grid.disputes", "dispute-resolution", {"dispute": listed["id"], "outcome": "value",
                                                           "removed": True}, tags=[listed["id"]])
        record = made.converge()
        assert record["fields"]["name"] in {"left", "right"}
        assert [c["status"] for c in record["conflicts"]] == ["disputed"]
        assert made.a.engine.metrics["conflicts.resolution_breaks_schema"] >= 1
        # ... and the dispute says so: it listed that resolution as counting.
        assert [r["counts"] for r in made.a.dispute(listed["id"])["resolutions"]] == [False]
        made.a.resolve_dispute(listed["id"], value="settled")  # one that keeps the kind counts
        made.a.update(REG, "x", patch={"region": "eu"})
        record = made.converge()
        assert (record["fields"]["name"], record["fields"]["region"]) == ("settled", "eu")
    finally:
        made.close()


def test_a_dispute_over_a_whole_value_is_resolved_by_one_of_the_values_written_and_nothing_else(
        tmp_path: Path) -> None:
    # Only /fields/<name> resolutions were checked: /links resolved to 5
    # showed 5 on every node, and a later update of the record crashed.
    made = Pair(tmp_path, {"default": "manual"})
    try:
        made.create({})
        for target in ("t1", "t2"):
            made.a.put(REG, "cluster", {"name": target}, id=target)
        made.converge()
        left, right = ([{"rel": "runs-on", "registry": REG, "record": t}] for t in ("t1", "t2"))
        made.a.update(REG, "x", links=left)
        made.b.update(REG, "x", links=right)
        record = made.converge()
        dispute = conflict_id(record, "/links")
        with pytest.raises(ValidationError, match="one of the values its concurrent writes made"):
            made.a.resolve_dispute(dispute, value=5)
        made.a.put("grid.disputes", "dispute-resolution", {"dispute": dispute, "outcome": "value", "value": 5},
                   tags=[dispute])  # filed past the check: it decides nothing, on any node
        record = made.converge()
        assert record["links"] in (left, right)
        assert [r["counts"] for r in made.c.dispute(dispute)["resolutions"]] == [False]
        made.a.resolve_dispute(dispute, value=right)
        record = made.converge()
        assert record["links"] == right and [c["status"] for c in record["conflicts"]] == ["resolved"]
        made.a.update(REG, "x", patch={"region": "eu"})
        assert made.converge()["fields"]["region"] == "eu"
    finally:
        made.close()


def test_the_whole_fields_two_creates_race_on_stay_an_object_of_the_kind(tmp_path: Path) -> None:
    # Two nodes of one org create one record: /fields itself is disputed,
    # and a resolution of 5 (or of {} without the required name) showed on
    # every node and broke every later update.
    second = KeyPair(b"\xa3" * 32)
    one = LocalRegistry.open_path(tmp_path / "one", NODE_A, delegation=sign_delegation(ORG_A, NODE_A.did,
                                                                                       ["node", "writer"]))
    two = LocalRegistry.open_path(tmp_path / "two", second, delegation=sign_delegation(ORG_A, second.did,
                                                                                       ["node", "writer"]))
    try:
        one.create_registry(REG, ["cluster"], write_policy="members", conflict_policy={"default": "manual"})
        deliver(one, two)
        one.put(REG, "cluster", {"name": "y", "region": "eu"}, id="y")
        two.put(REG, "cluster", {"name": "y", "region": "us"}, id="y")
        deliver(one, two)
        deliver(two, one)
        dispute = conflict_id(one.get(REG, "y"), "/fields")
        for value in (5, {}):
            with pytest.raises(ValidationError):  # SchemaViolation is one
                one.resolve_dispute(dispute, value=value)
            one.put("grid.disputes", "dispute-resolution", {"dispute": dispute, "outcome": "value",
                                                            "value": value}, tags=[dispute])
        deliver(one, two)
        for grid in (one, two):
            assert grid.get(REG, "y")["fields"] in ({"name": "y", "region": "eu"}, {"name": "y", "region": "us"})
        one.resolve_dispute(dispute, value={"name": "y", "region": "apac"})  # a value of the kind counts
        deliver(one, two)
        assert one.get(REG, "y")["fields"] == two.get(REG, "y")["fields"] == {"name": "y", "region": "apac"}
        one.update(REG, "y", patch={"region": "eu"})
    finally:
        one.close()
        two.close()


def test_an_acknowledgement_filed_against_a_field_dispute_decides_nothing(manual: Pair) -> None:
    # outcome "quarantine" answers an equivocation; filed against a field
    # dispute it counted as the latest resolution and set the field to null.
    (listed,) = manual.a.disputes()
    manual.a.put("grid.disputes", "dispute-resolution", {"dispute": listed["id"], "outcome": "quarantine"},
                 tags=[listed["id"]])
    record = manual.converge()
    assert record["fields"]["price"] in (2, 3)
    assert [c["status"] for c in record["conflicts"]] == ["disputed"]
    assert [(r["outcome"], r["counts"]) for r in manual.c.dispute(listed["id"])["resolutions"]] == \
        [("quarantine", False)]


def conflict_id(record: dict[str, Any], path: str) -> str:
    (conflict,) = [c for c in record["conflicts"] if c["path"] == path]
    assert conflict["status"] == "disputed"
    return conflict["dispute"]


def test_a_resolution_its_signer_was_revoked_before_counts_nowhere_whichever_came_first(manual: Pair,
                                                                                      tmp_path: Path) -> None:
    # The resolution record was rebuilt away on every node, but nodes that
    # held it before the revocation kept showing its value as resolved;
    # a node that met the revocation first showed the dispute open.
    (listed,) = manual.a.disputes()
    manual.a.resolve_dispute(listed["id"], value=10)
    exchange(manual.a, manual.b, manual.c)
    history = wires(manual.a)
    cutoffs: dict[str, int] = {}
    for wire in history:
        body = open_envelope(wire, verify=False).body
        if body.author == NODE_A.did:
            cutoffs[body.registry] = max(cutoffs.get(body.registry, 0), body.seq)
    cutoffs["grid.disputes"] = 0  # a's resolution counts no longer
    record_id, fields = revocation_record(sign_revocation(ORG_A, NODE_A.did, cutoffs, reason="lost laptop"))
    manual.b.put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, id=record_id)
    revocation = [w for w in wires(manual.b) if w not in history]
    exchange(manual.a, manual.b, manual.c)
    shown = []
    for grid in (manual.b, manual.c):
        shown.append((grid.get(REG, "x")["fields"]["price"], [c["status"] for c in grid.get(REG, "x")["conflicts"]]))
    for i, order in enumerate((history + revocation, revocation + history)):
        with LocalRegistry.open_path(tmp_path / f"fresh{i}", KeyPair(bytes([0xF0 + i]) * 32)) as fresh:
            for _ in range(2):
                fresh.execute([Remote(w, "peer") for w in order])
            shown.append((fresh.get(REG, "x")["fields"]["price"], [c["status"] for c in fresh.get(REG, "x")["conflicts"]]))
    assert len(set(map(repr, shown))) == 1 and shown[0][1] == ["disputed"], shown


def test_a_later_resolution_that_does_not_count_leaves_the_earlier_one_deciding(tmp_path: Path) -> None:
    # "The latest counting resolution decides": a later one that would
    # break the kind (filed past the SDK's check, or by a peer) sent the
    # dispute back to open on every node, undoing the good one before it.
    made = Pair(tmp_path, {"fields": {"region": "manual"}})
    try:
        made.create({"region": "eu"})
        made.race({"region": "us"}, {"region": "ap"})
        made.converge()
        (listed,) = made.a.disputes()
        made.a.resolve_dispute(listed["id"], value="eu-west-1")
        made.a.put("grid.disputes", "dispute-resolution", {"dispute": listed["id"], "outcome": "value", "value": 5},
                   tags=[listed["id"]])
        record = made.converge()
        assert record["fields"]["region"] == "eu-west-1"
        assert [c["status"] for c in record["conflicts"]] == ["resolved"]
        shown = made.c.dispute(listed["id"])
        assert shown["status"] == "resolved"
        assert [(r["value"], r["counts"]) for r in shown["resolutions"]] == [("eu-west-1", True), (5, False)]
    finally:
        made.close()
