"""A2A agent cards as records of grid.agent-cards (formats/a2a.py): cards
signed here as A2A 1.0 says (a JWS whose detached payload is the RFC 8785
form of the card without its signatures), with real EC P-256 and Ed25519
keys, are verified on import: a valid one with a trusted key, a tampered
one, an unsigned one, one whose key is only embedded, and one whose key is
unknown each get their status; every card exports as it was signed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from joserfc import jws
from joserfc.jwk import ECKey, KeySet, OKPKey

from registrygrid.formats import a2a, importer
from registrygrid.sdk import LocalRegistry

CARD: dict[str, Any] = {
    "name": "Contract summarizer",
    "description": "Summarizes legal contracts in German and English",
    "version": "1.2.0",
    "supportedInterfaces": [{"url": "https://agents.example.com/summarizer", "protocolBinding": "JSONRPC"}],
    "provider": {"organization": "Example Legal", "url": "https://example.com"},
    "capabilities": {"streaming": True, "pushNotifications": False},
    "defaultInputModes": ["text/plain", "application/pdf"],
    "defaultOutputModes": ["text/plain"],
    "skills": [{"id": "summarize", "name": "Summarize a contract", "description": "One page from fifty",
                "tags": ["legal", "summarization"], "examples": ["Summarize this NDA"]}],
    "x-extension": {"kept": [1, 2.5, None]},
}


def sign(card: dict[str, Any], key: Any, kid: str, alg: str, *, embed: bool = False) -> dict[str, Any]:
    """The card with one more signature, made as A2A 1.0 §8.4 says."""
    header: dict[str, Any] = {"alg": alg, "kid": kid, "typ": "JOSE"}
    if embed:
        header["jwk"] = key.as_dict(private=False)
    payload = rfc8785.dumps({k: v for k, v in card.items() if k != "signatures"})
    protected, _, signature = jws.serialize_compact(header, payload, key, algorithms=[alg]).split(".")
    return {**card, "signatures": [*card.get("signatures", []), {"protected": protected, "signature": signature}]}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"ec": ECKey.generate_key("P-256", parameters={"kid": "ec-1"}),
            "ed": OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"}),
            "other": ECKey.generate_key("P-256", parameters={"kid": "other-1"})}


@pytest.fixture
def trusted(keys: dict[str, Any]) -> KeySet:
    return a2a.load_keys({"keys": [keys["ec"].as_dict(private=False), keys["ed"].as_dict(private=False)]})


def test_a_card_signed_with_a_trusted_key_verifies_with_either_algorithm(keys: dict[str, Any], trusted: KeySet) -> None:
    assert a2a.verify(sign(CARD, keys["ec"], "ec-1", "ES256"), trusted).status == "verified"
    assert a2a.verify(sign(CARD, keys["ed"], "ed-1", "Ed25519"), trusted).status == "verified"


def test_any_change_to_a_signed_card_makes_its_signature_invalid(keys: dict[str, Any], trusted: KeySet) -> None:
    signed = sign(CARD, keys["ec"], "ec-1", "ES256")
    tampered = {**signed, "skills": [{**CARD["skills"][0], "description": "Sends your contracts elsewhere"}]}
    assert a2a.verify(tampered, trusted).status == "invalid"
    reordered = dict(reversed(list(signed.items())))  # member order is not content: RFC 8785 sorts it
    assert a2a.verify(reordered, trusted).status == "verified"
    forged = {**signed, "signatures": [{**signed["signatures"][0], "signature": "A" * 86}]}
    assert a2a.verify(forged, trusted).status == "invalid"


def test_unsigned_self_signed_and_unknown_key_cards_say_so(keys: dict[str, Any], trusted: KeySet) -> None:
    assert a2a.verify(CARD, trusted).status == "unsigned"
    assert a2a.verify(sign(CARD, keys["other"], "other-1", "ES256", embed=True), trusted).status == "self-signed"
    unknown = a2a.verify(sign(CARD, keys["other"], "other-1", "ES256"), trusted)
    assert unknown.status == "unverified" and "JWKS" in unknown.reason
    none_alg = {**CARD, "signatures": [{"protected": base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("="),
                                        "signature": ""}]}
    assert a2a.verify(none_alg, trusted).status == "invalid"
    # A protected header nested deeper than the JSON parser follows: a
    # RecursionError out of the import (a 500 over HTTP) before.
    deep = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode().rstrip("=")
    nested = {**CARD, "signatures": [{"protected": deep, "signature": ""}]}
    assert a2a.verify(nested, trusted).status == "invalid"
    # With several signatures the best one counts.
    both = sign(sign(CARD, keys["other"], "other-1", "ES256"), keys["ec"], "ec-1", "ES256")
    assert a2a.verify(both, trusted).status == "verified"


def test_a_reader_is_shown_the_tagged_status_only_where_the_card_bears_it_out(keys: dict[str, Any]) -> None:
    def shown(card: dict[str, Any], status: str, change: str) -> str:
        return a2a.shown_status({"fields": card, "tags": ["a2a", f"signature:{status}"], "change_id": change})

    kid_only = sign(CARD, keys["ec"], "ec-1", "ES256")  # checked with a key only the importer held
    embedded = sign(CARD, keys["ec"], "ec-1", "ES256", embed=True)
    assert shown(kid_only, "verified", "c1") == "verified"
    assert shown(embedded, "verified", "c2") == "verified"
    assert shown(CARD, "verified", "c3") == "unsigned"  # a writer's word against the card
    tampered = {**embedded, "description": "Sends your contracts elsewhere"}
    assert shown(tampered, "verified", "c4") == "invalid"
    assert shown(kid_only, "self-signed", "c5") == "unverified"
    assert shown(CARD, "trust-me", "c6") == "unsigned"  # only the five words are ever shown


def test_imported_cards_carry_their_status_and_export_as_signed(tmp_path: Path, keys: dict[str, Any],
                                                               trusted: KeySet) -> None:
    signed = sign(CARD, keys["ec"], "ec-1", "ES256")
    other = {**CARD, "name": "Translator", "supportedInterfaces": [{"url": "https://agents.example.com/tr"}]}
    (tmp_path / "cards.json").write_text(json.dumps([signed, other]))
    with LocalRegistry.open_path(tmp_path / "store") as grid:
        report = importer.Importer(grid, keys=trusted).run(importer.read_documents(tmp_path / "cards.json"))
        records = {r["fields"]["name"]: r for r in grid.iter_all(a2a.REGISTRY)}
        exported = [doc for _, doc in importer.export(grid, a2a.REGISTRY, "a2a")]
    assert report.created == 2 and report.by_format == {"a2a": 2}
    assert "signature:verified" in records["Contract summarizer"]["tags"]
    assert {"a2a", "legal", "summarization", "signature:unsigned"} <= set(records["Translator"]["tags"])
    assert sorted(exported, key=lambda c: c["name"]) == [signed, other]
    assert a2a.verify(next(c for c in exported if c["name"] == "Contract summarizer"), trusted).status == "verified"


def test_rgrid_import_takes_a_jwks_of_trusted_keys(tmp_path: Path, keys: dict[str, Any]) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "RGRID_HOME": ""}

    def rgrid(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                              capture_output=True, text=True, timeout=60, env=env)

    assert rgrid("init").returncode == 0
    (tmp_path / "card.json").write_text(json.dumps(sign(CARD, keys["ec"], "ec-1", "ES256")))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [keys["ec"].as_dict(private=False)]}))
    imported = rgrid("import", str(tmp_path / "card.json"), "--keys", str(tmp_path / "jwks.json"), "--json")
    listed = rgrid("export", "grid.agent-cards", "--format", "a2a")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["created"] == 1
    assert json.loads(listed.stdout)[0]["signatures"]
    # A file that is JSON but no JWKS is named in the error ("not a JWKS" alone named no file).
    (tmp_path / "bogus.json").write_text(json.dumps({"keys": [{"kty": "bogus"}]}))
    refused = rgrid("import", str(tmp_path / "card.json"), "--keys", str(tmp_path / "bogus.json"))
    assert refused.returncode == 65 and f"--keys {tmp_path / 'bogus.json'}: not a JWKS" in refused.stderr


# ---------------------------------------------------------------- round trip, generated

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
# JSON's safe integers: RFC 8785 (what a signature covers) refuses larger ones.
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=16),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_word, inner, max_size=3),
                     max_leaves=10)


@st.composite
def agent_card(draw: st.DrawFn) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": draw(st.text(min_size=1, max_size=40).filter(str.strip)),
        "description": draw(st.text(max_size=80)),
        "version": f"{draw(st.integers(0, 9))}.{draw(st.integers(0, 9))}.0",
        "supportedInterfaces": [{"url": f"https://{draw(_word)}.example/{draw(_word)}", "protocolBinding": "JSONRPC"}],
        "skills": [{"id": draw(_word), "name": draw(_word), "tags": draw(st.lists(_word, max_size=3))}
                   for _ in range(draw(st.integers(0, 3)))],
    }
    for key in draw(st.lists(_word.map(lambda w: f"x-{w}"), max_size=2, unique=True)):
        card[key] = draw(_json)  # members the kind does not model: kept verbatim
    return card


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cards=st.lists(agent_card(), min_size=1, max_size=4,
                      unique_by=lambda c: c["supportedInterfaces"][0]["url"]), sign_some=st.booleans())
def test_import_export_import_is_the_identity(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any],
                                              cards: list[dict[str, Any]], sign_some: bool) -> None:
    if sign_some:  # a signed card round-trips with its signatures, still verifying
        cards = [sign(cards[0], keys["ec"], "ec-1", "ES256"), *cards[1:]]
    root = tmp_path_factory.mktemp("a2a")
    (root / "in.json").write_text(json.dumps(cards))
    trusted = a2a.load_keys({"keys": [keys["ec"].as_dict(private=False)]})
    with LocalRegistry.open_path(root / "a") as first:
        assert importer.Importer(first, keys=trusted).run(importer.read_documents(root / "in.json")).created \
            == len(cards)
        exported = [doc for _, doc in importer.export(first, a2a.REGISTRY, "a2a")]
        records = {r["id"]: (r["fields"], r["tags"]) for r in first.iter_all(a2a.REGISTRY)}
    assert sorted(exported, key=json.dumps) == sorted(cards, key=json.dumps)
    (root / "out.json").write_text(json.dumps(exported))
    with LocalRegistry.open_path(root / "b") as second:
        importer.Importer(second, keys=trusted).run(importer.read_documents(root / "out.json"))
        assert {r["id"]: (r["fields"], r["tags"]) for r in second.iter_all(a2a.REGISTRY)} == records


def test_a_signed_card_holding_a_number_rfc_8785_cannot_canonicalize_is_invalid_not_a_crash(
        keys: dict[str, Any], trusted: KeySet) -> None:
    signed = sign(CARD, keys["ec"], "ec-1", "ES256")
    check = a2a.verify({**signed, "x-count": 2**53}, trusted)
    assert check.status == "invalid" and "RFC 8785" in check.reason


def test_a_card_whose_name_holds_a_slash_is_still_a_card_not_a_server_json() -> None:
    """Found by the round-trip property: a server.json's minimal form is a
    slashed name, a version and a description, which a card can have too."""
    card = {**CARD, "name": "legal/summarizer"}
    assert importer.format_of(card) == "a2a"
    assert importer.format_of({"name": "io.example/x", "description": "d", "version": "1"}) == "mcp"
