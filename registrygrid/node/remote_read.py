"""Reading public registries across federations: serving, fetching, verifying.

Serving (``answer_read``): a node answers ``/registrygrid/read/1.0.0``
(protocol/remote_read.py) for a registry it hosts whose replication scope
is ``public``, to any peer it talks to. It refuses when a descriptor
author's ``grid.registries`` chain (which the answer must carry for the
descriptor's chain links) holds the descriptor of a private registry:
those are never sent outside their readers.

Reading (``RemoteReader.read``): resolve the registry in the DHT, ask its
providers one by one, and replay each answer into a scratch store (a
temporary LMDB store with the node's own engine) that checks every
signature, chain, delegation, ownership and schema. The answer counts only
if every change applies and the descriptor the provider sent is the one
its owner signed into the DHT; otherwise the provider lied (or is broken):
it is refused, counted (``remote_read.lying_provider``), logged, and the
next provider is asked. Nothing is shown until an answer passes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio

from registrygrid.engine import registries as regs
from registrygrid.engine.ops import LinkPastGone, Remote
from registrygrid.errors import (
    Conflict,
    NotFound,
    PolicyDenied,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.identity.keys import KeyPair
from registrygrid.node.transport import P2PError
from registrygrid.protocol import remote_read as proto
from registrygrid.protocol.envelope import peek
from registrygrid.protocol.sync import causal_cut
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import changes, records
from registrygrid.trust.statements import MEMBERS_REGISTRY

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 15.0
# Pages of one read (each up to the protocol's caps): enough for a registry
# of ~100k changes; a larger one is followed, not read in one go.
MAX_PAGES = 50


def answer_read(data: bytes, engine: Any) -> bytes:
    """The answer to a read request, from ``engine``'s store (a worker thread)."""
    request = proto.decode_request(data)
    store = engine.store
    with store.read() as txn:
        desc = regs.lookup(store, txn, request.registry)
        if desc.private or desc.replication == "local":
            # Answered as an unknown name: anyone may ask (another
            # federation's nodes too), and the DHT keeps these names from
            # them; a federation's own registries are in the DHT.
            raise regs.unknown_registry(request.registry)
        if desc.replication != "public":
            raise PolicyDenied(f"{request.registry} is not public: it is read by members of its federation only")
        history = [changes.body(store, txn, cid) for _, cid in
                   records.history(store, txn, regs.REGISTRY_OF_REGISTRIES, request.registry)]
    needed: dict[str, int] = {}
    for body in history:
        if body is not None:
            needed[body.author] = max(needed.get(body.author, 0), body.seq)
    descriptor: list[bytes] = []
    for author, last in sorted(needed.items()):
        held = request.descriptor_after.get(author, 0)
        if last <= held:
            continue
        chain = engine.envelopes_after(regs.REGISTRY_OF_REGISTRIES, author, held, limit=last - held, max_bytes=2**30)
        for wire in chain:
            other = peek(wire)
            if other is not None and _private(store, other.record):
                raise PolicyDenied(f"{request.registry} can't be read from outside its federation yet: its "
                                   "descriptor's chain holds a private registry's descriptor")
        descriptor += chain
    statements: list[bytes] = []
    for author in sorted(engine.version_vector(MEMBERS_REGISTRY).get(MEMBERS_REGISTRY, {})):
        statements += engine.envelopes_after(MEMBERS_REGISTRY, author, request.statements_after.get(author, 0),
                                             limit=100_000, max_bytes=2**30)
    # The registry's changes the reader lacks, cut in causal order as a
    # sync's are: an author's edits of another author's record come after
    # the change they build on, whatever the authors' order.
    held = engine.version_vector(request.registry)
    lacking = {(request.registry, author): request.after.get(author, 0)
               for author, head in held.get(request.registry, {}).items() if head > request.after.get(author, 0)}
    cut = causal_cut(engine, lacking, held, budget=proto.MAX_RESPONSE_ENVELOPE_BYTES,
                     max_envelopes=proto.MAX_RESPONSE_ENVELOPES)
    # Places the reader lacks that this node holds without their bytes (an
    # erased record's): it can't get them from anyone who erased them.
    gone = engine.gone_places({chain: (after, cut.sent[chain]) for chain, after in lacking.items()}) or None
    return proto.encode_response(proto.ReadResponse(request.registry, descriptor, statements, cut.envelopes,
                                                    cut.more, gone))


def _private(store: Any, registry: str) -> bool:
    with store.read() as txn:
        try:
            return regs.lookup(store, txn, registry, include_deleted=True).private
        except RegistryError:
            return False


class RemoteReader:
    """Reads of public registries hosted by other federations."""

    def __init__(self, host: Any, directory: Any, metrics: Counter[str]) -> None:
        self.host = host
        self.directory = directory
        self.metrics = metrics

    async def read(self, name: str, *, record_id: str | None = None) -> dict[str, Any]:
        """The registry's records (or one), verified, and where they came from."""
        resolution = await self.directory.resolve(name)
        not_yet_served(resolution)
        # The owner's signed descriptor (checked by the directory) says who may
        # read it: no provider is asked for a registry it would refuse to serve.
        desc = regs.descriptor_from_record({"id": name, "owner": resolution["owner"],
                                            "fields": resolution["descriptor"]})
        if desc.replication != "public":
            raise PolicyDenied(f"{name} is not public: it is read by members of its federation only")
        refusals: list[str] = []
        for provider in resolution["providers"]:
            peer = provider["peer_id"]
            if peer == self.host.peer_id:
                continue
            try:
                answer = await self._read_from(peer, provider["addrs"], resolution, record_id)
            except ValidationError as exc:  # the answer failed its checks: a lying or broken provider
                self.metrics["remote_read.lying_provider"] += 1
                log.warning("refused %s's answer for %s: %s", peer, name, exc.message)
                refusals.append(f"{peer}: refused: {exc.message}")
                continue
            except RegistryError as exc:
                self.metrics["remote_read.failed"] += 1
                refusals.append(f"{peer}: {exc.code}: {exc.message}")
                continue
            if record_id is not None and not answer["records"]:
                # A verified read of the whole registry holds no such record.
                raise NotFound(f"{name} has no record {record_id}")
            return answer
        raise Unavailable(f"no provider of {name} gave a verifiable answer"
                          + (f" ({'; '.join(refusals)[:500]})" if refusals else " (none is known)"),
                          details={"refusals": refusals})

    async def _read_from(self, peer: str, addrs: list[str], resolution: dict[str, Any],
                         record_id: str | None) -> dict[str, Any]:
        root = tempfile.mkdtemp(prefix="rgrid-remote-read-")
        try:
            scratch = LocalRegistry.open_path(root, KeyPair.generate())
            try:
                fetched = await fetch_into(self.host, scratch, resolution["name"], peer, addrs)
                if not fetched.complete:
                    raise Unavailable(f"{resolution['name']} is larger than one read takes ({MAX_PAGES} pages): "
                                      "follow it instead (`rgrid registry follow`)")
                applied = fetched.applied
                check_descriptor(scratch, resolution)
                if record_id is not None:
                    try:
                        found = [scratch.get(resolution["name"], record_id)]
                    except NotFound:
                        found = []
                else:
                    found = list(scratch.iter_all(resolution["name"]))
            finally:
                scratch.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        self.metrics["remote_read.ok"] += 1
        return {"registry": resolution["name"], "provider": peer, "owner": resolution["owner"],
                "verified": {"changes": applied, "descriptor": "the one its owner signed into the DHT",
                             "signatures": "every one checked"},
                "records": found}


def not_yet_served(resolution: dict[str, Any]) -> None:
    """Unavailable when the DHT's record of the name is its former owner's
    pointer (protocol/registry_record.py): the org it was given to has not
    published it yet, and the former owner's nodes no longer serve it."""
    if resolution["holder"] != resolution["owner"]:
        raise Unavailable(f"{resolution['name']} was given to {resolution['holder']}, whose nodes have not "
                          "published it yet; try again later")


async def dial(host: Any, peer: str, addrs: list[str]) -> None:
    """Connect to a provider at one of the addresses the DHT gave, unless
    connected already; a failure shows at the request that follows."""
    if peer in host.connected_peers():
        return
    for addr in addrs:
        try:
            await host.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}", timeout=5)
            return
        except P2PError:
            continue


@dataclass(frozen=True)
class Fetched:
    applied: int
    complete: bool  # False: MAX_PAGES pages and the provider still had more


async def fetch_into(host: Any, target: LocalRegistry, name: str, peer: str, addrs: list[str]) -> Fetched:
    """Page ``peer``'s answers for registry ``name`` into ``target``, asking
    for what ``target`` lacks (the registry's changes, the statements and
    the descriptor's chains, each by its version vector), every change
    checked by ``target``'s engine as it applies, for at most MAX_PAGES
    pages. ValidationError naming the first change that failed, counting
    those left waiting for changes the provider never sent, or saying the
    provider had more but sent nothing new (the loop ran its pages out, and
    a follow counted it a success)."""
    await dial(host, peer, addrs)
    applied = 0
    waiting: set[str] = set()
    complete = False
    for _ in range(MAX_PAGES):
        vectors = target.engine.version_vector()
        request = proto.encode_request(name, vectors.get(name, {}),
                                       statements_after=vectors.get(MEMBERS_REGISTRY, {}),
                                       descriptor_after=vectors.get(regs.REGISTRY_OF_REGISTRIES, {}))
        try:
            data = await host.request(peer, proto.READ_PROTOCOL_ID, request, timeout=READ_TIMEOUT_S)
        except P2PError as exc:
            raise Unavailable(exc.message) from None
        answer = proto.decode_response(data)
        if answer.registry != name:
            raise ValidationError(f"it answered for {answer.registry!r}, not {name!r}")
        before = vectors.get(name, {})
        applied += await trio.to_thread.run_sync(_replay, target, answer, peer, waiting)
        if not answer.more:
            complete = True
            break
        if target.engine.version_vector(name).get(name, {}) == before:
            # Pages are cut in causal order: each moves the cursor, or the
            # provider is stalling (saying "more" with nothing new).
            raise ValidationError("it said it had more but sent nothing that moved the copy on")
    if waiting:
        raise ValidationError(f"{len(waiting)} of its changes wait for changes it did not send "
                              f"(first: {min(waiting)})")
    return Fetched(applied, complete)


def check_descriptor(target: LocalRegistry, resolution: dict[str, Any]) -> dict[str, Any]:
    """The descriptor ``target`` now holds, if it is the one the owner
    signed into the DHT (``resolution``). Conflict otherwise: a provider
    behind (or ahead of) the DHT, or one hosting another org's registry of
    that name (before or after a transfer), answers honestly but not for
    this descriptor; its answer is refused without calling it a liar."""
    described = target.get(regs.REGISTRY_OF_REGISTRIES, resolution["name"])
    if described["owner"] != resolution["owner"]:
        raise Conflict(f"it hosts {described['owner']}'s registry of that name, not {resolution['owner']}'s")
    if described["change_id"] != resolution["change_id"]:
        raise Conflict(f"the descriptor it sent ({described['change_id']}) is not the one its "
                       f"owner signed into the DHT ({resolution['change_id']})")
    return described


def check_parts(answer: proto.ReadResponse) -> None:
    """Each part of an answer holds what it says, before any of it applies:
    a provider that added another registry's descriptor and changes had them
    stored in the copy (never shown, never cleaned) and was not counted a liar."""
    name = answer.registry
    for place in answer.gone or ():
        if place.registry != name:
            raise ValidationError(f"it says places of {place.registry} are gone, which an answer for {name} "
                                  "has no place for")
    for part, wires, registry in (("statements", answer.statements, MEMBERS_REGISTRY),
                                  ("descriptor", answer.descriptor, regs.REGISTRY_OF_REGISTRIES),
                                  ("envelopes", answer.envelopes, name)):
        for wire in wires:
            body = peek(wire)
            if body is None:
                continue  # undecodable: the engine refuses it, and says why
            # (The descriptor's part is whole chains of grid.registries: the
            # links before the descriptor may describe other registries.)
            if body.registry != registry:
                raise ValidationError(f"its {part} hold a change of {body.registry}/{body.record}, "
                                      f"which an answer for {name} has no place for")


def _replay(target: Any, answer: proto.ReadResponse, peer: str, waiting: set[str]) -> int:
    """Apply an answer in ``target``; ValidationError naming the first change
    that was refused. ``waiting`` keeps the ids of the registry's and the
    descriptor's changes parked for dependencies, less those released since:
    a later page may bring what they wait for."""
    check_parts(answer)
    applied = 0
    for part, wires in (("statements", answer.statements), ("descriptor", answer.descriptor),
                        ("envelopes", answer.envelopes)):
        results = target.execute([Remote(w, peer) for w in wires])
        for wire, result in zip(wires, results):
            waiting.difference_update(result.released)
            if result.status == "applied":
                applied += 1 + len(result.released)
            elif result.status == "duplicate" or (part == "statements" and result.status != "rejected"):
                continue  # a statement that waits or is refused here is context, not content
            elif result.status == "pending" and result.change_id is not None:
                waiting.add(result.change_id)
            else:
                why = result.error.message if result.error is not None else result.status
                body = peek(wire)
                where = f"{body.registry}/{body.record}" if body is not None else "an undecodable change"
                raise ValidationError(f"its change {result.change_id or '?'} of {where} was {result.status}: {why}")
    if answer.gone:
        # Linked past on the provider's word, as a sync peer's (engine/gone.py);
        # a read never asks for them again, so a lying provider can hide
        # those changes from the copy, as it can hold back its latest.
        for result in target.execute([LinkPastGone(place, peer) for place in answer.gone]):
            waiting.difference_update(result.released)
            applied += len(result.released)
    return applied
