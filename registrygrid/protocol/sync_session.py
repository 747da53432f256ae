"""One anti-entropy session with one peer, as a state machine (sans-IO).

The puller's whole logic: which request to send, what to apply, when a
pass ends, and when the session is over. A driver feeds it events and
executes the actions it returns; the node's driver does so over libp2p
(node/sync.py, which pipelines: it sends the next request while the
previous batch is applied), the simulator's over an in-memory network
(simulations/). Both run this code, so a simulation tests what the node
runs. (The shape follows h11's ``_state.py``: explicit states, a
transition table, and an error for an event the state does not take.)

States and transitions::

    IDLE      --Start(vector)------------> ASKING    [SendRequest]
    ASKING    --Response(data)-----------> ASKING    [Apply?, LinkGone?, SendRequest]  the peer has more, and it moves us on
                                       \\-> DRAINING  [Apply?, LinkGone?, EndPass]      no more, no progress, or the round cap
    DRAINING  --PassApplied(vector)------> ASKING    [SendRequest]                     a new pass: still behind, progress made
                                       \\-> DONE      [Finish(report)]
    ASKING, DRAINING --Applied(counts)---> (same)    []                                a batch's outcomes, into the report

A pass asks round after round, each from the vector as it will be once
the rounds before are applied (``sync.advance``), so the responder's work
overlaps the engine's. After a pass the store's own vector is the truth
again (``PassApplied``): if the peer still holds changes we lack (some
were parked or refused), a new pass starts from it, as long as the last
one applied something; otherwise the session ends ``stalled`` (a change
the engine keeps refusing must not make us ask forever). ``MAX_ROUNDS``
bounds a session whatever the peer says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from registrygrid.protocol.sync import (
    DEFAULT_RESPONSE_BYTES,
    GonePlace,
    HeadTags,
    SyncPuller,
    Vector,
    Wanted,
    advance,
    behind,
)

# Rounds per session: 500 rounds of 2 MiB is 1 GB, far beyond any catch-up;
# it only stops a responder that keeps saying "more" with ever-new
# envelopes from holding a session slot forever.
MAX_ROUNDS = 500
# After gossip shows a gap (a change whose predecessor this node lacks was
# parked), a node syncs with the change's origin this long after: the
# missing change may still arrive by gossip (IWANT after the next 1 s
# heartbeat), and a no-op sync is cheap either way. The node
# (node/federation.py) and the simulator (node/simulator.py) both wait it.
GAP_SYNC_DELAY_S = 1.0


class State(Enum):
    IDLE = "idle"
    ASKING = "asking"  # a request is (or is about to be) in flight
    DRAINING = "draining"  # this pass asks no more: its batches are being applied
    DONE = "done"


# ---- events (what the driver tells the session)

@dataclass(frozen=True)
class Start:
    vector: Vector  # the store's replicated vector
    heads: HeadTags | None = None  # its chains' head tags, sent with the first request (protocol/sync.py)
    wanted: Wanted | None = None  # changes it asks for by ID, with the first request (protocol/sync.py)


@dataclass(frozen=True)
class Response:
    data: bytes  # the peer's answer to the last SendRequest


@dataclass(frozen=True)
class Applied:
    """The outcomes of one Apply, as the engine counted them."""

    applied: int = 0  # including changes released from waiting
    duplicate: int = 0
    pending: int = 0
    rejected: int = 0

    @classmethod
    def of(cls, outcomes: Iterable[Any]) -> Applied:
        """The counts of the engine's outcomes of a batch (an IngestResult
        has a ``status`` and what it ``released``; an error was refused)."""
        applied = duplicate = pending = rejected = 0
        for outcome in outcomes:
            status = getattr(outcome, "status", "rejected")
            if status == "applied":
                applied += 1 + len(outcome.released)
            elif status == "linked":  # places a peer said are gone, linked past, and what waited for them
                applied += 1 + len(outcome.released)
            elif status in ("duplicate", "ignored"):  # ignored: a gone word about places held already
                duplicate += 1
            elif status == "pending":
                pending += 1
            else:
                rejected += 1
        return cls(applied, duplicate, pending, rejected)


@dataclass(frozen=True)
class PassApplied:
    vector: Vector  # the store's replicated vector once every batch of the pass was applied


Event = Start | Response | Applied | PassApplied


# ---- actions (what the session asks the driver to do)

@dataclass(frozen=True)
class SendRequest:
    data: bytes


@dataclass(frozen=True)
class Apply:
    envelopes: list[bytes]


@dataclass(frozen=True)
class LinkGone:
    """Link past the places the peer says are gone where it is
    (protocol/sync.py GonePlace), after the Apply before it; the engine
    takes each run only where its own chain stops inside it."""
    places: list[GonePlace]


@dataclass(frozen=True)
class EndPass:
    """Send nothing more this pass; once every Apply so far is done, tell
    the session the store's vector (PassApplied)."""


@dataclass
class SessionReport:
    rounds: int = 0
    received: int = 0
    applied: int = 0
    duplicate: int = 0
    pending: int = 0
    rejected: int = 0
    lag: int = 0  # changes the peer holds that we still lack after the session
    ahead: int = 0  # changes we hold that the peer lacks
    stalled: bool = False


@dataclass(frozen=True)
class Finish:
    report: SessionReport


Action = SendRequest | Apply | LinkGone | EndPass | Finish


class LocalProtocolError(Exception):
    """The driver fed an event the session's state does not take (a bug in
    the driver, never a peer's fault: a peer's bad bytes are typed errors
    of protocol/sync.py)."""


@dataclass
class SyncSession:
    federation: str
    registries: list[str] | None = None
    max_bytes: int = DEFAULT_RESPONSE_BYTES
    max_rounds: int = MAX_ROUNDS
    state: State = State.IDLE
    report: SessionReport = field(default_factory=SessionReport)
    _puller: SyncPuller | None = None
    _cursor: Vector = field(default_factory=dict)  # the vector the pass's next request is built from
    _applied_at_pass_start: int = 0

    def handle(self, event: Event) -> list[Action]:
        """The actions ``event`` calls for. A peer's malformed response
        raises its typed error (protocol/sync.py) and leaves the session as
        it was; an event the state does not take raises LocalProtocolError."""
        step = _TRANSITIONS.get((self.state, type(event)))
        if step is None:
            raise LocalProtocolError(f"a sync session in state {self.state.value} does not take "
                                     f"{type(event).__name__}")
        return step(self, event)

    @property
    def peer_vector(self) -> Vector:
        return self._puller.peer_vector if self._puller is not None else {}

    # ---- transitions

    def _start(self, event: Start) -> list[Action]:
        return self._new_pass(event.vector, event.heads, event.wanted)

    def _new_pass(self, vector: Vector, heads: HeadTags | None = None, wanted: Wanted | None = None) -> list[Action]:
        self._puller = SyncPuller(self.federation, self.registries, self.max_bytes)
        self._cursor = vector
        self._applied_at_pass_start = self.report.applied
        self.state = State.ASKING
        return [SendRequest(self._puller.request(vector, heads, wanted))]

    def _response(self, event: Response) -> list[Action]:
        assert self._puller is not None
        envelopes = self._puller.receive(event.data)  # a bad answer raises here, before any state changes
        self.report.rounds += 1
        self.report.received += len(envelopes)
        advanced = advance(self._cursor, envelopes, self._puller.gone)
        actions: list[Action] = [Apply(envelopes)] if envelopes else []
        if self._puller.gone:
            actions.append(LinkGone(self._puller.gone))
        moved = advanced != self._cursor
        self._cursor = advanced
        if self._puller.done or not moved or self.report.rounds >= self.max_rounds:
            # "More", but nothing that moves us on, also ends the pass.
            self.state = State.DRAINING
            return [*actions, EndPass()]
        return [*actions, SendRequest(self._puller.request(advanced))]

    def _applied(self, event: Applied) -> list[Action]:
        report = self.report
        report.applied += event.applied
        report.duplicate += event.duplicate
        report.pending += event.pending
        report.rejected += event.rejected
        return []

    def _pass_applied(self, event: PassApplied) -> list[Action]:
        report = self.report
        report.lag = behind(event.vector, self.peer_vector)
        report.ahead = behind(self.peer_vector, event.vector)
        if report.lag and report.rounds < self.max_rounds:
            if report.applied > self._applied_at_pass_start:
                return self._new_pass(event.vector)
            report.stalled = True  # what is left cannot be applied yet: stop asking for it
        self.state = State.DONE
        return [Finish(report)]


_TRANSITIONS: dict[tuple[State, type], Callable[[SyncSession, Any], list[Action]]] = {
    (State.IDLE, Start): SyncSession._start,
    (State.ASKING, Response): SyncSession._response,
    (State.ASKING, Applied): SyncSession._applied,
    (State.DRAINING, Applied): SyncSession._applied,
    (State.DRAINING, PassApplied): SyncSession._pass_applied,
}


def run_session(session: SyncSession, *, vector: Callable[[], Vector], exchange: Callable[[bytes], bytes],
                apply: Callable[[list[bytes]], Applied], start: Start | None = None,
                link_gone: Callable[[list[GonePlace]], Applied] | None = None) -> SessionReport:
    """Drive ``session`` to its end one step at a time, with blocking
    callables: ``vector`` reads the store's replicated vector, ``exchange``
    sends a request and returns the answer, ``apply`` applies a batch and
    counts its outcomes; ``start``: the first event, when it carries more
    than the vector (head tags, wanted changes); ``link_gone`` links past
    places the peer says are gone (a driver without it leaves them waiting,
    as a node before them did). The simulator's driver (no
    pipelining: it runs in virtual time, where overlap buys nothing); the
    node's is node/sync.py."""
    actions = session.handle(start or Start(vector()))
    while True:
        action, actions = actions[0], actions[1:]
        if isinstance(action, SendRequest):
            actions += session.handle(Response(exchange(action.data)))
        elif isinstance(action, Apply):
            actions += session.handle(apply(action.envelopes))
        elif isinstance(action, LinkGone):
            if link_gone is not None:
                actions += session.handle(link_gone(action.places))
        elif isinstance(action, EndPass):
            actions += session.handle(PassApplied(vector()))
        else:
            return action.report
