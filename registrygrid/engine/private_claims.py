"""Private registries whose name another org's create took.

Two orgs that create one registry name without seeing each other (a
partition, `rgrid peers deny`) race two creates of its descriptor, and the
earliest counts on every node (docs/trust.md, "Two orgs create one id");
the other is refused and kept as evidence. Who may read a registry is its
winning descriptor's to say, so where the winner is shared, the records
the other org wrote into what it made a private registry went to every
member.

Such a refused create is the other org's word on its own changes: a
**private claim**. The changes of that org's keys in the registry are sent
only to that org and the readers its create named (intersected over its
private creates of the name, should it have made several), on every path
that sends changes (sync, gossip, remote reads) and in federated search.
Only an org's own refused create restricts its own keys' changes: no org
can withhold another's. A pure function of the stored changes, so every
node that holds the refused create withholds alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registrygrid.crdt.record import RecordDoc
from registrygrid.engine.registries import REGISTRY_OF_REGISTRIES
from registrygrid.engine.values import automerge_of_body
from registrygrid.storage import changes, records
from registrygrid.trust.state import TrustState

Claims = Mapping[str, frozenset[str]]  # org -> the orgs that may read its keys' changes of the registry


def claims(store: Any, txn: Any, name: str) -> Claims:
    """The private claims on registry ``name``: for each refused create of
    its descriptor that declared it private, its owner org -> that org and
    the readers it named. Empty (one prefix seek) for a name no create lost."""
    refused = records.refused_changes(store, txn, REGISTRY_OF_REGISTRIES, name)
    out: dict[str, frozenset[str]] = {}
    for cid in refused.values():
        body = changes.body(store, txn, cid)
        if body is None or body.op != "create":
            continue
        _, change = automerge_of_body(body)
        made = RecordDoc.apply(None, change).materialize()
        fields = made.get("fields") or {}
        replication = fields.get("replication")
        owner = made.get("owner")
        if not isinstance(replication, Mapping) or replication.get("scope") != "private" \
                or not isinstance(owner, str):
            continue
        readers = frozenset({owner, *(r for r in replication.get("readers") or () if isinstance(r, str))})
        out[owner] = out[owner] & readers if owner in out else readers
    return out


def withheld(trust: TrustState, found: Claims, author: str, reader: str | None) -> bool:
    """Whether ``author``'s changes of the registry are kept from ``reader``
    (an org; None: a node of no known org, or every member at once, as
    gossip is): the author speaks for an org with a claim that does not
    name the reader."""
    if not found:
        return False
    orgs = {author, *(d.org for d in trust.delegations.get(author, ()))}
    return any(reader is None or reader not in found[org] for org in orgs if org in found)


def readable_by(found: Claims, reader: str | None) -> bool:
    """Whether ``reader`` may read every author's changes of the registry:
    what a search over its whole records needs (a record mixes authors)."""
    return all(reader is not None and reader in allowed for allowed in found.values())
