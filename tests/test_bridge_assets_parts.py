"""One writer a part: the parts of an upload go to a real node's bridge in
parallel, but two attempts at the same part never write it at once (on the
local store a part is written in place, in the file the blob becomes, so two
writers would mix their bytes in one range). A second attempt while the
first still streams is refused with 409 part_in_progress and Retry-After;
the part is free again however the first attempt ends, and a part sent
again stops counting as held until its new bytes have passed their checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from test_bridge_support import UNLIMITED, Served, start_served

from registrygrid.blobs.blobs import BlobStore
from registrygrid.blobs.digest import parse_cid
from registrygrid.blobs.objects import LocalObjects
from registrygrid.blobs.uploads import UploadLimits, Uploads
from registrygrid.errors import Conflict, RateLimited
from registrygrid.node.bridge import BridgeConfig
from registrygrid.storage.store import Store

MIB = 1 << 20
PART = 2 * MIB  # more than the bridge's 1 MiB pieces: a stalled first attempt has written some of its part

pytest_plugins = ("test_bridge_support",)  # its fixtures: served, threaded_served


def part_of(data: bytes, n: int) -> bytes:
    return data[(n - 1) * PART:n * PART]


async def create(http: httpx.AsyncClient, data: bytes) -> str:
    created = await http.post("/v1/uploads", json={"size": len(data), "part_size": PART,
                                                   "sha256": hashlib.sha256(data).hexdigest()})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def stalled(part: bytes, release: trio.Event) -> AsyncIterator[bytes]:
    """A part's body that sends its first MiB and a half, then waits for ``release``."""
    yield part[:MIB + MIB // 2]
    await release.wait()
    yield part[MIB + MIB // 2:]


async def until_written(served: Served, session_id: str, at_least: int) -> None:
    """Wait until the upload's in-place file holds ``at_least`` bytes: a writer has its part."""
    data = served.home.path / "objects" / "uploads" / session_id / "data"
    with trio.fail_after(10):
        while not data.exists() or data.stat().st_size < at_least:
            await trio.sleep(0.01)


async def test_a_part_sent_again_while_its_first_attempt_streams_is_refused_and_other_parts_go_on(
        served: Served) -> None:
    data = os.urandom(2 * PART)
    release = trio.Event()
    answers: dict[str, httpx.Response] = {}
    async with served.client() as first, served.client() as http:
        session_id = await create(http, data)
        up = f"/v1/uploads/{session_id}/parts"

        async def send_first() -> None:
            answers["first"] = await first.put(f"{up}/1", content=stalled(part_of(data, 1), release),
                                               headers={"Content-Length": str(PART)})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_first)
            await until_written(served, session_id, MIB)
            answers["again"] = await http.put(f"{up}/1", content=part_of(data, 1))
            answers["other"] = await http.put(f"{up}/2", content=part_of(data, 2))
            answers["finalize"] = await http.post(f"/v1/uploads/{session_id}/finalize")
            status = (await http.get(f"/v1/uploads/{session_id}")).json()
            release.set()
        done = await http.post(f"/v1/uploads/{session_id}/finalize")
        got = await http.get(f"/v1/blobs/{done.json()['cid']}")
    again = answers["again"]
    assert again.status_code == 409 and again.json()["error"]["code"] == "part_in_progress"
    assert again.json()["error"]["details"]["part"] == 1 and again.headers["Retry-After"] == "1"
    assert answers["other"].status_code == 200, answers["other"].text  # another part goes in parallel
    early = answers["finalize"]  # a finalize while a part streams would read bytes being written
    assert early.status_code == 409 and early.json()["error"]["code"] == "part_in_progress"
    assert early.headers["Retry-After"] == "1"
    assert status["missing"] == [1]  # the refused attempt recorded nothing
    assert answers["first"].status_code == 200, answers["first"].text
    assert done.status_code == 200, done.text
    assert got.content == data


async def test_a_part_whose_writer_went_away_can_be_sent_again(served: Served) -> None:
    data = os.urandom(PART)
    async with served.client() as http:
        session_id = await create(http, data)
        up = f"/v1/uploads/{session_id}/parts"
        async with served.client() as doomed, trio.open_nursery() as nursery:
            nursery.start_soon(lambda: doomed.put(f"{up}/1", content=stalled(part_of(data, 1), trio.Event()),
                                                  headers={"Content-Length": str(PART)}))
            await until_written(served, session_id, MIB)
            nursery.cancel_scope.cancel()  # the client gives up mid-part: its connection closes
        refusals = 0
        with trio.fail_after(10):
            while True:  # the node learns of the closed connection a moment later: Retry-After until then
                again = await http.put(f"{up}/1", content=part_of(data, 1))
                if again.status_code != 409:
                    break
                assert again.json()["error"]["code"] == "part_in_progress"
                refusals += 1
                await trio.sleep(0.05)
        done = await http.post(f"/v1/uploads/{session_id}/finalize")
        got = await http.get(f"/v1/blobs/{done.json()['cid']}")
    assert again.status_code == 200, again.text
    assert done.status_code == 200 and got.content == data


async def test_a_held_part_sent_again_that_fails_its_checks_is_missing_until_sent_whole(served: Served) -> None:
    """Sent again in place, a part's range no longer holds what the session
    vouched for: a resend that fails leaves the part missing, and status
    (what a resuming client reads) says to send it, rather than a finalize
    that fails on the whole's SHA-256 with no part to blame."""
    data = os.urandom(2 * PART)
    async with served.client() as http:
        session_id = await create(http, data)
        up = f"/v1/uploads/{session_id}/parts"
        for n in (1, 2):
            assert (await http.put(f"{up}/{n}", content=part_of(data, n))).status_code == 200
        cut_short = await http.put(f"{up}/1", content=os.urandom(PART - 1))
        status = (await http.get(f"/v1/uploads/{session_id}")).json()
        early = await http.post(f"/v1/uploads/{session_id}/finalize")
        resent = await http.put(f"{up}/1", content=part_of(data, 1))
        done = await http.post(f"/v1/uploads/{session_id}/finalize")
        got = await http.get(f"/v1/blobs/{done.json()['cid']}")
    assert cut_short.status_code == 422 and cut_short.json()["error"]["code"] == "checksum_mismatch"
    assert status["missing"] == [1] and [p["part"] for p in status["received"]] == [2]
    assert early.status_code == 409 and early.json()["error"]["details"] == [{"missing": [1]}]
    assert resent.status_code == 200 and done.status_code == 200, done.text
    assert got.content == data


async def test_a_body_that_stalls_past_the_idle_timeout_is_cut_and_its_part_freed(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    served = await start_served(nursery, tmp_path / "home",
                                BridgeConfig(rate_limit=UNLIMITED, body_idle_timeout_s=0.5))
    data = os.urandom(PART)
    answers: list[object] = []
    async with served.client() as http, served.client() as hung, trio.open_nursery() as hanging:
        session_id = await create(http, data)
        up = f"/v1/uploads/{session_id}/parts"

        async def send_and_hang() -> None:
            # The connection stays open and silent: only the node's timeout ends it.
            try:
                answers.append(await hung.put(f"{up}/1", content=stalled(part_of(data, 1), trio.Event()),
                                              headers={"Content-Length": str(PART)}))
            except httpx.HTTPError as exc:  # the node answered and closed while the client still "sends"
                answers.append(exc)

        hanging.start_soon(send_and_hang)
        await until_written(served, session_id, MIB)
        with trio.fail_after(20):
            while True:
                again = await http.put(f"{up}/1", content=part_of(data, 1))
                if again.status_code != 409:
                    break
                await trio.sleep(0.1)
        done = await http.post(f"/v1/uploads/{session_id}/finalize")
        hanging.cancel_scope.cancel()  # the client goes away at last
    assert again.status_code == 200, again.text
    assert done.status_code == 200 and done.json()["cid"]
    cut = [a for a in answers if isinstance(a, httpx.Response)]
    assert all(a.status_code == 408 and a.json()["error"]["code"] == "body_timeout" for a in cut)
    served.node.stop()


class HeldVet:
    """The vet hook of a finalize (it runs once the parts are read), held
    until ``go_on``: a finalize that is reading the parts, stopped there."""

    def __init__(self) -> None:
        self.reading, self.go_on = threading.Event(), threading.Event()

    def __call__(self, key: str, size: int, content_type: str, name: str) -> tuple[dict, str]:
        self.reading.set()
        self.go_on.wait(10)
        return {}, ""


@contextlib.contextmanager
def finalize_held(uploads: Uploads, session_id: str) -> Iterator[list[object]]:
    """A finalize of ``session_id`` on a thread, held while it reads the
    parts (``uploads.vet`` is a HeldVet) for as long as the block runs; its
    outcome (the session, or what it raised) in the list once it ends."""
    held = uploads.vet
    assert isinstance(held, HeldVet)
    outcome: list[object] = []

    def finalize() -> None:
        try:
            outcome.append(uploads.finalize(session_id, "owner"))
        except Exception as exc:  # the outcome is what the test judges
            outcome.append(exc)

    worker = threading.Thread(target=finalize)
    worker.start()
    assert held.reading.wait(10)
    try:
        yield outcome
    finally:
        held.go_on.set()
        worker.join(10)


def two_parts(uploads: Uploads, data: bytes) -> str:
    """A session holding ``data`` (MIB + a few bytes) as its two parts."""
    session = uploads.create("owner", size=len(data), part_size=MIB)
    uploads.put_part(session.id, "owner", 1, [data[:MIB]])
    uploads.put_part(session.id, "owner", 2, [data[MIB:]])
    return session.id


def test_no_part_is_written_while_a_finalize_reads_the_parts(tmp_path: Path) -> None:
    """The other way round: a part that arrives while a finalize is checking
    the parts is refused, so the bytes checked are the bytes kept."""
    store = Store(tmp_path / "store")
    try:
        uploads = Uploads(BlobStore(LocalObjects(tmp_path / "objects"), store))
        uploads.vet = HeldVet()
        data = os.urandom(MIB + 10)
        session_id = two_parts(uploads, data)
        with finalize_held(uploads, session_id) as finalized:
            with pytest.raises(Conflict, match="being finalized"):  # the bytes checked are the bytes kept
                uploads.put_part(session_id, "owner", 2, [os.urandom(10)])
        done = finalized[0]
        assert done.state == "complete"  # type: ignore[attr-defined]
        got = b"".join(uploads.blobs.read(parse_cid(done.cid)))  # type: ignore[attr-defined]
        assert got == data
    finally:
        store.close()


def test_a_cancel_and_a_finalize_of_one_upload_never_overlap(tmp_path: Path) -> None:
    """A cancel that came while a finalize read the parts once dropped them
    under it (the finalize failed with "no object uploads/.../data"), or
    answered 200 while the finalize went on and wrote "complete" over the
    cancel. Now whichever starts second is refused with 409 until the first
    ends, and the session ends the way the first made it."""
    class SlowToDrop(LocalObjects):
        """The local object store, with a cancel's deletes held until told."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.dropping, self.go_on = threading.Event(), threading.Event()

        def delete(self, key: str) -> None:
            self.dropping.set()
            self.go_on.wait(10)
            super().delete(key)

    store = Store(tmp_path / "store")
    try:
        objects = SlowToDrop(tmp_path / "objects")
        uploads = Uploads(BlobStore(objects, store))
        uploads.vet = HeldVet()
        data = os.urandom(MIB + 10)

        # A cancel while a finalize reads: refused; the finalize completes.
        first = two_parts(uploads, data)
        with finalize_held(uploads, first) as finalized:
            with pytest.raises(Conflict, match="being finalized"):
                uploads.cancel(first, "owner")
        assert [getattr(done, "state", None) for done in finalized] == ["complete"]
        assert uploads.status(first, "owner").state == "complete"
        assert b"".join(uploads.blobs.read(parse_cid(finalized[0].cid))) == data  # type: ignore[attr-defined]

        # A finalize while a cancel drops the parts: refused; the cancel ends it.
        second = two_parts(uploads, data)
        objects.go_on.clear()
        cancelled: list[object] = []
        worker = threading.Thread(target=lambda: cancelled.append(uploads.cancel(second, "owner")))
        worker.start()
        assert objects.dropping.wait(10)
        try:
            uploads.finalize(second, "owner")
        except Conflict as refused:
            assert "being cancelled" in refused.message
        else:
            raise AssertionError("a finalize ran while a cancel dropped its parts")
        finally:
            objects.go_on.set()
            worker.join(10)
        assert [getattr(done, "state", None) for done in cancelled] == ["cancelled"]
        assert uploads.status(second, "owner").state == "cancelled"
    finally:
        store.close()


def test_a_session_a_finalize_works_on_is_not_swept_when_it_expires_meanwhile(tmp_path: Path) -> None:
    """The sweep forgets expired sessions with their parts. Before, it did
    so under a finalize that was reading them: the finalize failed (the
    file it was moving was gone) and the upload was lost."""
    store = Store(tmp_path / "store")
    try:
        clock = [1_000.0]
        uploads = Uploads(BlobStore(LocalObjects(tmp_path / "objects"), store), UploadLimits(ttl_s=60),
                          now=lambda: clock[0])
        uploads.vet = HeldVet()
        data = os.urandom(MIB + 10)
        session_id = two_parts(uploads, data)
        with finalize_held(uploads, session_id) as finalized:
            clock[0] += 3600  # the session's expiry passes while the finalize works
            assert uploads.sweep() == 0
        assert getattr(finalized[0], "state", finalized[0]) == "complete"
        assert b"".join(uploads.blobs.read(parse_cid(finalized[0].cid))) == data  # type: ignore[attr-defined]
        clock[0] += 3600  # ended a TTL ago now, and no request on it: swept
        assert uploads.sweep() == 1
    finally:
        store.close()


def test_creates_at_once_never_pass_the_open_uploads_cap_together(tmp_path: Path) -> None:
    """A client has at most ``max_open_per_owner`` open uploads. Each create
    counted them, then stored its session (an fsync later): creates at
    once each counted the same sessions and together passed the cap."""
    store = Store(tmp_path / "store")
    try:
        uploads = Uploads(BlobStore(LocalObjects(tmp_path / "objects"), store), UploadLimits(max_open_per_owner=3))
        outcomes: list[object] = []
        start = threading.Barrier(12)

        def create() -> None:
            start.wait(10)
            try:
                outcomes.append(uploads.create("owner", size=10))
            except RateLimited as refused:
                outcomes.append(refused)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            workers = [threading.Thread(target=create) for _ in range(12)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(10)
        finally:
            sys.setswitchinterval(interval)
        made = [o for o in outcomes if not isinstance(o, RateLimited)]
        assert len(outcomes) == 12 and len(made) == 3, f"{len(made)} uploads open, the cap is 3"
    finally:
        store.close()


def _cut_after_the_blob_moved(tmp_path: Path, *, declare_sha256: bool,  # type: ignore[no-untyped-def]
                              before_the_index: bool = False):
    """An upload on the local store, finalized, then its session put back as
    it was before: the state a kill -9 leaves between the in-place file's
    move under its CID and the session's completion (found by a kill -9
    search on node processes: the resumed upload failed its finalize for
    ever, "the blob does not match its declared size, sha256").
    ``before_the_index``: the blob's index entry goes too (the kill came
    between the move and the index)."""
    from registrygrid.storage import blobs as index

    store = Store(tmp_path / "store")
    uploads = Uploads(BlobStore(LocalObjects(tmp_path / "objects"), store))
    data = os.urandom(MIB + 10)
    session = uploads.create("owner", size=len(data), part_size=MIB,
                             sha256=hashlib.sha256(data).hexdigest() if declare_sha256 else None)
    uploads.put_part(session.id, "owner", 1, [data[:MIB]])
    uploads.put_part(session.id, "owner", 2, [data[MIB:]])
    before = uploads.status(session.id, "owner")
    done = uploads.finalize(session.id, "owner")
    index.put_session(store, before)
    if before_the_index:
        index.remove_blob(store, parse_cid(done.cid))
    return store, uploads, session.id, data, done.cid


def test_a_finalize_cut_after_the_blob_was_recorded_completes_when_it_is_run_again(tmp_path: Path) -> None:
    store, uploads, session_id, data, cid = _cut_after_the_blob_moved(tmp_path, declare_sha256=True)
    try:
        again = uploads.finalize(session_id, "owner")
        assert again.state == "complete" and again.cid == cid
        assert b"".join(uploads.blobs.read(parse_cid(cid))) == data
    finally:
        store.close()


def test_a_finalize_cut_before_the_blob_was_indexed_adopts_its_file_when_it_is_run_again(tmp_path: Path) -> None:
    store, uploads, session_id, data, cid = _cut_after_the_blob_moved(tmp_path, declare_sha256=True,
                                                                      before_the_index=True)
    try:
        assert uploads.blobs.verify()["unindexed"] == [f"blobs/{cid}"]
        again = uploads.finalize(session_id, "owner")  # no part sent again
        assert again.state == "complete" and again.cid == cid
        assert b"".join(uploads.blobs.read(parse_cid(cid))) == data
        assert uploads.blobs.verify()["unindexed"] == [] and uploads.blobs.verify()["ok"]
    finally:
        store.close()


def test_a_finalize_cut_that_cannot_name_its_blob_asks_for_the_parts_again(tmp_path: Path) -> None:
    store, uploads, session_id, data, cid = _cut_after_the_blob_moved(tmp_path, declare_sha256=False)
    try:
        try:
            uploads.finalize(session_id, "owner")
        except Conflict as refused:
            assert "send its 2 parts again" in refused.message and refused.details == [{"missing": [1, 2]}]
        else:
            raise AssertionError("a finalize with no bytes to read completed")
        assert uploads.status(session_id, "owner").parts == {}
        uploads.put_part(session_id, "owner", 1, [data[:MIB]])
        uploads.put_part(session_id, "owner", 2, [data[MIB:]])
        again = uploads.finalize(session_id, "owner")
        assert again.state == "complete" and again.cid == cid
        assert b"".join(uploads.blobs.read(parse_cid(cid))) == data
    finally:
        store.close()
