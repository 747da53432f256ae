"""Known federation peers, persisted in the store's ``peers`` sub-database.

Key: the peer ID (ASCII). Value: a msgpack *map* (not an array), so a
later version can add fields with defaults and still read old records.

The running node writes these (a few times a minute, from a worker thread:
a write transaction waits for the engine's). ``rgrid peers`` reads them from
another process through a read-only environment, which LMDB allows while the
node writes.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from registrygrid.storage.store import Store, Txn

# A stored peer record is a peer ID, a few addresses and counters: about
# 500 bytes. 64 KiB bounds what a corrupt or hostile-looking entry costs to
# decode.
MAX_RECORD_BYTES = 64 * 1024


class PeerRecord(msgspec.Struct, kw_only=True):
    peer_id: str
    addrs: list[str] = []
    source: str = "learned"  # bootstrap | learned (peer exchange) | inbound (it dialed us) | foreign (another federation's, for the DHT)
    state: str = "new"  # new | connected | disconnected | backoff | banned | denied
    first_seen_ms: int = 0
    last_seen_ms: int = 0  # last moment we were connected to it
    last_sync_ms: int = 0  # end of the last completed sync session with it
    latency_ms: float | None = None  # round trip of the last hello
    lag: int | None = None  # changes it held that we lacked, at the end of the last sync
    ahead: int | None = None  # changes we held that it lacked, at the same moment
    failures: int = 0  # consecutive failed dials and connections dropped within seconds
    invalid: int = 0  # invalid messages and requests it sent us (all time)
    rejected: int = 0  # well-formed changes from it that the engine refused (policy, chain, ...)
    banned_until_ms: int = 0
    note: str = ""  # why it is banned or denied, the last dial error


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PeerRecord)


def load(store: Store) -> list[PeerRecord]:
    """Every stored peer; entries that do not decode are skipped (and stay)."""
    out = []
    with store.read() as txn:
        for key, value in txn.cursor(db=store.db["peers"]):
            if len(value) > MAX_RECORD_BYTES:
                continue
            try:
                record = _decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                continue
            if record.peer_id.encode() == key:
                out.append(record)
    return out


def save(store: Store, records: Iterable[PeerRecord], *, forget: Iterable[str] = ()) -> None:
    """Write ``records`` and delete ``forget`` in one durable transaction."""
    handle = store.db["peers"]
    puts = [(record.peer_id.encode(), _encoder.encode(record)) for record in records]
    deletes = [peer_id.encode() for peer_id in forget]  # iterables: read once, whatever the tries

    def write(txn: Txn) -> None:
        for peer_key, value in puts:
            txn.put(peer_key, value, db=handle)
        for peer_key in deletes:
            txn.delete(peer_key, db=handle)

    store.transact(write)
