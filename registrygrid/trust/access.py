"""May this signer make this change? Ownership and registry write policy.

One judgement for every path: the engine asks it for local writes (SDK,
CLI, HTTP bridge) and for remote changes (gossip, sync) alike, with the
signer of the change, the org the record belongs to and the change's own
time, so the answer does not depend on where or when it is asked.

Rules:

* **A record belongs to the org whose key created it.** A create names its
  owner org; the signer must speak for it (trust/state.py), and
  ``created.by`` must be the signer. Neither can be changed afterwards: an
  update that touches ``owner`` or ``created`` is refused.
* **Only the owner org's keys update or delete a record.**
* **Write policies** (registry descriptors): ``open`` lets any member org
  create records (its own) and only their owner modify them; ``members``
  lets every member org create and modify every record (a shared
  registry); ``owner`` lets only keys of the registry's owner org write;
  ``roles`` lets the registry's owner org and holders of its
  ``write_roles`` (delegation roles, ``federation-admin``) create.
* **Access policies** (``trust/policy.py``) then widen or narrow that:
  ``permit`` rules grant named subjects what the built-ins refuse,
  ``forbid`` rules (field-level included) refuse what they match; forbid
  overrides. Every decision names the rule that made it.
* **grid.members** holds signed statements, which carry their own
  authority: a statement record may be published by anyone, belongs to the
  org that signed it, and is never updated or deleted.
* **grid.orgs**: a record whose id is a did:key is that org's own record
  and belongs to it, so no org can squat another's id.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registrygrid.errors import NotOwner, PolicyDenied, RegistryError
from registrygrid.trust.policy import Decision, PolicySet, Subject, refuse, touched_fields
from registrygrid.trust.state import TrustView, Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY, Statement

if TYPE_CHECKING:  # the engine owns descriptors; trust only reads them
    from registrygrid.engine.registries import RegistryDescriptor

ORGS_REGISTRY = "grid.orgs"
DISPUTES_REGISTRY = "grid.disputes"  # crdt/disputes.py (trust does not import crdt)
ERASURES_REGISTRY = "grid.erasures"  # engine/erasure.py (trust does not import the engine)


def check_create(trust: TrustView, desc: RegistryDescriptor, *, author: str, record_id: str, owner: Any,
                 created_by: Any, at_ms: int, statement: Statement | None = None, policy: PolicySet | None = None,
                 kind: str = "", fields: Mapping[str, Any] | None = None, local_roles: Sequence[str] = ()) -> Verdict:
    """May ``author`` create this record for ``owner``? ALLOWED, WAIT (its
    delegation has not arrived), or a typed refusal. ``local_roles``: the
    bridge token's role of a write made through this node's bridge."""
    judged = judge_create(trust, desc, author=author, record_id=record_id, owner=owner, created_by=created_by,
                          at_ms=at_ms, statement=statement, policy=policy, kind=kind, fields=fields,
                          local_roles=local_roles)
    return _verdict(judged)


def check_modify(trust: TrustView, desc: RegistryDescriptor, *, op: str, author: str,
                 before: Mapping[str, Any], after: Mapping[str, Any] | None, at_ms: int,
                 policy: PolicySet | None = None, after_fields: Mapping[str, Any] | None = None,
                 local_roles: Sequence[str] = ()) -> Verdict:
    """An update or delete (or a re-create of a deleted record) of
    ``before``; ``after`` is the record's state with the change, when known
    (a remote change), else ``after_fields`` its fields (a local update)."""
    judged = judge_modify(trust, desc, op=op, author=author, before=before, after=after, at_ms=at_ms,
                          policy=policy, after_fields=after_fields, local_roles=local_roles)
    return _verdict(judged)


@dataclass(frozen=True)
class _Judged:
    decision: Decision
    refusal: RegistryError | None  # the typed error of a built-in refusal


def _verdict(judged: _Judged | Verdict) -> Verdict:
    if isinstance(judged, Verdict):
        return judged
    if judged.decision.allowed:
        return Verdict.ALLOWED
    if judged.refusal is not None and judged.decision.rule.startswith("builtin:"):
        raise judged.refusal
    raise refuse(judged.decision)


def judge_create(trust: TrustView, desc: RegistryDescriptor, *, author: str, record_id: str, owner: Any,
                 created_by: Any, at_ms: int, statement: Statement | None = None, policy: PolicySet | None = None,
                 kind: str = "", fields: Mapping[str, Any] | None = None,
                 local_roles: Sequence[str] = ()) -> _Judged | Verdict:
    if created_by != author:
        raise PolicyDenied(f"created.by is the signer ({author}), not {created_by!r}: it can't be claimed")
    if desc.name == MEMBERS_REGISTRY:
        assert statement is not None, "grid.members records are read as statements first"
        if owner != statement.org:
            raise NotOwner(f"a statement belongs to the org that signed it ({statement.org}), not {owner!r}")
        return Verdict.ALLOWED
    if not isinstance(owner, str):
        raise PolicyDenied("record has no owner org")
    if desc.name == ORGS_REGISTRY and record_id.startswith("did:") and record_id != owner:
        raise NotOwner(f"{ORGS_REGISTRY}/{record_id} is that org's own record; {owner} can't create it")
    # An org creates only its own records: no policy can hand a record to another org.
    if trust.check_speaks_for(author, owner, at_ms) is Verdict.WAIT:
        return Verdict.WAIT
    refusal = _write_policy_refusal(trust, desc, author, owner, at_ms)
    if refusal is None and (policy is None or desc.name not in policy.rules):
        return _own_record(owner)  # the common case, once per change: shared, not built
    builtin = Decision(refusal is None, "builtin:write-policy" if refusal else "builtin:own-record",
                       refusal.message if refusal else f"{owner} creates its own record")
    return _decide(policy, desc, lambda: subject_of(trust, author, at_ms, owner, local_roles), "create", kind,
                   lambda: frozenset(fields or ()), at_ms, builtin, refusal, bool(local_roles))


@functools.lru_cache(maxsize=1024)
def _own_record(owner: str) -> _Judged:
    """The verdict on an org creating its own record where no access rule
    looks (immutable, so one per org serves every change)."""
    return _Judged(Decision(True, "builtin:own-record", f"{owner} creates its own record"), None)


def judge_modify(trust: TrustView, desc: RegistryDescriptor, *, op: str, author: str, before: Mapping[str, Any],
                 after: Mapping[str, Any] | None, at_ms: int, policy: PolicySet | None = None,
                 after_fields: Mapping[str, Any] | None = None,
                 local_roles: Sequence[str] = ()) -> _Judged | Verdict:
    if desc.name == DISPUTES_REGISTRY:
        raise PolicyDenied(f"{DISPUTES_REGISTRY} records are evidence and are never {op}d; file a new "
                           "resolution instead (`rgrid disputes resolve`)")
    if desc.name == MEMBERS_REGISTRY:
        raise PolicyDenied(f"{MEMBERS_REGISTRY} statements are never {op}d; publish a new delegation "
                           "(`rgrid org renew`) or a revocation (`rgrid org revoke`)")
    owner = before["owner"]
    if after is not None and (after.get("owner") != owner or _created(after) != _created(before)):
        raise PolicyDenied(f"{before['registry']}/{before['id']}: owner and created are derived from the "
                           "signer of the create and can't be changed")
    refusal: RegistryError | None = None
    rule = "builtin:owner"
    try:
        if trust.check_speaks_for(author, owner, at_ms) is Verdict.WAIT:
            return Verdict.WAIT
    except NotOwner:
        if desc.write_policy == "members" and any(trust.is_member(o) for o in trust.orgs_of(author, at_ms)):
            rule = "builtin:members-edit"  # a members registry: every member edits every record
        elif desc.name == ERASURES_REGISTRY and op == "update" and \
                _own_supplement(author, before, after, after_fields) and \
                any(trust.is_member(o) for o in trust.orgs_of(author, at_ms)):
            # A node that erased its own org's edits of the record lists
            # their places in its own org's chains (docs/erasure.md).
            rule = "builtin:own-supplement"
        else:
            rule = "builtin:owner-only"
            refusal = NotOwner(f"{before['registry']}/{before['id']} belongs to {owner}; {author} does not "
                               f"speak for it, so it may not {op} it")
    if refusal is None:
        refusal = _write_policy_refusal(trust, desc, author, owner, at_ms)
        rule = "builtin:write-policy" if refusal else rule
    builtin = Decision(refusal is None, rule, refusal.message if refusal else f"{author} may {op} it ({rule})")
    def touched() -> frozenset[str]:
        old_fields = before.get("fields") or {}
        if op == "delete":
            return frozenset(old_fields)  # a delete takes every field with it
        new_fields = after.get("fields") if after is not None else after_fields
        return touched_fields(old_fields, new_fields) if new_fields is not None else frozenset(old_fields)

    return _decide(policy, desc, lambda: subject_of(trust, author, at_ms, owner, local_roles), op,
                   str(before.get("kind") or ""), touched, at_ms, builtin, refusal, bool(local_roles))


def _own_supplement(author: str, before: Mapping[str, Any], after: Mapping[str, Any] | None,
                    after_fields: Mapping[str, Any] | None) -> bool:
    """Whether an update of an erasure notice changes nothing but the
    signer's own entry of its ``supplements``."""
    if after is not None and (after.get("deleted") or after.get("tags") != before.get("tags")
                              or after.get("links") != before.get("links")):
        return False
    old = dict(before.get("fields") or {})
    new_fields = after.get("fields") if after is not None else after_fields
    if new_fields is None:
        return False
    new = dict(new_fields)
    old_mine, new_mine = dict(old.pop("supplements", None) or {}), dict(new.pop("supplements", None) or {})
    old_mine.pop(author, None)
    new_mine.pop(author, None)
    return old == new and old_mine == new_mine


def subject_of(trust: TrustView, author: str, at_ms: int, owner: str | None,
               local_roles: Sequence[str] = ()) -> Subject:
    """Who the signer is at that moment, as policies see it (plus, for a
    write through this node's bridge, the token's local role)."""
    orgs = trust.orgs_of(author, at_ms)
    roles: set[str] = set(local_roles)
    for org in orgs:
        claims = trust.delegation_at(author, org, at_ms)
        if claims is not None:
            roles.update(claims.roles)
    if any(trust.is_member(org) for org in orgs):
        roles.add("member")
    if any(trust.is_admin(org) for org in orgs):
        roles.add("federation-admin")
    if owner is not None and owner in orgs:
        roles.add("record-owner")
    attributes: dict[str, frozenset[str]] = {}
    for org in orgs:
        for name, values in trust.attributes.get(org, {}).items():
            attributes[name] = attributes.get(name, frozenset()) | values
    return Subject(author, orgs, frozenset(roles), attributes)


def _decide(policy: PolicySet | None, desc: RegistryDescriptor, subject: Callable[[], Subject], action: str,
            kind: str, touched: Callable[[], frozenset[str]], at_ms: int, builtin: Decision,
            refusal: RegistryError | None, through_bridge: bool = False) -> _Judged:
    # Most registries have no access rules: the subject and the touched
    # fields are worked out only where a rule may look at them (this runs
    # for every change, on the ingest hot path).
    if policy is None or desc.name not in policy.rules:
        return _Judged(builtin, refusal)
    return _Judged(policy.decide(desc.name, subject(), action, kind, touched(), at_ms, builtin,
                                 through_bridge=through_bridge), refusal)


def _write_policy_refusal(trust: TrustView, desc: RegistryDescriptor, author: str, owner: str,
                          at_ms: int) -> PolicyDenied | None:
    if desc.write_policy == "owner" and desc.owner is not None and owner != desc.owner:
        return PolicyDenied(f"registry {desc.name} is writable by its owner org {desc.owner} only (owner "
                            f"policy); this record belongs to {owner}")
    if desc.write_policy == "roles":
        held = subject_of(trust, author, at_ms, owner).roles
        if desc.owner is not None and owner == desc.owner:
            return None
        if held.isdisjoint(desc.write_roles):
            return PolicyDenied(f"registry {desc.name} is writable by roles {list(desc.write_roles)} (roles "
                                f"policy); {author} holds {sorted(held)}")
    return None


def _created(record: Mapping[str, Any]) -> tuple[Any, Any]:
    if "created" in record:  # a document's state
        created = record["created"] if isinstance(record["created"], Mapping) else {}
        return created.get("at"), created.get("by")
    return record.get("created_at"), record.get("created_by")


_TOUCHED = object()  # stands for "a new value" in an explained change's fields


def explain(trust: TrustView, desc: RegistryDescriptor, policy: PolicySet | None, *, subject: str, action: str,
            record: Mapping[str, Any] | None, fields: Iterable[str] = (), at_ms: int,
            local_roles: Sequence[str] = ()) -> Decision:
    """The decision every node would reach if ``subject`` (a key, or an org
    acting itself) did ``action`` now, and the rule that makes it. Nothing
    is written. ``fields``: the top-level fields the change would touch."""
    touched = list(fields)
    orgs = sorted(trust.orgs_of(subject, at_ms) - {subject}) or [subject]
    try:
        if action == "read":
            org_ok = [o for o in orgs if desc.readable_by(o)]
            if org_ok:
                return Decision(True, "builtin:read" if not desc.private else "builtin:private-readers",
                                f"{org_ok[0]} may read {desc.name}")
            return Decision(False, "builtin:private-readers" if desc.private else "builtin:local",
                            f"{desc.name} is {desc.replication}; {orgs[0]} may not read it")
        if action == "admin":
            if desc.owner in orgs or any(trust.is_admin(o) for o in orgs):
                return Decision(True, "builtin:registry-admin", f"{orgs[0]} owns {desc.name} or is a federation admin")
            return Decision(False, "builtin:registry-admin", f"only {desc.owner or 'federation admins'} administer "
                                                              f"{desc.name}")
        if desc.name == MEMBERS_REGISTRY and action in ("create", "update", "delete"):
            # Its records are signed statements (delegations, revocations,
            # invitations): each carries its own authority, judged from the
            # statement itself, which a question of who may write lacks.
            return Decision(False, "builtin:statement",
                            f"{MEMBERS_REGISTRY} holds signed statements: a change counts when the statement it "
                            "carries is signed by who may make it (its org, or the federation's admins), whoever "
                            "writes it; write them with `rgrid org` and `rgrid federation`")
        if action == "create" or record is None:
            judged = judge_create(trust, desc, author=subject, record_id=str((record or {}).get("id") or "new"),
                                  owner=orgs[0], created_by=subject, at_ms=at_ms, policy=policy,
                                  kind=desc.kinds[0] if desc.kinds else "", fields=dict.fromkeys(touched, _TOUCHED),
                                  local_roles=local_roles)
        else:
            after = {**(record.get("fields") or {}), **dict.fromkeys(touched, _TOUCHED)}
            judged = judge_modify(trust, desc, op=action, author=subject, before=record, after=None, at_ms=at_ms,
                                  policy=policy, after_fields=after, local_roles=local_roles)
    except RegistryError as exc:
        return Decision(False, f"builtin:{exc.code}", exc.message)
    if isinstance(judged, Verdict):
        if judged is Verdict.WAIT:
            return Decision(False, "builtin:unknown-signer",
                            f"no delegation of {subject} is known here (or its org is not a member yet): "
                            "its changes would wait for one")
        return Decision(True, "builtin:statement", "a signed statement carries its own authority")
    return judged.decision


def may_resolve(trust: TrustView, author: str | None, at_ms: int, *, registry_owner: str | None,
                owners: Iterable[str]) -> bool:
    """May ``author``, at ``at_ms``, decide a dispute (crdt/disputes.py)? When
    it speaks for a federation admin org, the registry's owner org, or one
    of ``owners`` (the disputed record's owner org; for an equivocation,
    the equivocating key's orgs)."""
    if not author:
        return False
    deciders = set(owners) | ({registry_owner} if registry_owner else set())
    orgs = set(trust.orgs_of(author, at_ms)) | {author}
    return any(trust.is_admin(org) or org in deciders for org in orgs)

