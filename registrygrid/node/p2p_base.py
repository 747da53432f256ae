"""Shared pieces of the py-libp2p transport (node/p2p.py and its parts): peer
IDs, the host's statistics keys, error splitting, sizes, the logger."""


from __future__ import annotations

import functools

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from registrygrid.node.transport import (
    PeerUnreachable,
)

KiB = 1024
MiB = 1024 * KiB

_STAT_KEYS = (
    "gossip_published",
    "gossip_received",
    "gossip_own_skipped",
    "gossip_dropped",
    "gossip_dropped_upstream",
    "gossip_rejected",
    "gossip_backpressure_waits",
    "gossip_backpressure_timeouts",
    "requests_sent",
    "requests_failed",
    "requests_served",
    "requests_handler_errors",
    "requests_refused_too_large",
    "requests_refused_busy",
    "requests_refused_busy_peer",
    "requests_inbound_failed",
    "peer_events_dropped",
    "inbound_streams_failed",
)


def peer_id_from_seed(seed: bytes) -> str:
    """The peer ID (``12D3KooW...``) of the Ed25519 key with this 32-byte seed."""
    _check_seed(seed)
    return ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
        raise ValueError("seed must be 32 bytes (an Ed25519 private key seed)")


@functools.lru_cache(maxsize=4096)
def _b58(peer_bytes: bytes) -> str:
    return ID(peer_bytes).to_base58()


def _parse_peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise PeerUnreachable(f"not a peer id: {peer_id!r}") from exc


def _split_errors(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """Split into (Exception parts, everything else such as Cancelled)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


