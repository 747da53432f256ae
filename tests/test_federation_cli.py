"""`rgrid federation`, run as operators run it: real processes, real homes.

Three orgs: A and C found "acme-grid" together (an invitation needs both
admins' signatures), B is invited, signed by A then by C, and joins.
Admission at the handshake is tested with real nodes in
test_federation_hostile.py and test_federation_processes.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registrygrid.errors import EX_DATAERR, EX_IOERR
from registrygrid.home import Home

Run = Callable[..., Any]


def ok_json(rgrid: Run, *args: str, home: Path) -> Any:
    proc = rgrid(*args, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_create_invite_with_two_admins_join_and_list_members(rgrid: Run, tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for home in (a, b, c):
        Home(home).init(org_name=home.name)
    c_key = Home(c).org_key_path
    created = ok_json(rgrid, "federation", "create", "acme-grid", "--quorum", "2", "--co-founder-key", str(c_key),
                      "--out", str(tmp_path / "genesis.json"), home=a)
    assert created["name"] == "acme-grid" and created["quorum"] == 2 and len(created["founders"]) == 2
    # C's nodes join with the genesis alone: C founded it.
    joined = ok_json(rgrid, "federation", "join", str(tmp_path / "genesis.json"), home=c)
    assert joined["federation"] == created["federation"]

    b_org = Home(b).org().org  # type: ignore[union-attr]
    invite = tmp_path / "invite.json"
    first = ok_json(rgrid, "federation", "invite", b_org, "--out", str(invite), home=a)
    assert first["status"].startswith("needs more admin signatures")
    # B can't join on one signature of two.
    early = rgrid("federation", "join", str(invite), home=b)
    assert early.returncode != 0 and "needs 2" in early.stderr
    second = ok_json(rgrid, "federation", "sign", str(invite), home=c)
    assert second["status"] == "complete: created" and len(second["signers"]) == 2
    assert ok_json(rgrid, "federation", "join", str(invite), home=b)["federation"] == created["federation"]
    assert json.loads((b / "config.json").read_text())["federation"] == "acme-grid"
    # The store names the federation whose members' changes it counts.
    stats = ok_json(rgrid, "stats", home=b)
    assert (stats["federation"], stats["federation_id"]) == ("acme-grid", created["federation"])

    members = ok_json(rgrid, "federation", "members", home=c)
    assert members["federation"] == created["federation"] and members["implicit"] is False
    roles = {m["org"]: m["roles"] for m in members["members"]}
    assert roles[b_org] == "member" and "admin" in roles[Home(a).org().org]  # type: ignore[union-attr]


def test_a_federation_name_it_cannot_take_is_refused_as_a_federation_name(rgrid: Run, tmp_path: Path) -> None:
    Home(tmp_path / "a").init(org_name="a")
    proc = rgrid("federation", "create", "fedA", home=tmp_path / "a")  # it said "invalid registry name"
    assert proc.returncode == EX_DATAERR and "invalid federation name 'fedA'" in proc.stderr, proc.stderr


def test_a_node_outside_any_federation_is_in_its_orgs_own(rgrid: Run, tmp_path: Path) -> None:
    home = tmp_path / "solo"
    Home(home).init(org_name="solo")
    members = ok_json(rgrid, "federation", "members", home=home)
    assert members["implicit"] is True and members["name"] == "default"
    assert [m["roles"] for m in members["members"]] == ["admin,founder"]
    assert ok_json(rgrid, "stats", home=home)["federation"] == "default"


def test_only_an_admin_may_invite_or_revoke(rgrid: Run, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for home in (a, b):
        Home(home).init(org_name=home.name)
    ok_json(rgrid, "federation", "create", "grid", home=a)
    b_org = Home(b).org().org  # type: ignore[union-attr]
    invite = tmp_path / "invite.json"
    ok_json(rgrid, "federation", "invite", b_org, "--out", str(invite), home=a)
    ok_json(rgrid, "federation", "join", str(invite), home=b)
    refused = rgrid("federation", "invite", Home(a).node_key().did, home=b)
    assert refused.returncode != 0 and "not an admin" in refused.stderr
    refused = rgrid("federation", "revoke", Home(a).org().org, home=b)  # type: ignore[union-attr]
    assert refused.returncode != 0 and "not an admin" in refused.stderr
    revoked = ok_json(rgrid, "federation", "revoke", b_org, "--reason", "left", home=a)
    assert [r["subject"] for r in revoked["revoked"]][0] == b_org


def test_joining_with_a_bad_bootstrap_address_is_refused_before_anything_changes(rgrid: Run, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for home in (a, b):
        Home(home).init(org_name=home.name)
    ok_json(rgrid, "federation", "create", "grid", home=a)
    invite = tmp_path / "invite.json"
    ok_json(rgrid, "federation", "invite", Home(b).org().org, "--out", str(invite), home=a)  # type: ignore[union-attr]
    proc = rgrid("federation", "join", str(invite), "--bootstrap", "/ip4/999.1.1.1/tcp/4001/p2p/12D3KooWbad", home=b)
    assert proc.returncode == EX_DATAERR and "999.1.1.1" in proc.stderr
    assert not (b / "federation.json").exists()
    # A config.json bootstrap that is no list: it failed with a traceback
    # after the home had joined (a string was taken letter by letter).
    config = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**config, "bootstrap": 5}))
    good = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWKnDEwWrvwdYDefeqE1BKqNyTYv8QGJcDkWLqEdQHsB8R"
    proc = rgrid("federation", "join", str(invite), "--bootstrap", good, home=b)
    assert proc.returncode == EX_DATAERR and "config.json bootstrap" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (b / "federation.json").exists()


def test_an_out_file_that_cannot_be_written_is_refused_before_anything_changes(rgrid: Run, tmp_path: Path) -> None:
    # Before, the federation was founded (or the invitation signed and
    # published) and then writing --out failed with a traceback: the
    # genesis the co-founders join with was never written, and `create`
    # could not be run again.
    a, b = tmp_path / "a", tmp_path / "b"
    for home in (a, b):
        Home(home).init(org_name=home.name)
    proc = rgrid("federation", "create", "grid", "--out", str(tmp_path / "no-such-folder" / "genesis.json"), home=a)
    assert proc.returncode == EX_IOERR and "error[file_failed]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (a / "federation.json").exists()
    ok_json(rgrid, "federation", "create", "grid", "--out", str(tmp_path / "genesis.json"), home=a)
    proc = rgrid("federation", "invite", Home(b).org().org, "--out",  # type: ignore[union-attr]
                 str(tmp_path / "no-such-folder" / "invite.json"), home=a)
    assert proc.returncode == EX_IOERR and "no folder" in proc.stderr, proc.stderr
    assert [m["org"] for m in ok_json(rgrid, "federation", "members", home=a)["members"]] == [Home(a).org().org]  # type: ignore[union-attr]
    # Any other file a command writes fails the same way, in one line.
    proc = rgrid("export", "grid.clusters", "--format", "mcp", "--out", str(tmp_path / "genesis.json" / "docs"), home=a)
    assert proc.returncode == EX_IOERR and "error[file_failed]" in proc.stderr and "Traceback" not in proc.stderr


def test_a_node_announces_where_it_listens_and_members_lists_it(rgrid: Run, tmp_path: Path) -> None:
    home = tmp_path / "a"
    Home(home).init(org_name="a")
    ok_json(rgrid, "federation", "create", "grid", home=home)
    addr = f"/dns4/node1.example.org/tcp/4001/p2p/{Home(home).node_key().peer_id}"
    announced = ok_json(rgrid, "federation", "announce", "--endpoint", addr, "--capability", "sync", home=home)
    assert announced["endpoints"] == [addr] and announced["status"] == "created"
    members = ok_json(rgrid, "federation", "members", home=home)
    assert members["members"][0]["endpoints"] == [addr]
    again = ok_json(rgrid, "federation", "announce", "--endpoint", addr, home=home)
    assert again["status"] in ("updated", "unchanged")
    bad = rgrid("federation", "announce", "--endpoint", "/ip4/1.2.3.4/tcp/1", home=home)
    assert bad.returncode == EX_DATAERR and "/p2p" in bad.stderr
    # Another node's peer ID was published as this node's endpoint.
    from registrygrid.identity.keys import KeyPair

    elsewhere = f"/ip4/1.2.3.4/tcp/1/p2p/{KeyPair.generate().peer_id}"
    bad = rgrid("federation", "announce", "--endpoint", elsewhere, home=home)
    assert bad.returncode == EX_DATAERR and "another peer than this node" in bad.stderr
    assert ok_json(rgrid, "federation", "members", home=home)["members"][0]["endpoints"] == [addr]


def test_revoke_names_every_key_the_org_delegated_however_many_statements_the_store_holds(
        rgrid: Run, tmp_path: Path) -> None:
    # Only the first 1,000 statements were read: the keys past them went
    # unnamed, and a revocation cuts the keys it does not name at 0.
    import registrygrid
    from registrygrid.engine.ops import Put
    from registrygrid.identity.delegation import sign_delegation
    from registrygrid.identity.keys import KeyPair
    from registrygrid.membership import org_key
    from registrygrid.trust.statements import delegation_record

    a, b = tmp_path / "a", tmp_path / "b"
    for home in (a, b):
        Home(home).init(org_name=home.name)
    ok_json(rgrid, "federation", "create", "grid", home=a)
    b_org = Home(b).org().org  # type: ignore[union-attr]
    b_keys = sorted(KeyPair.generate().did for _ in range(8))
    statements = [delegation_record(sign_delegation(org_key(Home(a)), KeyPair.generate().did, ["writer"]))
                  for _ in range(1500)]
    statements += [delegation_record(sign_delegation(org_key(Home(b)), did, ["writer"])) for did in b_keys]
    # B delegated A's node key too: an admin's revocation would cut it whole, so it is not named.
    statements.append(delegation_record(sign_delegation(org_key(Home(b)), Home(a).node_key().did, ["reader"])))
    with registrygrid.open(a) as grid:
        grid.put_many([Put("grid.members", "delegation", fields, record_id=rid) for rid, fields in statements])
    revoked = ok_json(rgrid, "federation", "revoke", b_org, home=a)
    assert [r["subject"] for r in revoked["revoked"]] == [b_org, *b_keys]


def test_an_invitation_without_out_is_the_whole_of_stdout_or_inside_the_json(rgrid: Run, tmp_path: Path) -> None:
    # Without --out, a table followed the invitation on stdout (`> invite.json`
    # wrote a file join refused), and --json left the invitation out.
    a, b, c = (tmp_path / n for n in "abc")
    for home in (a, b, c):
        Home(home).init(org_name=home.name)
    ok_json(rgrid, "federation", "create", "grid", home=a)
    b_org, c_org = (Home(h).org().org for h in (b, c))  # type: ignore[union-attr]
    proc = rgrid("federation", "invite", b_org, home=a)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "invite-b.json").write_text(proc.stdout)
    assert "complete" in proc.stderr
    ok_json(rgrid, "federation", "join", str(tmp_path / "invite-b.json"), home=b)
    shown = ok_json(rgrid, "federation", "invite", c_org, home=a)
    (tmp_path / "invite-c.json").write_text(json.dumps(shown["invitation"]))
    ok_json(rgrid, "federation", "join", str(tmp_path / "invite-c.json"), home=c)
