"""Gossip framing, sans-IO: batches of envelopes on a GossipSub topic.

py-libp2p pays ~2 ms per pubsub message here, so a message carries a batch
of envelopes, flushed when it reaches ``MAX_BATCH_BYTES`` or when its oldest
envelope has waited ``FLUSH_AFTER_S`` -- except the first envelope after a
quiet spell, which goes out at once: a lone write should not wait for company
that is not coming (the group committer already hands over each commit's
envelopes together), while a burst still leaves as one message per
``FLUSH_AFTER_S`` at most. A batch is plain msgpack
``[version, [envelope, ...]]``: any libp2p implementation can follow a
federation's changefeed, and each envelope carries its own signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from registrygrid.errors import MalformedInput, TooLarge
from registrygrid.protocol import limits

GOSSIP_VERSION = 1

# Below libp2p pubsub's 1 MiB message cap (go-libp2p DefaultMaxMessageSize),
# with room for the pubsub envelope (from, seqno, signature, key).
MAX_BATCH_BYTES = 512 * 1024
MAX_BATCH_ENVELOPES = 4096
# How long a write may wait for company before it is published alone: small
# beside our 10 ms propagation target, long enough to batch a burst.
FLUSH_AFTER_S = 0.005


def topic_for(federation: str) -> str:
    """Versioned, per-federation topic, e.g. ``/registrygrid/1/acme-grid/changes``."""
    return f"/registrygrid/{GOSSIP_VERSION}/{federation}/changes"


class GossipBatch(msgspec.Struct, array_like=True, frozen=True):
    v: int
    envelopes: list[bytes]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GossipBatch)


def encode_batch(envelopes: list[bytes]) -> bytes:
    return _encoder.encode(GossipBatch(GOSSIP_VERSION, envelopes))


def decode_batch(data: bytes) -> list[bytes]:
    """Envelopes of a gossip message; TooLarge or MalformedInput otherwise."""
    if len(data) > MAX_BATCH_BYTES + 64 * 1024:
        raise TooLarge(f"gossip message of {len(data)} bytes exceeds the cap")
    try:
        batch = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"undecodable gossip message: {exc}") from None
    if batch.v != GOSSIP_VERSION:
        raise MalformedInput(f"gossip version {batch.v}; this node speaks {GOSSIP_VERSION}")
    if not batch.envelopes or len(batch.envelopes) > MAX_BATCH_ENVELOPES:
        raise MalformedInput(f"a gossip batch holds 1..{MAX_BATCH_ENVELOPES} envelopes")
    for wire in batch.envelopes:
        if len(wire) > limits.MAX_ENVELOPE_BYTES:
            raise TooLarge(f"envelope of {len(wire)} bytes in a gossip batch")
    return batch.envelopes


@dataclass
class Batcher:
    """Collects envelopes to publish; says when a batch is due.

    ``add`` returns the messages that became full; ``due(now)`` returns the
    pending batch once it is old enough, or at once if nothing was sent for
    ``flush_after``. Time is passed in: no clock here.
    """

    max_bytes: int = MAX_BATCH_BYTES
    flush_after: float = FLUSH_AFTER_S
    _pending: list[bytes] = field(default_factory=list)
    _size: int = 0
    _since: float | None = None
    _last_sent: float = float("-inf")

    def add(self, wire: bytes, now: float) -> list[bytes]:
        ready = []
        if self._pending and (self._size + len(wire) > self.max_bytes or len(self._pending) >= MAX_BATCH_ENVELOPES):
            ready.append(self._take(now))
        if not self._pending:
            self._since = now
        self._pending.append(wire)
        self._size += len(wire)
        return ready

    def deadline(self) -> float | None:
        if self._since is None:
            return None
        return min(self._since, self._last_sent) + self.flush_after

    def due(self, now: float) -> bytes | None:
        deadline = self.deadline()
        if self._pending and deadline is not None and now >= deadline:
            return self._take(now)
        return None

    def flush(self) -> bytes | None:
        return self._take(self._last_sent) if self._pending else None

    def _take(self, now: float) -> bytes:
        message = encode_batch(self._pending)
        self._pending, self._size, self._since, self._last_sent = [], 0, None, now
        return message
