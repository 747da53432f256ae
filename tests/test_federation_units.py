"""The federation's bookkeeping without a network: peer table, redial backoff,
bans, the gossip seen-set and fair inbound queues, the hello message."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.errors import MalformedInput, RegistryError, TooLarge
from registrygrid.node.peers import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    STABLE_AFTER_S,
    PeerTable,
    backoff_delay,
)
from registrygrid.protocol.gossip_intake import (
    VALIDATION_BURST_S,
    VALIDATION_SHARE,
    InboundQueues,
    SeenSet,
    ValidationBudget,
)
from registrygrid.protocol.hello import (
    HELLO_VERSION,
    MAX_SHARED_PEERS,
    decode_hello,
    encode_hello,
    peer_of,
)
from registrygrid.storage import peers as peer_store
from registrygrid.storage.store import Store

ME = "12D3KooWMe"


def addr(peer: str, port: int = 4001) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def table(**options: object) -> PeerTable:
    return PeerTable(ME, rng=random.Random(1), **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------- backoff


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(7)
    for failures in range(12):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures)
        delays = [backoff_delay(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # really jittered
    assert backoff_delay(10_000, rng) <= BACKOFF_CAP_S  # no overflow


def test_a_failing_peer_is_redialed_later_and_later_and_at_once_after_it_connects() -> None:
    peers = table()
    peers.add([addr("P")], "bootstrap", now=0.0)
    assert [p.id for p in peers.due(0.0)] == ["P"]
    waits = []
    now = 0.0
    for _ in range(8):
        peers.dial_started("P")
        assert peers.due(now) == []  # never two dials at once
        peers.dial_failed("P", now, "refused")
        nxt = peers.next_due()
        assert nxt is not None
        waits.append(nxt - now)
        now = nxt
    assert waits[-1] <= BACKOFF_CAP_S and waits[-1] > waits[0] * 8
    assert peers.peers["P"].record.state == "backoff" and peers.peers["P"].record.failures == 8
    peers.connected("P", now)
    assert peers.due(now + 1000) == []
    # A connection dropped at once (the peer banned us, or is full) is a failure too ...
    peers.disconnected("P", now + 1)
    assert peers.peers["P"].record.failures == 9
    assert peers.next_due() - (now + 1) >= BACKOFF_CAP_S / 2  # type: ignore[operator]
    # ... one that lasted is not: the next redial comes at once.
    peers.connected("P", now + 100)
    peers.disconnected("P", now + 100 + STABLE_AFTER_S)
    assert peers.peers["P"].record.failures == 0
    assert peers.next_due() - (now + 100 + STABLE_AFTER_S) <= BACKOFF_BASE_S  # type: ignore[operator]


def test_addresses_of_one_peer_merge_and_nonsense_is_ignored() -> None:
    peers = table()
    assert peers.add(["not a multiaddr"], "learned", 0.0) is None
    assert peers.add([addr(ME)], "learned", 0.0) is None  # ourselves
    assert peers.add([addr("P"), addr("Q")], "learned", 0.0) is None  # two peers in one list
    peers.add([addr("P", 1)], "learned", 0.0)
    peers.add([addr("P", 2)], "bootstrap", 0.0)
    record = peers.peers["P"].record
    assert record.addrs == [addr("P", 2), addr("P", 1)] and record.source == "bootstrap"


def test_the_table_is_bounded_and_evicts_never_connected_learned_peers_first() -> None:
    peers = table(max_known=3)
    peers.add([addr("boot")], "bootstrap", 0.0)
    peers.add([addr("good")], "learned", 0.0)
    peers.connected("good", 0.0)
    peers.add([addr("junk")], "learned", 0.0)
    peers.add([addr("new")], "learned", 0.0)
    assert set(peers.peers) == {"boot", "good", "new"}
    _, forget = peers.take_dirty()
    assert forget == ["junk"]


def test_strikes_ban_a_peer_for_a_while_then_it_is_forgiven() -> None:
    clock = Clock()
    peers = table(ban_after=3, ban_seconds=60, wall_ms=clock)
    peers.add([addr("E")], "learned", 0.0)
    assert not peers.strike("E", 0.0, "junk") and not peers.strike("E", 1.0, "junk")
    assert peers.strike("E", 2.0, "junk")
    assert peers.blocked("E") and peers.due(100.0) == [] and peers.peers["E"].record.state == "banned"
    assert peers.share("someone", 10) == []  # never recommended to others
    clock.ms += 61_000
    assert not peers.blocked("E") and [p.id for p in peers.due(100.0)] == ["E"]
    assert peers.peers["E"].record.invalid == 3


def test_old_strikes_are_forgotten() -> None:
    peers = table(ban_after=2)
    peers.strike("E", 0.0, "junk")
    assert not peers.strike("E", 10_000.0, "junk")  # outside the strike window


def test_deny_and_allow_are_the_operators_and_tests_partition_switch() -> None:
    peers = table()
    peers.add([addr("P")], "bootstrap", 0.0)
    peers.deny("P")
    assert peers.blocked("P") and peers.due(10.0) == []
    peers.allow("P", 10.0)
    assert not peers.blocked("P") and [p.id for p in peers.due(10.0)] == ["P"]


def test_the_table_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    try:
        peers = table()
        peers.add([addr("P")], "bootstrap", 0.0)
        peers.connected("P", 0.0)
        peers.note_latency("P", 0.0123)
        peers.note_sync("P", lag=0, ahead=2)
        peers.ban("B", "bad")
        peers.add([addr("D")], "exchange", 0.0)
        peers.deny("D")
        records, forget = peers.take_dirty()
        peer_store.save(store, records, forget=forget)
        assert peers.take_dirty() == ([], [])
        with store.write() as txn:  # a corrupt entry is skipped, not fatal
            txn.put(b"X", b"\xc1garbage", db=store.db["peers"])
        again = table()
        again.load(peer_store.load(store), now=5.0)
        assert again.peers["P"].record.latency_ms == 12.3 and again.peers["P"].record.state == "disconnected"
        assert again.peers["P"].record.ahead == 2 and again.blocked("B") and "X" not in again.peers
        assert [p.id for p in again.due(5.0)] == ["P"]
        assert again.blocked("D") and again.denied_ids() == ["D"], "a deny outlives the restart"
    finally:
        store.close()


def test_peer_exchange_offers_connected_peers_first_and_never_the_asker() -> None:
    peers = table()
    for name in ("A", "B", "C"):
        peers.add([addr(name)], "learned", 0.0)
    peers.connected("C", 0.0)
    assert peers.share("B", 10) == [addr("C"), addr("A")]


# ---------------------------------------------------------------- gossip bookkeeping


def test_the_seen_set_is_bounded_and_forgets_the_oldest() -> None:
    seen = SeenSet(capacity=3)
    for cid in (b"1", b"2", b"3", b"1", b"4"):
        seen.add(cid)
    assert len(seen) == 3 and b"1" in seen and b"2" not in seen


def test_inbound_queues_are_bounded_per_peer_and_in_total_and_served_round_robin() -> None:
    inbound = InboundQueues(peer_cap=500, total_cap=700)
    for i in range(10):
        assert inbound.put("flood", b"x" * 100) == (i < 5)
    assert inbound.put("quiet", b"q" * 100)
    assert inbound.put("other", b"o" * 100)
    assert not inbound.put("late", b"l")  # total cap
    taken = inbound.take(400)
    assert [peer for peer, _ in taken] == ["flood", "quiet", "other", "flood"]
    assert inbound.total == 300
    assert len(inbound.take(10)) == 1  # at least one message, however small the budget
    assert len(inbound.take(10_000)) == 2 and inbound.total == 0 and not inbound.queues


def test_one_origin_gets_a_bounded_share_of_validation_time() -> None:
    budget = ValidationBudget(at=0.0)
    assert budget.allows(0.0)
    budget.spend(VALIDATION_BURST_S + 0.5)  # one huge message overdraws the bucket
    assert not budget.allows(0.5)
    refill = (0.5 + 0.01) / VALIDATION_SHARE  # seconds to earn the overdraft back
    assert budget.allows(0.5 + refill) and budget.tokens <= VALIDATION_BURST_S


# ---------------------------------------------------------------- hello


def test_hello_round_trips_and_caps_what_it_carries() -> None:
    shared = [addr(f"P{i}") for i in range(40)]
    hello = decode_hello(encode_hello("acme", [addr(ME)], shared))
    assert hello.federation == "acme" and hello.addrs == [addr(ME)] and len(hello.peers) == MAX_SHARED_PEERS
    assert peer_of(hello.peers[0]) == "P0"


@pytest.mark.parametrize("fields, error", [
    ([HELLO_VERSION + 1, "acme", [], []], MalformedInput),
    ([HELLO_VERSION, "", [], []], MalformedInput),
    ([HELLO_VERSION, "acme", ["/ip4/1.2.3.4/tcp/1"], []], MalformedInput),  # no /p2p/
    ([HELLO_VERSION, "acme", [], ["/p2p/" + "x" * 300]], MalformedInput),
    ([HELLO_VERSION, "acme", [], [addr("P")] * 17], MalformedInput),
    ([HELLO_VERSION, "acme", [], ["/ip4/1.2.3.4/tcp/1/p2p/é"]], MalformedInput),
])
def test_bad_hellos_are_typed_errors(fields: list[object], error: type[RegistryError]) -> None:
    with pytest.raises(error):
        decode_hello(msgspec.msgpack.encode(fields))
    with pytest.raises(TooLarge):
        decode_hello(b"\x00" * 70_000)
    with pytest.raises(MalformedInput):  # a federation name that is not UTF-8
        decode_hello(b"\x94\x01\xa4fed\x80\x90\x90")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_no_bytes_crash_the_hello_decoder(data: bytes) -> None:
    try:
        decode_hello(data)
    except RegistryError:
        pass


def test_a_read_request_for_a_private_or_local_registry_is_answered_as_for_an_unknown_one(tmp_path: Path) -> None:
    # Any peer that is not banned may ask (another federation's too): a
    # private or local registry answered "not public" where an unknown name
    # answered "no registry", so anyone could learn the names the DHT keeps
    # from them. A federation's own registries are in the DHT: theirs say so.
    from registrygrid.engine.ops import Put
    from registrygrid.identity.keys import KeyPair
    from registrygrid.node.remote_read import answer_read
    from registrygrid.protocol.remote_read import encode_request
    from registrygrid.sdk import LocalRegistry

    with LocalRegistry.open_path(tmp_path, KeyPair.generate()) as grid:
        grid.create_registry("acme.secrets", ["tool"], replication="private", readers=[])
        grid.create_registry("acme.local", ["tool"], replication="local")
        grid.create_registry("acme.shared", ["tool"])
        grid.execute([Put("acme.secrets", "tool", {"name": "s"}, record_id="s")])
        answers = {}
        for name in ("acme.secrets", "acme.local", "acme.unknown", "acme.shared"):
            with pytest.raises(RegistryError) as refused:
                answer_read(encode_request(name), grid.engine)
            answers[name] = (refused.value.code, refused.value.message.replace(name, "NAME"))
    assert answers["acme.secrets"] == answers["acme.local"] == answers["acme.unknown"]
    assert answers["acme.shared"][0] == "policy_denied" and "not public" in answers["acme.shared"][1]
