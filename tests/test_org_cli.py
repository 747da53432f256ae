"""`rgrid org`, run as the operator runs it: real processes, real homes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import registrygrid
from registrygrid.engine.ops import Remote
from registrygrid.errors import EX_NOPERM
from registrygrid.home import Home, read_key_file
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.trust.statements import MEMBERS_REGISTRY

Run = Callable[..., Any]
YEAR = 365 * 24 * 3600


def ok_json(rgrid: Run, *args: str, home: Path) -> Any:
    proc = rgrid(*args, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def statements(home: Path) -> list[dict[str, Any]]:
    with registrygrid.open(home) as grid:
        return grid.list(MEMBERS_REGISTRY, limit=1000).items


def test_init_publishes_the_org_and_its_delegation_of_the_node(rgrid: Run, tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = ok_json(rgrid, "init", "--org-name", "acme", home=home)
    shown = ok_json(rgrid, "org", "show", home=home)
    assert shown["org"] == created["org"] and shown["status"] == "valid"
    assert [(s["kind"], s["subject"]) for s in shown["statements"]] == [("delegation", created["node"])]


def test_delegate_with_an_offline_org_key_then_revoke(rgrid: Run, tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    # The org key moves off the node; commands take it with --org-key.
    offline = tmp_path / "usb" / "org.key"
    offline.parent.mkdir()
    Home(home).org_key_path.rename(offline)
    member = KeyPair.generate()
    proc = rgrid("org", "delegate", member.did, "--role", "writer", home=home)
    assert proc.returncode != 0 and "--org-key" in proc.stderr
    delegated = ok_json(rgrid, "org", "delegate", member.did, "--role", "writer", "--days", "30",
                        "--org-key", str(offline), home=home)
    assert delegated["status"] == "created" and delegated["roles"] == "writer"
    revoked = ok_json(rgrid, "org", "revoke", member.did, "--reason", "left", "--org-key", str(offline), home=home)
    assert revoked["status"] == "created"
    kinds = sorted((s["kind"], s["fields"]["subject"]) for s in statements(home))
    assert ("delegation", member.did) in kinds and ("revocation", member.did) in kinds


def test_an_expired_node_reads_refuses_writes_with_a_hint_and_renew_fixes_it(rgrid: Run, tmp_path: Path) -> None:
    home_path = tmp_path / "home"
    home = Home(home_path)
    created = home.init(org_name="acme")
    org_key = read_key_file(home.org_key_path)
    home.set_delegation(sign_delegation(org_key, created["node"], ["node", "writer"],
                                        now=time.time() - 2 * YEAR, valid_for=YEAR))
    assert ok_json(rgrid, "org", "show", home=home_path)["status"].startswith("EXPIRED")
    assert rgrid("list", "grid.tools", home=home_path).returncode == 0
    refused = rgrid("put", "grid.tools", "tool", "--set", "name=x", home=home_path)
    assert refused.returncode == EX_NOPERM and "rgrid org renew" in refused.stderr
    renewed = ok_json(rgrid, "org", "renew", home=home_path)
    assert renewed["status"] == "created"
    assert ok_json(rgrid, "org", "show", home=home_path)["status"] == "valid"
    assert rgrid("put", "grid.tools", "tool", "--set", "name=x", home=home_path).returncode == 0


def test_rotate_key_keeps_history_and_refuses_the_old_keys_later_changes(rgrid: Run, tmp_path: Path) -> None:
    home_path = tmp_path / "home"
    home = Home(home_path)
    home.init(org_name="acme")
    old_key = home.node_key()
    with registrygrid.open(home_path) as grid:
        grid.put("grid.tools", "tool", {"name": "before"}, id="before")
    rotated = ok_json(rgrid, "node", "rotate-key", "--reason", "yearly", home=home_path)
    assert rotated["old"] == old_key.did and rotated["new"] == home.node_key().did != old_key.did
    assert json.loads(rotated["cutoffs"])["grid.tools"] == 1
    with registrygrid.open(home_path) as grid:
        assert grid.get("grid.tools", "before")["created_by"] == old_key.did  # history kept, still valid
        after = grid.put("grid.tools", "tool", {"name": "after"}, id="after")
        assert after.record is not None and after.record["created_by"] == rotated["new"]  # a chain of its own
        assert grid.verify().ok
    # A copy of the old key left somewhere keeps signing: nobody takes it.
    thief_path = tmp_path / "thief"
    with registrygrid.LocalRegistry.open_path(thief_path, old_key, owner=Home(home_path).org().org) as thief:  # type: ignore[union-attr]
        with registrygrid.open(home_path) as grid:
            thief.execute([Remote(w, "p") for w in _wires(grid)])
        trust = thief.engine.trust
        assert trust.revoked(old_key.did) is not None
        trust.check_chain = lambda *args: None  # type: ignore[method-assign]  # a node that ignores it signs
        trust.at_place = lambda *args: trust  # type: ignore[method-assign]
        thief.put("grid.tools", "tool", {"name": "stolen"}, id="stolen")
        stolen = _wires(thief)[-1]
    with registrygrid.open(home_path) as grid:
        result = grid.execute([Remote(stolen, "p")])[0]
        assert result.status == "refused" and result.error.code == "key_revoked"
        assert {r["id"] for r in grid.list("grid.tools").items} == {"before", "after"}


@pytest.mark.parametrize("stop_after", ["keys written", "plan written", "key swapped"])
def test_a_rotation_stopped_at_any_step_leaves_a_home_that_opens_and_finishes_it(tmp_path: Path,
                                                                                   stop_after: str) -> None:
    """A crash (here: an interrupt) at each step of `rgrid node rotate-key`:
    the home opens with a key and that key's delegation; once the plan was
    written, the open finishes the rotation (the new key, the old one
    revoked); before that the old key goes on, and rotating again works."""
    from registrygrid.membership import ROTATION_FILE, rotate_node_key

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    old_key = home.node_key()
    with registrygrid.open(home.path) as grid:
        grid.put("grid.tools", "tool", {"name": "before"}, id="before")

    def stop(step: str) -> None:
        if step == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_node_key(home, reason="stopped", on_step=stop)
    with registrygrid.open(home.path) as grid:
        key = home.node_key()
        assert home.org().delegation.claims.subject == key.did  # type: ignore[union-attr]
        assert not (home.path / ROTATION_FILE).exists()
        assert (key.did != old_key.did) == (stop_after != "keys written")
        assert (grid.engine.trust.revoked(old_key.did) is not None) == (stop_after != "keys written")
        written = grid.put("grid.tools", "tool", {"name": "after"}, id="after")
        assert written.record is not None and written.record["created_by"] == key.did
        assert grid.get("grid.tools", "before")["created_by"] == old_key.did and grid.verify().ok
    again = rotate_node_key(home, reason="again")
    assert again["old"] != again["new"] == home.org().delegation.claims.subject  # type: ignore[union-attr]
    with registrygrid.open(home.path) as grid:
        assert grid.engine.trust.revoked(again["old"]) is not None and grid.verify().ok
        assert home.node_key().did == again["new"]


def test_a_rotation_run_again_after_one_stopped_before_publishing_revokes_both_old_keys(tmp_path: Path) -> None:
    from registrygrid.membership import rotate_node_key

    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    registrygrid.open(home.path).close()  # as `rgrid init` does: the home's statements published
    first = home.node_key().did

    def stop(step: str) -> None:
        if step == "key swapped":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_node_key(home, on_step=stop)
    second = home.node_key().did
    again = rotate_node_key(home)  # the home not opened in between
    assert again["old"] == second != first
    with registrygrid.open(home.path) as grid:
        assert grid.engine.trust.revoked(first) is not None and grid.engine.trust.revoked(second) is not None
        assert grid.verify().ok


def test_rotate_key_right_after_init_has_no_cutoffs_and_works(rgrid: Run, tmp_path: Path) -> None:
    """`rgrid init` writes the home but opens no store: the key has signed
    nothing yet, so the revocation names no cutoffs (it was a traceback)."""
    home_path = tmp_path / "home"
    ok_json(rgrid, "init", "--org-name", "acme", home=home_path)
    rotated = ok_json(rgrid, "node", "rotate-key", home=home_path)
    assert json.loads(rotated["cutoffs"]) == {} and rotated["new"] == Home(home_path).node_key().did
    with registrygrid.open(home_path) as grid:
        assert grid.engine.trust.revoked(rotated["old"]) is not None and grid.verify().ok


def _wires(grid: Any) -> list[bytes]:
    from registrygrid.protocol.envelope import cid_from_str

    return [grid.change(cid_from_str(e.change)) for e in grid.changes(0, limit=10_000)]


def test_a_home_file_cut_short_or_edited_badly_is_a_clear_error_not_a_traceback(rgrid: Run, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok_json(rgrid, "init", "--org-name", "acme", home=home)
    org_file, config = home / "org.json", home / "config.json"
    good_org, good_config = org_file.read_text(), config.read_text()
    for path, text, says in [(org_file, good_org[:40], "org.json is not valid JSON"),
                             (org_file, '{"org": "did:key:z6Mk"}', "org.json is not an org file"),
                             (org_file, "[1, 2]", "org.json is not an org file"),
                             (config, "[1]", "config.json must hold a JSON object"),
                             (config, b'{"federation": "\xff"}', "config.json is not valid JSON"),
                             (org_file, b"\xfe\xff", "org.json is not valid JSON")]:
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        for command in (("org", "show"), ("stats",)):
            proc = rgrid(*command, home=home)
            assert proc.returncode == 65, (command, text, proc.stderr)
            assert says in proc.stderr and "Traceback" not in proc.stderr
        org_file.write_text(good_org)
        config.write_text(good_config)
    assert ok_json(rgrid, "org", "show", home=home)["status"] == "valid"


def test_org_show_in_a_home_that_made_a_federation_lists_the_orgs_own_statements(rgrid: Run, tmp_path: Path) -> None:
    # grid.members holds the federation's genesis too, which has no "org"
    # member: `rgrid org show` failed with a KeyError traceback.
    home = tmp_path / "home"
    created = ok_json(rgrid, "init", "--org-name", "acme", home=home)
    ok_json(rgrid, "federation", "create", "acme-grid", home=home)
    shown = rgrid("org", "show", "--json", home=home)
    assert shown.returncode == 0, shown.stderr
    assert [(s["kind"], s["subject"]) for s in json.loads(shown.stdout)["statements"]] == [
        ("delegation", created["node"])]


def test_revoking_this_nodes_own_key_asks_first_and_works_on_a_home_whose_store_is_not_made_yet(
        rgrid: Run, tmp_path: Path) -> None:
    # On a fresh home, org revoke died with an lmdb traceback (the store did
    # not exist yet); and a node revoked its own key, for good, unasked.
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    node = Home(home).node_key().did
    refused = rgrid("org", "revoke", node, home=home, input="n\n")
    assert refused.returncode == 1 and "rotate-key" in refused.stderr and "Traceback" not in refused.stderr
    assert not [s for s in statements(home) if s["kind"] == "revocation"]
    other = KeyPair.generate().did
    fresh = tmp_path / "fresh"
    Home(fresh).init(org_name="acme-two")
    revoked = ok_json(rgrid, "org", "revoke", other, home=fresh)
    assert revoked["subject"] == other and json.loads(revoked["cutoffs"]) == {}
    assert ok_json(rgrid, "org", "revoke", node, "--yes", home=home)["subject"] == node


def test_init_refuses_an_org_name_the_org_record_would_refuse_and_writes_nothing(rgrid: Run, tmp_path: Path) -> None:
    # A 300-character name made the home, and its org record was refused at
    # every open (audited), with no way to fix the name.
    home = tmp_path / "home"
    proc = rgrid("init", "--org-name", "x" * 300, home=home)
    assert proc.returncode == 65 and "--org-name" in proc.stderr and "Traceback" not in proc.stderr
    assert not Home(home).exists()
    assert rgrid("init", "--org-name", "acme", home=home).returncode == 0


def test_an_org_key_file_that_does_not_exist_is_named_as_given(rgrid: Run, tmp_path: Path) -> None:
    # It said "the org key is not in this home ...; give it with --org-key FILE" to one who had.
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    proc = rgrid("org", "renew", "--org-key", str(tmp_path / "nowhere.key"), home=home)
    assert proc.returncode != 0 and f"--org-key {tmp_path / 'nowhere.key'}: no such file" in proc.stderr
