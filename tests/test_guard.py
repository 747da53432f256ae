"""The policy guard's bookkeeping with a fake clock (protocol/guard.py), and
the registry descriptor's ``limits`` it reads (engine/registries.py)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.engine import registries as regs
from registrygrid.errors import ValidationError
from registrygrid.protocol import limits
from registrygrid.protocol.guard import (
    Budget,
    Charge,
    Guard,
    GuardLimits,
    MeterTable,
    Rate,
    TokenBucket,
    charged_orgs,
)
from registrygrid.schemas import SchemaCatalog

ORG_A, ORG_B = "did:key:zOrgA", "did:key:zOrgB"
ROOMY = Budget(Rate(1e6, 1e6), Rate(1e9, 1e9))  # never the short one


def change(org: str = ORG_A, size: int = 100, **extra: object) -> Charge:
    return Charge(size=size, orgs=(org,), registry="acme.things", **extra)  # type: ignore[arg-type]


def guard(**overrides: object) -> tuple[Guard, Counter[str]]:
    metrics: Counter[str] = Counter()
    fields = {"gossip_peer": ROOMY, "sync_peer": ROOMY, "org": ROOMY, **overrides}
    return Guard(GuardLimits(**fields), metrics), metrics  # type: ignore[arg-type]


# ---- token buckets ----


def test_a_bucket_starts_full_refills_at_its_rate_and_never_beyond_its_burst() -> None:
    bucket = TokenBucket(Rate(10, 50), now=0.0)
    assert bucket.fits(50, 0.0) and not bucket.fits(51, 0.0)
    bucket.take(40, 0.0)
    assert bucket.fits(10, 0.0) and not bucket.fits(11, 0.0)
    bucket.take(10, 0.0)
    assert not bucket.fits(1, 0.0)
    assert bucket.fits(10, 1.0) and not bucket.fits(11, 1.0)
    assert bucket.level(100.0) == 50
    assert bucket.wait(20, 100.0) == 0.0


def test_an_item_larger_than_the_burst_passes_only_a_full_bucket_and_leaves_it_in_debt() -> None:
    bucket = TokenBucket(Rate(10, 50), now=0.0)
    assert not bucket.fits(80, 0.0)  # gossip: a message beyond the burst never fits
    assert bucket.fits(80, 0.0, oversized=True)  # sync: one change, once the bucket is full
    bucket.take(80, 0.0)
    assert bucket.level(0.0) == -30
    assert bucket.wait(1, 0.0) == pytest.approx(3.1)
    assert bucket.wait(80, 0.0) == pytest.approx(8.0)  # until full again
    assert not bucket.fits(80, 7.9, oversized=True) and bucket.fits(80, 8.0, oversized=True)


def test_a_meter_table_forgets_the_least_recently_used_and_says_so() -> None:
    forgotten: list[object] = []
    table = MeterTable(Budget(Rate(1, 1)), capacity=2, on_evict=forgotten.append)
    a = table.get("a", 0.0)
    table.get("b", 0.0)
    assert table.get("a", 0.0) is a  # "a" is now the most recent
    table.get("c", 0.0)
    assert forgotten == ["b"] and len(table) == 2 and "a" in table and "b" not in table


# ---- gossip: the whole message or nothing ----


def test_gossip_within_budget_is_accepted_and_spends_it() -> None:
    g, metrics = guard(org=Budget(Rate(10, 20), Rate(1e9, 1e9)))
    assert g.admit_gossip("peer1", [change()] * 20, 0.0).accept
    assert not g.admit_gossip("peer1", [change()], 0.0).accept
    assert g.admit_gossip("peer1", [change()] * 10, 1.0).accept
    assert metrics["guard.dropped_batches"] == 1


def test_gossip_over_an_org_budget_is_dropped_counted_per_org_and_strikes_nobody() -> None:
    g, metrics = guard(org=Budget(Rate(10, 20), Rate(1e9, 1e9)))
    verdict = g.admit_gossip("peer1", [change(size=100)] * 21, 0.0)
    assert not verdict.accept and verdict.short == ("org",) and not verdict.strike
    assert metrics["guard.dropped_batches"] == 1
    assert metrics["guard.throttled_changes"] == 21 and metrics["guard.throttled_bytes"] == 2100
    assert metrics[f"guard.org.{ORG_A}.throttled_changes"] == 21
    assert metrics["guard.peer.peer1.dropped_batches"] == 1
    # Nothing was spent by the dropped message: another org's changes and a
    # smaller message of this org still pass.
    assert g.admit_gossip("peer1", [change(ORG_B)] * 5, 0.0).accept
    assert g.admit_gossip("peer1", [change()] * 20, 0.0).accept


def test_gossip_over_its_own_peer_budget_strikes_the_origin_once_per_interval() -> None:
    g, metrics = guard(gossip_peer=Budget(Rate(1, 5), None), flood_strike_interval=10.0)
    assert g.admit_gossip("flooder", [change()] * 5, 0.0).accept
    first = g.admit_gossip("flooder", [change()], 0.0)
    assert not first.accept and first.short == ("peer",) and first.strike
    assert not g.admit_gossip("flooder", [change()] * 6, 5.0).strike  # still flooding, within the interval
    assert g.admit_gossip("flooder", [change()] * 6, 10.0).strike
    assert metrics["guard.strikes"] == 2
    assert g.admit_gossip("honest", [change()] * 5, 10.0).accept  # budgets are per origin


def test_a_bytes_budget_drops_a_message_of_few_large_changes() -> None:
    g, _ = guard(org=Budget(Rate(1e6, 1e6), Rate(1000, 4000)))
    assert not g.admit_gossip("p", [change(size=3000)] * 2, 0.0).accept
    assert g.admit_gossip("p", [change(size=3000)], 0.0).accept


def test_a_registry_rate_limits_each_org_separately() -> None:
    g, metrics = guard(registry_burst_s=2.0)
    capped = {"registry_rate": 5.0}  # burst: 5/s x 2 s
    assert g.admit_gossip("p", [change(ORG_A, **capped)] * 10, 0.0).accept
    verdict = g.admit_gossip("p", [change(ORG_A, **capped)], 0.0)
    assert not verdict.accept and verdict.short == ("registry",)
    assert g.admit_gossip("p", [change(ORG_B, **capped)] * 10, 0.0).accept
    assert g.admit_gossip("p", [change(ORG_A)] * 10, 0.0).accept  # another registry: no cap
    assert metrics["guard.throttled.registry"] == 1


# ---- sync: wait, never drop ----


def test_sync_admits_what_fits_in_order_and_says_how_long_until_the_rest_fits() -> None:
    g, metrics = guard(org=Budget(Rate(10, 3), None))
    charges = [change(ORG_A), change(ORG_A), change(ORG_B), change(ORG_A), change(ORG_A), change(ORG_B)]
    first = g.admit_sync("responder", charges, 0.0)
    assert first.admitted == [0, 1, 2, 3, 5]  # org A's fourth change waits; org B's later one does not
    assert first.wait == pytest.approx(0.1)
    assert metrics[f"guard.org.{ORG_A}.sync_short"] == 1
    assert g.admit_sync("responder", [charges[4]], 0.05).admitted == []
    assert g.admit_sync("responder", [charges[4]], 0.1).admitted == [0]


def test_sync_keeps_one_orgs_order_once_its_budget_ran_short() -> None:
    g, _ = guard(org=Budget(Rate(1, 1e6), Rate(100, 250)))
    big, small = change(size=200), change(size=10)
    # The second change does not fit; the third would, but must not overtake it.
    admission = g.admit_sync("r", [big, big, small], 0.0)
    assert admission.admitted == [0]
    assert admission.wait == pytest.approx(1.6)  # 210 bytes waiting, 50 left, 100/s


def test_sync_lets_one_change_larger_than_a_bytes_burst_through_a_full_bucket() -> None:
    g, _ = guard(org=Budget(Rate(1e6, 1e6), Rate(100, 250)))
    huge = change(size=1000)
    assert g.admit_sync("r", [huge, huge], 0.0).admitted == [0]
    later = g.admit_sync("r", [huge], 0.0)
    assert later.admitted == [] and later.wait == pytest.approx(10.0)  # 750 in debt, then full again
    assert g.admit_sync("r", [huge], 10.0).admitted == [0]


def test_sync_waits_for_the_responders_budget_too() -> None:
    g, metrics = guard(sync_peer=Budget(Rate(100, 2), None))
    admission = g.admit_sync("r", [change(ORG_A), change(ORG_B), change(ORG_B)], 0.0)
    assert admission.admitted == [0, 1] and admission.wait == pytest.approx(0.01)
    assert metrics["guard.sync_short.peer"] == 1


def test_serving_stops_at_a_pullers_budget_and_resumes_as_it_refills() -> None:
    g, metrics = guard(serve_peer=Budget(Rate(1, 2), Rate(1000, 1000)))
    assert g.may_serve("puller", 0.0)
    g.served("puller", 3000, 0.0)  # a big response puts the bytes bucket in debt
    assert not g.may_serve("puller", 0.0)
    assert not g.may_serve("puller", 1.9)
    assert g.may_serve("puller", 2.0)
    assert g.may_serve("other", 0.0)
    assert metrics["guard.serve_throttled"] == 2


# ---- the guarantee: an org never gets more than its budget, whatever the path ----


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40), st.floats(0, 0.5)), min_size=1, max_size=60))
def test_what_an_org_gets_in_by_gossip_and_sync_together_never_exceeds_burst_plus_rate(
        arrivals: list[tuple[bool, int, float]]) -> None:
    rate, burst = 20.0, 50.0
    g, _ = guard(org=Budget(Rate(rate, burst), None))
    now, taken = 0.0, 0
    for by_gossip, count, step in arrivals:
        now += step
        charges = [change()] * count
        if by_gossip:
            taken += count if g.admit_gossip("p", charges, now).accept else 0
        else:
            taken += len(g.admit_sync("r", charges, now).admitted)
        assert taken <= burst + rate * now + 1e-9


def test_org_buckets_and_their_counters_are_bounded_when_orgs_are_minted() -> None:
    g, metrics = guard(org=Budget(Rate(1, 1), None), max_org_buckets=16)
    for i in range(2000):
        g.admit_gossip("p", [change(f"did:key:zMinted{i}")] * 2, float(i))  # each over its org budget
    assert len(g.orgs) == 16
    assert metrics["guard.evicted.org"] == 2000 - 16
    assert len([k for k in metrics if k.startswith("guard.org.")]) <= 16 * 4


# ---- whom a change is charged to, and what its registry refuses ----


def test_a_change_is_charged_to_the_orgs_its_author_speaks_for_or_to_the_author_alone() -> None:
    key = "did:key:zNode"
    assert charged_orgs(key, frozenset({key})) == (key,)  # no delegation known: its own org
    assert charged_orgs(key, frozenset({key, ORG_B, ORG_A})) == (ORG_A, ORG_B)
    many = frozenset({key} | {f"did:key:zOrg{i}" for i in range(10)})
    assert len(charged_orgs(key, many, most=4)) == 4


def test_a_descriptor_names_its_limits_defaulting_to_the_global_caps() -> None:
    record = {"id": "acme.notes", "owner": ORG_A,
              "fields": {"name": "acme.notes", "kinds": ["cluster"],
                         "limits": {"max_record_bytes": 2048, "max_changes_per_second_per_org": 5}}}
    desc = regs.descriptor_from_record(record)
    assert desc.max_record_bytes == 2048 and desc.max_changes_per_second_per_org == 5.0
    assert desc.to_dict()["limits"] == {"max_record_bytes": 2048, "max_changes_per_second_per_org": 5.0}
    plain = regs.descriptor_from_record({**record, "fields": {"name": "acme.notes", "kinds": ["cluster"]}})
    assert plain.max_record_bytes == limits.MAX_RECORD_BYTES and plain.max_changes_per_second_per_org is None
    # A descriptor can only lower the global cap, even one that slipped past its schema.
    raised = regs.descriptor_from_record({**record, "fields": {**record["fields"], "limits": {"max_record_bytes": 10**9}}})
    assert raised.max_record_bytes == limits.MAX_RECORD_BYTES


@pytest.mark.parametrize("bad", [{"max_record_bytes": 0}, {"max_record_bytes": limits.MAX_RECORD_BYTES + 1},
                                 {"max_record_bytes": "2k"}, {"max_changes_per_second_per_org": 0},
                                 {"max_changes_per_second_per_org": 1e9}, {"burst": 5}])
def test_the_registry_schema_refuses_bad_limits(bad: dict[str, object]) -> None:
    catalog = SchemaCatalog()
    fields = {"name": "acme.notes", "kinds": ["cluster"], "limits": bad}
    with pytest.raises(ValidationError):
        catalog.validate("registry", 1, fields)
    catalog.validate("registry", 1, {**fields, "limits": {"max_record_bytes": 2048,
                                                          "max_changes_per_second_per_org": 0.5}})


def test_a_change_of_a_kind_its_registry_dropped_passes_the_guard_and_its_authors_chain_goes_on(tmp_path) -> None:
    """The guard refuses nothing by a registry's kinds or size cap: the
    engine judges a change by the descriptor in force when it was made, and
    keeps one that it refuses as evidence. b, which has not seen its
    registry drop a kind, writes a record of that kind and then another
    record: dropped by the guard, the first would never be stored and the
    second would wait for it forever."""
    import time
    from types import SimpleNamespace

    from registrygrid.engine.ops import Remote
    from registrygrid.identity.delegation import sign_delegation
    from registrygrid.identity.keys import KeyPair
    from registrygrid.node.guard import PeerGuard
    from registrygrid.protocol.guard import GuardLimits
    from registrygrid.sdk import LocalRegistry
    from tests.test_conflicts import NODE_A, NODE_B, ORG_A, ORG_B, wires

    def open_node(name: str, key: KeyPair, org: KeyPair) -> LocalRegistry:
        return LocalRegistry.open_path(tmp_path / name, key, delegation=sign_delegation(org, key.did, ["node"]))

    a, b = open_node("a", NODE_A, ORG_A), open_node("b", NODE_B, ORG_B)
    replica = LocalRegistry.open_path(tmp_path / "replica", KeyPair(b"\xc9" * 32))
    try:
        b.execute([Remote(w, "a") for w in wires(a)])
        a.create_registry("acme.mixed", ["cluster", "tool"], write_policy="open")
        b.execute([Remote(w, "a") for w in wires(a)])
        b.put("acme.mixed", "tool", {"name": "before"}, id="before")
        time.sleep(0.005)
        a.update("grid.registries", "acme.mixed", fields={"name": "acme.mixed", "kinds": ["cluster"],
                                                         "write_policy": "open"})
        time.sleep(0.005)
        b.put("acme.mixed", "tool", {"name": "after"}, id="after")  # b has not seen the update
        b.put("acme.mixed", "cluster", {"name": "next"}, id="next")
        replica.execute([Remote(w, "p") for w in wires(a)])
        peer_guard = PeerGuard(SimpleNamespace(store=replica.store, engine=replica.engine), GuardLimits(),
                               Counter())
        ours = [w for w in wires(b) if open_envelope_body(w).registry == "acme.mixed"]
        charges = peer_guard.charges(ours, 0.0)
        assert [c.registry for c in charges] == ["acme.mixed"] * 3
        assert peer_guard.admit_sync("b", charges, 0.0).admitted == [0, 1, 2]
        results = replica.execute([Remote(w, "b") for w in wires(b)])
        assert [r.status for r in results if r.error is not None] == ["refused"]  # "after": no such kind then
        assert sorted(r["id"] for r in replica.list("acme.mixed").items) == ["before", "next"]
    finally:
        for grid in (a, b, replica):
            grid.close()


def open_envelope_body(wire: bytes) -> object:
    from registrygrid.protocol.envelope import open_envelope

    return open_envelope(wire).body
