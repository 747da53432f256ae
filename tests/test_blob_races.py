"""A blob's delete against what may come at the same moment, on threads as
the bridge runs them: a legal hold, and a put of the same bytes. Whatever
the interleaving, an acknowledged hold keeps its bytes, and the index never
names bytes that are gone."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registrygrid.blobs.blobs import BlobStore, blob_key
from registrygrid.blobs.objects import LocalObjects
from registrygrid.errors import NotFound
from registrygrid.storage.store import Store


class Gate:
    """Holds the one thread that passes it while armed, until opened."""

    def __init__(self) -> None:
        self.armed, self.reached, self.opened = False, threading.Event(), threading.Event()

    def pass_(self) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            self.opened.wait(10)


class HeldObjects(LocalObjects):
    """The local object store; a delete of the armed key waits at the gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate, self.key = Gate(), ""

    def delete(self, key: str) -> bool:
        if key == self.key:
            self.gate.pass_()
        return super().delete(key)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "store")
    yield store
    store.close()


def run(fn: Callable[[], object], into: list[object]) -> threading.Thread:
    def body() -> None:
        try:
            into.append(fn())
        except Exception as exc:  # the outcome is what the test judges
            into.append(exc)
    thread = threading.Thread(target=body)
    thread.start()
    return thread


def test_a_hold_set_while_a_delete_is_judged_either_keeps_the_bytes_or_is_refused(
        tmp_path: Path, store: Store) -> None:
    # The delete read the entry (no hold yet), then the hold was set and
    # acknowledged, then the delete removed the bytes the hold was for.
    clock = Gate()

    def now_ms() -> int:
        clock.pass_()  # the delete reads the clock between its check of the entry and the removal
        return 1_000

    blobs = BlobStore(LocalObjects(tmp_path / "objects"), store, now_ms=now_ms)
    data = os.urandom(1000)
    cid, _entry, _stored = blobs.put([data])
    clock.armed = True
    deleted: list[object] = []
    deleting = run(lambda: blobs.delete(cid), deleted)
    assert clock.reached.wait(10)
    held: list[object] = []
    holding = run(lambda: blobs.hold(cid, "litigation", "case 7"), held)
    holding.join(0.5)  # done by now, unless it waits for the delete
    clock.opened.set()
    deleting.join(10)
    holding.join(10)
    if isinstance(held[0], NotFound):  # the delete came first, whole
        assert blobs.entry(cid) is None and not isinstance(deleted[0], Exception)
    else:  # the hold came first: the delete is refused, and the bytes stay
        assert not isinstance(held[0], Exception), held
        assert b"".join(blobs.read(cid)) == data, "a hold was acknowledged for bytes the delete then removed"


def test_a_put_of_the_bytes_a_delete_removes_never_leaves_an_entry_without_its_bytes(
        tmp_path: Path, store: Store) -> None:
    # The delete dropped the entry; the put, finding none, moved its copy
    # under the CID and indexed it; the delete then removed that copy.
    objects = HeldObjects(tmp_path / "objects")
    blobs = BlobStore(objects, store)
    data = os.urandom(1000)
    cid, _entry, _stored = blobs.put([data])
    objects.key, objects.gate.armed = blob_key(cid), True
    deleted: list[object] = []
    deleting = run(lambda: blobs.delete(cid), deleted)
    assert objects.gate.reached.wait(10)  # the entry is dropped; the bytes not yet
    put: list[object] = []
    putting = run(lambda: blobs.put([data]), put)
    putting.join(0.5)  # done by now, unless it waits for the delete
    objects.gate.opened.set()
    deleting.join(10)
    putting.join(10)
    assert not isinstance(deleted[0], Exception) and not isinstance(put[0], Exception), (deleted, put)
    assert blobs.entry(cid) is not None  # the put came last
    assert b"".join(blobs.read(cid)) == data, "the index names a blob whose bytes the delete removed"
    assert blobs.verify()["missing"] == []


def test_puts_at_once_never_pass_the_quota_together(tmp_path: Path, store: Store) -> None:
    # Each put checked the quota against what was indexed, so two at once
    # each fit and together passed it (by up to a blob each: 1 TiB at most).
    from dataclasses import replace

    from registrygrid.blobs.blobs import QuotaExceeded

    blobs = BlobStore(LocalObjects(tmp_path / "objects"), store)
    blobs.limits = replace(blobs.limits, quota_bytes=3_000)
    vetting = Gate()
    vetting.armed = True

    def vet(key: str, size: int, content_type: str, name: str) -> tuple[dict, str]:
        vetting.pass_()  # the first put waits here: checked against the quota, not yet indexed
        return {}, ""

    first: list[object] = []
    putting = run(lambda: blobs.put([os.urandom(2_000)], vet=vet), first)
    assert vetting.reached.wait(10)
    try:
        with pytest.raises(QuotaExceeded):
            blobs.put([os.urandom(2_000)], vet=vet)
    finally:
        vetting.opened.set()
        putting.join(10)
    assert not isinstance(first[0], Exception), first
    assert blobs.used_bytes() == 2_000 <= 3_000
