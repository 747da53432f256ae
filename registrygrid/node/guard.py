"""The node's side of the policy guard (``protocol/guard.py``): what each change costs and to whom.

``protocol.guard.Guard`` keeps the budgets and decides; this module answers
what it cannot know without the node:

* **whose org**: ``engine.trust.orgs_of(author, at)`` at the change's own
  clock (the engine's trust state, read from this thread: it is replaced or
  grown by the committer's thread, and a read that races a change to it only
  sees the author as its own org for that one change);
* **which caps**: the registry's descriptor, read with ``regs.lookup`` and
  cached for ``DESCRIPTOR_TTL_S`` (an unknown registry is not cached: its
  descriptor may arrive in the next batch; the engine refuses changes for a
  registry it does not know);
* **how large**: a create's fields, packed. A create's payload holds the
  whole record, so materializing it alone gives the exact size (~30-80 us
  for a small record, ms for a map of thousands of keys, measured here; the
  engine does the same for creates that race). Every create is measured in
  a registry that names its own ``max_record_bytes``; elsewhere only those
  whose payload is large (``MEASURE_CREATES_ABOVE``). An update's resulting
  size is only known once it is applied to the stored document, which is the
  engine's job (docs/federation.md, "Policy guard").

Gossip hands in the envelopes its validator has already opened (no second
decode); sync opens each envelope once without verifying it (the engine
verifies, on two threads).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from registrygrid.engine import registries as regs
from registrygrid.errors import RegistryError
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import ChangeBody, Envelope, peek
from registrygrid.protocol.guard import (
    Charge,
    GossipVerdict,
    Guard,
    GuardLimits,
    RegistryCaps,
    SyncAdmission,
    cap_refusal,
    charged_orgs,
)
from registrygrid.storage.store import pack

if TYPE_CHECKING:
    from registrygrid.node.node import Node

# A registry's descriptor is read again after this long: a new cap takes
# effect on every node within seconds, and a flood of changes for one
# registry costs one LMDB read per 5 s, not one per change.
DESCRIPTOR_TTL_S = 5.0
# Under the global cap, a create is measured only when its payload alone is
# above half of it: an Automerge change carries its values about as written
# (a 50 KB string field: a 50.3 KB payload; a 2,000-key map: 13 KB of
# payload for 14.5 KB packed, measured here), so a plainly oversized record is
# caught for ~80 us beside ~230 us of verifying it, and small creates (nearly
# all of them) cost nothing more. A change that compresses far better than
# that (long runs of one value) can still expand past the cap: only the
# engine, which materializes every change, can check all of them.
MEASURE_CREATES_ABOVE = limits.MAX_RECORD_BYTES // 2
# Descriptors cached: registry names are free to mint (changes for unknown
# registries are not cached at all), so the cache is bounded; a federation
# has tens of registries.
MAX_CACHED_DESCRIPTORS = 1024


@dataclass(frozen=True, slots=True)
class _Cached:
    caps: RegistryCaps
    explicit_size_cap: bool  # the registry names a max_record_bytes below the global cap
    until: float
    changed_hlc: tuple[int, int] = (0, 0)  # the clock of the descriptor's latest change


class PeerGuard:
    """One per federation: ``gossip`` (a validated message's envelopes),
    ``charges``/``sync`` (a sync response's wires), ``may_serve``/``served``."""

    def __init__(self, node: Node, guard_limits: GuardLimits, metrics: Counter[str]) -> None:
        self.node = node
        self.guard = Guard(guard_limits, metrics)
        self.metrics = metrics
        self._descriptors: OrderedDict[str, _Cached] = OrderedDict()

    @property
    def limits(self) -> GuardLimits:
        return self.guard.limits

    # ---- gossip ----

    def gossip(self, origin: str, envelopes: Sequence[Envelope], now: float) -> GossipVerdict:
        orgs: dict[tuple[str, int], tuple[str, ...]] = {}
        return self.guard.admit_gossip(origin, [self._charge(env.body, len(env.wire), now, orgs)
                                                for env in envelopes], now)

    # ---- sync ----

    def charges(self, wires: Sequence[bytes], now: float) -> list[Charge]:
        out = []
        # The orgs a key speaks for change at whole seconds (trust/state.py),
        # and a batch's changes share an author and a few seconds: worked
        # out once per (author, second) of this call, not per change.
        orgs: dict[tuple[str, int], tuple[str, ...]] = {}
        for wire in wires:
            # Only who, where and when are needed to charge a change: its body,
            # decoded without the proof walk (the engine opens it fully).
            body = peek(wire)
            if body is None:  # the engine refuses it with its typed error; it still costs the peer
                out.append(Charge(size=len(wire), orgs=()))
                continue
            out.append(self._charge(body, len(wire), now, orgs))
        return out

    def admit_sync(self, peer: str, charges: Sequence[Charge], now: float) -> SyncAdmission:
        return self.guard.admit_sync(peer, charges, now)

    def refused(self, charges: Sequence[Charge]) -> int:
        """Count the changes a registry's caps refuse (sync: never submitted)."""
        count = 0
        for charge in charges:
            if charge.refusal is not None:
                self.metrics[f"guard.refused.{charge.refusal}"] += 1
                count += 1
        return count

    # ---- serving ----

    def may_serve(self, peer: str, now: float) -> bool:
        return self.guard.may_serve(peer, now)

    def served(self, peer: str, size: int, now: float) -> None:
        self.guard.served(peer, size, now)

    # ---- one change ----

    def _charge(self, body: ChangeBody, size: int, now: float,
                known: dict[tuple[str, int], tuple[str, ...]]) -> Charge:
        """``known``: the charged orgs already worked out in this call."""
        second = (body.author, body.hlc[0] // 1000)
        orgs = known.get(second)
        if orgs is None:
            orgs = known[second] = charged_orgs(body.author,
                                                self.node.engine.trust.orgs_of(body.author, body.hlc[0]),
                                                self.guard.limits.max_orgs_per_change)
        cached = self._caps(body.registry, now)
        if cached is None:
            return Charge(size=size, orgs=orgs, registry=body.registry)
        fields_bytes = None
        if body.is_snapshot and (cached.explicit_size_cap or len(body.payload) > MEASURE_CREATES_ABOVE):
            fields_bytes = _fields_bytes(body.payload)
        # A change older than the descriptor's latest change may have been
        # made under another version of it (kinds, size limit): the engine
        # judges it by that one (EngineCore._descriptor_at), so the caps of
        # this one do not refuse it here.
        refusal = cap_refusal(body.kind, cached.caps, fields_bytes) if tuple(body.hlc) >= cached.changed_hlc else None
        return Charge(size=size, orgs=orgs, registry=body.registry,
                      registry_rate=cached.caps.max_changes_per_second_per_org, refusal=refusal)

    def _caps(self, registry: str, now: float) -> _Cached | None:
        cached = self._descriptors.get(registry)
        if cached is not None and cached.until > now:
            self._descriptors.move_to_end(registry)
            return cached
        store = self.node.store
        try:
            with store.read() as txn:
                desc = regs.lookup(store, txn, registry, include_deleted=True)
        except RegistryError:  # unknown here (yet): the engine decides
            self._descriptors.pop(registry, None)
            return None
        cached = _Cached(RegistryCaps(kinds=frozenset(desc.kinds), max_record_bytes=desc.max_record_bytes,
                                      max_changes_per_second_per_org=desc.max_changes_per_second_per_org),
                         explicit_size_cap=desc.max_record_bytes < limits.MAX_RECORD_BYTES,
                         until=now + DESCRIPTOR_TTL_S, changed_hlc=desc.changed_hlc)
        self._descriptors[registry] = cached
        self._descriptors.move_to_end(registry)
        while len(self._descriptors) > MAX_CACHED_DESCRIPTORS:
            self._descriptors.popitem(last=False)
        return cached


def _fields_bytes(payload: bytes) -> int | None:
    """The packed size of a create's fields, from its snapshot alone; None if
    it does not decode or has no fields map (the engine refuses it then)."""
    try:
        snapshot = msgspec.msgpack.decode(payload)
        fields = snapshot.get("fields") if isinstance(snapshot, dict) else None
        return len(pack(fields)) if isinstance(fields, dict) else None
    except (RecursionError, ValueError, TypeError, OverflowError, msgspec.DecodeError, msgspec.EncodeError):
        return None  # the engine reads the same bytes and names what is wrong
