"""Anti-entropy sync, sans-IO: what two peers say to find and ship what one lacks.

Gossip is lossy, so peers also reconcile directly. The puller sends its
version vector (registry -> author -> highest contiguous sequence it holds);
the responder answers with the envelopes the puller lacks, in causal order,
bounded in count and bytes, and says whether more remain. The puller applies
them and asks again with its new vector until nothing remains. The vector is
the cursor: a session cut at any point resumes from what was applied, with
no state on the responder.

Causal order: a change's author had observed (HLC ``observe``) every change
it builds on, so sorting by (HLC, author, seq) puts dependencies first and
the receiver parks almost nothing.

Neither side does I/O here. ``SyncPuller`` and ``answer_sync`` take and give
bytes; a transport (libp2p request/response in ``node/``, an in-memory
network in ``simulations/``) carries them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from registrygrid.errors import MalformedInput, TooLarge, ValidationError
from registrygrid.protocol import names

SYNC_PROTOCOL_ID = "/registrygrid/sync/1.0.0"
SYNC_VERSION = 1

# Response budget. py-libp2p moves ~30-140 MB/s on one stream here but a
# request costs ~10 ms to open, so responses should be large; 2 MiB keeps a
# round trip near 50 ms so a cut loses little and a busy responder is not
# monopolised. The hard cap a peer may ask for is 8 MiB.
DEFAULT_RESPONSE_BYTES = 2 * 2**20
MAX_RESPONSE_BYTES = 8 * 2**20
MAX_RESPONSE_ENVELOPES = 20_000
# A vector names each (registry, author) pair once. 100k pairs (~6 MB) is far
# beyond a real federation (hundreds of orgs x tens of registries) and bounds
# what a hostile request can make us decode and walk.
MAX_VECTOR_ENTRIES = 100_000
MAX_REQUEST_BYTES = 8 * 2**20
# A chain's head tag: the last bytes of its head change's ID (the digest's
# end; a CID's first bytes are the same for every change). Two branches of a
# forked chain with the same length hold different heads: the vector alone
# can't tell them apart (docs/conflicts.md, "Equivocation and quarantine").
HEAD_TAG_BYTES = 8

# Changes a puller asks for by ID. A fork's report names a change of the
# other branch as its prev, and the node that stored it lacks that change:
# its vector names the position already (it holds its own branch's change
# there), so only a request by ID brings it, and the report can then be
# walked back to where the fork began (docs/conflicts.md).
MAX_WANTED = 256
# Links a responder sends back along its chain from each wanted change: one
# session reaches where a fork up to this deep began; a deeper one takes
# more sessions. Links the puller holds (the history both branches share)
# arrive as duplicates.
WANTED_DEPTH = 64
# Changes of forks a responder saw but no quarantine covers there (or of
# its own key), sent with a pass's first answer (ChangeSource.unreported_forks).
MAX_UNREPORTED = 256
CHANGE_ID_MAX_BYTES = 64
# Gone places (GonePlace) in one response, and the longest run one names:
# a puller links a longer run over several rounds.
MAX_GONE = 4096
MAX_GONE_RUN = 4096

Vector = dict[str, dict[str, int]]
HeadTags = dict[str, dict[str, bytes]]
Wanted = dict[str, dict[str, list[tuple[int, bytes]]]]  # registry -> author -> [(seq, change ID)]


class GonePlace(msgspec.Struct, array_like=True, frozen=True):
    """A responder's word that places ``first``..``last`` of ``author``'s
    chain in ``registry``, which the puller's vector lacks, are gone where
    it is: it holds them without their bytes (erased, or linked past
    unseen), so it can't send them (docs/erasure.md, "Bytes no peer
    kept"). A puller whose chain stops in that run links past it and keeps
    asking for those places, so a peer that lies only delays them."""

    registry: str
    author: str
    first: int
    last: int


def head_tag(change_id: bytes) -> bytes:
    return change_id[-HEAD_TAG_BYTES:]


class SyncRequest(msgspec.Struct, array_like=True, frozen=True):
    v: int
    federation: str
    vector: dict[str, dict[str, int]]
    registries: list[str] | None  # None: every registry the responder replicates
    max_bytes: int
    # The head tag of each chain of ``vector`` (a pass's first request only).
    # Last and optional, so a responder that predates it skips it (msgspec
    # ignores trailing items of an array-like struct) and one that has it
    # reads an older request as having none.
    heads: HeadTags | None = None
    # Changes asked for by (seq, ID) (a pass's first request only): the
    # other branch's links this node's evidence names but lacks. Last and
    # optional, like ``heads``.
    wanted: Wanted | None = None


class SyncResponse(msgspec.Struct, array_like=True, frozen=True):
    v: int
    envelopes: list[bytes]
    more: bool
    vector: dict[str, dict[str, int]]  # the responder's own vector: tells the puller what it could push
    # Places the puller lacks whose bytes are gone here (GonePlace). Last
    # and optional, as the request's ``heads``: a puller that predates it
    # skips it, and one that has it reads an older response as having none.
    gone: list[GonePlace] | None = None


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(SyncRequest)
_response_decoder = msgspec.msgpack.Decoder(SyncResponse)


class ChangeSource(Protocol):
    """What a responder needs from its store (the engine implements it)."""

    def replicated_vector(self, registries: Iterable[str] | None, *, reader: str | None = None) -> Vector: ...

    def envelopes_after(self, registry: str, author: str, after_seq: int, *, limit: int,
                        max_bytes: int) -> list[bytes]: ...

    def other_links(self, vector: Vector, heads: HeadTags, *, max_bytes: int) -> list[bytes]:
        """This source's changes at the positions ``vector`` names whose
        head tags in ``heads`` are not its own (the other branch of a fork),
        bounded."""
        ...

    def unreported_forks(self, registries: Collection[str], *, max_bytes: int) -> list[bytes]:
        """The changes this source holds as evidence of forks in
        ``registries`` that no quarantine covers here (it saw a fork it may
        not report), and of forks of its own key, at most MAX_UNREPORTED,
        bounded."""
        ...

    def wanted_links(self, wanted: Wanted, *, max_bytes: int) -> list[bytes]:
        """The changes ``wanted`` names that this source holds, each with up
        to WANTED_DEPTH links before it along its author's chain, oldest
        first, bounded."""
        ...

    def gone_places(self, lacking: Mapping[tuple[str, str], tuple[int, int]]) -> list[GonePlace]:
        """For each chain (registry, author) -> (after, sent): the runs of
        places after ``after`` held here without their bytes (GonePlace),
        among the first ``sent`` places held with their bytes and the run
        right after them, each at most MAX_GONE_RUN long."""
        ...


@dataclass(frozen=True)
class Candidate:
    hlc: tuple[int, int]
    author: str
    seq: int
    wire: bytes
    registry: str


def encode_request(request: SyncRequest) -> bytes:
    return _encoder.encode(request)


def decode_request(data: bytes) -> SyncRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise TooLarge(f"sync request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        request = _request_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:  # bad UTF-8 is its own error
        raise MalformedInput(f"undecodable sync request: {exc}") from None
    if request.v != SYNC_VERSION:
        raise MalformedInput(f"sync version {request.v}; this node speaks {SYNC_VERSION}")
    _check_vector(request.vector)
    if request.heads is not None:
        _check_heads(request.heads)
    if request.wanted is not None:
        _check_wanted(request.wanted)
    if request.registries is not None:
        for registry in request.registries:
            _checked_name(registry)
    if not 1 <= request.max_bytes <= MAX_RESPONSE_BYTES:
        raise MalformedInput(f"max_bytes must be 1..{MAX_RESPONSE_BYTES}")
    return request


def encode_response(response: SyncResponse) -> bytes:
    return _encoder.encode(response)


def decode_response(data: bytes) -> SyncResponse:
    if len(data) > MAX_RESPONSE_BYTES + 2**20:  # envelopes plus the responder's vector
        raise TooLarge(f"sync response of {len(data)} bytes exceeds the cap")
    try:
        response = _response_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"undecodable sync response: {exc}") from None
    if response.v != SYNC_VERSION:
        raise MalformedInput(f"sync version {response.v}; this node speaks {SYNC_VERSION}")
    if len(response.envelopes) > MAX_RESPONSE_ENVELOPES:
        raise TooLarge(f"{len(response.envelopes)} envelopes in one response exceed {MAX_RESPONSE_ENVELOPES}")
    _check_vector(response.vector)
    if response.gone is not None:
        check_gone(response.gone)
    return response


def _checked_name(registry: str) -> str:
    try:
        return names.registry_name(registry)
    except ValidationError as exc:
        raise MalformedInput(f"sync: {exc.message}") from None


def _check_vector(vector: Mapping[str, Mapping[str, int]]) -> None:
    _check_per_chain(vector, "version vector", lambda seq: 0 <= seq < 2**63)


def _check_heads(heads: Mapping[str, Mapping[str, bytes]]) -> None:
    _check_per_chain(heads, "head tags", lambda tag: len(tag) == HEAD_TAG_BYTES)


def _check_per_chain(per_chain: Mapping[str, Mapping[str, Any]], what: str, valid: Callable[[Any], bool]) -> None:
    """registry -> author -> value, as a peer sent it: registry names, author
    DIDs, each value, and at most MAX_VECTOR_ENTRIES chains in all."""
    entries = 0
    for registry, authors in per_chain.items():
        _checked_name(registry)
        entries += len(authors)
        if entries > MAX_VECTOR_ENTRIES:
            raise TooLarge(f"{what} has more than {MAX_VECTOR_ENTRIES} entries")
        for author, value in authors.items():
            if not author.startswith("did:key:") or len(author) > 128 or not valid(value):
                raise MalformedInput(f"sync: bad {what} entry {author!r}: {value!r}")


def _check_wanted(wanted: Mapping[str, Mapping[str, list[tuple[int, bytes]]]]) -> None:
    _check_per_chain(wanted, "wanted changes", lambda asked: all(
        1 <= seq < 2**63 and 1 <= len(change_id) <= CHANGE_ID_MAX_BYTES for seq, change_id in asked))
    if sum(len(asked) for authors in wanted.values() for asked in authors.values()) > MAX_WANTED:
        raise TooLarge(f"a sync request may ask for at most {MAX_WANTED} changes by ID")


def check_gone(gone: list[GonePlace]) -> None:
    if len(gone) > MAX_GONE:
        raise TooLarge(f"a response may name at most {MAX_GONE} runs of gone places")
    for place in gone:
        _checked_name(place.registry)
        if not place.author.startswith("did:key:") or len(place.author) > 128 \
                or not 1 <= place.first <= place.last < 2**63 or place.last - place.first >= MAX_GONE_RUN:
            raise MalformedInput(f"bad gone places {place.registry!r} {place.author!r} "
                                 f"{place.first}..{place.last}")


def missing(local: Mapping[str, Mapping[str, int]], remote: Mapping[str, Mapping[str, int]]) -> dict[tuple[str, str], int]:
    """(registry, author) -> the remote's seq, wherever ``remote`` holds more than ``local``."""
    out: dict[tuple[str, str], int] = {}
    for registry, authors in local.items():
        theirs = remote.get(registry, {})
        for author, seq in authors.items():
            if seq > theirs.get(author, 0):
                out[(registry, author)] = theirs.get(author, 0)
    return out


def behind(local: Mapping[str, Mapping[str, int]], remote: Mapping[str, Mapping[str, int]]) -> int:
    """How many changes ``remote`` holds that ``local`` lacks: the replication lag."""
    count = 0
    for registry, authors in remote.items():
        ours = local.get(registry, {})
        for author, seq in authors.items():
            count += max(0, seq - ours.get(author, 0))
    return count


def answer_sync(request_bytes: bytes, source: ChangeSource, *, federation: str, reader: str | None = None) -> bytes:
    """The responder's whole job: bytes in, bytes out. ``reader``: the org of
    the peer asking; registries it may not read (private ones) are neither
    offered in our vector nor sent."""
    request = decode_request(request_bytes)
    if request.federation != federation:
        raise ValidationError(f"this node serves federation {federation!r}, not {request.federation!r}")
    ours = source.replicated_vector(request.registries, reader=reader)
    lacking = missing(ours, request.vector)
    budget = request.max_bytes
    more = False
    size = 0
    chosen: list[bytes] = []
    if request.heads:
        # The puller's branch of a forked chain, where ours is another with a
        # position it holds: ours goes first, so the puller meets both
        # changes with one sequence and reports the fork (a vector alone
        # never shows two branches of the same length).
        readable = {registry: authors for registry, authors in request.vector.items() if registry in ours}
        for wire in source.other_links(readable, request.heads, max_bytes=budget):
            chosen.append(wire)
            size += len(wire)
    if request.heads is not None:
        # A pass's first request: forks this node saw but could not report
        # (its key revoked, or without delegation), and those of its own
        # key, shown to the peer, which meets both changes and reports them
        # (docs/conflicts.md).
        for wire in source.unreported_forks(set(ours), max_bytes=max(budget - size, 0)):
            chosen.append(wire)
            size += len(wire)
    if request.wanted:
        # Changes asked for by ID (or by place: the unseen-link ID), which
        # the puller's vector can't ask for: the other branch of a fork its
        # evidence names, and changes whose bytes are gone there.
        asked = {registry: authors for registry, authors in request.wanted.items() if registry in ours}
        for wire in source.wanted_links(asked, max_bytes=max(budget - size, 0)):
            chosen.append(wire)
            size += len(wire)
    # A change sent above is not sent again below (a change asked for by
    # ID, or a link before it, may be one the puller's vector lacks too).
    cut = causal_cut(source, lacking, ours, budget=budget, max_envelopes=MAX_RESPONSE_ENVELOPES, already=chosen)
    chosen += cut.envelopes
    more = more or cut.more
    # Places the puller lacks whose bytes are gone here: it can't get them
    # from anyone who erased them, so it links past them (it asks again,
    # so a lie only delays), instead of waiting for them for good.
    gone = source.gone_places({chain: (after, cut.sent[chain]) for chain, after in lacking.items()}) or None
    return encode_response(SyncResponse(v=SYNC_VERSION, envelopes=chosen, more=more, vector=ours, gone=gone))


@dataclass(frozen=True)
class CausalCut:
    envelopes: list[bytes]
    sent: dict[tuple[str, str], int]  # (registry, author) -> how many of its changes ``envelopes`` holds
    more: bool  # some chain has changes left out


def causal_cut(source: ChangeSource, lacking: Mapping[tuple[str, str], int], held: Mapping[str, Mapping[str, int]],
               *, budget: int, max_envelopes: int, already: Collection[bytes] = ()) -> CausalCut:
    """The changes each chain (registry, author) -> ``after`` of ``lacking``
    lacks, up to ``held`` (the source's vector), in causal order, cut at
    ``budget`` bytes and ``max_envelopes`` counting ``already`` (changes
    sent before them, not sent again). At most the budget is taken from
    each chain, then the causally sorted union is cut: every chain
    progresses and dependencies come first. (A cut chain by chain, author
    after author, filled a page with one author's edits of another's
    record, which waited for the other's change the page left out; the
    next page, its cursor unmoved, sent them again.)"""
    more = False
    candidates: list[Candidate] = []
    for (registry, author), after in sorted(lacking.items()):
        wires = source.envelopes_after(registry, author, after, limit=max_envelopes, max_bytes=budget)
        if after + len(wires) < held[registry][author]:
            more = True
        for offset, wire in enumerate(wires):
            candidates.append(Candidate(_hlc_of(wire), author, after + offset + 1, wire, registry))
    candidates.sort(key=lambda c: (c.hlc, c.author, c.seq))
    skip = set(already)
    size = sum(map(len, already))
    count = len(already)
    chosen: list[bytes] = []
    sent: dict[tuple[str, str], int] = dict.fromkeys(lacking, 0)
    for candidate in candidates:
        if skip and candidate.wire in skip:
            continue
        if count and (size + len(candidate.wire) > budget or count >= max_envelopes):
            more = True
            break
        chosen.append(candidate.wire)
        size += len(candidate.wire)
        count += 1
        sent[(candidate.registry, candidate.author)] += 1
    return CausalCut(chosen, sent, more)


class _WirePeek(msgspec.Struct, array_like=True):
    body: bytes


class _BodyPeek(msgspec.Struct, array_like=True):
    v: int
    registry: str
    record: str
    op: str
    kind: str
    schema: int
    author: str
    seq: int
    prev: bytes
    hlc: tuple[int, int]


_peek_outer = msgspec.msgpack.Decoder(_WirePeek)
_peek_body = msgspec.msgpack.Decoder(_BodyPeek)


def _hlc_of(wire: bytes) -> tuple[int, int]:
    """The HLC of a stored (already verified) envelope. The peek structs
    declare only the leading fields; msgspec skips an array's extra trailing
    items, so the payload is never copied out."""
    outer = _peek_outer.decode(wire)
    return _peek_body.decode(outer.body).hlc


def advance(vector: Mapping[str, Mapping[str, int]], envelopes: Iterable[bytes],
            gone: Iterable[GonePlace] = ()) -> Vector:
    """The vector as it will be once ``envelopes`` (a response, in order) are
    applied and its ``gone`` places linked past: a copy in which each envelope
    that extends its chain by one moves that chain on, as does a run of gone
    places that starts at or before its next place. Lets a puller ask for the
    next round while it still applies this one; the store's own vector stays
    the cursor of record. Envelopes that do not decode or do not extend a
    chain are skipped (the engine refuses or parks them; the next session
    asks again)."""
    out: Vector = {registry: dict(authors) for registry, authors in vector.items()}
    runs: dict[tuple[str, str], list[GonePlace]] = {}
    for place in gone:
        runs.setdefault((place.registry, place.author), []).append(place)

    def past_gone(registry: str, author: str) -> None:
        authors = out.get(registry)
        for place in sorted(runs.get((registry, author), ()), key=lambda p: p.first):
            held = (authors or {}).get(author, 0)
            if place.first <= held + 1 <= place.last:
                authors = out.setdefault(registry, {})
                authors[author] = place.last

    for registry, author in runs:
        past_gone(registry, author)
    for wire in envelopes:
        try:
            body = _peek_body.decode(_peek_outer.decode(wire).body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            continue
        authors = out.get(body.registry)
        if body.seq != (authors or {}).get(body.author, 0) + 1:
            continue
        if not body.author.startswith("did:key:") or len(body.author) > 128:
            continue
        if authors is None:
            if not names.REGISTRY_NAME.fullmatch(body.registry):
                continue
            authors = out[body.registry] = {}
        authors[body.author] = body.seq
        if runs:
            past_gone(body.registry, body.author)
    return out


@dataclass
class SyncPuller:
    """The pulling side of one sync session with one peer.

    ``request(vector)`` gives the bytes to send; ``receive(bytes)`` decodes the
    answer and returns its envelopes for the caller to apply (through the
    engine's one write path); ``done`` says whether to ask again. A cut
    session simply starts again: the vector is the cursor.
    """

    federation: str
    registries: list[str] | None = None
    max_bytes: int = DEFAULT_RESPONSE_BYTES
    rounds: int = 0
    received: int = 0
    done: bool = False
    peer_vector: Vector = field(default_factory=dict)
    # The gone places of the last response (GonePlace): the caller links
    # past those its chains stop in (engine ``LinkPastGone``).
    gone: list[GonePlace] = field(default_factory=list)
    _last_empty_more: int = 0

    def request(self, vector: Vector, heads: HeadTags | None = None, wanted: Wanted | None = None) -> bytes:
        return encode_request(SyncRequest(v=SYNC_VERSION, federation=self.federation, vector=vector,
                                          registries=self.registries, max_bytes=self.max_bytes, heads=heads,
                                          wanted=wanted or None))

    def receive(self, data: bytes) -> list[bytes]:
        response = decode_response(data)
        self.rounds += 1
        self.received += len(response.envelopes)
        self.peer_vector = response.vector
        self.gone = response.gone or []
        # A responder that says "more" but sends nothing would loop us forever.
        if response.more and not response.envelopes:
            self._last_empty_more += 1
        else:
            self._last_empty_more = 0
        self.done = not response.more or self._last_empty_more >= 2
        return response.envelopes

    def peer_lacks(self, vector: Vector) -> dict[tuple[str, str], int]:
        """What the peer lacks of ours, from the vector it sent back."""
        return missing(vector, self.peer_vector)
