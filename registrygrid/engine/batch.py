"""One batch's working state inside the engine, and the one exception that
crosses its parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registrygrid.crdt.record import RecordDoc
from registrygrid.engine.ops import Committed
from registrygrid.errors import PolicyDenied
from registrygrid.identity.delegation import DelegationBody
from registrygrid.protocol.envelope import Draft, Envelope


@dataclass
class Batch:
    # Records' documents this batch read or wrote, as its transaction holds
    # them, and each one's stored value (what the document cache keeps them
    # under when the batch commits: doc_cache.py).
    docs: dict[tuple[str, str], RecordDoc] = field(default_factory=dict)
    doc_values: dict[tuple[str, str], bytes] = field(default_factory=dict)
    # Documents a remote change was added to in place and not committed yet
    # (engine/ingest.py drops them if it never is).
    in_place: set[tuple[str, str]] = field(default_factory=set)
    # Documents this batch dropped (rewritten, erased, or edited by a refused
    # op): the document cache forgets them too when the batch commits.
    dropped_docs: set[tuple[str, str]] = field(default_factory=set)
    committed: Committed = field(default_factory=Committed)
    # This node's changes of the batch, signed together when it ends (one
    # signature over the Merkle root of their IDs), by ID.
    drafts: dict[bytes, Draft] = field(default_factory=dict)
    # (registry, author) -> (seq, cid): chain heads moved by this batch; they
    # survive the cache reset that follows a refused op (see _head).
    heads: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    # Keys whose delegation this batch committed: changes parked waiting
    # for them are released (see _release).
    delegated: list[str] = field(default_factory=list)
    # Keys a statement of this batch was about: their revocations, if any,
    # are applied to what is stored (see _rebuild_revoked).
    stated: list[str] = field(default_factory=list)
    # Delegations this batch committed: where one gives a key other roles
    # than its org's delegation before it did, the key's changes of its time
    # are judged again (see _rejudge_redelegated).
    delegations: list[DelegationBody] = field(default_factory=list)
    # An access policy changed in this batch: the rules are reloaded and the
    # records of the registries they target rebuilt (see _apply_policies).
    policies_changed: bool = False
    # Equivocations proven by this batch, (author, registry, seq): what they
    # quarantine is rebuilt (see _apply_disputes).
    quarantined: list[tuple[str, str, int]] = field(default_factory=list)
    # The changes of reports stored in this batch, to compare with this
    # node's chains of their authors (see _walk_fork).
    fork_walk: list[Envelope] = field(default_factory=list)
    # Disputes a resolution of this batch answers: their records are resettled.
    resolved: list[str] = field(default_factory=list)
    # Records this batch erased: a draft of one (written earlier in the
    # batch) is kept without its bytes when the batch signs (_seal_drafts).
    erased_records: set[tuple[str, str]] = field(default_factory=set)
    # Waiting-room prefixes whose condition this batch met: chain positions
    # linked unseen (engine/erasure.py), a record's change of a quarantined
    # fork held as evidence (engine/disputes.py). Released by _release.
    unblocked: list[bytes] = field(default_factory=list)
    # The waiting room was found empty in this batch and nothing was parked
    # since: the next ops skip asking the store (see _release).
    none_waiting: bool = False

    def hold_doc(self, key: tuple[str, str], doc: RecordDoc, stored: bytes) -> None:
        """``doc`` is the record's document as ``stored`` (its value in this
        batch's transaction) says."""
        self.docs[key] = doc
        self.doc_values[key] = stored

    def forget_doc(self, key: tuple[str, str]) -> None:
        """The record's document in memory may no longer be what is stored
        (a refused op edited it, a rebuild or an erasure rewrote it): the
        next reader loads it."""
        self.docs.pop(key, None)
        self.doc_values.pop(key, None)
        self.dropped_docs.add(key)


class CreateRace(Exception):
    """A create of an id another org's create already holds, or one that
    made it a record of another kind or schema version: which one counts is
    settled by rebuilding the record (earliest create wins)."""

    def __init__(self, refusal: PolicyDenied) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def kind_race(registry: str, record_id: str, first: dict[str, Any], then: dict[str, Any]) -> PolicyDenied:
    return PolicyDenied(f"{registry}/{record_id} was created as a {first.get('kind')} v{first.get('schema')} "
                        f"record first; a create of it as {then.get('kind')} v{then.get('schema')} is refused "
                        "(a record's kind is fixed)")
