"""The sans-IO anti-entropy protocol (protocol/sync.py), driven with no network.

Two real stores reconcile through bytes only: the puller's request goes to
``answer_sync`` on the other store, the response comes back to the puller,
and the envelopes go through the engine's one write path. That is exactly
what node/sync.py does over libp2p.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import IngestResult, Put, Remote
from registrygrid.errors import MalformedInput, RegistryError, TooLarge, ValidationError
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol import sync
from registrygrid.protocol.sync import (
    MAX_RESPONSE_BYTES,
    SYNC_VERSION,
    GonePlace,
    SyncPuller,
    SyncRequest,
    SyncResponse,
    advance,
    answer_sync,
    behind,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    missing,
)
from registrygrid.protocol.envelope import open_envelope
from registrygrid.sdk import LocalRegistry
from registrygrid.simulation.ledger import Ledger

FED = "acme"
CLUSTERS = "grid.clusters"
BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def store(path: Path) -> LocalRegistry:
    return LocalRegistry.open_path(path, KeyPair.generate())


def write(grid: LocalRegistry, prefix: str, n: int, *, updates: int = 0) -> None:
    results = grid.put_many([Put(CLUSTERS, "cluster", {"name": f"{prefix}{i}", "pad": "x" * 200},
                                 record_id=f"{prefix}{i}") for i in range(n)])
    assert all(r.status == "created" for r in results)  # type: ignore[union-attr]
    for i in range(updates):
        grid.update(CLUSTERS, f"{prefix}{i % n}", patch={"round": i})


def pull_round(puller: SyncPuller, source: LocalRegistry, target: LocalRegistry) -> list[IngestResult]:
    request = puller.request(target.engine.replicated_vector())
    envelopes = puller.receive(answer_sync(request, source.engine, federation=FED))
    outcomes = target.execute([Remote(wire, "source-peer") for wire in envelopes])
    assert all(isinstance(o, IngestResult) for o in outcomes)
    return outcomes  # type: ignore[return-value]


def pull_all(source: LocalRegistry, target: LocalRegistry, *, max_bytes: int = sync.DEFAULT_RESPONSE_BYTES,
             max_rounds: int = 1000) -> tuple[SyncPuller, list[IngestResult]]:
    puller = SyncPuller(FED, max_bytes=max_bytes)
    outcomes: list[IngestResult] = []
    while not puller.done:
        assert puller.rounds < max_rounds, "the session does not end"
        outcomes += pull_round(puller, source, target)
    return puller, outcomes


@pytest.fixture
def pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    a, b = store(tmp_path / "a"), store(tmp_path / "b")
    yield a, b
    a.close()
    b.close()


# ---------------------------------------------------------------- reconciliation


def test_two_stores_reconcile_through_bytes_both_ways_to_identical_state(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 40, updates=15)
    write(b, "b", 25, updates=5)
    _, into_b = pull_all(a, b)
    _, into_a = pull_all(b, a)
    assert {o.status for o in into_b} == {"applied"} and len(into_b) == 55
    assert {o.status for o in into_a} == {"applied"} and len(into_a) == 30
    assert a.state_digest() == b.state_digest()
    assert a.engine.replicated_vector() == b.engine.replicated_vector()
    # Remote changes reached the feed like local ones, naming their origin.
    assert [e.origin for e in b.changes(25 + 5)][:3] == ["source-peer"] * 3
    # Nothing left to say: a further session is one empty round.
    puller, again = pull_all(a, b)
    assert again == [] and puller.rounds == 1


def test_a_small_budget_spreads_a_session_over_rounds_each_within_budget(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 60)
    budget = 4096
    puller = SyncPuller(FED, max_bytes=budget)
    while not puller.done:
        request = puller.request(b.engine.replicated_vector())
        response = decode_response(answer_sync(request, a.engine, federation=FED))
        size = sum(map(len, response.envelopes))
        assert size <= budget or len(response.envelopes) == 1
        envelopes = puller.receive(encode_response(response))
        b.execute([Remote(w, "p") for w in envelopes])
    assert puller.rounds > 5
    assert b.state_digest() == a.state_digest()


def test_a_session_cut_mid_way_resumes_from_the_vector_without_resending(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 50, updates=20)
    first = SyncPuller(FED, max_bytes=5000)
    received = []
    for _ in range(3):  # then the connection "drops": the puller is gone
        received += pull_round(first, a, b)
    assert not first.done
    # A new session knows nothing but the store's vector.
    _, rest = pull_all(a, b, max_bytes=5000)
    assert all(o.status == "applied" for o in received + rest)
    assert len(received) + len(rest) == 70  # nothing sent twice, nothing lost
    assert b.state_digest() == a.state_digest()


def test_a_puller_may_ask_ahead_with_the_advanced_vector_and_gets_each_change_once(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 40, updates=10)
    write(b, "b", 5)
    puller = SyncPuller(FED, max_bytes=4000)
    cursor = b.engine.replicated_vector()
    fetched: list[bytes] = []
    while not puller.done:  # nothing applied yet: only the advanced vector moves
        envelopes = puller.receive(answer_sync(puller.request(cursor), a.engine, federation=FED))
        fetched += envelopes
        cursor = advance(cursor, envelopes)
    assert puller.rounds > 3 and len(fetched) == len(set(fetched)) == 50
    outcomes = b.execute([Remote(w, "p") for w in fetched])
    assert {o.status for o in outcomes} == {"applied"}  # type: ignore[union-attr]
    assert b.engine.replicated_vector() == cursor


def test_advance_moves_only_chains_an_envelope_extends_by_one(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    write(a, "a", 3)
    did = a.engine.key.did
    first, second, third = a.engine.envelopes_after(CLUSTERS, did, 0)
    assert advance({}, [first, second]) == {CLUSTERS: {did: 2}}
    assert advance({}, [second, third]) == {}  # a gap: nothing moves
    assert advance({CLUSTERS: {did: 2}}, [b"garbage", third]) == {CLUSTERS: {did: 3}}
    vector = {CLUSTERS: {did: 1}}
    advance(vector, [second])
    assert vector == {CLUSTERS: {did: 1}}  # the input is not touched


def test_causal_order_lets_a_third_store_apply_everything_without_parking(tmp_path: Path) -> None:
    # a and b are nodes of one org, so b may edit a's records; their
    # delegations travel with the changes.
    org = KeyPair.generate()
    a, b = (LocalRegistry.open_path(tmp_path / name, key, delegation=sign_delegation(org, key.did, ["node"]))
            for name, key in (("a", KeyPair.generate()), ("b", KeyPair.generate())))
    c = store(tmp_path / "c")
    try:
        write(a, "x", 10)
        pull_all(a, b)
        for i in range(10):  # b edits a's records: b's changes depend on a's
            b.update(CLUSTERS, f"x{i}", patch={"by": "b"})
        _, outcomes = pull_all(b, c, max_bytes=3000)
        assert [o.status for o in outcomes] == ["applied"] * 22  # two delegations, 10 creates, 10 updates
        assert c.engine.metrics["remote.parked"] == 0
        assert c.state_digest() == b.state_digest()
    finally:
        for grid in (a, b, c):
            grid.close()


def test_local_registries_are_never_offered(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    a.create_registry("acme.private", ["cluster"], replication="local")
    a.put("acme.private", "cluster", {"name": "secret"}, id="s")
    write(a, "a", 2)
    vector = a.engine.replicated_vector()
    assert "acme.private" not in vector and CLUSTERS in vector
    _, outcomes = pull_all(a, b)
    # The two clusters and the registry's descriptor (grid.registries is
    # shared), never the local registry's record.
    assert len(outcomes) == 3
    assert b.get("grid.registries", "acme.private")["fields"]["replication"] == {"scope": "local"}
    assert "acme.private" not in b.engine.version_vector()


def test_the_response_carries_the_responders_vector_for_lag(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 7)
    write(b, "b", 3)
    puller = SyncPuller(FED)
    request = puller.request(b.engine.replicated_vector())
    puller.receive(answer_sync(request, a.engine, federation=FED))
    b_vector = b.engine.replicated_vector()
    assert behind(b_vector, puller.peer_vector) == 7  # before applying: 7 behind a
    assert behind(puller.peer_vector, b_vector) == 3  # and 3 ahead of it
    assert puller.peer_lacks(b_vector) == {(CLUSTERS, b.engine.key.did): 0}


def test_a_request_for_another_federation_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    request = SyncPuller("other").request({})
    with pytest.raises(ValidationError):
        answer_sync(request, a.engine, federation=FED)


def test_a_responder_saying_more_but_sending_nothing_cannot_loop_the_puller() -> None:
    puller = SyncPuller(FED)
    empty_more = encode_response(SyncResponse(v=SYNC_VERSION, envelopes=[], more=True, vector={}))
    assert puller.receive(empty_more) == []
    assert not puller.done
    assert puller.receive(empty_more) == []
    assert puller.done


def test_missing_and_behind_count_what_one_side_lacks() -> None:
    did_a, did_b = KeyPair.generate().did, KeyPair.generate().did
    ours = {"r": {did_a: 5, did_b: 1}}
    theirs = {"r": {did_a: 2}, "s": {did_b: 4}}
    assert missing(ours, theirs) == {("r", did_a): 2, ("r", did_b): 0}
    assert behind(theirs, ours) == 3 + 1
    assert behind(ours, theirs) == 4


# ---------------------------------------------------------------- hostile input


@BOUNDED
@given(st.binary(max_size=4096))
def test_no_bytes_crash_the_request_or_response_decoder(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(data)
        except RegistryError:
            pass


def test_invalid_utf8_in_a_request_or_response_is_malformed_input() -> None:
    bad_text = b"\xa4fed\x80"  # a msgpack str of 4 bytes that are not UTF-8
    request = b"\x95\x01" + bad_text + b"\x80\xc0\xcd\x03\xe8"  # [1, <bad>, {}, nil, 1000]
    with pytest.raises(MalformedInput):
        decode_request(request)
    response = b"\x94\x01\x90\xc2\x81" + bad_text + b"\x80"  # [1, [], false, {<bad>: {}}]
    with pytest.raises(MalformedInput):
        decode_response(response)


def _request(**changes: object) -> bytes:
    fields: dict[str, object] = {"v": SYNC_VERSION, "federation": FED, "vector": {}, "registries": None,
                                 "max_bytes": 1000}
    fields.update(changes)
    return msgspec.msgpack.encode(list(fields.values()))


@pytest.mark.parametrize("changes, error", [
    ({"v": 2}, MalformedInput),
    ({"max_bytes": 0}, MalformedInput),
    ({"max_bytes": MAX_RESPONSE_BYTES + 1}, MalformedInput),
    ({"registries": ["Not A Name"]}, MalformedInput),
    ({"vector": {"../etc": {}}}, MalformedInput),
    ({"vector": {"grid.clusters": {"not-a-did": 1}}}, MalformedInput),
    ({"vector": {"grid.clusters": {"did:key:z6Mk": -1}}}, MalformedInput),
    ({"vector": {"grid.clusters": {"did:key:z6Mk": 2**64 - 1}}}, MalformedInput),
    ({"vector": {"grid.clusters": {"did:key:" + "z" * 200: 1}}}, MalformedInput),
    ({"vector": {"grid.clusters": "no"}}, MalformedInput),
    ({"federation": 7}, MalformedInput),
])
def test_malformed_requests_are_typed_errors(changes: dict[str, object], error: type[RegistryError]) -> None:
    with pytest.raises(error):
        decode_request(_request(**changes))


def test_oversized_requests_and_vectors_are_too_large() -> None:
    with pytest.raises(TooLarge):
        decode_request(b"\x00" * (sync.MAX_REQUEST_BYTES + 1))
    huge = {f"r{i}": {f"did:key:z{j}": 1 for j in range(1000)} for i in range(sync.MAX_VECTOR_ENTRIES // 1000 + 1)}
    with pytest.raises(TooLarge):
        decode_request(_request(vector=huge))


def test_malformed_responses_are_typed_errors() -> None:
    good = SyncResponse(v=SYNC_VERSION, envelopes=[], more=False, vector={})
    assert decode_response(encode_response(good)) == good
    with pytest.raises(MalformedInput):
        decode_response(encode_response(SyncResponse(v=9, envelopes=[], more=False, vector={})))
    with pytest.raises(TooLarge):
        too_many = [b"x"] * (sync.MAX_RESPONSE_ENVELOPES + 1)
        decode_response(encode_response(SyncResponse(v=SYNC_VERSION, envelopes=too_many, more=True, vector={})))
    with pytest.raises(TooLarge):
        decode_response(b"\x00" * (MAX_RESPONSE_BYTES + 2**20 + 1))
    with pytest.raises(MalformedInput):
        decode_response(msgspec.msgpack.encode([SYNC_VERSION, ["not bytes"], False, {}]))


def test_forged_envelopes_in_a_well_formed_response_are_rejected_by_the_engine(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 3)
    puller = SyncPuller(FED)
    response = decode_response(answer_sync(puller.request({}), a.engine, federation=FED))
    forged = [w[:-1] + bytes([w[-1] ^ 1]) for w in response.envelopes]  # flip a signature bit
    envelopes = puller.receive(encode_response(SyncResponse(SYNC_VERSION, forged, False, response.vector)))
    outcomes = b.execute([Remote(w, "evil") for w in envelopes])
    assert [o.status for o in outcomes] == ["rejected"] * 3  # type: ignore[union-attr]
    assert {o.error.code for o in outcomes} == {"signature_invalid"}  # type: ignore[union-attr]
    assert b.feed_head() == 0 and b.engine.version_vector() == {}


class RequestBeforeHeads(msgspec.Struct, array_like=True):
    """A sync request as nodes sent it before head tags."""

    v: int
    federation: str
    vector: dict[str, dict[str, int]]
    registries: list[str] | None
    max_bytes: int


class RequestBeforeWanted(RequestBeforeHeads, array_like=True):
    """A sync request as nodes sent it before wanted changes."""

    heads: dict[str, dict[str, bytes]] | None = None


def test_head_tags_are_optional_checked_and_skipped_by_a_responder_that_predates_them() -> None:
    tagged = encode_request(SyncRequest(v=SYNC_VERSION, federation=FED, vector={CLUSTERS: {"did:key:zA": 3}},
                                        registries=None, max_bytes=1024,
                                        heads={CLUSTERS: {"did:key:zA": b"\x01" * sync.HEAD_TAG_BYTES}}))
    assert decode_request(tagged).heads == {CLUSTERS: {"did:key:zA": b"\x01" * sync.HEAD_TAG_BYTES}}

    assert msgspec.msgpack.decode(tagged, type=RequestBeforeHeads).vector == {CLUSTERS: {"did:key:zA": 3}}
    untagged = msgspec.msgpack.encode(RequestBeforeHeads(SYNC_VERSION, FED, {}, None, 1024))
    assert decode_request(untagged).heads is None
    with pytest.raises(MalformedInput):
        decode_request(encode_request(SyncRequest(v=SYNC_VERSION, federation=FED, vector={}, registries=None,
                                                  max_bytes=1024, heads={CLUSTERS: {"did:key:zA": b"\x01"}})))


def test_wanted_changes_are_optional_checked_and_skipped_by_a_responder_that_predates_them() -> None:
    author = "did:key:zA"
    wanted = {CLUSTERS: {author: [(2, b"\x01" * 36)]}}
    asked = encode_request(SyncRequest(v=SYNC_VERSION, federation=FED, vector={CLUSTERS: {author: 3}},
                                       registries=None, max_bytes=1024, wanted=wanted))
    assert decode_request(asked).wanted == wanted

    assert msgspec.msgpack.decode(asked, type=RequestBeforeWanted).vector == {CLUSTERS: {author: 3}}
    assert decode_request(msgspec.msgpack.encode(RequestBeforeWanted(SYNC_VERSION, FED, {}, None, 1024))).wanted is None

    def asking(wanted: dict[str, dict[str, list[tuple[int, bytes]]]]) -> bytes:
        return encode_request(SyncRequest(v=SYNC_VERSION, federation=FED, vector={}, registries=None,
                                          max_bytes=1024, wanted=wanted))

    for bad in ({CLUSTERS: {author: [(0, b"\x01" * 36)]}},  # no change has sequence 0
                {CLUSTERS: {author: [(1, b"")]}},  # no ID
                {CLUSTERS: {author: [(1, b"\x01" * 65)]}},  # longer than any change ID
                {CLUSTERS: {"zA": [(1, b"\x01" * 36)]}},  # not a DID
                {"Not A Name": {author: [(1, b"\x01" * 36)]}}):
        with pytest.raises(MalformedInput):
            decode_request(asking(bad))
    with pytest.raises(TooLarge):
        decode_request(asking({CLUSTERS: {author: [(n, b"\x01" * 36) for n in range(1, sync.MAX_WANTED + 2)]}}))


class ResponseBeforeGone(msgspec.Struct, array_like=True):
    """A sync response as nodes sent it before gone places."""

    v: int
    envelopes: list[bytes]
    more: bool
    vector: dict[str, dict[str, int]]


def test_gone_places_are_optional_checked_and_skipped_by_a_puller_that_predates_them() -> None:
    author = "did:key:zA"
    place = GonePlace(CLUSTERS, author, 2, 5)
    said = encode_response(SyncResponse(SYNC_VERSION, [], False, {CLUSTERS: {author: 5}}, [place]))
    assert decode_response(said).gone == [place]

    assert msgspec.msgpack.decode(said, type=ResponseBeforeGone).vector == {CLUSTERS: {author: 5}}
    assert decode_response(msgspec.msgpack.encode(ResponseBeforeGone(SYNC_VERSION, [], False, {}))).gone is None

    def saying(gone: list[GonePlace]) -> bytes:
        return encode_response(SyncResponse(SYNC_VERSION, [], False, {}, gone))

    for bad in (GonePlace(CLUSTERS, author, 0, 1),  # no change has sequence 0
                GonePlace(CLUSTERS, author, 3, 2),  # a run that ends before it starts
                GonePlace(CLUSTERS, author, 1, sync.MAX_GONE_RUN + 1),  # longer than a responder names
                GonePlace(CLUSTERS, "zA", 1, 1),  # not a DID
                GonePlace("Not A Name", author, 1, 1)):
        with pytest.raises(MalformedInput):
            decode_response(saying([bad]))
    with pytest.raises(TooLarge):
        decode_response(saying([GonePlace(CLUSTERS, author, n, n) for n in range(1, sync.MAX_GONE + 2)]))


def test_advance_moves_a_chain_over_gone_places_it_reaches(tmp_path: Path) -> None:
    """The next round's vector skips a run of gone places where the chain
    reaches it, before or after the envelopes that extend it, and not a
    run it does not reach."""
    grid = store(tmp_path / "a")
    try:
        write(grid, "n", 3)
        a, b = grid.engine.key.did, KeyPair.generate().did
        first, _, third = grid.engine.envelopes_after(CLUSTERS, a, 0, limit=10, max_bytes=2**20)
        gone = [GonePlace(CLUSTERS, a, 2, 2), GonePlace(CLUSTERS, a, 4, 6), GonePlace(CLUSTERS, b, 3, 4)]
        assert advance({}, [first, third], gone) == {CLUSTERS: {a: 6}}
        assert advance({}, [third], gone) == {}  # place 1 is neither sent nor gone
        assert advance({CLUSTERS: {b: 2}}, [], gone) == {CLUSTERS: {b: 4}}
    finally:
        grid.close()


def test_a_change_asked_for_by_id_that_the_vector_also_lacks_is_sent_once(tmp_path: Path) -> None:
    """A puller asks by ID for the predecessor of a change it parked, which
    its vector lacks too: the responder sends it once."""
    a = store(tmp_path / "a")
    try:
        write(a, "n", 3)
        author = a.engine.key.did
        chain = a.engine.envelopes_after(CLUSTERS, author, 0, limit=1000, max_bytes=2**20)
        second = open_envelope(chain[1])
        request = encode_request(SyncRequest(v=SYNC_VERSION, federation=FED, vector={}, registries=None,
                                             max_bytes=2**20, wanted={CLUSTERS: {author: [(2, second.cid)]}}))
        sent = decode_response(answer_sync(request, a.engine, federation=FED)).envelopes
        assert len(sent) == len(set(sent)) and set(chain) <= set(sent)
    finally:
        a.close()


def test_a_wanted_change_comes_with_the_links_before_it_oldest_first_from_a_store_and_a_ledger(
        tmp_path: Path) -> None:
    """A puller that holds another branch of a chain asks for a change by
    ID; the responder sends it and the links its prevs name before it, up to
    WANTED_DEPTH, oldest first, from the store as from the simulator's ledger."""
    a, b = store(tmp_path / "a"), store(tmp_path / "b")
    try:
        for i in range(sync.WANTED_DEPTH + 4):
            a.put(CLUSTERS, "cluster", {"name": f"n{i}"}, id=f"n{i}")
        author = a.engine.key.did
        chain = a.engine.envelopes_after(CLUSTERS, author, 0, limit=1000, max_bytes=2**20)
        held = len(chain)
        target = open_envelope(chain[held - 2])  # the one before the head
        ledger = Ledger()
        ledger.apply(chain)

        def answer(source: object, wanted: dict[str, dict[str, list[tuple[int, bytes]]]]) -> list[bytes]:
            request = encode_request(SyncRequest(v=SYNC_VERSION, federation=FED, vector=a.engine.replicated_vector(),
                                                 registries=None, max_bytes=2**20, wanted=wanted))
            return decode_response(answer_sync(request, source, federation=FED)).envelopes  # type: ignore[arg-type]

        asked = {CLUSTERS: {author: [(target.body.seq, target.cid)]}}
        expected = chain[held - 1 - sync.WANTED_DEPTH:held - 1]
        assert answer(a.engine, asked) == answer(ledger, asked) == expected
        # Two asks of one chain walk back over the same links: each is sent once.
        head = open_envelope(chain[held - 1])
        both = {CLUSTERS: {author: [(target.body.seq, target.cid), (head.body.seq, head.cid)]}}
        assert answer(a.engine, both) == answer(ledger, both) == chain[held - sync.WANTED_DEPTH:held]
        assert open_envelope(expected[-1]).cid == target.cid
        # Not held at that position, or not at all: nothing.
        for wanted in ({CLUSTERS: {author: [(target.body.seq - 1, target.cid)]}},
                       {CLUSTERS: {author: [(1, b"\x01" * 36)]}},
                       {CLUSTERS: {b.engine.key.did: [(1, target.cid)]}}):
            assert answer(a.engine, wanted) == answer(ledger, wanted) == []
    finally:
        a.close()
        b.close()


def test_request_roundtrip() -> None:
    request = SyncRequest(v=SYNC_VERSION, federation=FED, vector={CLUSTERS: {KeyPair.generate().did: 3}},
                          registries=[CLUSTERS], max_bytes=1234)
    assert decode_request(encode_request(request)) == request
