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
* **Write policies** (registry descriptors): ``open`` lets any org create
  records (its own); ``owner`` and ``members`` let only keys of the
  registry's owner org write (``members`` widens to the federation's
  admitted members once federation membership lands; until then it is as
  strict as ``owner``, never looser).
* **grid.members** holds signed statements, which carry their own
  authority: a statement record may be published by anyone, belongs to the
  org that signed it, and is never updated or deleted.
* **grid.orgs**: a record whose id is a did:key is that org's own record
  and belongs to it, so no org can squat another's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from registrygrid.errors import NotOwner, PolicyDenied
from registrygrid.trust.state import TrustState, Verdict
from registrygrid.trust.statements import MEMBERS_REGISTRY, Statement

if TYPE_CHECKING:  # the engine owns descriptors; trust only reads them
    from registrygrid.engine.registries import RegistryDescriptor

ORGS_REGISTRY = "grid.orgs"


def check_create(trust: TrustState, desc: RegistryDescriptor, *, author: str, record_id: str, owner: Any,
                 created_by: Any, at_ms: int, statement: Statement | None = None) -> Verdict:
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
    _check_policy(desc, owner)
    return trust.check_speaks_for(author, owner, at_ms)


def check_modify(trust: TrustState, desc: RegistryDescriptor, *, op: str, author: str,
                 before: Mapping[str, Any], after: Mapping[str, Any] | None, at_ms: int) -> Verdict:
    """An update or delete (or a re-create of a deleted record) of
    ``before``; ``after`` is the record's state with the change, when known."""
    if desc.name == MEMBERS_REGISTRY:
        raise PolicyDenied(f"{MEMBERS_REGISTRY} statements are never {op}d; publish a new delegation "
                           "(`rgrid org renew`) or a revocation (`rgrid org revoke`)")
    owner = before["owner"]
    if after is not None and (after.get("owner") != owner or _created(after) != _created(before)):
        raise PolicyDenied(f"{before['registry']}/{before['id']}: owner and created are derived from the "
                           "signer of the create and can't be changed")
    _check_policy(desc, owner)
    try:
        verdict = trust.check_speaks_for(author, owner, at_ms)
    except NotOwner:
        raise NotOwner(f"{before['registry']}/{before['id']} belongs to {owner}; {author} does not speak "
                       f"for it, so it may not {op} it") from None
    return verdict


def _check_policy(desc: RegistryDescriptor, owner: str) -> None:
    if desc.write_policy in ("owner", "members") and desc.owner is not None and owner != desc.owner:
        raise PolicyDenied(
            f"registry {desc.name} is writable by its owner org {desc.owner} only ({desc.write_policy} "
            f"policy); this record belongs to {owner}")


def _created(record: Mapping[str, Any]) -> tuple[Any, Any]:
    if "created" in record:  # a document's state
        created = record["created"] if isinstance(record["created"], Mapping) else {}
        return created.get("at"), created.get("by")
    return record.get("created_at"), record.get("created_by")
