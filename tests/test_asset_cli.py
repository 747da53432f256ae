"""`rgrid asset` and the client's resumable transfers: offline on the home's
own store, and through a running node's bridge (an upload cut after two
parts sends only the rest when run again; a download resumes its .part
file and refuses bytes that do not hash to the CID)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bridge_support import Served

from registrygrid.client import BridgeClient
from registrygrid.client.assets import download_blob, upload_file
from registrygrid.errors import ValidationError

pytestmark = pytest.mark.timeout(120)
MIB = 1 << 20

pytest_plugins = ("test_bridge_support",)  # its fixtures: served, threaded_served


def rgrid(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True,
                          text=True, timeout=60, env={**os.environ, "RGRID_HOME": ""})
    if check:
        assert proc.returncode == 0, f"rgrid {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_a_presign_key_file_cut_short_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init", "--org-name", "acme")
    rgrid(home, "asset", "rotate-keys")
    keys = home / "presign-keys.json"
    for damaged in (keys.read_text()[:30], '{"keys": [{"kid": "k"}]}', "[]"):
        keys.write_text(damaged)
        proc = rgrid(home, "asset", "rotate-keys", check=False)
        assert proc.returncode == 65 and "is not a presign key file" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_offline_upload_links_an_asset_record_and_get_by_record_returns_the_bytes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init", "--org-name", "acme")
    data = os.urandom(3 * MIB + 5)
    (tmp_path / "w.bin").write_bytes(data)
    rgrid(home, "put", "grid.assets", "asset", "--id", "weights", "--set", "name=weights",
          "--set", "uri=https://example.org/w.bin")

    up = json.loads(rgrid(home, "asset", "upload", str(tmp_path / "w.bin"), "--record", "grid.assets/weights",
                          "--json").stdout)
    record = json.loads(rgrid(home, "get", "grid.assets", "weights", "--json").stdout)
    rgrid(home, "asset", "get", "grid.assets/weights", "-o", str(tmp_path / "out.bin"))
    info = json.loads(rgrid(home, "asset", "info", up["cid"], "--json").stdout)
    again = json.loads(rgrid(home, "asset", "upload", str(tmp_path / "w.bin"), "--json").stdout)

    assert record["fields"]["file_info"]["cid"] == up["cid"] and record["fields"]["file_info"]["size"] == len(data)
    assert (tmp_path / "out.bin").read_bytes() == data
    assert info["size"] == len(data) and info["sha256"] == up["sha256"]
    assert again["cid"] == up["cid"] and again["deduplicated"] is True
    held = rgrid(home, "asset", "hold", up["cid"], "case-1", "--reason", "audit", "--json")
    refused = rgrid(home, "asset", "rm", up["cid"], check=False)
    released = rgrid(home, "asset", "release", up["cid"], "case-1")
    purged = json.loads(rgrid(home, "asset", "rm", up["cid"], "--json").stdout)
    missing = rgrid(home, "asset", "info", up["cid"], check=False)
    assert "case-1" in json.loads(held.stdout)["holds"]
    assert refused.returncode != 0 and "retention_held" in refused.stderr
    assert released.stdout == f"{up['cid']}: legal holds none; kept until no retention\n"
    assert purged["purged"] is True and missing.returncode == 66 and "blob_missing" in missing.stderr
    # What only the running node does is unavailable with none running (75), as for every such command.
    for needs_node in (("asset", "presign", up["cid"]), ("asset", "fetch", up["cid"])):
        offline = rgrid(home, *needs_node, check=False)
        assert offline.returncode == 75 and "error[unavailable]" in offline.stderr, offline.stderr


def test_asset_governance_commands_speak_to_people_and_answer_json_with_json(tmp_path: Path) -> None:
    # They printed JSON whatever was asked, and refused --json, unlike every
    # other command.
    home = tmp_path / "home"
    rgrid(home, "init", "--org-name", "acme")
    (tmp_path / "w.bin").write_bytes(b"weights" * 100)
    up = json.loads(rgrid(home, "asset", "upload", str(tmp_path / "w.bin"), "--json").stdout)
    cid = up["cid"]

    held = rgrid(home, "asset", "hold", cid, "case-7", "--reason", "litigation")
    kept = rgrid(home, "asset", "retain", cid, "--until", "2030-01-01")
    kept_json = json.loads(rgrid(home, "asset", "retain", cid, "--until", "2030-01-01", "--json").stdout)
    rotated = rgrid(home, "asset", "rotate-keys")
    rotated_json = json.loads(rgrid(home, "asset", "rotate-keys", "--json").stdout)

    assert held.stdout == f"{cid}: legal holds case-7; kept until no retention\n"
    assert kept.stdout == f"{cid}: legal holds case-7; kept until 2030-01-01T00:00:00+00:00\n"
    assert kept_json["retain_until_ms"] == 1_893_456_000_000 and "case-7" in kept_json["holds"]
    assert rotated.stdout.startswith("presigned URLs are signed with key ") and "2 key(s) held" in rotated.stdout
    assert len(rotated_json["keys"]) == 3 and rotated_json["kid"] in rotated_json["keys"]

    # A name the bridge refuses: stored here with the node stopped (then never
    # released through the node), or sent unquoted to it ("keep?x" released "keep").
    for name in ("case-7?x", "bad name/x", "", "x" * 65):
        odd = rgrid(home, "asset", "release", cid, name, check=False)
        assert odd.returncode == 65 and "a hold's name has 1 to 64" in odd.stderr, (name, odd.stderr)
        odd = rgrid(home, "asset", "hold", cid, name, "--reason", "r", check=False)
        assert odd.returncode == 65, (name, odd.stderr)
    long_reason = rgrid(home, "asset", "hold", cid, "case-8", "--reason", "r" * 1001, check=False)
    assert long_reason.returncode == 65 and "1 to 1000 characters" in long_reason.stderr
    assert list(json.loads(rgrid(home, "asset", "info", cid, "--json").stdout)["holds"]) == ["case-7"]


class Cut(Exception):
    pass


def test_an_upload_cut_after_two_parts_sends_only_the_rest_when_run_again(threaded_served: Served,
                                                                           tmp_path: Path) -> None:
    data = os.urandom(6 * MIB + 7)
    file = tmp_path / "big.bin"
    file.write_bytes(data)
    client = BridgeClient(threaded_served.url, token=threaded_served.admin)
    state = tmp_path / "state"
    seen: list[int] = []

    def cut_after_two(phase: str, done: int, total: int) -> None:
        if phase == "upload":
            seen.append(done)
            if len(seen) >= 2:
                raise Cut

    with pytest.raises(Cut):
        upload_file(client, file, state_dir=state, part_size=MIB, parallel=1, progress=cut_after_two)
    assert len(list(state.glob("*.json"))) == 1  # the session is remembered

    first_run = len(seen)  # two, or three if the next part was already on its way
    done = upload_file(client, file, state_dir=state, part_size=MIB, parallel=3)
    assert first_run >= 2 and done.sent_parts == 7 - first_run and not list(state.glob("*.json"))
    out = tmp_path / "copy.bin"
    assert download_blob(client, done.cid, out) == len(data) and out.read_bytes() == data


def test_a_download_resumes_its_part_file_and_refuses_bytes_that_do_not_hash_to_the_cid(
        threaded_served: Served, tmp_path: Path) -> None:
    data = os.urandom(2 * MIB + 3)
    (tmp_path / "f.bin").write_bytes(data)
    client = BridgeClient(threaded_served.url, token=threaded_served.admin)
    cid = upload_file(client, tmp_path / "f.bin", state_dir=tmp_path / "state").cid

    out = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(data[:MIB])  # a download that stopped half way
    fetched: list[int] = []
    download_blob(client, cid, out, progress=lambda phase, done, total: fetched.append(done))
    assert out.read_bytes() == data and fetched[0] > MIB  # it went on from where the part file ended

    bad = tmp_path / "bad.bin"
    (tmp_path / "bad.bin.part").write_bytes(b"x" * MIB)  # bytes that are not the blob's
    with pytest.raises(ValidationError, match="do not hash"):
        download_blob(client, cid, bad)
    assert not bad.exists() and not (tmp_path / "bad.bin.part").exists()


def test_asset_verify_finds_corrupt_and_missing_bytes_and_repair_reindexes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init", "--org-name", "acme")
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(os.urandom(1000))
    cids = [json.loads(rgrid(home, "asset", "upload", str(tmp_path / n), "--json").stdout)["cid"] for n in "abc"]
    assert json.loads(rgrid(home, "asset", "verify", "--json").stdout)["ok"] is True

    objects = home / "objects" / "blobs"
    (objects / cids[0]).write_bytes(b"tampered")  # bytes that no longer hash to their name
    (objects / cids[1]).unlink()  # bytes gone
    bad = rgrid(home, "asset", "verify", "--json", check=False)
    report = json.loads(bad.stdout)
    assert bad.returncode == 65 and report["corrupt"] == [cids[0]] and report["missing"] == [cids[1]]

    stray = os.urandom(500)
    from registrygrid.blobs.digest import StreamDigest, cid_text

    digest = StreamDigest()
    digest.update(stray)
    (objects / cid_text(digest.cid)).write_bytes(stray)  # stored but never indexed (a crash between the two)
    (home / "objects" / "staging").mkdir(exist_ok=True)
    (home / "objects" / "staging" / "leftover").write_bytes(b"x")
    repaired = json.loads(rgrid(home, "asset", "verify", "--repair", "--json", check=False).stdout)
    assert repaired["repaired"] == {"staging_removed": 1, "reindexed": 1, "removed_corrupt": 0}
    assert cid_text(digest.cid) not in repaired["unindexed"]
