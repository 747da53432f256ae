"""A disk that refuses a write: full, over quota, over a file-size limit.

The write is refused with a typed error (``storage_failed``: HTTP 507, exit
74) and counted; the store is exactly as it was; the node goes on serving
reads; writes resume once there is room. The refusal is real: a file-size
limit (RLIMIT_FSIZE) set on the running node's process makes the kernel
refuse its store's page writes with EFBIG, as a full disk refuses them with
ENOSPC (both reach LMDB as a failed write; a short write is EIO).
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from registrygrid.client import BridgeClient
from registrygrid.errors import StorageFailed
from registrygrid.sdk import LocalRegistry
from tests.test_bridge_cli import _start_node, rgrid

pytestmark = pytest.mark.timeout(120)

NOTE = {"name": "note", "description": "d" * 2000}


def test_a_write_the_disk_refuses_is_a_typed_error_and_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init")
    node, info = _start_node(home, "--no-search")
    try:
        with BridgeClient(info["url"], token=info["token"]) as client:
            for i in range(20):
                client.put("grid.clusters", "cluster", {**NOTE, "name": f"before-{i}"}, id=f"before-{i}")
            # The changefeed as stored (feed_head() is the node's notifier,
            # which trails a commit by a moment).
            feed = client.changes(0, limit=1000)
            before = [r["id"] for r in client.iter_all("grid.clusters")]

            # No page of the store can be written past its first one.
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.prlimit(node.pid, resource.RLIMIT_FSIZE, (4096, hard))
            with pytest.raises(StorageFailed) as refused:
                client.put("grid.clusters", "cluster", {**NOTE, "name": "refused"}, id="refused")
            assert "could not be written" in refused.value.message and "free space" in refused.value.message
            assert refused.value.details["path"].endswith("store")
            cli = rgrid(home, "put", "grid.clusters", "cluster", "--id", "cli", "--set", "name=cli", check=False)
            assert cli.returncode == 74 and "storage_failed" in cli.stderr + cli.stdout
            weights = tmp_path / "weights.bin"
            weights.write_bytes(bytes(range(256)) * 256)
            upload = rgrid(home, "asset", "upload", str(weights), "--json", check=False)
            assert upload.returncode == 74 and "storage_failed" in upload.stderr + upload.stdout

            assert node.poll() is None  # not killed by SIGXFSZ
            assert client.changes(0, limit=1000) == feed
            assert [r["id"] for r in client.iter_all("grid.clusters")] == before
            assert client.stats()["metric.store.write_failed"] >= 2

            resource.prlimit(node.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
            assert client.put("grid.clusters", "cluster", {**NOTE, "name": "after"}, id="after").status == "created"
            assert len(client.changes(0, limit=1000)) == len(feed) + 1
            assert rgrid(home, "asset", "upload", str(weights), "--json").returncode == 0
    finally:
        node.send_signal(signal.SIGTERM)
        _, log = node.communicate(timeout=60)
    assert "could not be written" in log and "Traceback" not in log  # the operator's to fix, said plainly
    rgrid(home, "verify")
    grid = LocalRegistry.open_home(home)
    try:
        assert {r["id"] for r in grid.iter_all("grid.clusters")} == {*before, "after"}
    finally:
        grid.close()


OBJECT_PUT = """
import json, resource, signal, sys
from pathlib import Path
from registrygrid.blobs.objects import LocalObjects
from registrygrid.errors import StorageFailed
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as rgrid does
objects = LocalObjects(Path(sys.argv[1]))
objects.put("blobs/small", [b"x" * 1000])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    objects.put("blobs/large", [b"y" * 65536])
    print(json.dumps({"refused": None}))
except StorageFailed as exc:
    print(json.dumps({"refused": exc.code, "message": exc.message, "keys": sorted(objects.keys("")),
                      "files": sorted(p.name for p in Path(sys.argv[1]).rglob("*") if p.is_file())}))
"""


def test_an_object_the_disk_refuses_is_a_typed_error_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """The local object store (asset bytes) refuses the same way: a put is
    atomic, so a refused one leaves neither the object nor its temporary."""
    done = subprocess.run([sys.executable, "-c", OBJECT_PUT, str(tmp_path / "objects")], capture_output=True,
                          text=True, timeout=60, check=True)
    answer = json.loads(done.stdout)
    assert answer["refused"] == "storage_failed"
    assert answer["message"].startswith("the object store in ")
    assert answer["keys"] == ["blobs/small"] and answer["files"] == ["small"]


SEARCH_CATCH_UP = """
import json, resource, signal, sys
from pathlib import Path
from registrygrid.errors import StorageFailed
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from registrygrid.search.index import SearchIndex
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as rgrid does
root = Path(sys.argv[1])
grid = LocalRegistry.open_path(root / "store", KeyPair.generate())
for i in range(40):
    grid.put("grid.clusters", "cluster", {"name": f"c{i}", "description": "d" * 3000}, id=f"c{i}")
index = SearchIndex(root / "index")
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
out = {}
try:
    index.catch_up(grid, org_verified=lambda org: True, local_org=None)
except StorageFailed as exc:
    out["refused"] = exc.code
    out["message"] = exc.message
out["cursor_while_full"] = index.cursor
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
index.catch_up(grid, org_verified=lambda org: True, local_org=None)
out["cursor"], out["head"], out["documents"] = index.cursor, grid.feed_head(), index.count()
print(json.dumps(out))
"""


def test_a_search_index_the_disk_refuses_stops_with_a_typed_error_and_catches_up_after(tmp_path: Path) -> None:
    """The search index is derived from the changefeed: a refused write of
    it is a StorageFailed (which the node's indexing task logs before it
    waits for the next commit, rather than a ValueError that ended the node),
    its cursor stays, and the next catch-up indexes everything."""
    done = subprocess.run([sys.executable, "-c", SEARCH_CATCH_UP, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=True)
    answer = json.loads(done.stdout)
    assert answer["refused"] == "storage_failed" and answer["message"].startswith("the search index in ")
    assert answer["cursor_while_full"] < answer["head"]
    assert answer["cursor"] == answer["head"] and answer["documents"] >= 40


COMPACT = """
import json, resource, signal, sys
from pathlib import Path
from registrygrid.errors import StorageFailed
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.compact import compact
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as rgrid does
path = Path(sys.argv[1]) / "store"
grid = LocalRegistry.open_path(path, KeyPair.generate())
for i in range(40):
    grid.put("grid.clusters", "cluster", {"name": f"c{i}", "description": "d" * 3000}, id=f"c{i}")
digest = grid.state_digest()
grid.close()
compact(path)  # everything packed: the next run only copies
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
out = {}
try:
    compact(path)
except StorageFailed as exc:
    out["refused"], out["message"] = exc.code, exc.message
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
out["left"] = sorted(p.name for p in path.parent.iterdir())
grid = LocalRegistry.open_path(path)
out["same"] = grid.state_digest() == digest
print(json.dumps(out))
"""


def test_a_compaction_the_disk_refuses_leaves_the_store_as_it_was_and_no_half_copy(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", COMPACT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=True)
    answer = json.loads(done.stdout)
    assert answer["refused"] == "storage_failed"
    assert answer["message"].startswith("the compacted copy in ") and "the store is as it was" in answer["message"]
    assert answer["left"] == ["store"] and answer["same"]


def test_a_write_made_before_the_disk_fills_is_not_reported_as_refused_when_the_store_closes(tmp_path: Path) -> None:
    # `rgrid put` on a nearly full disk: the put committed, then sealing the
    # audit ledger's last batch at close failed, and that failure was
    # reported as the put's ("the write was not made"); the home stayed
    # locked and a retry made the record twice.
    home = tmp_path / "home"
    rgrid(home, "init")
    script = f"""
import resource, signal
from registrygrid.home import Home
from registrygrid.sdk import LocalRegistry
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
grid = LocalRegistry.open_home(Home({str(home)!r}))
grid.put("grid.clusters", "cluster", {{"name": "made"}}, id="made")
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # no page can be written from here on
grid.close()
print("closed")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "closed", done.stderr
    assert "sealed with the next one" in done.stderr
    got = rgrid(home, "get", "grid.clusters", "made", "--json")  # the home is not left locked
    assert json.loads(got.stdout)["fields"]["name"] == "made"
    rgrid(home, "audit", "verify")
