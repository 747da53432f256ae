"""`rgrid`, run as the operator runs it: a real process per command, a real home.

Homes are prepared in-process where the command under test is not `init`
(it is the same code, and each CLI process costs half a second of imports).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import registrygrid
from registrygrid.engine.ops import Put
from registrygrid.errors import EX_DATAERR, EX_NOINPUT, ValidationError
from registrygrid.home import Home
from registrygrid.storage import feed, records
from registrygrid.storage.store import Store

Run = Callable[..., Any]


def ok_json(rgrid: Run, *args: str, home: Path) -> Any:
    proc = rgrid(*args, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def feed_head(home: Path) -> int:
    store = Store(Home(home).store_path, readonly=True)
    try:
        return feed.head(store)
    finally:
        store.close()


def stored_record(home: Path, registry: str, record_id: str) -> dict[str, Any] | None:
    """Read a record straight from LMDB (a reader never disturbs the CLI)."""
    store = Store(Home(home).store_path, readonly=True)
    try:
        with store.read() as txn:
            return records.get_record(store, txn, registry, record_id)
    finally:
        store.close()


def home_holding(home: Path, fields: dict[str, Any], *, record_id: str | None) -> Any:
    """A home made anew (org "acme") holding one record of grid.clusters; its write result."""
    Home(home).init(org_name="acme")
    grid = registrygrid.open(home)
    try:
        return grid.put("grid.clusters", "cluster", fields, id=record_id)
    finally:
        grid.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An initialised home whose store already holds one record."""
    path = tmp_path / "home"
    Home(path).init(org_name="acme")
    with registrygrid.open(path) as grid:
        grid.put("grid.tools", "tool", {"name": "seed"}, id="seed")
    return path


@pytest.fixture(scope="module")
def listed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with seven clusters c0..c6 (gpus.count = i, tagged odd/even) and two tools."""
    path = tmp_path_factory.mktemp("listed") / "home"
    Home(path).init(org_name="acme")
    with registrygrid.open(path) as grid:
        grid.put_many([Put("grid.clusters", "cluster", {"name": f"c{i}", "gpus": {"count": i}}, f"c{i}",
                           tags=["odd" if i % 2 else "even"]) for i in range(7)])
        grid.put("grid.tools", "tool", {"name": "grep"}, id="grep", tags=["odd"])
        grid.put("grid.tools", "tool", {"name": "sed"}, id="sed")
    return path


# ---------------------------------------------------------------- init and identity


def test_init_creates_private_keys_and_refuses_to_run_twice(tmp_path: Path, rgrid: Run) -> None:
    home = tmp_path / "home"
    created = ok_json(rgrid, "init", "--org-name", "acme", home=home)
    assert created["node"].startswith("did:key:z6Mk")
    assert created["org"].startswith("did:key:z6Mk")
    for name in ("node.key", "org.key"):
        mode = stat.S_IMODE((home / "keys" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    node_key = (home / "keys" / "node.key").read_text()

    again = rgrid("init", home=home)
    assert again.returncode == EX_DATAERR
    assert "already initialised" in again.stderr
    assert (home / "keys" / "node.key").read_text() == node_key

    identity = ok_json(rgrid, "id", home=home)
    assert identity["did"] == created["node"]
    assert identity["org"] == created["org"]
    assert identity["peer_id"].startswith("12D3KooW")
    assert identity["org_name"] == "acme"
    assert set(identity["roles"]) >= {"node"}


def test_an_init_refused_for_its_org_key_writes_nothing_and_can_be_run_again(tmp_path: Path, rgrid: Run) -> None:
    # It wrote the node key first: a bad --org-key left a half-made home
    # (no org.json) that every later init refused as initialised already.
    home = tmp_path / "home"
    bad = tmp_path / "bad.key"
    bad.write_text("garbage")
    refused = rgrid("init", "--org-key", str(bad), home=home)
    assert refused.returncode == EX_DATAERR and "bad.key" in refused.stderr
    assert not (home / "keys" / "node.key").exists()
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "org.key").write_text("{}")  # an org key left there, not passed
    kept = rgrid("init", home=home)
    assert kept.returncode == EX_DATAERR and "--org-key" in kept.stderr
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["org.key"]
    (home / "keys" / "org.key").unlink()
    assert ok_json(rgrid, "init", "--org-name", "acme", home=home)["org"].startswith("did:key:")


@pytest.mark.parametrize(("text", "why"), [
    ('{"seed": "abcd"}', "an Ed25519 seed has 32 bytes"),
    ('{"seed": "zz"}', "its seed is not hexadecimal"),
    ("[1]", 'it is not a JSON object with a "seed" string'),
    ('{"seed": 7}', 'it is not a JSON object with a "seed" string'),
])
def test_a_key_file_that_is_no_key_names_itself_and_what_is_wrong_in_words(
        tmp_path: Path, rgrid: Run, text: str, why: str) -> None:
    # A list said "list indices must be integers or slices, not str".
    bad = tmp_path / "bad.key"
    bad.write_text(text)
    bad.chmod(0o600)
    refused = rgrid("init", "--org-key", str(bad), home=tmp_path / "home")
    assert refused.returncode == EX_DATAERR
    assert refused.stderr.strip() == f"error[validation_failed]: {bad} is not a RegistryGrid key file: {why}"


def test_a_key_file_others_may_read_is_used_with_a_warning_that_names_it(tmp_path: Path, rgrid: Run) -> None:
    # A seed others may read is a key they may sign with; it was taken silently.
    # A warning, not a refusal: a USB stick's FAT shows 0755 whatever one does.
    source = tmp_path / "source"
    Home(source).init(org_name="acme")
    shared = tmp_path / "shared.key"
    shared.write_bytes((source / "keys" / "org.key").read_bytes())
    shared.chmod(0o644)
    taken = rgrid("init", "--org-key", str(shared), "--json", home=tmp_path / "home")
    assert taken.returncode == 0, taken.stderr
    warning = taken.stderr.strip()
    assert warning.startswith("rgrid: WARNING:") and "shared.key" in warning and "0644" in warning
    assert "chmod 600" in warning and len(warning.splitlines()) == 1

    shared.chmod(0o600)
    quiet = rgrid("init", "--org-key", str(shared), "--json", home=tmp_path / "again")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["org"] == json.loads(taken.stdout)["org"]


def test_commands_on_a_home_that_was_never_initialised_say_how_to_fix_it(tmp_path: Path, rgrid: Run) -> None:
    proc = rgrid("list", home=tmp_path / "nothing")
    assert proc.returncode != 0
    assert "rgrid init" in proc.stderr


# ---------------------------------------------------------------- records


def test_put_get_update_delete_and_history(home: Path, tmp_path: Path, rgrid: Run) -> None:
    put = ok_json(rgrid, "put", "grid.clusters", "cluster", "--id", "c1", "--set", "name=c1",
                  "--set", "gpus.count=8", "--set", "gpus.model=NVIDIA H100", "--set", "reputation=0.9",
                  "--set", 'nodes=[{"id": "n1", "vcpus": 64}]', "--set", "region=eu-west-1",
                  "--tag", "gpu", home=home)
    assert put["status"] == "created"
    assert put["id"] == "c1"
    assert put["feed_seq"] == 4  # after the home's delegation, org record and seed tool

    record = ok_json(rgrid, "get", "grid.clusters", "c1", home=home)
    assert record["fields"] == {"name": "c1", "gpus": {"count": 8, "model": "NVIDIA H100"}, "reputation": 0.9,
                                "nodes": [{"id": "n1", "vcpus": 64}], "region": "eu-west-1"}
    assert record["tags"] == ["gpu"]
    assert record["change_id"] == put["change_id"]

    fields_file = tmp_path / "c2.json"
    fields_file.write_text(json.dumps({"name": "c2", "gpus": {"count": 2}, "scheduler": "slurm"}))
    from_file = ok_json(rgrid, "put", "grid.clusters", "cluster", "--id", "c2", "--file", str(fields_file),
                        "--set", "gpus.count=4", home=home)
    assert from_file["status"] == "created"
    assert stored_record(home, "grid.clusters", "c2")["fields"] == {  # type: ignore[index]
        "name": "c2", "gpus": {"count": 4}, "scheduler": "slurm"}

    updated = ok_json(rgrid, "update", "grid.clusters", "c1", "--set", "gpus.count=16", "--unset", "region",
                      home=home)
    assert updated["status"] == "updated"
    assert stored_record(home, "grid.clusters", "c1")["fields"] == {  # type: ignore[index]
        "name": "c1", "gpus": {"count": 16, "model": "NVIDIA H100"}, "reputation": 0.9,
        "nodes": [{"id": "n1", "vcpus": 64}]}

    deleted = ok_json(rgrid, "delete", "grid.clusters", "c1", home=home)
    assert deleted["status"] == "deleted"
    gone = rgrid("get", "grid.clusters", "c1", home=home)
    assert gone.returncode == EX_NOINPUT
    assert "deleted" in gone.stderr
    assert ok_json(rgrid, "get", "grid.clusters", "c1", "--deleted", home=home)["deleted"] is True

    history = ok_json(rgrid, "history", "grid.clusters", "c1", home=home)
    assert [h["op"] for h in history] == ["create", "update", "delete"]
    assert [h["change_id"] for h in history] == [put["change_id"], updated["change_id"], deleted["change_id"]]


def test_list_filters_by_kind_tag_and_where_and_pages_with_a_cursor(listed_home: Path, rgrid: Run) -> None:
    def ids(*args: str) -> tuple[list[str], str | None]:
        page = ok_json(rgrid, "list", *args, home=listed_home)
        return [r["id"] for r in page["items"]], page["next_cursor"]

    assert ids("--kind", "tool")[0] == ["grep", "sed"]
    assert ids("--tag", "odd")[0] == ["c1", "c3", "c5", "grep"]
    assert ids("grid.clusters", "--where", "gpus.count>=4")[0] == ["c4", "c5", "c6"]

    first, cursor = ids("grid.clusters", "--limit", "4")
    assert first == ["c0", "c1", "c2", "c3"]
    assert cursor is not None
    second, cursor = ids("grid.clusters", "--limit", "4", "--cursor", cursor)
    assert (second, cursor) == (["c4", "c5", "c6"], None)


@pytest.mark.parametrize("typo", ["gpus.count>>4", "gpus.count=>4", "gpus.count=<4", "gpus.count<>4"])
def test_a_where_with_a_mistyped_operator_is_refused_not_an_empty_answer(typo: str) -> None:
    from registrygrid.cli.values import parse_where

    with pytest.raises(ValidationError, match="starts with an operator"):
        parse_where(typo)
    assert parse_where('name="=x"') == ("name", "eq", "=x")  # quoted, such a string is a value


def test_feed_tail_prints_one_json_event_per_line(listed_home: Path, rgrid: Run) -> None:
    proc = rgrid("feed", "tail", "--from", "0", "--json", home=listed_home)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    # The home's delegation of its node and its org record come first (rgrid init publishes them).
    assert [e["seq"] for e in events] == list(range(1, 12))
    assert [e["registry"] for e in events[:2]] == ["grid.members", "grid.orgs"]
    assert all(e["type"] == "created" for e in events)
    assert [e["record"] for e in events[-2:]] == ["grep", "sed"]
    assert {"registry", "record", "kind", "change", "author", "hlc", "origin"} <= set(events[0])
    for command in (("feed", "tail", "--from"), ("audit", "log", "--since")):  # past a signed 64-bit sequence
        proc = rgrid(*command, "99999999999999999999", home=listed_home)
        assert proc.returncode == 64 and "0<=x<=9223372036854775807" in proc.stderr, proc.stderr


def test_feed_tail_offline_refuses_a_cursor_past_the_head_and_follows_without_locking_the_home(
        home: Path, rgrid: Run) -> None:
    # With no node running, --from past the head printed nothing and exited
    # 0 (through a node: 422), and --follow held the home's lock while it
    # followed: every write and the node itself were kept out.
    head = feed_head(home)
    past = rgrid("feed", "tail", "--from", str(head + 1), home=home)
    assert past.returncode == 65 and f"beyond this node's feed head {head}" in past.stderr, past.stderr
    follow = subprocess.Popen([sys.executable, "-m", "registrygrid", "feed", "tail", "--from", str(head), "--follow",
                               "--json", "--home", str(home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert follow.stdout is not None
        time.sleep(1.0)  # it follows
        put = rgrid("put", "grid.clusters", "cluster", "--id", "while-tailing", "--set", "name=w", home=home)
        assert put.returncode == 0, put.stderr
        event = json.loads(follow.stdout.readline())  # the write it made room for, followed
        assert (event["seq"], event["record"]) == (head + 1, "while-tailing")
    finally:
        follow.kill()
        follow.wait(10)


def test_verify_of_a_home_whose_store_is_gone_says_so_and_makes_none(home: Path, rgrid: Run) -> None:
    # Opened to verify it, a missing store was made anew, empty, and
    # reported sound (ok, 0 changes): after a lost disk, the answer that misleads.
    shutil.rmtree(home / "store")
    proc = rgrid("verify", home=home)
    assert proc.returncode == 66 and "holds no store" in proc.stderr
    assert not (home / "store").exists()
    with registrygrid.open(home):  # a store made anew for a key that signed opens recovering ...
        pass
    report = json.loads(rgrid("verify", "--json", home=home).stdout)
    assert (report["ok"], report["changes"], report["recovering"]) == (True, 0, True)  # ... and verify says so


def test_verify_reports_a_healthy_store(listed_home: Path, rgrid: Run) -> None:
    report = ok_json(rgrid, "verify", home=listed_home)
    assert report["ok"] is True
    assert report["changes"] == 11  # nine records, the home's delegation and org record
    assert report["records"] == 11
    assert report["problem"] is None


def test_registry_create_and_list(home: Path, rgrid: Run) -> None:
    created = ok_json(rgrid, "registry", "create", "acme.models", "--kind", "asset", "--description", "models",
                      home=home)
    assert created["status"] == "created"
    registries = {r["name"]: r for r in ok_json(rgrid, "registry", "list", home=home)}
    assert registries["acme.models"]["kinds"] == ["asset"]
    assert registries["acme.models"]["builtin"] is False
    assert registries["grid.clusters"]["builtin"] is True
    put = ok_json(rgrid, "put", "acme.models", "asset", "--set", "name=llama", "--set", "uri=s3://m/llama",
                  home=home)
    assert put["registry"] == "acme.models"


def test_registry_create_with_limits_and_update_its_rules(home: Path, rgrid: Run) -> None:
    ok_json(rgrid, "registry", "create", "acme.notes", "--kind", "cluster", "--max-record-bytes", "300",
            "--max-changes-per-second-per-org", "5", home=home)
    described = ok_json(rgrid, "registry", "describe", "acme.notes", home=home)
    assert described["limits"] == {"max_record_bytes": 300, "max_changes_per_second_per_org": 5.0}
    big = rgrid("put", "acme.notes", "cluster", "--set", "name=big", "--set", "notes=" + "x" * 400, home=home)
    assert big.returncode == EX_DATAERR and "max_record_bytes" in big.stderr

    # Only what is given changes: kinds replaced, the size cap raised, the rate kept.
    updated = ok_json(rgrid, "registry", "update", "acme.notes", "--kind", "cluster", "--kind", "tool",
                      "--max-record-bytes", "1000", "--write-policy", "members", home=home)
    assert updated["status"] == "updated"
    described = ok_json(rgrid, "registry", "describe", "acme.notes", home=home)
    assert described["kinds"] == ["cluster", "tool"] and described["write_policy"] == "members"
    assert described["limits"] == {"max_record_bytes": 1000, "max_changes_per_second_per_org": 5.0}
    ok_json(rgrid, "put", "acme.notes", "cluster", "--set", "name=big", "--set", "notes=" + "x" * 400, home=home)

    head = feed_head(home)
    nothing = rgrid("registry", "update", "acme.notes", home=home)
    assert nothing.returncode == EX_DATAERR and "nothing to change" in nothing.stderr
    unknown = rgrid("registry", "update", "acme.nowhere", "--kind", "cluster", home=home)
    assert unknown.returncode == EX_NOINPUT and "error[unknown_registry]" in unknown.stderr
    frozen = rgrid("registry", "update", "acme.notes", "--conflict-policy", "immutable", home=home)
    assert frozen.returncode == EX_DATAERR and "access policy" in frozen.stderr
    assert feed_head(home) == head


def test_kind_register_from_a_schema_file_then_put_a_record_of_it(home: Path, tmp_path: Path,
                                                                  rgrid: Run) -> None:
    schema = tmp_path / "bench.schema.json"
    schema.write_text(json.dumps({
        "type": "object",
        "required": ["gpu", "tflops"],
        "properties": {"gpu": {"type": "string"}, "tflops": {"type": "number", "minimum": 0}},
    }))
    registered = ok_json(rgrid, "kind", "register", "gpu-bench", "--schema", str(schema),
                         "--registry", "acme.bench", home=home)
    assert registered["status"] == "created"
    assert registered["id"] == "gpu-bench.v1"
    ok_json(rgrid, "registry", "create", "acme.bench", "--kind", "gpu-bench", home=home)
    put = ok_json(rgrid, "put", "acme.bench", "gpu-bench", "--id", "run-1", "--set", "gpu=H100",
                  "--set", "tflops=989.5", home=home)
    assert put["status"] == "created"
    assert stored_record(home, "acme.bench", "run-1")["fields"] == {"gpu": "H100", "tflops": 989.5}  # type: ignore[index]
    head = feed_head(home)
    bad = rgrid("put", "acme.bench", "gpu-bench", "--set", "gpu=H100", "--set", "tflops=-1", home=home)
    assert bad.returncode == EX_DATAERR
    assert "/tflops" in bad.stderr
    assert feed_head(home) == head
    missing = rgrid("kind", "show", "gpu-bench", "--version", "2", home=home)
    assert missing.returncode == EX_NOINPUT and "gpu-bench" in missing.stderr  # a read of what is not there
    # A schema file holding no JSON object: a traceback, or (a list of pairs) silently made one.
    for value in ([["type", "string"]], None, "string"):
        schema.write_text(json.dumps(value))
        odd = rgrid("kind", "register", "odd", "--schema", str(schema), home=home)
        assert odd.returncode == EX_DATAERR and "is a JSON object, not" in odd.stderr, odd.stderr
        assert "Traceback" not in odd.stderr
    deleted = rgrid("delete", "grid.kinds", "gpu-bench.v1", home=home)
    assert deleted.returncode != 0 and "published once" in deleted.stderr
    assert feed_head(home) == head


# ---------------------------------------------------------------- bad input


def test_schema_violation_exits_65_and_prints_every_failing_path(home: Path, rgrid: Run) -> None:
    head = feed_head(home)
    proc = rgrid("put", "grid.clusters", "cluster", "--set", "name=", "--set", "reputation=5",
                 "--set", "gpus.count=-1", "--set", "gpus.vendor=acme", home=home)
    assert proc.returncode == EX_DATAERR
    for path in ("/name", "/reputation", "/gpus/count", "/gpus"):
        assert f"at {path}:" in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert feed_head(home) == head


def test_errors_print_their_stable_code_on_stderr(home: Path, rgrid: Run) -> None:
    # cli/main.py: "Errors print ``error[CODE]: message`` on stderr".
    proc = rgrid("put", "grid.clusters", "cluster", "--set", "reputation=5", home=home)
    assert proc.returncode == EX_DATAERR
    assert proc.stderr.startswith("error[schema_violation]: "), proc.stderr


def test_an_errors_details_print_one_line_each_not_a_python_repr(home: Path, rgrid: Run) -> None:
    proc = rgrid("registry", "create", "acme.models", "--kind", "nosuchkind", home=home)
    assert proc.returncode == EX_DATAERR
    assert proc.stderr.startswith("error[unknown_kind]: unknown kind 'nosuchkind'"), proc.stderr
    assert "  kind: nosuchkind\n" in proc.stderr and "  known_kinds: adhoc-server, agent-card," in proc.stderr
    assert "{'kind'" not in proc.stderr


def test_unknown_registry_exits_66(home: Path, rgrid: Run) -> None:
    head = feed_head(home)
    proc = rgrid("put", "acme.nowhere", "cluster", "--set", "name=x", home=home)
    assert proc.returncode == EX_NOINPUT
    assert "acme.nowhere" in proc.stderr
    assert feed_head(home) == head


def test_malformed_json_file_exits_65_and_says_so(home: Path, tmp_path: Path, rgrid: Run) -> None:
    head = feed_head(home)
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "c1",\n "gpus": {"count": 8\n')
    proc = rgrid("put", "grid.clusters", "cluster", "--file", str(broken), home=home)
    assert proc.returncode == EX_DATAERR
    assert "not valid JSON" in proc.stderr
    assert "broken.json" in proc.stderr
    assert feed_head(home) == head


def test_a_file_that_is_not_utf8_exits_65_and_says_so_wherever_a_command_takes_one(home: Path, tmp_path: Path,
                                                                                     rgrid: Run) -> None:
    """JSON is UTF-8 (RFC 8259): a file of another encoding is malformed
    input, named with its first bad byte. Before, `put --file`, `kind
    register --schema`, @FILE options and `federation join`/`sign` printed
    a Python traceback (the file's bytes reached a UTF-8 decode no one
    caught)."""
    head = feed_head(home)
    latin = tmp_path / "latin1.json"
    latin.write_bytes('{"name": "café"}'.encode("latin-1"))
    for command in (("put", "grid.clusters", "cluster", "--file", str(latin)),
                    ("kind", "register", "latin", "--schema", str(latin), "--registry", "acme.latin"),
                    ("registry", "create", "acme.latin", "--kind", "cluster", "--conflict-policy", f"@{latin}"),
                    ("search", "--filter", f"@{latin}"),
                    ("federation", "join", str(latin)),
                    ("federation", "sign", str(latin))):
        proc = rgrid(*command, home=home)
        assert proc.returncode == EX_DATAERR, (command, proc.stderr)
        assert f"{latin} is not UTF-8 text: byte 13 is 0xe9" in proc.stderr and "Traceback" not in proc.stderr
    piped = subprocess.run([sys.executable, "-m", "registrygrid", "put", "grid.clusters", "cluster", "--file", "-",
                            "--home", str(home)], input=latin.read_bytes(), capture_output=True, timeout=60)
    assert piped.returncode == EX_DATAERR and b"stdin is not UTF-8 text: byte 13" in piped.stderr
    assert feed_head(home) == head



def test_output_cut_off_by_its_reader_stops_quietly(tmp_path: Path) -> None:
    # `rgrid feed tail | head -1`: the reader goes away while rgrid writes.
    # It stops at once with no message, as Unix tools do (since the CLI
    # turned OSError into error[file_failed], a broken pipe must not read
    # as a failed file).
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    grid = registrygrid.open(home)
    try:
        grid.execute([Put("grid.clusters", "cluster", {"name": f"n{i}"}, record_id=f"c-{i}") for i in range(1500)])
    finally:
        grid.close()
    proc = subprocess.Popen([sys.executable, "-m", "registrygrid", "feed", "tail", "--from", "0", "--limit", "10000",
                             "--home", str(home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert b"created" in proc.stdout.readline()
    proc.stdout.close()  # far more than a pipe's buffer is still to come
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == 1 and stderr == ""


@pytest.mark.parametrize("args", [
    ("put", "grid.clusters", "cluster", "--id", "c1", "--file", "{}"),
    ("kind", "register", "thing", "--schema", "{}"),
    ("import", "{}"),
    ("org", "renew", "--org-key", "{}"),
    ("asset", "upload", "{}"),
])
@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_device_or_a_fifo_named_as_input_is_refused_not_read_forever(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, args: tuple[str, ...],
        special: str) -> None:
    # A device's size says 0 and its bytes never end; a FIFO blocks its
    # reader until a writer comes. Before, `--file /dev/zero` read until
    # memory ran out, and a FIFO hung the command.
    import os

    Home(tmp_path / "home").init(org_name="acme")
    path = special
    if special == "fifo":
        path = str(tmp_path / "input.json")
        os.mkfifo(path)
    proc = rgrid(*[a.replace("{}", path) for a in args], timeout=30)
    assert proc.returncode == EX_DATAERR and "is not a regular file" in proc.stdout + proc.stderr, proc.stderr


def test_control_characters_in_what_others_wrote_are_shown_never_obeyed(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Records come from other orgs. Before, `rgrid list` wrote a record's
    # escape sequences to the terminal as they were: a name could retitle
    # the window, recolour or hide the rows after it, or on some terminals
    # write the clipboard (OSC 52). JSON output escaped them already.
    hostile = "evil\x1b]0;pwned\x07\x1b[8mhidden\x1b[0m\x9b2J"
    home_holding(tmp_path / "home", {"name": hostile}, record_id="c1")
    monkeypatch.setenv("COLUMNS", "160")  # the whole name fits its cell
    listed = rgrid("list", "grid.clusters")
    refused = rgrid("get", "grid.clusters", "\x1b[2Jx")  # an id no record may have, echoed in the error
    assert listed.returncode == 0 and refused.returncode != 0
    for shown in (listed.stdout, refused.stderr):
        assert not any(c in shown for c in "\x1b\x07\x9b"), repr(shown)
    assert "evil\\x1b]0;pwned" in listed.stdout and "\\x1b[8mhidden" in listed.stdout and "\\x1b[2J" in refused.stderr
    # Written out before the table is laid out: the row is as wide as the borders.
    assert len({len(line) for line in listed.stdout.splitlines() if line.strip()}) == 1, listed.stdout


@pytest.mark.parametrize("section, key", [("bridge", "max_streams"), ("bridge", "rate_limit"),
                                          ("assets", "max_blob_bytes"), ("assets", "upload_ttl_s")])
def test_a_config_number_past_what_a_float_holds_is_refused_at_start(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, section: str, key: str) -> None:
    # JSON's 1e309 reads as infinity: int() of it raised OverflowError out
    # of `rgrid node start` with a traceback, and an infinite upload TTL
    # or rate passed, to fail each later upload or request instead.
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    config_file = home / "config.json"
    config_file.write_text(config_file.read_text().rstrip().removesuffix("}")
                           + f', "{section}": {{"{key}": 1e309}}}}')
    proc = rgrid("node", "start", "--no-p2p", "--bridge-port", "0", timeout=60)
    assert proc.returncode == EX_DATAERR and "error[validation_failed]: config.json" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_warning_of_a_command_without_a_node_is_one_labelled_line_with_nothing_a_terminal_obeys(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    # Without a running node, no handler takes the warnings of the code a
    # command runs (a search index found unreadable and rebuilt): Python's
    # last resort printed them bare, with no label and their control
    # characters as they were (here, of the home's own path).
    home = tmp_path / "home\x1b[31m\nred"
    home_holding(home, {"name": "gpu"}, record_id="c1")
    assert rgrid("search", "gpu", home=home).returncode == 0  # builds the index
    (home / "index" / "search.json").write_text("not json")
    searched = rgrid("search", "gpu", home=home)
    assert searched.returncode == 0 and "c1" in searched.stdout
    warning, = searched.stderr.splitlines()
    assert warning.startswith("rgrid: WARNING: search: ") and "unreadable" in warning
    assert "\x1b" not in warning and "home\\x1b[31m\\nred" in warning


def test_rgrid_list_shows_each_record_id_whole_in_a_narrow_terminal(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The id is what a user copies into `rgrid get`: cut with "…" it was of no use.
    home = tmp_path / "home"
    made = home_holding(home, {"name": "a cluster with a long name, " * 4}, record_id=None)
    monkeypatch.setenv("COLUMNS", "80")
    listed = rgrid("list", "grid.clusters")
    assert listed.returncode == 0 and made.record_id in listed.stdout, listed.stdout


def test_arguments_that_are_not_utf8_are_refused_naming_the_option_and_nothing_is_written(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    # A terminal set to Latin-1 sends bytes that are not UTF-8; Python hands
    # them on as lone surrogates (here "\udcff": the byte 0xff on the
    # command line). A put failed deep inside ("surrogates not allowed"),
    # and a search crashed with a traceback from the index's tokenizer.
    # Every command checks its text values before it runs.
    home = tmp_path / "home"
    home_holding(home, {"name": "gpu"}, record_id="c1")
    head = feed_head(home)
    for args, named in [(("put", "grid.clusters", "cluster", "--set", "name=caf\udcff"), "--set"),
                        (("list", "grid.clusters", "--where", "name=caf\udcff"), "--where"),
                        (("search", "caf\udcff"), "TEXT"),
                        (("registry", "create", "acme.models", "--kind", "model", "--description", "caf\udcff"),
                         "--description")]:
        refused = rgrid(*args, home=home)
        assert refused.returncode == EX_DATAERR, refused.stderr
        assert f"error[malformed_input]: {named} is not UTF-8 text" in refused.stderr
        assert "Traceback" not in refused.stderr
    # JSON may spell a lone surrogate as an escape: the query parser names where.
    for query, path in [('{"text": "caf\\udcff"}', "query/text"),
                        ('{"filter": {"name": "caf\\udcff"}}', "query/filter/name")]:
        refused = rgrid("search", "--query", query, home=home)
        assert refused.returncode == EX_DATAERR and f"{path}: character 3 is a lone surrogate" in refused.stderr, \
            refused.stderr
    assert feed_head(home) == head
    # A home path may be any bytes to Linux, but LMDB and the search index
    # take UTF-8 only: the store failed to open with a traceback.
    elsewhere = rgrid("init", home=tmp_path / "home\udcff")
    assert elsewhere.returncode == EX_DATAERR and "is not UTF-8 text (byte 0xff" in elsewhere.stderr, \
        elsewhere.stderr


@pytest.mark.parametrize("file", ["config.json", "org.json", "node.json"])
@pytest.mark.parametrize("harm", ["fifo", "endless", "nested"])
def test_a_home_file_that_is_a_fifo_endless_or_nested_past_the_parser_is_refused_never_a_hang_or_a_crash(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, file: str, harm: str) -> None:
    # They were read whole, as they were: a FIFO hung every command, a link
    # to /dev/zero ate the memory, 30,000 brackets were a RecursionError.
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    target = home / file
    target.unlink(missing_ok=True)
    if harm == "fifo":
        os.mkfifo(target)
    elif harm == "endless":
        target.symlink_to("/dev/zero")
    else:
        target.write_text("[" * 30_000 + "]" * 30_000)
    proc = rgrid("stats", "--json", timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    if file == "node.json":  # what a running node wrote: unreadable, no node runs
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == EX_DATAERR and f"{file}" in proc.stderr, proc.stderr


def test_a_damaged_search_cursor_file_is_indexed_again_not_a_failed_start(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    # An infinite cursor (1e999) raised OverflowError out of the node's start.
    home = tmp_path / "home"
    home_holding(home, {"name": "gpu"}, record_id="c1")
    (home / "index").mkdir(exist_ok=True)
    (home / "index" / "search.json").write_text('{"version": 2, "cursor": 1e999}')
    proc = rgrid("search", "gpu", "--json", timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "indexing the feed again" in proc.stderr


@pytest.mark.parametrize("bridge, named", [
    (5, "config.json bridge"),
    ({"port": "abc"}, "config.json bridge.port"),
    ({"port": True}, "config.json bridge.port"),  # served on port 1
    ({"port": 8795.7}, "config.json bridge.port"),
    ({"port": 99_999_999}, "config.json bridge.port"),  # "unavailable", exit 75, as if in use
    ({"host": 5}, "config.json bridge.host"),
])
def test_a_config_bridge_address_of_the_wrong_type_is_refused_naming_it(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, bridge: Any, named: str) -> None:
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    config = json.loads((home / "config.json").read_text())
    (home / "config.json").write_text(json.dumps({**config, "bridge": bridge}))
    proc = rgrid("node", "start", "--no-p2p", timeout=60)
    assert proc.returncode == EX_DATAERR and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("member, value", [("founder", "false"), ("name", {"x": [1, 2]})])
def test_an_org_file_whose_members_have_the_wrong_type_is_refused_not_coerced(
        rgrid: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, member: str, value: Any) -> None:
    # "founder": "false" counted as true, and a name that was an object was shown as one.
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    org = json.loads((home / "org.json").read_text())
    (home / "org.json").write_text(json.dumps({**org, member: value}))
    proc = rgrid("id", "--json", timeout=60)
    assert proc.returncode == EX_DATAERR and "org.json" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_where_equality_tells_true_from_1_and_false_from_0() -> None:
    # `--where enabled=true` matched a record whose enabled is 1 (Python's ==).
    from registrygrid.sdk import matches_where

    def hits(op: str, value: Any) -> list[str]:
        records = {"bool": True, "one": 1, "float": 1.0, "zero": 0, "false": False, "list": [1, 2], "flags": [True]}
        return sorted(name for name, v in records.items()
                      if matches_where({"fields": {"enabled": v}}, [("enabled", op, value)]))

    assert hits("eq", True) == ["bool"]
    assert hits("eq", 1) == ["float", "one"]
    assert hits("eq", False) == ["false"]
    assert hits("ne", 0) == ["bool", "false", "flags", "float", "list", "one"]
    assert hits("contains", 1) == ["list"]
    assert hits("contains", True) == ["flags"]


def test_an_unknown_log_level_is_a_usage_error_naming_the_levels(home: Path, rgrid: Run) -> None:
    proc = rgrid("node", "start", "--no-p2p", "--no-bridge", "--log-level", "bogus", home=home)
    assert proc.returncode == 64 and "warning" in proc.stderr.lower() and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [
    ("list", "grid.clusters", "--limit", "0"),  # out of range
    ("get", "grid.clusters"),  # a missing argument
    ("token", "create", "--role", "bogus"),  # not one of the choices
    ("frobnicate",),  # no such command
])
def test_a_command_line_click_cannot_parse_is_an_error_like_any_other(home: Path, rgrid: Run,
                                                                      args: tuple[str, ...]) -> None:
    # click printed "Error: ..." and exited 2, which a script could not
    # tell from the 65 the same mistake gets when the command checks it.
    proc = rgrid(*args, home=home)
    assert proc.returncode == 64, proc.stderr
    assert proc.stderr.startswith("error[usage]: ") and " --help" in proc.stderr


def test_an_input_file_that_is_not_there_is_a_bad_argument_and_a_bare_group_shows_its_help(
        home: Path, rgrid: Run) -> None:
    # click's own check of a PATH argument answered 64 (usage), where the
    # same missing file given to --file answers 65, as the errors table says.
    for args in (("import", "/nonexistent.json"), ("asset", "upload", "/nonexistent.bin")):
        proc = rgrid(*args, home=home)
        assert proc.returncode == 65 and proc.stderr.startswith("error[validation_failed]: "), proc.stderr
    bare = subprocess.run([sys.executable, "-m", "registrygrid", "store"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 64 and bare.stdout.startswith("Usage: rgrid store") and "error[" not in bare.stderr


def test_a_json_file_that_names_a_member_twice_is_refused(home: Path, rgrid: Run, tmp_path: Path) -> None:
    doc = tmp_path / "c.json"
    doc.write_text('{"name": "a", "region": "eu", "region": "us"}')
    proc = rgrid("put", "grid.clusters", "cluster", "--id", "c", "--file", str(doc), home=home)
    assert proc.returncode == 65 and "'region' twice in one object" in proc.stderr, proc.stderr
    card = tmp_path / "cards"
    card.mkdir()
    (card / "one.json").write_text('{"name": "x", "name": "y"}')
    imported = rgrid("import", str(card), "--json", home=home)
    assert imported.returncode == 65 and "twice in one object" in imported.stdout + imported.stderr
