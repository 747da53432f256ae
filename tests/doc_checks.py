"""A check the engine's property tests run on every node they build: the
documents the engine keeps in memory between batches (engine/doc_cache.py)
are the ones its store holds."""

from __future__ import annotations

from registrygrid.crdt.record import RecordDoc
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import records


def assert_documents_in_memory_are_as_stored(grid: LocalRegistry) -> None:
    """Every document the engine keeps between batches has the heads and the
    state of a fresh load of its stored bytes."""
    cache = grid.engine._doc_cache
    with grid.store.read() as txn:
        for (registry, record_id), (_, _, doc) in list(cache._entries.items()):
            stored = records.get_document(grid.store, txn, registry, record_id)
            assert stored is not None, f"{registry}/{record_id}: kept in memory, gone from the store"
            loaded = RecordDoc.load(bytes(stored)[4:])
            assert sorted(doc.heads()) == sorted(loaded.heads()), f"{registry}/{record_id}: other heads"
            assert doc.materialize() == loaded.materialize(), f"{registry}/{record_id}: another state"
