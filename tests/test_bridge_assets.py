"""Asset content through the bridge of a real node (HTTP on loopback, the
local object store in the node's home): resumable uploads in parts sent
in any order, checksums checked inline, finalize that is idempotent,
downloads with ranges and conditional requests, presigned URLs that grant
exactly one thing, retention and legal holds that block a purge."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

import httpx
import pytest
import trio
from test_bridge_support import REGISTRY, Served, make_token, metrics_text, raw_request, read_to_the_end, until_metric

from registrygrid.blobs.digest import parse_cid
from registrygrid.blobs.presign import PresignKeys

PART = 1 << 20

pytest_plugins = ("test_bridge_support",)  # its fixtures: served, threaded_served


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def part_of(data: bytes, n: int, size: int = PART) -> bytes:
    return data[(n - 1) * size:n * size]


async def upload(served: Served, data: bytes, *, order: list[int] | None = None, token: str | None = None,
                 declare: bool = True) -> dict:
    async with served.client(token) as http:
        created = await http.post("/v1/uploads", json={
            "size": len(data), "part_size": PART, "content_type": "application/x-test",
            **({"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()} if declare else {})})
        assert created.status_code == 201, created.text
        session = created.json()
        for n in order or range(1, session["parts"] + 1):
            sent = await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part_of(data, n))
            assert sent.status_code == 200, sent.text
        done = await http.post(f"/v1/uploads/{session['id']}/finalize")
        assert done.status_code == 200, done.text
        return done.json()  # type: ignore[no-any-return]


async def test_parts_sent_in_any_order_make_one_blob_whose_cid_is_its_sha256(served: Served) -> None:
    data = os.urandom(3 * PART + 12345)
    done = await upload(served, data, order=[4, 2, 1, 3])
    assert done["state"] == "complete" and done["received_bytes"] == len(data)
    assert parse_cid(done["cid"])[-32:] == hashlib.sha256(data).digest()
    async with served.client() as http:
        got = await http.get(f"/v1/blobs/{done['cid']}")
        again = await http.post(f"/v1/uploads/{done['id']}/finalize")  # idempotent
        meta = await http.get(f"/v1/blobs/{done['cid']}/meta")
    assert got.status_code == 200 and got.content == data
    assert got.headers["ETag"] == f'"{done["cid"]}"' and "immutable" in got.headers["Cache-Control"]
    assert again.status_code == 200 and again.json()["cid"] == done["cid"]
    assert meta.json()["size"] == len(data) and meta.json()["md5"] == hashlib.md5(data).hexdigest()
    # The parts are gone: only the blob remains in the object store.
    objects = served.home.path / "objects"
    assert [p.name for p in objects.rglob("*") if p.is_file()] == [done["cid"]]


async def test_an_interrupted_upload_resumes_from_the_parts_the_node_holds(served: Served) -> None:
    data = os.urandom(4 * PART)
    async with served.client() as http:
        session = (await http.post("/v1/uploads", json={"size": len(data), "part_size": PART})).json()
        for n in (1, 3):
            await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part_of(data, n))
        status = (await http.get(f"/v1/uploads/{session['id']}")).json()
        assert status["missing"] == [2, 4] and [p["part"] for p in status["received"]] == [1, 3]
        early = await http.post(f"/v1/uploads/{session['id']}/finalize")
        assert early.status_code == 409 and early.json()["error"]["details"] == [{"missing": [2, 4]}]
        for n in status["missing"]:
            await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part_of(data, n))
        done = await http.post(f"/v1/uploads/{session['id']}/finalize")
    assert done.status_code == 200 and parse_cid(done.json()["cid"])[-32:] == hashlib.sha256(data).digest()


async def test_a_part_that_fails_its_checksum_or_length_is_refused_and_leaves_the_session_as_it_was(
        served: Served) -> None:
    data = os.urandom(2 * PART)
    async with served.client() as http:
        session = (await http.post("/v1/uploads", json={"size": len(data), "part_size": PART})).json()
        up = f"/v1/uploads/{session['id']}/parts"
        wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        bad_md5 = await http.put(f"{up}/1", content=part_of(data, 1), headers={"Content-MD5": wrong_md5})
        bad_sha = await http.put(f"{up}/1", content=part_of(data, 1),
                                 headers={"X-Checksum-Sha256": hashlib.sha256(b"x").hexdigest()})
        short = await http.put(f"{up}/1", content=part_of(data, 1)[:-1])
        long = await http.put(f"{up}/2", content=part_of(data, 2) + b"!")
        beyond = await http.put(f"{up}/3", content=b"x")
        status = (await http.get(f"/v1/uploads/{session['id']}")).json()
        good = await http.put(f"{up}/1", content=part_of(data, 1),
                              headers={"Content-MD5": base64.b64encode(hashlib.md5(part_of(data, 1)).digest()).decode()})
    assert bad_md5.status_code == bad_sha.status_code == short.status_code == 422
    assert bad_md5.json()["error"]["code"] == "checksum_mismatch" and bad_md5.json()["error"]["details"][0]["path"] == "md5"
    assert bad_sha.json()["error"]["details"][0]["path"] == "sha256" and short.json()["error"]["details"][0]["path"] == "size"
    assert long.status_code == 413 and beyond.status_code == 422
    assert status["received"] == [] and status["missing"] == [1, 2]
    assert good.status_code == 200 and good.headers["ETag"] == f'"{hashlib.md5(part_of(data, 1)).hexdigest()}"'
    leftovers = [p for p in (served.home.path / "objects").rglob("*") if p.is_file()]
    # The upload's one file (parts are written in place on the local store):
    # refused parts are recorded nowhere, and no blob or staging object exists.
    assert [p.relative_to(served.home.path / "objects").parts[0] for p in leftovers] == ["uploads"]


async def test_a_whole_that_does_not_match_its_declared_sha256_is_refused_at_finalize(served: Served) -> None:
    data = os.urandom(PART + 10)
    async with served.client() as http:
        session = (await http.post("/v1/uploads", json={"size": len(data), "part_size": PART,
                                                        "sha256": hashlib.sha256(b"another file").hexdigest()})).json()
        for n in (1, 2):
            await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part_of(data, n))
        refused = await http.post(f"/v1/uploads/{session['id']}/finalize")
        missing = await http.get(f"/v1/blobs/{'b' * 59}")
        stats = (await http.get("/v1/stats")).json()
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "checksum_mismatch"
    assert not list((served.home.path / "objects" / "blobs").glob("*"))
    # Counted as the engine counts its refusals: they moved no metric before.
    assert stats["assets.rejected.checksum_mismatch"] == 1
    assert stats[f"assets.rejected.{missing.json()['error']['code']}"] == 1


async def test_a_declared_sha256_the_node_holds_completes_at_creation_with_no_bytes_sent(served: Served) -> None:
    data = os.urandom(PART // 2)
    first = await upload(served, data)
    async with served.client() as http:
        second = await http.post("/v1/uploads", json={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    assert second.status_code == 201
    assert second.json()["state"] == "complete" and second.json()["deduplicated"] is True
    assert second.json()["cid"] == first["cid"]


async def test_ranges_multi_ranges_and_conditional_requests(served: Served) -> None:
    # Both ranges end in a byte a careless multipart reader would strip.
    data = bytearray(os.urandom(PART + 777))
    data[1], data[102] = ord("\n"), ord("\r")
    data = bytes(data)
    cid = (await upload(served, data))["cid"]
    url = f"/v1/blobs/{cid}"
    async with served.client() as http:
        one = await http.get(url, headers={"Range": "bytes=10-19"})
        suffix = await http.get(url, headers={"Range": "bytes=-5"})
        multi = await http.get(url, headers={"Range": "bytes=0-1,100-102"})
        unsatisfiable = await http.get(url, headers={"Range": f"bytes={len(data)}-"})
        cached = await http.get(url, headers={"If-None-Match": f'"{cid}"'})
        stale_if_range = await http.get(url, headers={"Range": "bytes=0-0", "If-Range": '"other"'})
        # A client resuming the bytes of another blob (If-Match) must not get
        # these: 412, before any byte. Weak tags never match (strong comparison).
        other = await http.get(url, headers={"Range": "bytes=10-19", "If-Match": '"bafkother"'})
        weak = await http.head(url, headers={"If-Match": f'W/"{cid}"'})
        same = await http.get(url, headers={"Range": "bytes=10-19", "If-Match": f'"bafkother", "{cid}"'})
        head = await http.head(url)
    assert one.status_code == 206 and one.content == data[10:20]
    assert one.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert suffix.status_code == 206 and suffix.content == data[-5:]
    assert multi.status_code == 206 and multi.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    boundary = multi.headers["Content-Type"].split("boundary=")[1]
    parts = [p for p in multi.content.split(f"\r\n--{boundary}".encode()) if b"Content-Range" in p]
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), so a
    # part's body is everything after its headers: the random bytes may end in CR or LF.
    assert [p.split(b"\r\n\r\n", 1)[1] for p in parts] == [data[0:2], data[100:103]]
    assert int(multi.headers["Content-Length"]) == len(multi.content)
    assert unsatisfiable.status_code == 416 and unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    assert cached.status_code == 304 and not cached.content
    assert stale_if_range.status_code == 200 and len(stale_if_range.content) == len(data)
    assert other.status_code == 412 and other.json()["error"]["code"] == "precondition_failed"
    assert weak.status_code == 412 and same.status_code == 206 and same.content == data[10:20]
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data)) and not head.content


async def test_a_range_with_thousands_of_digits_is_read_as_beyond_the_end_never_a_500(served: Served) -> None:
    # int() of 5,000 digits raised past Python's limit: a 500 and a traceback
    # for anyone holding a presigned link.
    data = os.urandom(1000)
    cid = (await upload(served, data))["cid"]
    huge = "9" * 5000
    async with served.client() as http:
        whole = await http.get(f"/v1/blobs/{cid}", headers={"Range": f"bytes=0-{huge}"})
        tail = await http.get(f"/v1/blobs/{cid}", headers={"Range": f"bytes=-{huge}"})
        past = await http.get(f"/v1/blobs/{cid}", headers={"Range": f"bytes={huge}-"})
        padded = await http.get(f"/v1/blobs/{cid}", headers={"Range": f"bytes={'0' * 5000}10-19"})
        arabic = await http.get(f"/v1/blobs/{cid}", headers={"Range": "bytes=\u0661-\u0662".encode()})
        empty = [await http.get(f"/v1/blobs/{cid}", headers={"Range": r}) for r in ("bytes=", "bytes=,")]
    assert whole.status_code == 206 and whole.content == data
    assert tail.status_code == 206 and tail.content == data
    assert past.status_code == 416 and past.headers["Content-Range"] == "bytes */1000"
    assert padded.status_code == 206 and padded.content == data[10:20]
    assert arabic.status_code == 200 and arabic.content == data  # not ASCII digits: no range header at all
    # No range-spec at all is an invalid header, ignored (RFC 9110), not 416.
    assert [(e.status_code, e.content == data) for e in empty] == [(200, True), (200, True)]


async def test_presigned_urls_grant_one_method_on_one_object_until_they_expire(served: Served) -> None:
    data = os.urandom(PART + 1)
    async with served.client() as http:
        created = (await http.post("/v1/uploads", json={"size": len(data), "part_size": PART,
                                                        "presign": {"expires_in": 600}})).json()
    urls = created["part_urls"]
    assert len(urls) == 2
    async with served.client() as http:
        # {} asks for the defaults, as the presign endpoints read it; false for none.
        defaults = (await http.post("/v1/uploads", json={"size": 10, "presign": {}})).json()
        none = (await http.post("/v1/uploads", json={"size": 10, "presign": False})).json()
    assert len(defaults["part_urls"]) == 1 and not none.get("part_urls")
    async with served.client("no-such-token") as anonymous:
        # No token: the URLs alone upload the parts.
        for n, url in enumerate(urls, start=1):
            sent = await anonymous.put(url, content=part_of(data, n))
            assert sent.status_code == 200, sent.text
        swapped = await anonymous.put(urls[0].replace("/parts/1", "/parts/2"), content=part_of(data, 2))
        tampered = await anonymous.put(re.sub(r"rg-expires=\d+", "rg-expires=9999999999", urls[0]),
                                       content=part_of(data, 1))
        wrong_method = await anonymous.get(urls[0])
        too_big = await anonymous.put(urls[1], content=part_of(data, 2) + b"extra")
    assert swapped.status_code == tampered.status_code == 403
    assert swapped.json()["error"]["code"] == "presign_invalid"
    assert wrong_method.status_code in (403, 405)
    assert too_big.status_code == 403
    async with served.client() as http:
        done = (await http.post(f"/v1/uploads/{created['id']}/finalize")).json()
        # Three seconds: the fresh GET below comes after another presign and
        # a new client, which a loaded machine may take past one.
        short = (await http.post(f"/v1/blobs/{done['cid']}/presign", json={"expires_in": 3})).json()
        scoped = (await http.post(f"/v1/blobs/{done['cid']}/presign", json={"expires_in": 600,
                                                                          "ip": "10.0.0.0/8"})).json()
    async with served.client("no-such-token") as anonymous:
        fresh = await anonymous.get(short["url"])
        assert fresh.status_code == 200 and fresh.content == data
        assert fresh.headers["Cache-Control"].startswith("public")
        elsewhere = await anonymous.get(scoped["url"])  # we are 127.0.0.1
        await trio.sleep(4.1)  # past the expiry, rounded up to the next second
        expired = await anonymous.get(short["url"])
    assert elsewhere.status_code == 403
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "presign_expired"


async def test_retention_and_legal_holds_block_a_purge_until_they_end(served: Served) -> None:
    cid = (await upload(served, os.urandom(1000)))["cid"]
    writer = await make_token(served, "writer")
    async with served.client() as admin, served.client(writer) as http:
        not_admin = await http.delete(f"/v1/blobs/{cid}")
        held = await admin.put(f"/v1/blobs/{cid}/holds/case-7", json={"reason": "litigation"})
        refused = await admin.delete(f"/v1/blobs/{cid}")
        released = await admin.delete(f"/v1/blobs/{cid}/holds/case-7")
        retained = await admin.put(f"/v1/blobs/{cid}/retention", json={"until_ms": 4_102_444_800_000})
        shortened = await admin.put(f"/v1/blobs/{cid}/retention", json={"until_ms": 1})
        still = await admin.delete(f"/v1/blobs/{cid}")
    assert not_admin.status_code == 403
    assert held.status_code == 200 and "case-7" in held.json()["holds"]
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "retention_held"
    assert released.status_code == 200 and released.json()["holds"] == {}
    assert retained.status_code == 200 and shortened.status_code == 409 and still.status_code == 409


async def test_a_blob_is_purged_from_the_index_and_the_object_store(served: Served) -> None:
    cid = (await upload(served, os.urandom(5000)))["cid"]
    async with served.client() as http:
        purged = await http.delete(f"/v1/blobs/{cid}")
        gone = await http.get(f"/v1/blobs/{cid}")

        async def audited() -> bool:
            entries = (await http.get("/v1/audit", params={"limit": 1000})).json()["entries"]
            return any(e["action"] == "delete" and e["target"] == f"blob/{cid}" for e in entries)

        logged = False
        for _ in range(50):  # the audit flusher runs every ~200 ms
            logged = await audited()
            if logged:
                break
            await trio.sleep(0.1)
    assert purged.status_code == 200 and purged.json()["purged"] is True
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "blob_missing"
    assert not list((served.home.path / "objects" / "blobs").glob("*"))
    assert logged, "the purge is in the audit ledger"


async def test_uploads_belong_to_the_token_that_made_them(served: Served) -> None:
    one, two = await make_token(served, "writer"), await make_token(served, "writer")
    async with served.client(one) as first, served.client(two) as second:
        session = (await first.post("/v1/uploads", json={"size": 10})).json()
        theirs = await second.put(f"/v1/uploads/{session['id']}/parts/1", content=b"0123456789")
        peek = await second.get(f"/v1/uploads/{session['id']}")
    assert theirs.status_code == 403 and peek.status_code == 403


async def test_a_token_limited_to_a_registry_reaches_no_asset_bytes(served: Served) -> None:
    # Bytes belong to no registry: such a token read any blob, made a 7-day
    # public link to it and uploaded, though the asset records naming the
    # blob answered it 403.
    blob = await upload(served, os.urandom(3000))
    cid = blob["cid"]
    reader = await make_token(served, "reader", registry=REGISTRY)
    writer = await make_token(served, "writer", registry=REGISTRY)
    async with served.client(reader) as read, served.client(writer) as write:
        answers = [
            await read.get(f"/v1/blobs/{cid}"),
            await read.get(f"/v1/blobs/{cid}/meta"),
            await read.post(f"/v1/blobs/{cid}/presign", json={"expires_in": 604800}),
            await read.post("/v1/bundles", json={"items": [{"cid": cid}]}),
            await write.post("/v1/uploads", json={"size": 10}),
        ]
    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "policy_denied"
        assert f"limited to registry {REGISTRY}" in answer.json()["error"]["message"]
    assert (await upload(served, b"0123456789"))["cid"]  # a token not limited to one still may


async def test_revoking_a_token_ends_the_presigned_urls_it_asked_for(served: Served) -> None:
    # A presigned link outlived the token that made it by up to 7 days: a
    # leaked token's revocation left its links working.
    blob = await upload(served, os.urandom(2000))
    cid = blob["cid"]
    writer = await make_token(served, "writer")
    other = await make_token(served, "reader")
    async with served.client(writer) as http:
        link = (await http.post(f"/v1/blobs/{cid}/presign", json={"expires_in": 600})).json()["url"]
        session = (await http.post("/v1/uploads", json={"size": 10, "presign": {"expires_in": 600}})).json()
    async with served.client(other) as http:
        kept = (await http.post(f"/v1/blobs/{cid}/presign", json={"expires_in": 600})).json()["url"]
    async with served.client("no-such-token") as anonymous:
        before = await anonymous.get(link)
    writer_id = writer.removeprefix("rgt_").split(".")[0]
    async with served.client() as admin:
        assert (await admin.delete(f"/v1/tokens/{writer_id}")).status_code == 200
    async with served.client("no-such-token") as anonymous:
        after = await anonymous.get(link)
        part = await anonymous.put(session["part_urls"][0], content=b"0123456789")
        unaffected = await anonymous.get(kept)
    assert before.status_code == 200 and before.content
    assert after.status_code == 403 and after.json()["error"]["code"] == "presign_invalid"
    assert f"token {writer_id}, which was revoked" in after.json()["error"]["message"]
    assert part.status_code == 403 and part.json()["error"]["code"] == "presign_invalid"
    assert unaffected.status_code == 200 and unaffected.content == before.content

    async def audited() -> list[dict]:
        async with served.client() as admin:
            return (await admin.get("/v1/audit", params={"limit": 1000})).json()["entries"]
    with trio.fail_after(10):  # reads are folded and flushed in batches
        while not any(e["actor"] == f"presigned:token:token-{writer_id}#{writer_id}" for e in await audited()):
            await trio.sleep(0.1)


async def test_bad_requests_get_typed_errors(served: Served, tmp_path: Path) -> None:
    async with served.client() as http:
        no_size = await http.post("/v1/uploads", json={"content_type": "a/b"})
        extra = await http.post("/v1/uploads", json={"size": 1, "colour": "red"})
        bad_part_size = await http.post("/v1/uploads", json={"size": 10, "part_size": 5})
        bad_sha = await http.post("/v1/uploads", json={"size": 10, "sha256": "xyz"})
        bad_cid = await http.get("/v1/blobs/not-a-cid")
        missing = await http.get("/v1/blobs/bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq")
        no_session = await http.get("/v1/uploads/up_00")
        bad_md5 = await http.put("/v1/uploads/up_00/parts/1", content=b"x", headers={"Content-MD5": "nope"})
    assert no_size.status_code == extra.status_code == bad_part_size.status_code == bad_sha.status_code == 422
    # A nullable member's error names the rule its value broke, not only
    # that neither "a number in range" nor "null" fits.
    assert "5 is less than the minimum of 1048576" in bad_part_size.json()["error"]["message"]
    assert bad_part_size.json()["error"]["details"][0]["path"] == "/part_size"
    assert bad_cid.status_code == 422 and missing.status_code == 404 and no_session.status_code == 404
    assert bad_md5.status_code in (400, 404)


async def test_rotating_the_signing_key_keeps_earlier_urls_working(served: Served) -> None:
    cid = (await upload(served, os.urandom(100)))["cid"]
    async with served.client() as http:
        before = (await http.post(f"/v1/blobs/{cid}/presign", json={"expires_in": 600})).json()["url"]
        rotated = await http.post("/v1/presign/rotate")
        after = (await http.post(f"/v1/blobs/{cid}/presign", json={"expires_in": 600})).json()["url"]
    writer = await make_token(served, "writer")
    async with served.client(writer) as http:
        not_admin = await http.post("/v1/presign/rotate")
    async with served.client("no-such-token") as anonymous:
        old, new = await anonymous.get(before), await anonymous.get(after)
    assert rotated.status_code == 200 and len(rotated.json()["keys"]) == 2
    assert rotated.json()["kid"] in after and rotated.json()["kid"] not in before
    assert old.status_code == new.status_code == 200 and not_admin.status_code == 403


async def test_rotations_at_once_each_keep_their_key_and_the_key_file_whole(served: Served) -> None:
    # Each rotation runs on a thread of the bridge's pool. They once shared
    # one temporary file name (per process) and one unguarded key list: a
    # rotation answered 500 (its temporary file renamed away by another),
    # or a key already handed out went missing from the list and the file,
    # so URLs it signed stopped working before their time.
    answers: list = []

    async def rotate(http: object) -> None:
        answers.append(await http.post("/v1/presign/rotate"))  # type: ignore[attr-defined]

    async with served.client() as http:
        async with trio.open_nursery() as rotations:
            for _ in range(24):
                rotations.start_soon(rotate, http)
    assert [a.status_code for a in answers] == [200] * 24, [a.text for a in answers if a.status_code != 200]
    made = {a.json()["kid"] for a in answers}
    on_disk = {k.kid for k in PresignKeys.open(served.home.path / "presign-keys.json").keys}
    assert len(made) == 24 and made <= on_disk and made <= {k.kid for k in served.node.assets.presign.keys}
    assert not list(served.home.path.glob(".presign-keys.json.*"))  # no temporary file left behind


async def test_an_upload_resumes_after_the_node_restarts(nursery: trio.Nursery, tmp_path: Path) -> None:
    from test_bridge_support import start_served

    data = os.urandom(3 * PART)
    first = await start_served(nursery, tmp_path / "home")
    async with first.client() as http:
        session = (await http.post("/v1/uploads", json={"size": len(data), "part_size": PART})).json()
        await http.put(f"/v1/uploads/{session['id']}/parts/2", content=part_of(data, 2))
    await first.stop()  # its store closed, the home free

    again = await start_served(nursery, tmp_path / "home")  # the same home: its store and objects
    async with again.client() as http:
        status = (await http.get(f"/v1/uploads/{session['id']}")).json()
        for n in status["missing"]:
            await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part_of(data, n))
        done = (await http.post(f"/v1/uploads/{session['id']}/finalize")).json()
        got = await http.get(f"/v1/blobs/{done['cid']}")
    assert status["missing"] == [1, 3] and got.content == data
    again.node.stop()


async def test_what_fuzzing_found_gets_a_typed_error_and_changes_nothing(served: Served) -> None:
    """Each request here once answered 500, or stored what it refused, or broke later requests."""
    from registrygrid.storage.blobs import iter_sessions

    def sessions() -> int:
        return sum(1 for _ in iter_sessions(served.node.store))

    async with served.client() as http:
        before = sessions()
        for bad in ({"size": 1, "content_type": 5}, {"size": 1, "name": 5}, {"size": 1, "sha256": 5},
                    {"size": 1, "md5": 5}, {"size": 1, "part_size": "x"}, {"size": 10, "name": ["x"]},
                    {"size": 10, "content_type": ["/"]}, {"size": 1, "content_type": "text/plain\r\nX-Evil: 1"},
                    {"size": 1, "presign": {"expires_in": 0}}, {"size": 1, "presign": {"ip": "nope"}},
                    {"size": 1, "presign": {"expires_in": True}}):
            answer = await http.post("/v1/uploads", json=bad)
            assert answer.status_code == 422, (bad, answer.text)
        assert sessions() == before  # nothing stored by a refused creation
        whole_float = await http.post("/v1/uploads", json={"size": 10, "part_size": 1048576.0})
        assert whole_float.status_code == 201 and whole_float.json()["part_size"] == 1048576

        empty = await upload(served, b"")
        cid = empty["cid"]
        suffix = await http.get(f"/v1/blobs/{cid}", headers={"Range": "bytes=-5"})
        assert suffix.status_code == 200 and suffix.content == b"" and "X-Trace-Id" in suffix.headers
        huge = await http.put(f"/v1/blobs/{cid}/retention", json={"until_ms": 2**70})
        control = await http.post("/v1/bundles", json={"name": "a\n.zip", "members": [{"name": "x", "cid": cid}]})
        after_control = await http.get(f"/v1/blobs/{cid}/meta")  # the same keep-alive connection still works
        bad_url = await http.post("/v1/bundles", json={"members": [{"name": "x", "url": "http://[::1"}]})
        wide_digit = await http.put(f"/v1/uploads/{whole_float.json()['id']}/parts/\uff11", content=b"0123456789")
        accented_hold = await http.put(f"/v1/blobs/{cid}/holds/\u00e9", json={"reason": "r"})
        stray_bits = await http.get(f"/v1/blobs/{cid[:-1]}{'b' if cid[-1] != 'b' else 'c'}")
        url = (await http.post(f"/v1/blobs/{cid}/presign", json={"expires_in": 60})).json()["url"]
    async with served.client("no-such-token") as anonymous:
        non_ascii_sig = await anonymous.get(url.split("rg-sig=")[0] + "rg-sig=%C3%A9")
    assert huge.status_code == 422 and control.status_code == 422 and after_control.status_code == 200
    assert bad_url.status_code == 422 and wide_digit.status_code == 400 and accented_hold.status_code == 422
    assert stray_bits.status_code == 422
    assert non_ascii_sig.status_code == 403 and non_ascii_sig.json()["error"]["code"] == "presign_invalid"


async def test_a_part_changed_on_disk_after_it_arrived_fails_the_finalize(served: Served) -> None:
    """Without a declared SHA-256, finalize checks each part's range of the
    file they were written into against the digest it had on arrival."""
    data = os.urandom(2 * PART)
    async with served.client() as http:
        session = (await http.post("/v1/uploads", json={"size": len(data), "part_size": PART})).json()
        for n in (1, 2):
            await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part_of(data, n))
        flip_byte(served.home.path / "objects" / "uploads" / session["id"] / "data", PART + 10)  # in part 2
        refused = await http.post(f"/v1/uploads/{session['id']}/finalize")
    assert refused.status_code == 422 and refused.json()["error"]["details"] == [{"part": 2}]
    assert not list((served.home.path / "objects" / "blobs").glob("*"))


async def test_a_zip_listing_of_a_blob_that_is_no_zip_is_unprocessable_content(served: Served) -> None:
    """The request is well-formed (a CID the node holds); the stored bytes are
    what cannot be read as a ZIP: 422 zip_malformed, not a 400 that would
    blame the request."""
    cid = (await upload(served, b"GGUF" + os.urandom(5000)))["cid"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("README.md", b"# a model\n" * 100)
    truncated = (await upload(served, archive.getvalue()[:-30]))["cid"]  # no end of central directory
    async with served.client() as http:
        listing = await http.get(f"/v1/blobs/{cid}/manifest")
        entry = await http.get(f"/v1/blobs/{cid}/entries/README.md")
        broken = await http.get(f"/v1/blobs/{truncated}/manifest")
    for answer in (listing, entry, broken):
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "zip_malformed"


async def test_a_blob_whose_bytes_are_gone_from_the_store_answers_404_not_a_cut_off_200(served: Served) -> None:
    data = os.urandom(PART + 5)
    cid = (await upload(served, data))["cid"]
    (served.home.path / "objects" / "blobs" / cid).unlink()  # the index still lists it
    async with served.client() as http:
        whole = await http.get(f"/v1/blobs/{cid}")
        ranged = await http.get(f"/v1/blobs/{cid}", headers={"Range": "bytes=10-19"})
    for answer in (whole, ranged):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "blob_missing"


async def test_a_retention_date_already_past_is_refused_not_taken_as_done(served: Served) -> None:
    # `rgrid asset retain CID --until 1970-01-02` answered 200 and kept nothing.
    cid = (await upload(served, os.urandom(100)))["cid"]
    async with served.client() as admin:
        past = await admin.put(f"/v1/blobs/{cid}/retention", json={"until_ms": 86_400_000})
        assert past.status_code == 422 and "in the past" in past.json()["error"]["message"]
        assert (await admin.get(f"/v1/blobs/{cid}")).status_code == 200
        assert (await admin.delete(f"/v1/blobs/{cid}")).status_code == 200  # nothing was retained


async def test_a_blob_whose_stored_bytes_are_short_is_cut_not_left_waiting_for_bytes_that_never_come(
        served: Served) -> None:
    # 200 with the whole Content-Length went out, then the few bytes held,
    # then nothing: the client waited for good, the node logged nothing.
    data = os.urandom(PART + 5)
    cid = (await upload(served, data))["cid"]
    stored = served.home.path / "objects" / "blobs" / cid
    stored.write_bytes(data[:1000])  # truncated where it is stored; the index still says PART + 5
    with trio.fail_after(30):
        async with served.client() as http:
            for headers in ({}, {"Range": "bytes=500-1999"}, {"Range": "bytes=0-9,900-1099"}):
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.get(f"/v1/blobs/{cid}", headers=headers)
            metrics = (await http.get("/metrics")).text  # the node serves on, and counted each
    assert 'rgrid_http_answers_cut_total{code="integrity_error",route="/v1/blobs/{cid}"} 3.0' in metrics


def _reset(sock: trio.socket.SocketType) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that vanishes does."""
    import socket
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _big_blob(served: Served) -> tuple[bytes, str]:
    """24 MiB stored: more than loopback's socket buffers hold, so writes back up."""
    data = os.urandom(24 * PART)
    return data, (await upload(served, data))["cid"]


async def _stalled_download(served: Served, until: str) -> tuple[bytes, str, trio.socket.SocketType]:
    """A big blob, and a GET of it that reads nothing, once the node's metrics show ``until``."""
    data, cid = await _big_blob(served)
    sock = await raw_request(served, f"/v1/blobs/{cid}")
    await until_metric(served, until)
    return data, cid, sock


async def test_a_download_whose_client_stops_reading_is_cut_after_the_write_timeout(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # It held its ~2 MB of queued bytes and its connection for as long as
    # the client stayed connected: 150 such clients held 400 MB.
    from registrygrid.node.bridge import streaming

    monkeypatch.setattr(streaming, "WRITE_TIMEOUT_S", 1.0)
    with trio.fail_after(40):
        data, cid, sock = await _stalled_download(
            served, 'rgrid_http_answers_cut_total{code="slow_client",route="/v1/blobs/{cid}"} 1.0')
        assert await read_to_the_end(sock) < len(data)  # the connection was closed under it
        async with served.client() as http:  # and the node serves on
            assert (await http.get(f"/v1/blobs/{cid}")).content == data


async def test_a_client_that_goes_away_mid_download_is_no_error_in_the_log_or_the_metrics(
        served: Served) -> None:
    # aiohttp says so as a plain ConnectionError("Connection lost") while a
    # write waits for the socket: it was logged as an unexpected error with
    # a traceback and counted as internal_error; the other forms of it were
    # logged at ERROR by aiohttp, one traceback a client.
    import logging

    class Seen(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    seen = Seen()
    package = logging.getLogger("registrygrid")
    package.addHandler(seen)
    try:
        _, cid = await _big_blob(served)
        with trio.fail_after(30):
            for _ in range(3):
                sock = await raw_request(served, f"/v1/blobs/{cid}")
                await sock.recv(4096)
                _reset(sock)
            await trio.sleep(1.5)  # the node's writes fail meanwhile
            metrics = await metrics_text(served)
    finally:
        package.removeHandler(seen)
    assert [r.getMessage() for r in seen.records] == []
    assert 'code="internal_error"' not in metrics


async def test_downloads_past_the_cap_are_refused_with_retry_after_until_a_slot_frees(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each download holds a socket, an open object and up to ~2 MB queued
    # for its client: unbounded, 150 stalled ones held 400 MB. (The cap is 1 here.)
    from registrygrid.node.bridge import asset_routes

    monkeypatch.setattr(asset_routes, "MAX_DOWNLOADS", 1)
    with trio.fail_after(30):
        data, cid, stalled = await _stalled_download(served, "rgrid_bridge_downloads 1.0")
        async with served.client() as http:
            refused = await http.get(f"/v1/blobs/{cid}")
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert "1 downloads are under way" in refused.json()["error"]["message"]
            assert (await http.head(f"/v1/blobs/{cid}")).status_code == 200  # a HEAD sends no bytes: no slot
            _reset(stalled)  # the node's next write fails and the slot frees
            await until_metric(served, "rgrid_bridge_downloads 0.0")
            assert (await http.get(f"/v1/blobs/{cid}")).content == data


@pytest.mark.parametrize("way", ["token", "presigned"])
async def test_a_part_whose_token_is_revoked_while_its_body_arrives_is_not_recorded(served: Served, way: str) -> None:
    # The token was checked at the headers only: a part trickled in after
    # the revocation was stored and answered 200, through a presigned part
    # URL too.
    import httpx

    writer = await make_token(served, "writer")
    writer_id = writer.removeprefix("rgt_").split(".")[0]
    async with served.client(writer) as http:
        session = (await http.post("/v1/uploads", json={"size": 1000, "presign": {"expires_in": 600}})).json()
    path = session["part_urls"][0] if way == "presigned" else f"/v1/uploads/{session['id']}/parts/1"
    auth = f"Authorization: Bearer {writer}\r\n" if way == "token" else ""
    where = httpx.URL(served.url)
    body = os.urandom(1000)
    with trio.fail_after(30):
        sock = trio.socket.socket()
        await sock.connect((where.host, where.port))
        await sock.send(f"PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n".encode()
                        + body[:100])
        await trio.sleep(0.3)  # the token was checked; the body is on its way
        async with served.client() as admin:
            assert (await admin.delete(f"/v1/tokens/{writer_id}")).status_code == 200
        await trio.sleep(1.1)  # past the bridge's token cache
        await sock.send(body[100:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await sock.recv(65536)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 401" if way == "token" else b"HTTP/1.1 403"), answer[:200]
    async with served.client() as admin:
        status = (await admin.get(f"/v1/uploads/{session['id']}")).json()
    assert status["received"] == [] and status["missing"] == [1], status


async def test_forged_presigned_grants_are_rate_limited_by_address_not_written_to_the_ledger_at_any_rate(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    from test_bridge_support import start_served

    from registrygrid.node.bridge import BridgeConfig
    from registrygrid.node.bridge.auth import RateLimit

    # A token per 100 s: the bucket stays empty however slowly the twelve go
    # on a loaded machine (at 2/s, one took 1.1 s and a token came back).
    served = await start_served(nursery, tmp_path / "home", BridgeConfig(rate_limit=RateLimit(rate=0.01, burst=5.0)))
    cid = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
    async with served.client("no-such-token") as anonymous:
        statuses = [(await anonymous.get(f"/v1/blobs/{cid}?rg-method=GET&rg-expires=9999999999&rg-kid=k1"
                                         f"&rg-sig=forged{i}")).status_code for i in range(12)]
    assert statuses[:5] == [403] * 5 and set(statuses[5:]) == {429}
    served.node.stop()


async def test_open_uploads_count_against_the_blob_quota_before_their_bytes_are_blobs(served: Served) -> None:
    # The quota saw blobs only: 64 open uploads a client, each up to the
    # largest blob, filled the disk with parts it never counted.
    import dataclasses

    blobs = served.node.assets.blobs
    blobs.limits = dataclasses.replace(blobs.limits, quota_bytes=3 << 20)
    async with served.client() as http:
        first = await http.post("/v1/uploads", json={"size": 2 << 20})
        second = await http.post("/v1/uploads", json={"size": 2 << 20})
        assert (await http.delete(f"/v1/uploads/{first.json()['id']}")).status_code in (200, 204)
        third = await http.post("/v1/uploads", json={"size": 2 << 20})
    assert first.status_code == 201
    assert second.status_code == 507 and second.json()["error"]["code"] == "quota_exceeded"
    assert third.status_code == 201
