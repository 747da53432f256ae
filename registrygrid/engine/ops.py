"""What can be asked of the write path, and what it answers.

Local operations (Put, Update, Delete) come from the SDK, the CLI and the
HTTP bridge; Remote carries an envelope from a peer, LinkPastGone a peer's
word that changes are gone where it is; AuditNote records an
access or a denial that made no change. All go through ``Engine.execute``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from registrygrid.errors import RegistryError
from registrygrid.protocol.sync import GonePlace


@dataclass(frozen=True)
class Link:
    rel: str
    registry: str
    record: str

    def to_dict(self) -> dict[str, str]:
        return {"rel": self.rel, "registry": self.registry, "record": self.record}


@dataclass(frozen=True)
class Put:
    """Create a record (or bring a deleted one back)."""

    registry: str
    kind: str
    fields: Mapping[str, Any]
    record_id: str | None = None
    tags: Sequence[str] = ()
    links: Sequence[Mapping[str, str]] = ()
    schema: int | None = None  # the kind's latest version when None
    actor: str | None = None  # who asked (token name, CLI user); the node signs
    # The asker's local roles ("app:writer" for a bridge token of role
    # writer): access rules may restrict what each may do through this node
    # (trust/policy.py, local rules). Empty for the operator (SDK, CLI on the store).
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Update:
    """Change a record: ``fields`` replaces all fields, ``patch`` merges
    (RFC 7386: null deletes a key); ``tags``/``links`` replace when given.
    ``if_match`` (a change ID) refuses the update if the record moved on."""

    registry: str
    record_id: str
    fields: Mapping[str, Any] | None = None
    patch: Mapping[str, Any] | None = None
    tags: Sequence[str] | None = None
    links: Sequence[Mapping[str, str]] | None = None
    schema: int | None = None  # migrate the record to this version
    if_match: str | None = None
    actor: str | None = None
    roles: tuple[str, ...] = ()  # as Put.roles


@dataclass(frozen=True)
class Delete:
    registry: str
    record_id: str
    if_match: str | None = None
    actor: str | None = None
    roles: tuple[str, ...] = ()  # as Put.roles


@dataclass(frozen=True)
class Remote:
    wire: bytes
    peer: str = "unknown"
    # The node's gossip validator already checked this envelope's signature
    # (it must, to decide whether to forward it); don't pay for it twice.
    preverified: bool = False


@dataclass(frozen=True)
class Erase:
    """Erase a record's whole history, here and on every node that honours
    the notice this writes (engine/erasure.py, docs/erasure.md)."""

    registry: str
    record_id: str
    reason: str = ""
    blobs: Sequence[str] = ()  # blob CIDs to purge with it
    actor: str | None = None
    roles: tuple[str, ...] = ()  # as Put.roles


@dataclass(frozen=True)
class LinkPastGone:
    """A peer's word that places of a chain this node lacks are gone where
    it is (protocol/sync.py GonePlace): linked past where this node's chain
    stops inside them (engine/gone.py ``_link_past_gone``)."""

    place: GonePlace
    peer: str = "unknown"


@dataclass(frozen=True)
class ExpireParked:
    """Drop the remote changes parked longer than ``ttl_ms`` (their
    dependencies never came; sync offers them again while their chains
    still lack them): ingest.py ``_expire_parked``."""

    ttl_ms: int


@dataclass(frozen=True)
class AuditNote:
    """An audit entry with no change: reads through the API, denials at the edge."""

    action: str  # "read" or "deny"
    actor: str
    target: str
    reason: str = ""


@dataclass(frozen=True)
class Remembered:
    """A local write asked once per (token, Idempotency-Key) through the
    bridge: when it succeeds, ``answer`` turns its result into the response
    (status, body, headers), stored under the key in the write's own
    transaction (storage/idempotency.py), so the write and what a retry
    replays are durable together, in one commit."""

    op: Put | Update | Delete | Erase
    token_id: str
    key: str
    request_hash: bytes
    expires_at: int  # ms since the epoch
    answer: Callable[[WriteResult], tuple[int, bytes, dict[str, str]]]


Operation = Put | Update | Delete | Erase | Remote | LinkPastGone | ExpireParked | AuditNote | Remembered


@dataclass(frozen=True)
class WriteResult:
    status: str  # created | updated | deleted | unchanged
    registry: str
    record_id: str
    change_id: str | None
    feed_seq: int | None
    record: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "registry": self.registry,
            "id": self.record_id,
            "change_id": self.change_id,
            "feed_seq": self.feed_seq,
        }


@dataclass(frozen=True)
class IngestResult:
    # applied | duplicate | pending | rejected (not stored) | refused (kept
    # in its author's chain as evidence, not applied: docs/trust.md) |
    # linked (LinkPastGone: places linked past) | ignored (LinkPastGone:
    # no chain here waits there)
    status: str
    change_id: str | None
    feed_seq: int | None = None
    error: RegistryError | None = None
    released: tuple[str, ...] = ()  # pending changes this one let through


@dataclass(frozen=True)
class ErasedRecord:
    """A record a batch erased, and the blobs its notice names."""

    registry: str
    record: str
    notice: str
    blobs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Committed:
    """What one batch added, for whoever publishes it (gossip, SSE)."""

    feed_seqs: list[int] = field(default_factory=list)
    local_envelopes: list[bytes] = field(default_factory=list)  # this node's changes, wire bytes
    erased: list[ErasedRecord] = field(default_factory=list)  # for the node to purge their blobs
    # The registries of those feed events: a watcher of one registry (the
    # DHT's of grid.registries) learns here whether it moved, rather than by
    # reading and decompressing every event (100k of them in a catch-up).
    registries: set[str] = field(default_factory=set)


Outcome = WriteResult | IngestResult | RegistryError | int | None  # int: ExpireParked, changes dropped


@dataclass(frozen=True)
class Executed:
    """One batch's answers, and what it committed."""

    outcomes: list[Outcome]
    committed: Committed
