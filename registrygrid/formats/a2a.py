"""A2A agent cards <-> records of ``grid.agent-cards`` (kind ``agent-card``).

An agent card (A2A 1.0, §8) says who an agent is, where it answers, and
what it can do (skills, modes, capabilities, security schemes). Here one
agent is one record:

* **fields**: the card itself, every member verbatim (its ``signatures``
  included), so an export gives back the card as it was signed;
* **record id**: ``a2a-`` and the first 40 hex of sha256 of the agent's
  address (the first of ``supportedInterfaces[].url`` in A2A 1.0, or the
  older ``url``), else of its name: importing a newer card of the same
  agent updates its record;
* **tags**: ``a2a``, its skills' tags (those a tag can be), and the card's
  signature status, as verified at import (readers are shown
  ``shown_status``, which checks again what needs no key): ``signature:verified`` (a
  signature checks with a trusted key), ``signature:self-signed`` (it
  checks with the key the signature itself carries: intact, but the key
  vouches only for itself), ``signature:unverified`` (no key to check it:
  its ``jku`` is not fetched, so pass the agent's JWKS), ``signature:invalid``
  (it does not check: the card was altered, or the signature is forged)
  or ``signature:unsigned``.

Verification (A2A 1.0 §8.4): each signature is a JWS whose payload is
detached: the RFC 8785 canonical form of the card without its
``signatures`` member. The signing input is the protected header (as
sent), a dot, and the base64url of that canonical form; the key is found
by the protected header's ``kid`` among the trusted keys (a JWKS the
importer is given), or is the ``jwk`` the header embeds. Algorithms:
ES256, ES384, ES512, Ed25519 (and its older name EdDSA), RS256, PS256 (``none`` and HMAC are refused:
a card's signature must be checkable by anyone with the public key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key

from registrygrid import b64url
from registrygrid.errors import ValidationError
from registrygrid.formats.shape import listed, tags_with

FORMAT = "a2a"
KIND = "agent-card"
REGISTRY = "grid.agent-cards"
# "EdDSA" is the older name of Ed25519 (RFC 9864 deprecates it); cards signed so still verify.
ALGORITHMS = ["ES256", "ES384", "ES512", "Ed25519", "EdDSA", "RS256", "PS256"]
STATUSES = ("verified", "self-signed", "unverified", "invalid", "unsigned")


@dataclass(frozen=True)
class SignatureCheck:
    status: str  # one of STATUSES
    reason: str
    kid: str | None = None


def looks_like(doc: Any) -> bool:
    return (isinstance(doc, Mapping) and isinstance(doc.get("name"), str) and isinstance(doc.get("skills"), list)
            and ("supportedInterfaces" in doc or "url" in doc or "capabilities" in doc))


def address_of(card: Mapping[str, Any]) -> str | None:
    interfaces = card.get("supportedInterfaces")
    if isinstance(interfaces, list):
        for interface in interfaces:
            if isinstance(interface, Mapping) and isinstance(interface.get("url"), str):
                return str(interface["url"])
    url = card.get("url")
    return url if isinstance(url, str) else None


def record_id(card: Mapping[str, Any]) -> str:
    """A hash of the card's address; of its name, told apart, for a card
    without one (a card named as another's address must not take its id)."""
    address = address_of(card)
    key = address if address else f"name\0{card.get('name')}"
    return "a2a-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def to_record(doc: Mapping[str, Any], *, keys: KeySet | None = None) -> tuple[str, dict[str, Any], list[str]]:
    card = dict(doc)
    missing = [{"path": f"/{k}", "message": f"{k} is required"} for k in ("name", "description", "skills")
               if k not in card]
    if missing:
        raise ValidationError("not an agent card: " + ", ".join(d["path"] for d in missing), details=missing)
    address = address_of(card)
    if address is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        # No URL holds one, and "name\0Foo" as an address took the record of
        # the card named Foo that has none (record_id's two kinds of key).
        raise ValidationError(f"the card's address {address[:80]!r} holds a control character",
                              details=[{"path": "/url", "message": "a URL holds no control character"}])
    check = verify(card, keys)
    content = [tag for i, skill in enumerate(listed(card, "skills", "/skills")) if isinstance(skill, Mapping)
               for tag in listed(skill, "tags", f"/skills/{i}/tags")]
    return record_id(card), card, tags_with(["a2a", f"signature:{check.status}"], content)


def from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(record["fields"])


# change id -> verify(card) without keys: a change's card never changes.
_CHECKED: dict[str, str] = {}
_CHECKED_MAX = 10_000


def shown_status(record: Mapping[str, Any]) -> str:
    """The signature status a reader is shown for a card record.

    Its ``signature:`` tag is the word of whoever wrote the record: any
    writer could tag an unsigned card ``verified``, or any word at all.
    What needs no key is checked here: a card that is unsigned, or whose
    signatures do not check (against the key they embed, or at all), shows
    so whatever its tag says. ``verified`` (a trusted key the importing
    node held) is taken from the tag only when the card's signatures are
    intact as far as this node can tell."""
    change = record.get("change_id")
    computed = _CHECKED.get(change) if isinstance(change, str) else None
    if computed is None:
        computed = verify(record["fields"]).status
        if isinstance(change, str):
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED[change] = computed
    claimed = next((t.split(":", 1)[1] for t in record.get("tags", ()) if t.startswith("signature:")), None)
    return "verified" if claimed == "verified" and computed in ("self-signed", "unverified") else computed


def canonical_payload(card: Mapping[str, Any]) -> bytes:
    """What an agent card's signatures cover: RFC 8785 of the card without them."""
    return rfc8785.dumps({k: v for k, v in card.items() if k != "signatures"})


def verify(card: Mapping[str, Any], keys: KeySet | None = None) -> SignatureCheck:
    """The card's signature status (the best of its signatures)."""
    signatures = card.get("signatures")
    if not signatures:
        return SignatureCheck("unsigned", "the card carries no signature")
    if not isinstance(signatures, list):
        return SignatureCheck("invalid", "signatures is not a list")
    try:
        payload = b64url.encode(canonical_payload(card))
    except rfc8785.CanonicalizationError as exc:  # e.g. an integer beyond 2**53-1: no canonical form to check
        return SignatureCheck("invalid", f"the card has no RFC 8785 form to check its signatures over: {exc}")
    checks = [_check_one(signature, payload, keys) for signature in signatures]
    return min(checks, key=lambda c: STATUSES.index(c.status))


def _check_one(signature: Any, payload: str, keys: KeySet | None) -> SignatureCheck:
    if not isinstance(signature, Mapping) or not isinstance(signature.get("protected"), str) \
            or not isinstance(signature.get("signature"), str):
        return SignatureCheck("invalid", "a signature needs protected and signature strings")
    try:
        header = json.loads(b64url.decode(signature["protected"]))
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        return SignatureCheck("invalid", "its protected header is not base64url JSON")
    if not isinstance(header, dict) or header.get("alg") not in ALGORITHMS:
        return SignatureCheck("invalid", f"algorithm {header.get('alg') if isinstance(header, dict) else None!r} "
                                         f"is not one of {', '.join(ALGORITHMS)}")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    token = f"{signature['protected']}.{payload}.{signature['signature']}"
    trusted = _trusted_key(keys, kid)
    if trusted is not None:
        return SignatureCheck(*_outcome(token, trusted, "verified", f"checks with trusted key {kid}"), kid=kid)
    embedded = header.get("jwk")
    if isinstance(embedded, dict):
        try:
            key = import_key(embedded)
        except (JoseError, ValueError, TypeError) as exc:
            return SignatureCheck("invalid", f"its embedded jwk is not a key: {exc}", kid)
        return SignatureCheck(*_outcome(token, key, "self-signed", "checks with the key it embeds"), kid=kid)
    where = f" (its jku {header['jku']} is not fetched)" if isinstance(header.get("jku"), str) else ""
    return SignatureCheck("unverified", f"no trusted key {kid!r} to check it{where}: pass the agent's JWKS", kid)


def _outcome(token: str, key: Any, ok: str, why: str) -> tuple[str, str]:
    try:
        jws.deserialize_compact(token, key, algorithms=ALGORITHMS)
    except (JoseError, ValueError) as exc:
        return "invalid", f"the signature does not check: {type(exc).__name__}"
    return ok, why


def _trusted_key(keys: KeySet | None, kid: str | None) -> Any:
    if keys is None or kid is None:
        return None
    try:
        return keys.get_by_kid(kid)
    except (JoseError, ValueError, KeyError):
        return None


def load_keys(jwks: Mapping[str, Any]) -> KeySet:
    """A JWKS (``{"keys": [...]}``) of keys trusted to sign agent cards."""
    try:
        return KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValidationError(f"not a JWKS: {exc}") from None


