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
A pure function of the stored changes, so every node that holds the
refused create withholds alike.

Whose keys a claim covers: the key that signed it, and keys its org alone
delegated. Any org can delegate any key (docs/trust.md, "Whose word cuts a
key"), so a claim must not cover a key another org also delegated: else
any member could delegate a victim's node key, sign a (refused) private
create of a registry the victim writes to, and keep the victim's changes
there from everyone. The price: a key of the claiming org that another org
also delegated is not covered (its changes go by the winning descriptor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registrygrid.crdt.record import RecordDoc
from registrygrid.engine.registries import REGISTRY_OF_REGISTRIES
from registrygrid.engine.values import automerge_of_body
from registrygrid.storage import changes, records
from registrygrid.trust.state import TrustState

@dataclass(frozen=True)
class Claim:
    readers: frozenset[str]  # the orgs that may read: the claiming org and the readers it named
    signers: frozenset[str]  # the keys that signed its private creates


Claims = Mapping[str, Claim]  # claiming org -> its claim on the registry


def claims(store: Any, txn: Any, name: str) -> Claims:
    """The private claims on registry ``name``: for each refused create of
    its descriptor that declared it private, its owner org's claim. Empty
    (one prefix seek) for a name no create lost."""
    refused = records.refused_changes(store, txn, REGISTRY_OF_REGISTRIES, name)
    out: dict[str, Claim] = {}
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
        held = out.get(owner)
        out[owner] = Claim(readers, frozenset({body.author})) if held is None else \
            Claim(held.readers & readers, held.signers | {body.author})
    return out


def withheld(trust: TrustState, found: Claims, author: str, reader: str | None) -> bool:
    """Whether ``author``'s changes of the registry are kept from ``reader``
    (an org; None: a node of no known org, or every member at once, as
    gossip is): a claim covers the author and does not name the reader."""
    if not found:
        return False
    delegators = {d.org for d in trust.delegations.get(author, ())}
    for org, claim in found.items():
        covered = author in claim.signers or author == org or delegators == {org}
        if covered and (reader is None or reader not in claim.readers):
            return True
    return False


def readable_by(trust: TrustState, found: Claims, authors: Iterable[str], reader: str | None) -> bool:
    """Whether ``reader`` may read every one of ``authors``' changes of the
    registry: what a search over its whole records needs (a record mixes
    its authors')."""
    return not any(withheld(trust, found, author, reader) for author in authors) if found else True
