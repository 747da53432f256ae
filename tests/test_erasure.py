"""Erasure: a record's whole history removed on every node that honours the
notice, chains kept whole. Real LMDB stores in temporary directories;
changes cross between them as the envelopes peers would send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.engine.erasure import ERASURE_KIND, ERASURES_REGISTRY, erasure_id
from registrygrid.engine.ops import Remote
from registrygrid.errors import NotOwner, PolicyDenied, RecordErased
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import cid_from_str, open_envelope
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import erasures

TOOLS = "grid.tools"
SECRET = "alice.private@example.org"


def tool(name: str, contact: str = "ops@example.org") -> dict[str, Any]:
    return {"name": name, "description": f"{name}, reached at {contact}", "category": "testing"}


def org_node(path: Path, org: KeyPair) -> LocalRegistry:
    key = KeyPair.generate()
    return LocalRegistry.open_path(path, key, delegation=sign_delegation(org, key.did, ["node", "writer"]))


def wires(grid: LocalRegistry) -> list[bytes]:
    """Every change the node still serves, in its feed order (an erased one
    is served by nobody)."""
    out = []
    for event in grid.changes(since=0, limit=10_000):
        wire = grid.change(cid_from_str(event.change))
        if wire is not None:
            out.append(wire)
    return out


def deliver(target: LocalRegistry, source_wires: list[bytes]) -> list[Any]:
    return target.execute([Remote(w, "peer") for w in source_wires])


def holds_secret(grid: LocalRegistry) -> bool:
    """Whether any live LMDB value of the store carries the secret."""
    needle = SECRET.encode()
    with grid.store.read() as txn:
        for db in grid.store.db.values():
            for _, value in txn.cursor(db=db):
                if needle in value:
                    return True
    return False


@pytest.fixture()
def org_a() -> KeyPair:
    return KeyPair.generate()


def _written(grid: LocalRegistry) -> tuple[str, str]:
    """A record carrying the secret, edited twice, beside one that stays."""
    grid.put(TOOLS, "tool", tool("keeper"), id="keeper")
    grid.put(TOOLS, "tool", tool("alice-tool", SECRET), id="alice-tool")
    grid.update(TOOLS, "alice-tool", patch={"category": "personal"})
    grid.update(TOOLS, "alice-tool", patch={"description": f"still {SECRET}"})
    return TOOLS, "alice-tool"


def test_an_erasure_removes_every_byte_of_the_records_history_and_keeps_its_chain(tmp_path: Path,
                                                                                   org_a: KeyPair) -> None:
    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    assert holds_secret(a)
    result = a.erase(registry, record, reason="GDPR art. 17 request 2026-118")
    assert (result.status, result.registry, result.record_id) == ("created", ERASURES_REGISTRY,
                                                                  erasure_id(registry, record, org_a.did))
    assert not holds_secret(a)
    with pytest.raises(RecordErased) as gone:
        a.get(registry, record)
    assert gone.value.http_status == 410 and gone.value.details["notice"] == result.record_id
    with pytest.raises(RecordErased):
        a.history(registry, record)
    assert a.get(registry, "keeper")["fields"]["name"] == "keeper"
    notice = a.get(ERASURES_REGISTRY, result.record_id)
    assert notice["fields"]["positions"] == [{"author": a.engine.key.did, "seqs": [[2, 4]]}]
    report = a.verify()
    assert report.ok and report.erased == 3, report
    assert a.erase(registry, record).status == "unchanged"
    assert a.erasures() == [{"registry": registry, "record": record, "notice": result.record_id, "state": "erased"}]
    assert a.erased_places() == {"owed": [], "items": [{
        "registry": registry, "author": a.engine.key.did, "first": 2, "last": 4, "warrant": "notice",
        "notice": result.record_id, "linked": 3, "asked": False}]}
    assert "erase" in [e.action for e in a.audit_log(limit=1000)]


@pytest.mark.parametrize("reason", ["request\x00 7", "\x1b[2Jrequest", "two\nlines", "c1\x85"])
def test_an_erasure_whose_reason_holds_control_characters_is_refused_and_erases_nothing(
        tmp_path: Path, org_a: KeyPair, reason: str) -> None:
    # The reason goes into the notice every node keeps and into each node's
    # audit ledger: a NUL or an escape code went there as it came.
    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    head = a.feed_head()
    with pytest.raises(Exception) as refused:
        a.erase(registry, record, reason=reason)
    assert refused.value.code == "validation_failed"  # type: ignore[attr-defined]
    assert a.feed_head() == head and holds_secret(a)
    assert a.erase(registry, record, reason="request 7").status == "created"


def test_an_erased_id_is_burned_for_local_writes(tmp_path: Path, org_a: KeyPair) -> None:
    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    a.erase(registry, record)
    with pytest.raises(RecordErased):
        a.put(registry, "tool", tool("again"), id=record)
    with pytest.raises(RecordErased):
        a.update(registry, record, patch={"category": "x"})
    with pytest.raises(RecordErased):
        a.delete(registry, record)


def test_a_peer_honours_the_notice_and_its_later_changes_still_follow_the_chain(tmp_path: Path,
                                                                                org_a: KeyPair) -> None:
    a, b = org_node(tmp_path / "a", org_a), org_node(tmp_path / "b", org_a)
    registry, record = _written(a)
    deliver(b, wires(a))
    assert holds_secret(b)
    a.erase(registry, record)
    a.put(registry, "tool", tool("after"), id="after")
    results = deliver(b, wires(a))
    assert all(r.status in ("applied", "duplicate") for r in results), results
    assert not holds_secret(b)
    with pytest.raises(RecordErased):
        b.get(registry, record)
    assert b.get(registry, "after")["fields"]["name"] == "after"
    assert b.verify().ok
    assert b.engine.version_vector(registry) == a.engine.version_vector(registry)


def test_a_node_that_never_saw_the_record_links_past_its_changes_in_either_order(tmp_path: Path,
                                                                                 org_a: KeyPair) -> None:
    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    original = wires(a)  # what a peer that had not honoured the notice still holds
    a.erase(registry, record)
    a.put(registry, "tool", tool("after"), id="after")
    served = wires(a)
    notice = [w for w in served if open_envelope(w, verify=False).body.registry == ERASURES_REGISTRY]
    rest = [w for w in served if w not in notice]
    for name, order in (("notice-last", rest + notice), ("notice-first", notice + rest)):
        c = org_node(tmp_path / name, org_a)
        deliver(c, order)
        assert c.get(registry, "after")["fields"]["name"] == "after", name
        assert c.engine.version_vector(registry) == a.engine.version_vector(registry), name
        report = c.verify()
        assert report.ok, (name, report)
        # The original changes arrive late from a peer that kept them: their
        # IDs fill the unseen positions, their bytes are dropped.
        late = deliver(c, original)
        assert not holds_secret(c), name
        with pytest.raises(RecordErased):
            c.get(registry, record)
        assert {r.status for r in late} <= {"duplicate", "erased"}, (name, late)
        assert c.verify().ok, name


def test_changes_of_an_erased_record_from_a_lagging_peer_keep_only_their_ids(tmp_path: Path,
                                                                             org_a: KeyPair) -> None:
    a, b = org_node(tmp_path / "a", org_a), org_node(tmp_path / "b", org_a)
    registry, record = _written(a)
    deliver(b, wires(a))
    b.update(registry, record, patch={"category": f"edited by b for {SECRET}"})  # b has not heard yet
    from_b = wires(b)
    a.erase(registry, record)
    results = deliver(a, from_b)
    assert "erased" in {r.status for r in results}
    assert not holds_secret(a)
    assert a.verify().ok


def test_a_notice_from_an_org_that_does_not_own_the_record_is_refused(tmp_path: Path, org_a: KeyPair) -> None:
    org_b = KeyPair.generate()
    a, b = org_node(tmp_path / "a", org_a), org_node(tmp_path / "b", org_b)
    registry, record = _written(a)
    deliver(b, wires(a))
    with pytest.raises(NotOwner):
        b.erase(registry, record)
    # A node of org B that never held the record can't judge the notice, so
    # it writes it; the owner's node holds it as every node does (whose the
    # record is can change where a create race settles late), judges it
    # refused, and erases nothing.
    blind = org_node(tmp_path / "blind", org_b)
    deliver(blind, [w for w in wires(a) if open_envelope(w, verify=False).body.registry != registry])
    fields = {"registry": registry, "record": record, "org": org_b.did, "positions": []}
    blind.put(ERASURES_REGISTRY, ERASURE_KIND, fields, id=erasure_id(registry, record, org_b.did))
    results = deliver(a, wires(blind))
    assert "rejected" not in {r.status for r in results}
    assert SECRET in a.get(registry, record)["fields"]["description"]
    assert a.get(ERASURES_REGISTRY, erasure_id(registry, record, org_b.did))["fields"]["org"] == org_b.did
    assert {"registry": registry, "record": record, "notice": erasure_id(registry, record, org_b.did),
            "state": "refused"} in a.erasures()
    # The owner's own notice is not held up by the one refused: ids are per org.
    assert a.erase(registry, record).status == "created"
    assert not holds_secret(a)
    # Nor may a notice speak for an org its signer does not speak for.
    forged = {"registry": registry, "record": record, "org": org_a.did, "positions": []}
    with pytest.raises(PolicyDenied):
        blind.put(ERASURES_REGISTRY, ERASURE_KIND, forged, id=erasure_id(registry, record, org_a.did))


def test_a_notice_that_waits_for_its_record_erases_it_on_arrival(tmp_path: Path, org_a: KeyPair) -> None:
    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    original = wires(a)
    a.erase(registry, record)
    notice = [w for w in wires(a) if open_envelope(w, verify=False).body.registry == ERASURES_REGISTRY]
    # Only grid.members and the notice first: the record is not held, so the
    # notice waits; then the record's changes arrive and are erased in the
    # batch that brings them.
    c = org_node(tmp_path / "c", org_a)
    deliver(c, [w for w in original if open_envelope(w, verify=False).body.registry != TOOLS] + notice)
    assert c.erasures()[0]["state"] in ("waiting", "erased")
    deliver(c, [w for w in original if open_envelope(w, verify=False).body.registry == TOOLS])
    assert not holds_secret(c)
    # Its create's position is vouched for, so the record is never held
    # here, and the notice names that create: the record counts as erased
    # here from the notice on, and each change of it that arrives is kept
    # as an ID only.
    assert c.erasures() == [{"registry": registry, "record": record,
                             "notice": erasure_id(registry, record, org_a.did), "state": "erased"}]
    with pytest.raises(RecordErased):
        c.get(registry, record)
    assert c.get(registry, "keeper")["fields"]["name"] == "keeper"
    assert c.verify().ok


def test_a_notice_names_its_record_in_its_id(tmp_path: Path, org_a: KeyPair) -> None:
    a = org_node(tmp_path / "a", org_a)
    _written(a)
    fields = {"registry": TOOLS, "record": "alice-tool", "org": org_a.did, "positions": []}
    with pytest.raises(Exception) as wrong:
        a.put(ERASURES_REGISTRY, ERASURE_KIND, fields, id=erasure_id(TOOLS, "keeper", org_a.did))
    assert wrong.value.code == "validation_failed"  # type: ignore[attr-defined]
    with a.store.read() as txn:
        assert not erasures.any_held(a.store, txn)


def test_a_notice_is_never_edited_or_deleted_by_hand_and_the_store_stays_as_it_was(tmp_path: Path,
                                                                                    org_a: KeyPair) -> None:
    # An edit was checked only once stored: moved to another record it was
    # refused (422) and committed all the same; its positions moved, this
    # node's chain skipped to 1000 and the notice claimed places 1-999.
    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    notice = a.erase(registry, record).record_id
    before = (a.feed_head(), a.get(ERASURES_REGISTRY, notice), a.state_digest())
    for edit in ({"record": "keeper"}, {"registry": "grid.kinds"},
                 {"positions": [{"author": a.engine.key.did, "seqs": [[1, 999]]}]}):
        with pytest.raises(PolicyDenied, match="never edited or deleted"):
            a.update(ERASURES_REGISTRY, notice, patch=edit)
    with pytest.raises(PolicyDenied):
        a.delete(ERASURES_REGISTRY, notice)
    assert (a.feed_head(), a.get(ERASURES_REGISTRY, notice), a.state_digest()) == before
    assert a.put(registry, "tool", tool("after"), id="after").feed_seq == before[0] + 1
    assert a.verify().ok


def test_the_search_index_drops_an_erased_record_at_its_next_catch_up(tmp_path: Path, org_a: KeyPair) -> None:
    from registrygrid.search import query as q
    from registrygrid.search.index import SearchIndex

    a = org_node(tmp_path / "a", org_a)
    registry, record = _written(a)
    index = SearchIndex(tmp_path / "index")
    caught = {"org_verified": lambda org: False, "local_org": None}
    index.catch_up(a, **caught)
    find = q.parse_query({"text": "still", "limit": 10})
    assert [h.id for h in index.search(find)["hits"]] == [record]
    a.erase(registry, record)
    index.catch_up(a, **caught)
    assert index.search(find)["hits"] == []
    assert [h.id for h in index.search(q.parse_query({"limit": 10}), registries=(registry,))["hits"]] == ["keeper"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(8)), late=st.sets(st.integers(0, 7), max_size=8))
def test_any_arrival_order_of_an_erasure_leaves_no_byte_and_the_same_chains(tmp_path_factory: Any, order: list[int],
                                                                             late: set[int]) -> None:
    """What a node is sent, in any order: the changes still served after the
    erasure, and some of the originals, from a peer that kept them."""
    root = tmp_path_factory.mktemp("order")
    org = KeyPair.generate()
    a = org_node(root / "a", org)
    registry, record = _written(a)
    original = wires(a)
    a.erase(registry, record)
    a.put(registry, "tool", tool("after"), id="after")
    served = wires(a)
    pieces = [served[i::4] for i in range(4)] + [original[i::4] for i in range(4)]
    c = org_node(root / "c", org)
    for i in order:
        if i < 4 or i in late:
            deliver(c, pieces[i])
    deliver(c, served)  # anti-entropy: whatever is still served arrives in the end
    assert not holds_secret(c)
    with pytest.raises(RecordErased):
        c.get(registry, record)
    assert c.get(registry, "after")["fields"]["name"] == "after"
    assert c.engine.version_vector(registry) == a.engine.version_vector(registry)
    assert c.verify().ok


def test_records_the_grid_runs_on_cannot_be_erased(tmp_path: Path, org_a: KeyPair) -> None:
    from registrygrid.errors import ValidationError
    from registrygrid.trust.statements import MEMBERS_REGISTRY

    a = org_node(tmp_path / "a", org_a)
    statement = next(iter(a.list(MEMBERS_REGISTRY).items))
    with pytest.raises(ValidationError, match="describe the grid itself"):
        a.erase(MEMBERS_REGISTRY, statement["id"])
    assert a.get(MEMBERS_REGISTRY, statement["id"])["id"] == statement["id"]
    assert a.erasures() == []
