"""The asset layer of a real node on the S3 backend: a SeaweedFS server on
loopback (tests/seaweed_support.py), the node's config.json naming it, and
the same HTTP flows as on the local backend: a resumable upload in parts,
its finalize composing the blob in the bucket, ranged downloads, a ZIP
manifest and a purge that leaves the bucket without the blob."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import trio
from test_bridge_support import start_served

from registrygrid.home import Home

pytest_plugins = ("seaweed_support",)  # its fixture: seaweed (a SeaweedS3)
MIB = 1 << 20


async def test_uploads_downloads_zips_and_purges_on_the_s3_backend(
        nursery: trio.Nursery, tmp_path: Path, seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"node-{os.urandom(4).hex()}"
    home = Home(tmp_path / "home")
    home.init(org_name="s3 org")
    config = json.loads((home.path / "config.json").read_text())
    config["assets"] = {"backend": "s3", "s3": {
        "endpoint": seaweed.endpoint, "bucket": seaweed.bucket, "access_key": seaweed.access_key,
        "secret_key_env": "RGRID_TEST_S3_SECRET", "prefix": prefix, "server_side_encryption": True}}
    (home.path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("RGRID_TEST_S3_SECRET", seaweed.secret_key)
    served = await start_served(nursery, home.path)

    data = os.urandom(9 * MIB + 99)  # past one S3 part (8 MiB): the blob is composed by a multipart put
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as z:
        z.writestr("a.txt", b"hello")
    async with served.client() as http:
        session = (await http.post("/v1/uploads", json={"size": len(data), "part_size": MIB,
                                                        "sha256": hashlib.sha256(data).hexdigest()})).json()
        for n in (3, 1, 2, 10, 9, 8, 7, 6, 5, 4):
            sent = await http.put(f"/v1/uploads/{session['id']}/parts/{n}", content=data[(n - 1) * MIB:n * MIB])
            assert sent.status_code == 200, sent.text
        done = (await http.post(f"/v1/uploads/{session['id']}/finalize")).json()
        whole = await http.get(f"/v1/blobs/{done['cid']}")
        ranged = await http.get(f"/v1/blobs/{done['cid']}", headers={"Range": f"bytes={MIB - 5}-{MIB + 4}"})

        z = (await http.post("/v1/uploads", json={"size": len(packed.getvalue()),
                                                  "content_type": "application/zip"})).json()
        await http.put(f"/v1/uploads/{z['id']}/parts/1", content=packed.getvalue())
        zdone = (await http.post(f"/v1/uploads/{z['id']}/finalize")).json()
        listing = (await http.get(f"/v1/blobs/{zdone['cid']}/manifest")).json()

        in_bucket = sorted(seaweed.objects(prefix).keys("blobs/"))
        purged = await http.delete(f"/v1/blobs/{done['cid']}")
        after = sorted(seaweed.objects(prefix).keys("blobs/"))
    assert whole.status_code == 200 and whole.content == data
    assert ranged.status_code == 206 and ranged.content == data[MIB - 5:MIB + 5]
    assert [e["name"] for e in listing["entries"]] == ["a.txt"]
    assert f"blobs/{done['cid']}" in in_bucket and f"blobs/{zdone['cid']}" in in_bucket
    assert not list(seaweed.objects(prefix).keys("uploads/"))  # the parts went at finalize
    assert purged.status_code == 200 and f"blobs/{done['cid']}" not in after
    served.node.stop()
