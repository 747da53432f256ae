"""Four-byte codes for the DIDs that keys repeat.

A DID (``did:key:z6Mk…``, 56 bytes of text) sits in the key of every chain
link (its author) and every owner index entry (the record's owner). A store
holds a handful of distinct DIDs and millions of such keys, and a key is
not compressed: a code in its place takes each of those keys from ~80-100
bytes to ~30-45. Sub-database ``codes``:

    'n' DID         -> u32be code
    'c' u32be code  -> DID

Codes are handed out in order, the next one past the last ``'c'`` key, by
the write transaction that first needs one, and never change. The caches
below learn a code from the store, or from the write transaction that hands
it out; if that transaction aborts, ``ended(committed=False)`` forgets what
it handed out (``Store.write`` calls it), since the next transaction may
give the same code to another DID. Only the store's writer hands out codes
(LMDB runs one write transaction at a time), so the caches need no lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registrygrid.errors import IntegrityError

if TYPE_CHECKING:
    import lmdb

    from registrygrid.storage.store import Store

CODE_BYTES = 4
_LAST_CODE = 2**32 - 1


class Codes:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._codes: dict[str, bytes] = {}
        self._names: dict[bytes, str] = {}
        self._fresh: list[str] = []  # handed out by the write transaction still open

    def code(self, txn: lmdb.Transaction, name: str) -> bytes | None:
        """The code of ``name``, or None if the store has never needed one."""
        found = self._codes.get(name)
        if found is None:
            found = txn.get(b"n" + name.encode(), db=self._store.db["codes"])
            if found is not None:
                found = bytes(found)
                self._codes[name] = found
        return found

    def assign(self, txn: lmdb.Transaction, name: str) -> bytes:
        """The code of ``name``, handed out now if it has none (a write transaction)."""
        found = self.code(txn, name)
        if found is not None:
            return found
        db = self._store.db["codes"]
        cursor = txn.cursor(db=db)
        at_last = cursor.prev() if cursor.set_range(b"d") else cursor.last()
        last = cursor.key() if at_last else b""
        number = int.from_bytes(last[1:], "big") + 1 if last.startswith(b"c") else 1
        if number > _LAST_CODE:
            raise IntegrityError("the store has handed out every name code")
        code = number.to_bytes(CODE_BYTES, "big")
        txn.put(b"n" + name.encode(), code, db=db)
        txn.put(b"c" + code, name.encode(), db=db)
        self._codes[name], self._names[code] = code, name
        self._fresh.append(name)
        return code

    def name(self, txn: lmdb.Transaction, code: bytes) -> str:
        """The DID behind ``code``."""
        found = self._names.get(code)
        if found is None:
            raw = txn.get(b"c" + code, db=self._store.db["codes"])
            if raw is None:
                raise IntegrityError(f"a key names code {code.hex()}, which the store never handed out")
            found = self._names[bytes(code)] = bytes(raw).decode()
        return found

    def ended(self, *, committed: bool) -> None:
        """The write transaction ended: what it handed out stands, or never was."""
        if not committed:
            for name in self._fresh:
                code = self._codes.pop(name, None)
                if code is not None:
                    self._names.pop(code, None)
        self._fresh.clear()
