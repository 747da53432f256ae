"""Who speaks for whom: the trust state a node folds from its statements.

The state is a pure function of the *set* of verified statements it was
given (``add`` in any order gives the same answers), and every question is
asked at a moment the change itself carries (its HLC wall time) and at its
position in its author's chain, never at the receiver's clock. So every
node that holds the same statements judges a change the same way, whenever
it arrives. Rules:

* A key speaks for itself: an org key may sign changes as its org.
* A key speaks for org O at time t when O signed a delegation to it whose
  window covers t and that grants a writing role (node, writer or admin).
  Of several delegations covering t, the latest issued (greatest
  ``not_before``) gives the roles, so a renewal can change them.
* A revocation of key K names, per registry, the last of K's changes that
  stays valid (its cutoffs; a registry it does not name is cut at 0). Two
  revocations keep the lower cutoff per registry, whatever their order.
  By K itself, by a federation admin, or by every org that delegated K
  (the common case: a node's own org), it cuts the key whole: K's later
  changes are refused, whatever org they speak for. By one org O among
  several, it ends O's delegation of K there: K's later changes no longer
  speak for O (``at_place``), and K's standing for the other orgs that
  delegated it is untouched. (Anyone may delegate any key, since a
  delegation needs only its org's signature: when any delegator's word
  cut the whole key, a member could delegate another org's node key,
  revoke it, and every node refused that node's changes.)
* A change whose author is not known to speak for the org it needs, and
  of whom no delegation at all is known, *waits* for one (like a missing
  dependency: it may be in flight); a known key that lacks this org's
  delegation, or whose delegation does not cover the change's time, is
  refused.
* In a federation (a genesis is set), an org counts only once it is a
  member: a founder, or invited by enough of the genesis admins
  (trust/federation.py). A change for an org that is not (yet) a member
  waits for its invitation. A federation admin's revocation cuts a key
  whole; an org revoked (by an admin, or by itself) speaks only through
  the keys an admin's revocation names, up to their cutoffs: any other key
  it delegated, before or after, speaks for it no more.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from registrygrid.errors import DelegationExpired, KeyRevoked, NotOwner, Quarantined, RegistryError
from registrygrid.identity.delegation import DelegationBody
from registrygrid.trust.federation import GenesisBody, check_invitation
from registrygrid.trust.statements import (
    DELEGATION_KIND,
    INVITATION_KIND,
    REVOCATION_KIND,
    RevocationBody,
    Statement,
)

# Roles that let a delegated key sign changes (identity/delegation.py ROLES);
# "reader" is for keys that only authenticate reads.
WRITING_ROLES = frozenset({"node", "writer", "admin"})


class Verdict(Enum):
    ALLOWED = "allowed"
    WAIT = "wait"  # park until a delegation of the author arrives


@dataclass(frozen=True)
class Revoked:
    """Revocations of one key that count (see ``TrustState.revoked``)."""

    statements: tuple[RevocationBody, ...]  # each cuts the key whole (its own, an admin's)
    # When every org that delegated the key withdrew it: each one's
    # revocations (none: the org was removed, its side cut at 0). The key
    # counts for nobody past the highest of their cutoffs: each org's word
    # ends its own delegation only.
    delegators: tuple[tuple[RevocationBody, ...], ...] = ()
    removed_with: tuple[str, ...] = ()  # revoked orgs that delegated this key

    @property
    def by(self) -> list[str]:
        return sorted({r.org for r in self.statements} | {r.org for revs in self.delegators for r in revs}
                      | set(self.removed_with))

    def cutoff(self, registry: str) -> int:
        # The lowest cutoff wins; a registry a revocation leaves out is cut at 0.
        limits = [min(r.cutoffs.get(registry, 0) for r in self.statements)] if self.statements else []
        if self.delegators:
            limits.append(max(min((r.cutoffs.get(registry, 0) for r in revs), default=0)
                              for revs in self.delegators))
        return min(limits)


_SERIALS = itertools.count()
# The parking share of every key whose delegation is not known (no DID is this).
UNPLACED = "?"


@dataclass
class TrustState:
    # The federation this node belongs to (None: no membership rules, for
    # stores outside any federation: tests, tools, simulations).
    federation: GenesisBody | None = None
    federation_id: str | None = None
    delegations: dict[str, list[DelegationBody]] = field(default_factory=dict)  # subject -> its delegations
    invited: dict[str, frozenset[str]] = field(default_factory=dict)  # org -> roles its invitations grant
    # org -> attribute -> values its invitations vouch for (several
    # invitations of one org add up: a set per attribute, order-free)
    attributes: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    _revocations: dict[str, list[RevocationBody]] = field(default_factory=dict)  # subject -> all seen
    _delegated_by: dict[str, frozenset[str]] = field(default_factory=dict)  # org -> keys it delegated
    _seen: set[str] = field(default_factory=set)
    # (author, registry) -> the lowest sequence at which the author was proven
    # to equivocate there (grid.disputes equivocation reports): its changes
    # from that sequence on are quarantined, on every node alike.
    quarantined: dict[tuple[str, str], int] = field(default_factory=dict)
    # Which state this is, among every one the process made (the engine
    # replaces its state wholesale on a rebuild): half of ``revision``.
    _serial: int = field(default_factory=lambda: next(_SERIALS), compare=False, repr=False)

    @classmethod
    def of(cls, statements: Iterable[Statement], *, federation: GenesisBody | None = None,
           federation_id: str | None = None) -> TrustState:
        state = cls(federation=federation, federation_id=federation_id)
        for statement in statements:
            state.add(statement)
        return state

    def fresh(self) -> TrustState:
        """An empty state of the same federation."""
        return TrustState(federation=self.federation, federation_id=self.federation_id)

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever what this state says of a key (its orgs, roles
        and attributes at any time) may have changed: every statement taken
        by ``add`` grows it, and another state object has another. Lets a
        caller keep what it derived from the state until then."""
        return (self._serial, len(self._seen))

    def add(self, statement: Statement) -> bool:
        """Take a verified statement; False if it was already known."""
        if statement.record_id in self._seen:
            return False
        self._seen.add(statement.record_id)
        # Every value is replaced whole, never changed in place: other threads
        # read this state while the committer adds to it (the p2p hello's
        # admission, the guard, the bridge's explain and dispute views), and
        # a list being sorted looks empty to them, a set being added to
        # fails their iteration.
        if statement.kind == DELEGATION_KIND:
            assert statement.delegation is not None
            self.delegations[statement.subject] = sorted(
                [*self.delegations.get(statement.subject, ()), statement.delegation],
                key=lambda d: (d.not_before, d.expires, d.org, d.roles))
            org = statement.delegation.org
            self._delegated_by[org] = self._delegated_by.get(org, frozenset()) | {statement.subject}
        elif statement.kind == INVITATION_KIND and self.federation is not None:
            try:
                check_invitation(statement.invitation, self.federation, self.federation_id or "")
            except RegistryError:
                return True  # another federation's, or short of its quorum: stored, admits nobody here
            roles = frozenset(statement.invitation.claims.roles)
            self.invited[statement.org] = self.invited.get(statement.org, frozenset()) | roles
            held = dict(self.attributes.get(statement.org, {}))
            for name, value in statement.invitation.claims.attributes.items():
                held[name] = held.get(name, frozenset()) | {value}
            self.attributes[statement.org] = held
        elif statement.kind == REVOCATION_KIND:
            assert statement.revocation is not None
            self._revocations[statement.subject] = [*self._revocations.get(statement.subject, ()),
                                                    statement.revocation]
        return True

    def revoked(self, key: str) -> Revoked | None:
        """The revocations that cut ``key`` whole: by the key itself, by a
        federation admin, or by its delegators once every org that
        delegated it withdrew it (revoked it, or was removed: then it is
        cut at 0 where no revocation names it). One org's word alone ends
        that org's delegation only (``at_place``). A delegation or an
        invitation that comes later is taken whenever it comes: arrival
        order does not matter. (A member org's own key is never cut whole
        by a delegator's word.)"""
        seen = self._revocations.get(key, ())
        delegators = {d.org for d in self.delegations.get(key, ())}
        removed = {org for org in delegators if self._org_removed(org)}
        whole = tuple(r for r in seen if r.org == key or self.is_admin(r.org))
        withdrawn = bool(delegators) and delegators <= {r.org for r in seen} | removed \
            and not (self.federation is not None and self.is_member(key))
        if not withdrawn:
            return Revoked(whole) if whole else None
        sides = tuple(() if org in removed else tuple(r for r in seen if r.org == org) for org in sorted(delegators))
        return Revoked(whole, sides, tuple(sorted(removed)))

    def revoked_for(self, key: str, org: str) -> Revoked | None:
        """The revocations of ``key`` by ``org`` (not the key, not an admin):
        past their cutoffs, the key speaks for ``org`` no more."""
        counted = tuple(r for r in self._revocations.get(key, ()) if r.org == org != key)
        return Revoked(counted) if counted else None

    def any_revocation(self, key: str) -> Revoked | None:
        """Every revocation of ``key``, whoever signed it: the lowest cutoffs
        any of them set, where changes may have stopped counting for some
        org (what a rebuild looks at)."""
        seen = tuple(self._revocations.get(key, ()))
        return Revoked(seen) if seen else None

    def at_place(self, author: str, registry: str, seq: int) -> PlacedTrust:
        """This state as it judges ``author``'s change ``seq`` in ``registry``."""
        return PlacedTrust(self, author, registry, seq)

    def org_removed(self, org: str) -> bool:
        """Whether a federation admin (or the org itself) revoked ``org``."""
        return self._org_removed(org)

    def _org_removed(self, org: str) -> bool:
        """An org a federation admin (or the org itself) revoked."""
        return any(r.org == org or self.is_admin(r.org) for r in self._revocations.get(org, ()))

    def affected_by_revocation(self, subject: str) -> set[str]:
        """The keys whose validity a statement about ``subject`` may change:
        itself, and the keys it delegated (an org's removal cuts them)."""
        return {subject} | self._delegated_by.get(subject, frozenset())

    # ------------------------------------------------------------ membership

    def is_member(self, org: str) -> bool:
        if self.federation is None:
            return True
        return org in self.federation.founders or org in self.invited

    def is_admin(self, org: str) -> bool:
        if self.federation is None:
            return False
        return org in self.federation.admins or "admin" in self.invited.get(org, ())

    # ------------------------------------------------------------ questions

    def known(self, key: str) -> bool:
        """Whether any delegation of this key is known."""
        return key in self.delegations

    def parking_share(self, key: str) -> str:
        """Whom a change this key signed is counted against while it waits
        (storage/pending.py): the first org, by name, that delegated the
        key; a member org's own key, or with no federation any key, itself;
        every other key (its delegation not known here yet) one share,
        UNPLACED, so fresh keys cannot each claim a share of their own."""
        orgs = {d.org for d in self.delegations.get(key, ())}
        if orgs:
            return min(orgs)
        return key if self.federation is None or self.is_member(key) else UNPLACED

    def delegation_at(self, key: str, org: str, at_ms: int) -> DelegationBody | None:
        """The delegation org -> key that governs time ``at_ms``, if any."""
        moment = at_ms // 1000
        best = None
        for claims in self.delegations.get(key, ()):
            if claims.org == org and claims.not_before <= moment < claims.expires:
                best = claims  # sorted by not_before: the last that covers wins
        return best

    def orgs_of(self, key: str, at_ms: int) -> frozenset[str]:
        """The orgs a key speaks for at a moment (itself included)."""
        moment = at_ms // 1000
        return frozenset({key} | {d.org for d in self.delegations.get(key, ())
                                  if d.not_before <= moment < d.expires
                                  and self._writes(self.delegation_at(key, d.org, at_ms))})

    def orgs_ever(self, key: str, until_ms: int) -> frozenset[str]:
        """The orgs a key spoke for at any moment up to ``until_ms`` (itself
        included): an org vouches for the past places of its keys' chains
        (erasure notices) whenever it does, and a delegation that expired
        since still made the changes it covered. Judged at a fixed moment,
        not the clock of whoever reads it, so every node finds the same."""
        moment = until_ms // 1000
        return frozenset({key} | {d.org for d in self.delegations.get(key, ())
                                  if d.not_before <= moment and self._writes(d)})

    @staticmethod
    def _writes(claims: DelegationBody | None) -> bool:
        return claims is not None and not WRITING_ROLES.isdisjoint(claims.roles)

    def quarantine(self, author: str, registry: str, seq: int) -> bool:
        """Quarantine the author's changes in ``registry`` from ``seq`` on;
        False if that was already so."""
        held = self.quarantined.get((author, registry))
        if held is not None and held <= seq:
            return False
        self.quarantined[(author, registry)] = seq
        return True

    def quarantined_since(self, author: str, registry: str) -> int | None:
        """The sequence from which ``author``'s changes in ``registry`` are
        quarantined, or None."""
        return self.quarantined.get((author, registry)) if self.quarantined else None

    def check_chain(self, author: str, registry: str, seq: int) -> None:
        """Refuse a change past its author's revocation cutoff (KeyRevoked),
        or one its author's proven equivocation quarantines (Quarantined)."""
        if self.quarantined:
            since = self.quarantined.get((author, registry))
            if since is not None and seq >= since:
                raise Quarantined(
                    f"{author} signed two different changes with sequence {since} in {registry}; its changes "
                    f"there from #{since} on are quarantined (this is #{seq}); see `rgrid disputes list`")
        if author not in self._revocations:
            return
        revoked = self.revoked(author)  # whole-key cuts; an org's own: PlacedTrust
        if revoked is not None and seq > revoked.cutoff(registry):
            raise KeyRevoked(
                f"{author} was revoked by {', '.join(revoked.by)}; its changes in {registry} "
                f"after #{revoked.cutoff(registry)} are refused (this is #{seq})")

    def check_speaks_for(self, author: str, org: str, at_ms: int) -> Verdict:
        """May ``author`` sign a change for ``org`` at ``at_ms``? ALLOWED,
        WAIT (no delegation of the author is known yet), or a typed refusal."""
        if author == org:
            return self._as_member(org)
        if self._org_removed(org) and not any(self.is_admin(r.org) for r in self._revocations.get(author, ())):
            # A removed org speaks only through the keys the removal named
            # (each up to its cutoff: check_chain). A key it delegated after
            # its removal is named by no revocation; its changes were let
            # through. The org's own word can't name one (it would give it
            # cutoffs of its choosing): an admin's must.
            raise KeyRevoked(f"{org} was revoked from the federation; {author}, which no admin's revocation "
                             "names, does not speak for it")
        claims = self.delegation_at(author, org, at_ms)
        if claims is not None:
            if self._writes(claims):
                return self._as_member(org)
            raise NotOwner(f"{org}'s delegation of {author} grants {list(claims.roles)}, no role that writes")
        if not self.known(author):
            return Verdict.WAIT
        windows = [d for d in self.delegations[author] if d.org == org]
        if windows:
            last = max(windows, key=lambda d: d.expires)
            raise DelegationExpired(
                f"{org}'s delegation of {author} covers {last.not_before}..{last.expires} (unix s), "
                f"not this change at {at_ms // 1000}; renew it with `rgrid org renew` (the org key signs)")
        raise NotOwner(f"{author} does not speak for {org} (it is delegated by "
                       f"{', '.join(sorted({d.org for d in self.delegations[author]}))})")

    def _as_member(self, org: str) -> Verdict:
        # Not a member (yet): its invitation may be in flight, so wait for
        # it; an org that was revoked is cut by check_chain instead.
        return Verdict.ALLOWED if self.is_member(org) else Verdict.WAIT


class PlacedTrust:
    """A trust state as it judges one change: ``author``'s change ``seq`` in
    ``registry``. An org's revocation of the author (not the author's own,
    not an admin's: those cut the whole key, ``check_chain``) ends that
    org's delegation from its cutoffs on: past them, the author speaks for
    that org no more, holds none of its roles, and counts as none of its
    members; its standing for any other org is the state's. Everything
    else is the state's own."""

    def __init__(self, state: TrustState, author: str, registry: str, seq: int) -> None:
        self.state = state
        self.author = author
        self.registry = registry
        self.seq = seq

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)

    def _cut(self, key: str, org: str) -> Revoked | None:
        if key != self.author or key == org:
            return None
        revoked = self.state.revoked_for(key, org)
        return revoked if revoked is not None and self.seq > revoked.cutoff(self.registry) else None

    def check_speaks_for(self, author: str, org: str, at_ms: int) -> Verdict:
        verdict = self.state.check_speaks_for(author, org, at_ms)
        cut = self._cut(author, org)
        if cut is not None:
            raise KeyRevoked(f"{author} was revoked by {org}; its changes in {self.registry} after "
                             f"#{cut.cutoff(self.registry)} no longer speak for {org} (this is #{self.seq})")
        return verdict

    def delegation_at(self, key: str, org: str, at_ms: int) -> DelegationBody | None:
        return None if self._cut(key, org) is not None else self.state.delegation_at(key, org, at_ms)

    def orgs_of(self, key: str, at_ms: int) -> frozenset[str]:
        return frozenset(org for org in self.state.orgs_of(key, at_ms) if self._cut(key, org) is None)


# What judges a change: the state, or the state at the change's place.
TrustView = TrustState | PlacedTrust
