"""ZIPs, metadata and checks through a real node's bridge: a stored ZIP's
manifest and single entries, bundles rebuilt on the fly (readable by
zipfile, byte-stable, conditional), what the bytes say of themselves kept
with the blob, and the checks (config.json and a policy record) that let
bytes in and out, each verdict audited."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from test_bridge_support import Served, start_served

from registrygrid.home import Home

MIB = 1 << 20

pytest_plugins = ("test_bridge_support",)  # its fixtures: served, threaded_served


async def put_blob(served: Served, data: bytes, *, content_type: str = "application/octet-stream",
                   name: str = "") -> tuple[int, dict]:
    async with served.client() as http:
        created = await http.post("/v1/uploads", json={"size": len(data), "content_type": content_type,
                                                       "name": name})
        if created.status_code != 201:
            return created.status_code, created.json()
        session = created.json()
        for n in range(1, session["parts"] + 1):
            part = data[(n - 1) * session["part_size"]:n * session["part_size"]]
            sent = await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=part)
            assert sent.status_code == 200, sent.text
        done = await http.post(f"/v1/uploads/{session['id']}/finalize")
        return done.status_code, done.json()


def a_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


def safetensors(tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    sizes = {"F32": 4, "F16": 2}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


async def test_a_stored_zip_lists_its_entries_and_serves_one_of_them(served: Served) -> None:
    files = {"README.md": b"# hello\n", "weights/a.bin": os.urandom(300_000), "weights/b.bin": b"b" * 50_000}
    status, done = await put_blob(served, a_zip(files), content_type="application/zip", name="pack.zip")
    assert status == 200, done
    assert done["meta"]["format"] == "zip" and done["meta"]["entry_count"] == 3
    async with served.client() as http:
        listing = (await http.get(f"/v1/blobs/{done['cid']}/manifest")).json()
        one = await http.get(f"/v1/blobs/{done['cid']}/entries/weights/a.bin")
        absent = await http.get(f"/v1/blobs/{done['cid']}/entries/nope.txt")
    assert [(e["name"], e["size"], e["sha256"]) for e in listing["entries"]] == [
        (n, len(c), hashlib.sha256(c).hexdigest()) for n, c in files.items()]
    assert listing["top_level"] == ["README.md", "weights/"]
    assert one.status_code == 200 and one.content == files["weights/a.bin"]
    assert absent.status_code == 404


async def test_a_purged_zip_takes_its_cached_entry_listing_with_it(served: Served) -> None:
    # The listing names the entries (patients/alice-smith/diagnosis.txt) and
    # stayed on disk after a purge or an erasure, read by nothing, forever.
    status, done = await put_blob(served, a_zip({"patients/alice-smith/diagnosis.txt": b"private"}),
                                  content_type="application/zip")
    assert status == 200, done
    cached = served.home.path / "objects" / "manifests" / done["cid"]
    async with served.client() as http:
        assert (await http.get(f"/v1/blobs/{done['cid']}/manifest")).status_code == 200
        assert cached.is_file()
        assert (await http.delete(f"/v1/blobs/{done['cid']}")).status_code == 200
    assert not cached.exists()
    assert not [p for p in (served.home.path / "objects").rglob("*") if p.is_file() and b"alice" in p.read_bytes()]


async def test_a_bundle_of_many_entries_of_one_archive_reads_its_listing_once_a_pass(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each member re-read and re-parsed the whole cached listing (twice) and
    # scanned it for its name: 3,000 entries of a 20,000-entry archive held
    # a worker thread for 505 s.
    from registrygrid.blobs import bundles
    files = {f"f/{i:03}.txt": f"file {i}".encode() for i in range(60)}
    _, z = await put_blob(served, a_zip(files), content_type="application/zip")
    reads: list[bytes] = []
    real = bundles.manifest_of
    monkeypatch.setattr(bundles, "manifest_of", lambda blobs, cid: (reads.append(cid), real(blobs, cid))[1])
    members = [{"name": f"out/{n}", "cid": z["cid"], "entry": n} for n in files]
    async with served.client() as http:
        answer = await http.post("/v1/bundles", json={"members": members})
    assert answer.status_code == 200, answer.text
    with zipfile.ZipFile(io.BytesIO(answer.content)) as bundle:
        assert {n: bundle.read(f"out/{n}") for n in files} == files
    assert len(reads) == 2  # one for the check before the first byte, one while the bundle streams


async def test_a_bundle_rebuilds_a_zip_of_blobs_and_entries_that_zipfile_reads_the_same_every_time(
        served: Served) -> None:
    weights, card = os.urandom(2 * MIB + 3), b"---\nlicense: mit\n---\n# card\n"
    _, w = await put_blob(served, weights)
    _, z = await put_blob(served, a_zip({"inner/card.md": card}), content_type="application/zip")
    members = [{"name": "model/weights.bin", "cid": w["cid"]},
               {"name": "model/README.md", "cid": z["cid"], "entry": "inner/card.md"}]
    async with served.client() as http:
        first = await http.post("/v1/bundles", json={"name": "model.zip", "members": members})
        second = await http.post("/v1/bundles", json={"name": "model.zip", "members": members})
        cached = await http.post("/v1/bundles", json={"members": members},
                                 headers={"If-None-Match": first.headers["ETag"]})
        url = await http.post("/v1/bundles", json={"members": [{"name": "x", "url": "https://example.org/x"}]})
        missing = await http.post("/v1/bundles", json={"members": [
            {"name": "x", "cid": "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"}]})
        unsafe = await http.post("/v1/bundles", json={"members": [{"name": "../evil", "cid": w["cid"]}]})
    assert first.status_code == 200 and first.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(first.content))
    assert archive.testzip() is None  # every CRC checks
    assert archive.read("model/weights.bin") == weights and archive.read("model/README.md") == card
    assert second.content == first.content and second.headers["ETag"] == first.headers["ETag"]
    assert cached.status_code == 304
    assert url.status_code == 403 and "bundle_hosts" in url.json()["error"]["message"]
    assert missing.status_code == 404 and unsafe.status_code == 422


async def test_a_bundle_named_beyond_ascii_is_named_in_rfc_8187s_form(served: Served) -> None:
    # Before, the name went into the header as raw UTF-8 bytes, which a
    # header may not hold and each client decoded its own way.
    _, blob = await put_blob(served, b"weights")
    async with served.client() as http:
        named = await http.post("/v1/bundles", json={"name": "模型.zip", "members": [
            {"name": "w.bin", "cid": blob["cid"]}]})
    assert named.status_code == 200
    raw = {k.lower(): v for k, v in named.headers.raw}[b"content-disposition"]
    assert raw.isascii() and raw == b"attachment; filename=\"__.zip\"; filename*=UTF-8''%E6%A8%A1%E5%9E%8B.zip"


async def test_what_the_bytes_say_is_kept_with_the_blob(served: Served) -> None:
    weights = safetensors({"w": ("F32", [4, 8]), "b": ("F16", [8])}, {"format": "pt"})
    status, done = await put_blob(served, weights, name="model.safetensors")
    assert status == 200
    async with served.client() as http:
        meta = (await http.get(f"/v1/blobs/{done['cid']}/meta")).json()
    assert meta["meta"]["format"] == "safetensors" and meta["meta"]["parameters"] == 4 * 8 + 8
    assert meta["meta"]["tensor_count"] == 2 and meta["meta"]["dtypes"] == ["F16", "F32"]


async def test_checks_from_the_config_and_a_policy_record_decide_what_gets_in_and_out(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(org_name="checked")
    config = json.loads((home.path / "config.json").read_text())
    config["assets"] = {"checks": {"content_types": ["application/*", "text/markdown"],
                                   "licenses": ["mit", "apache-2.0"]},
                        "policy": "grid.policies/asset-rules"}
    (home.path / "config.json").write_text(json.dumps(config))
    served = await start_served(nursery, home.path)

    refused_type, body = await put_blob(served, b"<html>", content_type="text/html")
    assert refused_type == 403 and body["error"]["code"] == "check_refused"
    gpl = b"---\nlicense: gpl-3.0\n---\n# card\n"
    refused_license, body = await put_blob(served, gpl, content_type="text/markdown", name="README.md")
    assert refused_license == 403 and "license gpl-3.0" in body["error"]["message"]
    assert not list((home.path / "objects" / "blobs").glob("*"))  # refused bytes leave nothing
    ok, done = await put_blob(served, gpl.replace(b"gpl-3.0", b"mit"), content_type="text/markdown",
                              name="README.md")
    assert ok == 200 and "license: ok" in done["checks"]

    # A policy record adds a size cap; it replicates like any record and applies at once.
    async with served.client() as http:
        made = await http.post("/v1/registries/grid.policies/records", json={
            "kind": "policy", "id": "asset-rules",
            "fields": {"name": "asset rules", "policy_type": "security", "assets": {"max_bytes": 1000}}})
        assert made.status_code == 201, made.text
    too_big, body = await put_blob(served, os.urandom(2000))
    assert too_big == 403 and "size check" in body["error"]["message"]
    small, _ = await put_blob(served, os.urandom(500))
    assert small == 200

    async with served.client() as http:
        logged = False
        for _ in range(50):  # the audit flusher runs every ~200 ms
            entries = (await http.get("/v1/audit", params={"limit": 1000})).json()["entries"]
            denies = [e for e in entries if e["action"] == "deny" and "check_refused" in e.get("reason", "")]
            logged = len(denies) >= 3
            if logged:
                break
            await trio.sleep(0.1)
    assert logged, "every refusal is in the audit ledger"
    served.node.stop()


@contextmanager
def _site(pages: dict[str, bytes], moves: Callable[[int], dict[str, str]] = lambda port: {}) -> Iterator[
        tuple[int, list[str]]]:
    """A real HTTP server on loopback: ``pages`` by path (404 for any other),
    ``moves(port)`` redirects by path. Its port, and the paths asked of it."""
    import http.server
    import threading

    asked: list[str] = []

    class Site(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            moved = moves(self.server.server_address[1])
            if self.path in moved:
                self.send_response(302)
                self.send_header("Location", moved[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = pages.get(self.path)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield site.server_address[1], asked
    finally:
        site.shutdown()
        site.server_close()


async def _bundler(nursery: trio.Nursery, tmp_path: Path) -> Served:
    """A node that fetches bundle URLs of "localhost" only."""
    home = Home(tmp_path / "home")
    home.init(org_name="bundler")
    config = json.loads((home.path / "config.json").read_text())
    config["assets"] = {"bundle_hosts": ["localhost"]}
    (home.path / "config.json").write_text(json.dumps(config))
    return await start_served(nursery, home.path)


async def test_a_bundles_url_is_fetched_only_from_allowed_hosts_redirects_included(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # An allowed host (or an open redirect on it) could send the node
    # anywhere: before, urllib followed any redirect, so a bundle handed its
    # requester the bytes of an address only the node reaches (a cloud's
    # metadata service, its own bridge). Here "localhost" is allowed and
    # 127.0.0.1, the same server under another name, is not.
    pages = {"/public": b"public bytes", "/secret": b"secret bytes"}
    with _site(pages, lambda port: {"/near": f"http://localhost:{port}/public",
                                    "/away": f"http://127.0.0.1:{port}/secret"}) as (port, asked):
        served = await _bundler(nursery, tmp_path)
        async with served.client() as http_client:
            near = await http_client.post("/v1/bundles", json={"members": [
                {"name": "public.txt", "url": f"http://localhost:{port}/near"}]})
            try:
                away = (await http_client.post("/v1/bundles", json={"members": [
                    {"name": "secret.txt", "url": f"http://localhost:{port}/away"}]})).content
            except Exception:  # noqa: BLE001 (the archive is cut off: its member failed mid-stream)
                away = b""
        assert near.status_code == 200
        assert zipfile.ZipFile(io.BytesIO(near.content)).read("public.txt") == b"public bytes"
        assert b"secret bytes" not in away and "/secret" not in asked, asked


async def test_a_bundle_whose_url_fails_midway_ends_with_the_connection_cut_never_an_answer_inside_it(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # The archive is streamed: its headers are out before the second
    # member's URL is asked. aiohttp wrote the error answer into the body
    # under way ("HTTP/1.1 503 ..." as the archive's next bytes), ended it
    # with a last chunk and kept the connection: a client read a "complete"
    # archive with an HTTP answer inside it, or failed on broken chunk framing.
    with _site({"/hello.txt": b"hello"}) as (port, _):
        served = await _bundler(nursery, tmp_path)
        received = b""
        async with served.client() as http_client:
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                async with http_client.stream("POST", "/v1/bundles", json={"members": [
                        {"name": "a.txt", "url": f"http://localhost:{port}/hello.txt"},
                        {"name": "b.txt", "url": f"http://localhost:{port}/missing.txt"}]}) as streamed:
                    assert streamed.status_code == 200  # sent before the failure was known
                    async for chunk in streamed.aiter_raw():
                        received += chunk
            assert received.startswith(b"PK") and b"HTTP/1.1" not in received and b'"error"' not in received
            metrics = (await http_client.get("/metrics")).text  # the node serves on, and counted it
        assert 'rgrid_http_answers_cut_total{code="unavailable",route="/v1/bundles"} 1.0' in metrics
        served.node.stop()


async def test_a_blob_the_download_checks_refuse_is_refused_through_its_zip_entries_and_bundles_too(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    # Only GET /v1/blobs/{cid} ran the checks: the ZIP's manifest, each of
    # its entries and a bundle of it or of an entry gave out what they refused.
    home = Home(tmp_path / "home")
    home.init(org_name="checked")
    served = await start_served(nursery, home.path)
    status, blob = await put_blob(served, a_zip({"secret.txt": b"not for you"}), content_type="application/zip")
    assert status == 200
    await served.stop()
    config = json.loads((home.path / "config.json").read_text())
    config["assets"] = {"checks": {"content_types": ["text/*"]}}
    (home.path / "config.json").write_text(json.dumps(config))
    served = await start_served(nursery, home.path)
    cid = blob["cid"]
    async with served.client() as http:
        answers = {
            "blob": await http.get(f"/v1/blobs/{cid}"),
            "manifest": await http.get(f"/v1/blobs/{cid}/manifest"),
            "entry": await http.get(f"/v1/blobs/{cid}/entries/secret.txt"),
            "bundle": await http.post("/v1/bundles", json={"members": [{"name": "a.zip", "cid": cid}]}),
            "bundled entry": await http.post("/v1/bundles", json={
                "members": [{"name": "s.txt", "cid": cid, "entry": "secret.txt"}]}),
        }
    for what, answer in answers.items():
        assert answer.status_code == 403, (what, answer.status_code)
        assert answer.json()["error"]["code"] == "check_refused", what
        assert b"not for you" not in answer.content
    served.node.stop()
