"""One sync session as a state machine (protocol/sync_session.py): events in,
actions out, driven here step by step over real stores and real bytes, as
the simulator drives it (``run_session``) and as node/sync.py drives it over
libp2p with pipelining. Every stop rule of a session lives in the machine:
the peer has no more, a round that moves nothing, the round cap, and a
pass that applied nothing while the peer is still ahead (stalled)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrygrid.engine.ops import IngestResult, Put, Remote
from registrygrid.errors import MalformedInput
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.sync import (
    SYNC_VERSION,
    GonePlace,
    SyncResponse,
    answer_sync,
    encode_response,
)
from registrygrid.protocol.sync_session import (
    Applied,
    Apply,
    EndPass,
    Finish,
    LinkGone,
    LocalProtocolError,
    PassApplied,
    Response,
    SendRequest,
    Start,
    State,
    SyncSession,
    run_session,
)
from registrygrid.sdk import LocalRegistry

FED = "acme"
CLUSTERS = "grid.clusters"


@pytest.fixture
def pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    a = LocalRegistry.open_path(tmp_path / "a", KeyPair.generate())
    b = LocalRegistry.open_path(tmp_path / "b", KeyPair.generate())
    yield a, b
    a.close()
    b.close()


def write(grid: LocalRegistry, prefix: str, n: int) -> None:
    grid.put_many([Put(CLUSTERS, "cluster", {"name": f"{prefix}{i}", "pad": "x" * 200}, record_id=f"{prefix}{i}")
                   for i in range(n)])


def drive(session: SyncSession, source: LocalRegistry, target: LocalRegistry) -> list[str]:
    """run_session between two stores; the kinds of action, in order."""
    seen: list[str] = []

    def exchange(request: bytes) -> bytes:
        seen.append("send")
        return answer_sync(request, source.engine, federation=FED)

    def apply(wires: list[bytes]) -> Applied:
        seen.append("apply")
        return Applied.of(target.execute([Remote(w, "peer") for w in wires]))

    def vector():  # type: ignore[no-untyped-def]
        seen.append("vector")
        return target.engine.replicated_vector()

    report = run_session(session, vector=vector, exchange=exchange, apply=apply)
    assert session.state is State.DONE and session.report is report
    return seen


def test_a_session_brings_a_store_level_with_its_peer_over_rounds_within_budget(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 40)
    session = SyncSession(FED, max_bytes=4000)

    steps = drive(session, a, b)

    report = session.report
    assert b.state_digest() == a.state_digest()
    assert report.rounds > 3 and report.applied == report.received == 40
    assert report.lag == 0 and not report.stalled
    assert steps[0] == "vector" and steps[-1] == "vector"  # start, and the store read after the pass


def test_events_a_state_does_not_take_are_the_drivers_bug(pair) -> None:  # type: ignore[no-untyped-def]
    session = SyncSession(FED)
    with pytest.raises(LocalProtocolError, match="idle does not take Response"):
        session.handle(Response(b""))
    (request,) = session.handle(Start({}))
    assert isinstance(request, SendRequest) and session.state is State.ASKING
    with pytest.raises(LocalProtocolError, match="asking does not take PassApplied"):
        session.handle(PassApplied({}))
    with pytest.raises(LocalProtocolError):
        session.handle(Start({}))


def test_a_malformed_answer_is_a_typed_error_and_changes_nothing(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    write(a, "a", 3)
    session = SyncSession(FED)
    session.handle(Start({}))
    with pytest.raises(MalformedInput):
        session.handle(Response(b"\xc1 not msgpack"))
    assert session.state is State.ASKING and session.report.rounds == 0
    actions = session.handle(Response(answer_sync(SyncSession(FED).handle(Start({}))[0].data, a.engine,
                                                  federation=FED)))
    assert [type(x) for x in actions] == [Apply, EndPass] and session.state is State.DRAINING


def test_a_peer_saying_more_but_sending_nothing_ends_the_pass_then_the_session() -> None:
    session = SyncSession(FED)
    session.handle(Start({}))
    empty_more = encode_response(SyncResponse(v=SYNC_VERSION, envelopes=[], more=True, vector={}))
    assert session.handle(Response(empty_more)) == [EndPass()]  # nothing moves us on
    (finish,) = session.handle(PassApplied({}))
    assert isinstance(finish, Finish) and finish.report.rounds == 1 and not finish.report.stalled


def test_places_the_peer_says_are_gone_are_linked_after_the_batch_before_them_and_count_with_what_they_release(
        ) -> None:
    author = KeyPair.generate().did
    place = GonePlace(CLUSTERS, author, 1, 1)
    session = SyncSession(FED)
    session.handle(Start({}))
    actions = session.handle(Response(encode_response(SyncResponse(
        v=SYNC_VERSION, envelopes=[b"a change"], more=False, vector={CLUSTERS: {author: 2}}, gone=[place]))))
    assert actions == [Apply([b"a change"]), LinkGone([place]), EndPass()]
    session.handle(Applied(pending=1))
    session.handle(Applied.of([IngestResult("linked", None, released=("the change",))]))
    (finish,) = session.handle(PassApplied({CLUSTERS: {author: 2}}))
    assert isinstance(finish, Finish) and finish.report.applied == 2 and finish.report.lag == 0


def test_a_pass_that_applies_nothing_while_the_peer_is_ahead_stalls_the_session() -> None:
    ahead = {CLUSTERS: {KeyPair.generate().did: 5}}
    session = SyncSession(FED)
    session.handle(Start({}))
    session.handle(Response(encode_response(SyncResponse(v=SYNC_VERSION, envelopes=[], more=False,
                                                         vector=ahead))))
    (finish,) = session.handle(PassApplied({}))  # the store holds none of the peer's 5
    assert isinstance(finish, Finish) and finish.report.stalled and finish.report.lag == 5


def test_a_pass_that_made_progress_but_left_changes_behind_starts_another(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 5)
    session = SyncSession(FED)
    (request,) = session.handle(Start({}))
    answer = answer_sync(request.data, a.engine, federation=FED)
    apply, end = session.handle(Response(answer))
    assert isinstance(apply, Apply) and isinstance(end, EndPass)
    half = apply.envelopes[: len(apply.envelopes) // 2]  # as if the rest were parked or refused
    session.handle(Applied.of(b.execute([Remote(w, "peer") for w in half])))
    (again,) = session.handle(PassApplied(b.engine.replicated_vector()))
    assert isinstance(again, SendRequest) and session.state is State.ASKING


def test_the_round_cap_ends_a_session_whatever_the_peer_says(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    write(a, "a", 30)
    session = SyncSession(FED, max_bytes=1000, max_rounds=3)
    drive(session, a, b)
    assert session.report.rounds == 3 and session.report.lag > 0 and not session.report.stalled
