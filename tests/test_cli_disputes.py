"""`rgrid disputes`, `rgrid get --conflicts`, `rgrid audit log --record` and
`rgrid registry create --conflict-policy`, run as the operator runs them: a
real process per command on a real home.

A dispute needs two stores that wrote concurrently. The homes here are two
nodes of one org (the second made with `rgrid init --org-key`); their
stores are prepared in-process with the SDK, exchanging real envelopes,
and then the CLI runs on the first (as in tests/test_cli.py, in-process
preparation saves half a second of imports a step).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registrygrid.engine.ops import Remote
from registrygrid.errors import EX_DATAERR, EX_NOINPUT
from registrygrid.home import Home, read_key_file
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from tests.test_engine import wires_in_feed_order as wires

Run = Callable[..., Any]

PRICES = "acme.prices"
MANUAL_PRICE = '{"fields": {"price": "manual"}}'


def ok_json(rgrid: Run, *args: str, home: Path) -> Any:
    proc = rgrid(*args, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ok_text(rgrid: Run, *args: str, home: Path) -> str:
    proc = rgrid(*args, home=home)
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def deliver(source: LocalRegistry, target: LocalRegistry) -> list[str]:
    """What ``target`` made of everything ``source`` holds."""
    return [r.status for r in target.execute([Remote(w, "peer") for w in wires(source)])]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as a 200-column terminal draws them (rich reads COLUMNS), so
    no cell the tests look for is folded."""
    monkeypatch.setenv("COLUMNS", "200")


@dataclass
class Raced:
    home: Path  # node a's home; the CLI runs here
    dispute: str
    a: str  # node a's did
    b: str  # node b's did


@pytest.fixture
def raced(tmp_path: Path, rgrid: Run) -> Raced:
    """acme.prices, created with `rgrid registry create --conflict-policy`,
    settles price by hand. Record x has price 1; node a sets it to 2 while
    node b (same org) sets it to 3; then they exchange everything."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    Home(home_a).init(org_name="acme")
    Home(home_b).init(org_key_file=Home(home_a).org_key_path)
    created = ok_json(rgrid, "registry", "create", PRICES, "--kind", "cluster", "--conflict-policy", MANUAL_PRICE,
                      home=home_a)
    assert created["status"] == "created"
    with LocalRegistry.open_home(home_a) as a, LocalRegistry.open_home(home_b) as b:
        a.put(PRICES, "cluster", {"name": "x", "price": 1}, id="x")
        deliver(a, b)
        deliver(b, a)
        a.update(PRICES, "x", patch={"price": 2})
        b.update(PRICES, "x", patch={"price": 3})
        deliver(b, a)
        deliver(a, b)
        (dispute,) = a.disputes()
        assert b.disputes() == [dispute]
        return Raced(home_a, dispute["id"], a.engine.key.did, b.engine.key.did)


# ---------------------------------------------------------------- field disputes


def test_registry_create_takes_a_conflict_policy_object_and_describe_shows_it(raced: Raced, rgrid: Run) -> None:
    described = ok_json(rgrid, "registry", "describe", PRICES, home=raced.home)
    assert described["conflict_policy"] == json.loads(MANUAL_PRICE)


def test_disputes_list_names_the_record_and_path_of_a_manual_conflict(raced: Raced, rgrid: Run) -> None:
    (item,) = ok_json(rgrid, "disputes", "list", home=raced.home)
    assert (item["id"], item["type"], item["status"]) == (raced.dispute, "field", "disputed")
    assert (item["registry"], item["record"], item["path"]) == (PRICES, "x", "/fields/price")
    assert ok_json(rgrid, "disputes", "list", "--status", "resolved", home=raced.home) == []
    table = ok_text(rgrid, "disputes", "list", home=raced.home)
    for column in ("id", "type", "status", "registry", "record/author", "path/seq"):
        assert column in table
    assert "disputed" in table and "/fields/price" in table


def test_list_conflicted_shows_only_the_records_that_show_conflicts(raced: Raced, rgrid: Run) -> None:
    with LocalRegistry.open_home(raced.home) as a:
        a.put(PRICES, "cluster", {"name": "calm", "price": 1}, id="calm")
    every = ok_json(rgrid, "list", PRICES, home=raced.home)["items"]
    assert [r["id"] for r in every] == ["calm", "x"]
    listed = ok_json(rgrid, "list", PRICES, "--conflicted", home=raced.home)
    assert [r["id"] for r in listed["items"]] == ["x"] and listed["next_cursor"] is None
    # Across registries: the org's own record is not among them (only the
    # founder's home creates it, so two nodes of one org never race it).
    assert [r["id"] for r in ok_json(rgrid, "list", "--conflicted", home=raced.home)["items"]] == ["x"]
    table = ok_text(rgrid, "list", PRICES, "--conflicted", home=raced.home)
    assert " x " in table and "calm" not in table
    header, row = [line for line in table.splitlines() if "conflicts" in line or "/fields/price" in line]
    assert "conflicts" in header and "/fields/price" in row


def test_disputes_show_gives_the_diff_the_rule_and_what_the_record_shows(raced: Raced, rgrid: Run) -> None:
    shown = ok_json(rgrid, "disputes", "show", raced.dispute, home=raced.home)
    assert shown["was"] == 1 and shown["rule"] == "manual" and shown["resolutions"] == []
    text = ok_text(rgrid, "disputes", "show", raced.dispute, home=raced.home)
    lines = text.splitlines()
    assert "was: 1" in lines
    assert {line.split()[1] for line in lines if line.startswith("-> ")} == {"2", "3"}
    assert any(line.startswith("-> ") and raced.b in line for line in lines)  # a diff line is never cut
    assert "manual" in text and "resolutions:" in lines and "(none)" in lines


def test_an_unknown_dispute_exits_66(raced: Raced, rgrid: Run) -> None:
    proc = rgrid("disputes", "show", "dispute-" + "a" * 32, home=raced.home)
    assert proc.returncode == EX_NOINPUT
    assert proc.stderr.startswith("error[not_found]: ")


def test_resolving_with_a_json_value_settles_the_field_and_the_resolution_counts(raced: Raced, rgrid: Run) -> None:
    filed = ok_json(rgrid, "disputes", "resolve", raced.dispute, "--value", '{"amount": 7, "currency": "EUR"}',
                    "--note", "the list price", home=raced.home)
    assert (filed["status"], filed["registry"]) == ("created", "grid.disputes")
    record = ok_json(rgrid, "get", PRICES, "x", home=raced.home)
    assert record["fields"]["price"] == {"amount": 7, "currency": "EUR"}
    assert record["conflicts"][0]["status"] == "resolved"
    assert ok_json(rgrid, "disputes", "list", "--status", "disputed", home=raced.home) == []
    lines = ok_text(rgrid, "disputes", "show", raced.dispute, home=raced.home).splitlines()
    (resolution,) = [line for line in lines if line.startswith("value ")]
    assert resolution.startswith('value {"amount": 7, "currency": "EUR"}  by ' + raced.a)
    assert "  counts  " in resolution and resolution.endswith("note: the list price")


def test_a_value_that_is_not_json_is_taken_as_a_string_and_remove_removes_the_field(raced: Raced,
                                                                                     rgrid: Run) -> None:
    ok_json(rgrid, "disputes", "resolve", raced.dispute, "--value", "ask sales", home=raced.home)
    assert ok_json(rgrid, "get", PRICES, "x", home=raced.home)["fields"]["price"] == "ask sales"
    ok_json(rgrid, "disputes", "resolve", raced.dispute, "--remove", home=raced.home)
    assert "price" not in ok_json(rgrid, "get", PRICES, "x", home=raced.home)["fields"]
    shown = ok_json(rgrid, "disputes", "show", raced.dispute, home=raced.home)
    assert [(r["value"], r["removed"]) for r in shown["resolutions"]] == [("ask sales", False), (None, True)]


def test_a_field_dispute_needs_exactly_one_of_value_and_remove(raced: Raced, rgrid: Run) -> None:
    for args in ((), ("--value", "1", "--remove")):
        proc = rgrid("disputes", "resolve", raced.dispute, *args, home=raced.home)
        assert proc.returncode == EX_DATAERR, proc.stderr
    assert ok_json(rgrid, "disputes", "show", raced.dispute, home=raced.home)["resolutions"] == []


def test_get_conflicts_prints_every_competing_write_after_the_record(raced: Raced, rgrid: Run) -> None:
    plain = ok_json(rgrid, "get", PRICES, "x", home=raced.home)
    both = ok_json(rgrid, "get", PRICES, "x", "--conflicts", home=raced.home)
    assert both == {"record": plain, "conflicts": plain["conflicts"]}
    (conflict,) = both["conflicts"]
    assert {(w["author"], w["value"]) for w in conflict["writes"]} == {(raced.a, 2), (raced.b, 3)}
    text = ok_text(rgrid, "get", PRICES, "x", "--conflicts", home=raced.home)
    lines = text.splitlines()
    assert text.index(f"{PRICES}/x") < text.index("conflict /fields/price")
    at = lines.index(f"conflict /fields/price  rule manual  disputed ({raced.dispute})  shows {conflict['value']}")
    assert lines[at + 1:at + 3] == [f"  {w['value']}  by {w['author']} at hlc {w['hlc']}" for w in conflict["writes"]]


def test_audit_log_record_shows_only_that_records_entries_with_the_merge(raced: Raced, rgrid: Run) -> None:
    entries = ok_json(rgrid, "audit", "log", "--record", f"{PRICES}/x", "--limit", "1000", home=raced.home)
    assert {e["target"] for e in entries} == {f"{PRICES}/x"}
    assert sorted(e["action"] for e in entries) == ["create", "merge", "update", "update"]
    (merge,) = [e for e in entries if e["action"] == "merge"]
    assert raced.dispute in merge["reason"]
    newest = ok_json(rgrid, "audit", "log", "--record", f"{PRICES}/x", "--latest", "--limit", "1", home=raced.home)
    assert [e["seq"] for e in newest] == [max(e["seq"] for e in entries)]
    bad = rgrid("audit", "log", "--record", "no-slash", home=raced.home)
    assert bad.returncode == EX_DATAERR and "REGISTRY/ID" in bad.stderr


# ---------------------------------------------------------------- --conflict-policy


def test_conflict_policy_takes_a_rule_an_object_or_a_file_and_refuses_anything_else(tmp_path: Path,
                                                                                     rgrid: Run) -> None:
    home = tmp_path / "home"
    Home(home).init(org_name="acme")
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"default": "owner-wins", "fields": {"downloads": "max"}}))
    for name, policy in (("acme.one", "union"), ("acme.two", "@" + str(policy_file))):
        ok_json(rgrid, "registry", "create", name, "--kind", "asset", "--conflict-policy", policy, home=home)
    registries = {r["name"]: r for r in ok_json(rgrid, "registry", "list", home=home)}
    assert registries["acme.one"]["conflict_policy"] == "union"
    assert registries["acme.two"]["conflict_policy"] == {"default": "owner-wins", "fields": {"downloads": "max"}}

    for policy in ("sometimes", '{"fields": ', '{"fields": {"price": "coin-toss"}}'):
        proc = rgrid("registry", "create", "acme.bad", "--kind", "asset", "--conflict-policy", policy, home=home)
        assert proc.returncode == EX_DATAERR, (policy, proc.stderr)
    assert "acme.bad" not in {r["name"] for r in ok_json(rgrid, "registry", "list", home=home)}


# ---------------------------------------------------------------- equivocation


@dataclass
class Equivocated:
    home: Path  # node c's home, which saw both changes and filed the report
    dispute: str


@pytest.fixture
def equivocated(tmp_path: Path) -> Equivocated:
    """A key of node c's org runs on two stores (a cloned key) and signs
    two different changes with sequence 1; c hears both."""
    home = tmp_path / "c"
    Home(home).init(org_name="acme")
    cloned = KeyPair(b"\x77" * 32)
    org_key = read_key_file(Home(home).org_key_path)
    one = LocalRegistry.open_path(tmp_path / "one", cloned, delegation=sign_delegation(org_key, cloned.did,
                                                                                      ["node", "writer"]))
    two = LocalRegistry.open_path(tmp_path / "two", cloned, owner=org_key.did)
    try:
        deliver(one, two)  # the key's delegation, published once
        one.put("grid.clusters", "cluster", {"name": "resize"}, id="f1")
        two.put("grid.clusters", "cluster", {"name": "crop"}, id="f2")  # sequence 1 again
        with LocalRegistry.open_home(home) as c:
            deliver(one, c)
            assert "rejected" in deliver(two, c)
            (dispute,) = c.disputes()
    finally:
        one.close()
        two.close()
    return Equivocated(home, dispute["id"])


def test_an_equivocation_is_listed_with_its_key_and_sequence(equivocated: Equivocated, rgrid: Run) -> None:
    (item,) = ok_json(rgrid, "disputes", "list", home=equivocated.home)
    assert (item["type"], item["status"], item["registry"], item["seq"]) == (
        "equivocation", "quarantined", "grid.clusters", 1)
    assert item["author"] == KeyPair(b"\x77" * 32).did
    table = ok_text(rgrid, "disputes", "list", home=equivocated.home)
    assert "equivocation" in table and "#1" in table


def test_showing_an_equivocation_puts_the_two_changes_side_by_side_with_why_and_what_is_quarantined(
        equivocated: Equivocated, rgrid: Run) -> None:
    shown = ok_json(rgrid, "disputes", "show", equivocated.dispute, home=equivocated.home)
    text = ok_text(rgrid, "disputes", "show", equivocated.dispute, home=equivocated.home)
    lines = text.splitlines()
    assert "change 1" in text and "change 2" in text
    side_by_side = {cells[1].strip(): [c.strip() for c in cells[2:4]]
                    for cells in (line.split("│") for line in lines) if len(cells) == 5}
    assert side_by_side["record"] == [c["record"] for c in shown["changes"]] and \
        sorted(side_by_side["record"]) == ["f1", "f2"]
    assert side_by_side["seq"] == ["1", "1"]
    assert side_by_side["change"] == [c["change"] for c in shown["changes"]]
    assert lines[lines.index("why:") + 1] == shown["why"]
    assert lines[lines.index("quarantine:") + 1] == shown["quarantine"]
    assert lines[lines.index("resolutions:") + 1] == "(none)"


def test_an_equivocation_is_acknowledged_without_a_value_and_the_acknowledgement_counts(
        equivocated: Equivocated, rgrid: Run) -> None:
    refused = rgrid("disputes", "resolve", equivocated.dispute, "--value", "1", home=equivocated.home)
    assert refused.returncode == EX_DATAERR and "without one" in refused.stderr
    ok_json(rgrid, "disputes", "resolve", equivocated.dispute, "--note", "key rotated", home=equivocated.home)
    shown = ok_json(rgrid, "disputes", "show", equivocated.dispute, home=equivocated.home)
    assert shown["status"] == "resolved"
    assert [(r["outcome"], r["counts"], r["note"]) for r in shown["resolutions"]] == [
        ("quarantine", True, "key rotated")]
    lines = ok_text(rgrid, "disputes", "show", equivocated.dispute, home=equivocated.home).splitlines()
    assert any(line.startswith("acknowledged (quarantine stays)") and "  counts  " in line for line in lines)
