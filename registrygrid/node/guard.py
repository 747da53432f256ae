"""The node's side of the policy guard (``protocol/guard.py``): what each change costs and to whom.

``protocol.guard.Guard`` keeps the budgets and decides; this module answers
what it cannot know without the node:

* **whose org**: ``engine.trust.orgs_of(author, at)`` at the change's own
  clock (the engine's trust state, read from this thread: it is replaced or
  grown by the committer's thread, and a read that races a change to it only
  sees the author as its own org for that one change);
* **which rate**: a registry's ``max_changes_per_second_per_org``, read
  from its descriptor with ``regs.lookup`` and cached for
  ``DESCRIPTOR_TTL_S`` (an unknown registry is not cached: its descriptor
  may arrive in the next batch). Its other rules (kinds, size cap) are the
  engine's, which keeps a change they refuse as evidence
  (``protocol/guard.py``).

Gossip hands in the envelopes its validator has already opened (no second
decode); sync opens each envelope once without verifying it (the engine
verifies, on two threads).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registrygrid.engine import registries as regs
from registrygrid.errors import RegistryError
from registrygrid.protocol.envelope import ChangeBody, Envelope, peek
from registrygrid.protocol.guard import (
    Charge,
    GossipVerdict,
    Guard,
    GuardLimits,
    SyncAdmission,
    charged_orgs,
)

if TYPE_CHECKING:
    from registrygrid.node.node import Node

# A registry's descriptor is read again after this long: a new rate takes
# effect on every node within seconds, and a flood of changes for one
# registry costs one LMDB read per 5 s, not one per change.
DESCRIPTOR_TTL_S = 5.0
# Descriptors cached: registry names are free to mint (changes for unknown
# registries are not cached at all), so the cache is bounded; a federation
# has tens of registries.
MAX_CACHED_DESCRIPTORS = 1024


@dataclass(frozen=True, slots=True)
class _Cached:
    rate: float | None  # the registry's max_changes_per_second_per_org
    until: float


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
        cached = self._descriptor(body.registry, now)
        return Charge(size=size, orgs=orgs, registry=body.registry,
                      registry_rate=cached.rate if cached is not None else None)

    def _descriptor(self, registry: str, now: float) -> _Cached | None:
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
        cached = _Cached(desc.max_changes_per_second_per_org, until=now + DESCRIPTOR_TTL_S)
        self._descriptors[registry] = cached
        self._descriptors.move_to_end(registry)
        while len(self._descriptors) > MAX_CACHED_DESCRIPTORS:
            self._descriptors.popitem(last=False)
        return cached

