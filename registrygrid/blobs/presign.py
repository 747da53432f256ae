"""Presigned URLs: time-bound, least-privilege links to one object and one method.

    keys = PresignKeys.open(home.path / "presign-keys.json")    # made on first use, mode 0600
    url = keys.sign("PUT", "/v1/uploads/up_1/parts/3", expires_in_s=3600, max_bytes=8 << 20, token="Ab3...")
    keys.verify("PUT", path, query, client_ip="127.0.0.1", content_length=n)   # "Ab3...", or PresignInvalid

A presigned URL lets someone without an API token do exactly one thing:
the method and path it names (one part of one upload, one blob), until it
expires, optionally only from an IP network and with at most
``max_bytes`` in the body. The query carries the grant and an HMAC-SHA256
over it, keyed by a node secret; any change to method, path, expiry,
limits or signature fails verification (compared in constant time).

A URL names the API token that asked for it (``rg-tok``, signed with the
rest), and ``verify`` returns it: the bridge honours the URL only while
that token is live, so revoking a token ends the links it handed out, as
deleting an access key ends S3's. URLs signed before they named a token
(``rg-presign-1``) verify as before and name none.

Keys rotate: ``rotate`` makes a new signing key and keeps the previous
ones for as long as a URL they signed may live (``MAX_EXPIRES_S``), so
rotation never breaks a link before its time, and a leaked key stops
working one lifetime after the rotation that retired it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from registrygrid.errors import PolicyDenied, ValidationError
from registrygrid.files import read_json
from registrygrid.home import write_text_durably

# As S3's presigned URLs (SigV4): at most seven days.
MAX_EXPIRES_S = 7 * 24 * 3600
PARAMS = ("rg-method", "rg-expires", "rg-kid", "rg-max-bytes", "rg-ip", "rg-tok", "rg-sig")
METHODS = ("GET", "HEAD", "PUT")


class PresignInvalid(PolicyDenied):
    """The URL's grant was altered, is signed by an unknown key, or does not cover this request."""

    code = "presign_invalid"


class PresignExpired(PresignInvalid):
    code = "presign_expired"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: bytes
    created_s: float


def _canonical(method: str, path: str, expires: str, kid: str, max_bytes: str, ip: str, token: str) -> bytes:
    if not token:  # as URLs were signed before they named their token
        return f"rg-presign-1\n{method}\n{path}\n{expires}\n{kid}\n{max_bytes}\n{ip}".encode()
    return f"rg-presign-2\n{method}\n{path}\n{expires}\n{kid}\n{max_bytes}\n{ip}\n{token}".encode()


def _mac(secret: bytes, message: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()).rstrip(b"=").decode()


class PresignKeys:
    def __init__(self, path: Path, keys: list[SigningKey]) -> None:
        self.path = path
        self.keys = keys  # newest first
        # Rotations run on the bridge's threads: one at a time, or two would
        # each build on the same list and one new key (maybe already signing
        # URLs) would be lost from the list and the file.
        self._rotating = threading.Lock()

    @classmethod
    def open(cls, path: str | Path) -> PresignKeys:
        path = Path(path)
        if path.exists():
            try:
                data = read_json(path)
                keys = [SigningKey(str(k["kid"]), bytes.fromhex(k["secret"]), float(k["created_s"]))
                        for k in data["keys"]]
            except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:  # cut short, edited
                raise ValidationError(f"{path} is not a presign key file ({exc}); restore it, or delete it to make "
                                      "new keys (URLs signed with the old ones stop working)") from None
            return cls(path, keys)
        made = cls(path, [])
        made.rotate()
        return made

    def _save(self, keys: list[SigningKey]) -> None:
        data = {"keys": [{"kid": k.kid, "secret": k.secret.hex(), "created_s": k.created_s} for k in keys]}
        write_text_durably(self.path, json.dumps(data), secret=True)  # lost keys would void every URL given out

    def rotate(self, *, now: float | None = None) -> SigningKey:
        """A new signing key; keys retired more than a URL lifetime ago are dropped."""
        now = time.time() if now is None else now
        new = SigningKey("k" + secrets.token_hex(4), secrets.token_bytes(32), now)
        with self._rotating:
            kept = [new]
            retired_at = now
            for key in self.keys:  # each older key was retired when its successor was made
                if now - retired_at <= MAX_EXPIRES_S:
                    kept.append(key)
                retired_at = key.created_s
            self._save(kept)  # on disk before any URL is signed with it
            self.keys = kept
        return new

    def sign(self, method: str, path: str, *, expires_in_s: float, max_bytes: int | None = None,
             ip: str | None = None, token: str | None = None, now: float | None = None) -> str:
        """``path`` with the query that grants ``method`` on it, in the name
        of the API token ``token`` (its id) when given."""
        if method not in METHODS:
            raise ValidationError(f"a presigned URL grants one of {', '.join(METHODS)}")
        if not 1 <= expires_in_s <= MAX_EXPIRES_S:
            raise ValidationError(f"expires_in must be 1 to {MAX_EXPIRES_S} seconds",
                                  details=[{"path": "expires_in"}])
        if max_bytes is not None and max_bytes < 0:
            raise ValidationError("max_bytes must be >= 0", details=[{"path": "max_bytes"}])
        if ip is not None:
            try:
                ip = str(ipaddress.ip_network(ip, strict=False))
            except ValueError:
                raise ValidationError(f"not an IP address or network: {ip!r}", details=[{"path": "ip"}]) from None
        key = self.keys[0]
        # Rounded up: a URL never expires before the time it was given.
        expires = str(math.ceil((time.time() if now is None else now) + expires_in_s))
        limit = "" if max_bytes is None else str(max_bytes)
        grant = {"rg-method": method, "rg-expires": expires, "rg-kid": key.kid}
        if limit:
            grant["rg-max-bytes"] = limit
        if ip:
            grant["rg-ip"] = ip
        if token:
            grant["rg-tok"] = token
        grant["rg-sig"] = _mac(key.secret, _canonical(method, path, expires, key.kid, limit, ip or "", token or ""))
        return f"{path}?{urlencode(grant)}"

    def verify(self, method: str, path: str, query: Mapping[str, str], *, client_ip: str | None,
               content_length: int | None = None, now: float | None = None) -> str | None:
        """The id of the token the URL was signed for (None: a URL that names
        none); PresignInvalid (or PresignExpired) unless ``query`` grants
        this request."""
        granted = query.get("rg-method", "")
        expires = query.get("rg-expires", "")
        kid = query.get("rg-kid", "")
        limit = query.get("rg-max-bytes", "")
        ip = query.get("rg-ip", "")
        token = query.get("rg-tok", "")
        key = next((k for k in self.keys if k.kid == kid), None)
        expected = _mac(key.secret, _canonical(granted, path, expires, kid, limit, ip, token)) if key else ""
        given = query.get("rg-sig", "").encode("utf-8", "surrogateescape")  # compare_digest takes ASCII str only
        if key is None or not hmac.compare_digest(expected.encode(), given):
            raise PresignInvalid("the presigned URL is not valid (altered, or signed by a retired key)")
        # Signed, so every value below is the node's own.
        if granted != method and not (granted == "GET" and method == "HEAD"):
            raise PresignInvalid(f"the presigned URL grants {granted}, not {method}")
        if int(expires) < (time.time() if now is None else now):
            raise PresignExpired("the presigned URL has expired")
        if ip and (client_ip is None or ipaddress.ip_address(client_ip) not in ipaddress.ip_network(ip)):
            raise PresignInvalid("the presigned URL is not valid from this address")
        if limit and content_length is not None and content_length > int(limit):
            raise PresignInvalid(f"the presigned URL allows at most {limit} bytes")
        return token or None


def is_presigned(query: Mapping[str, str]) -> bool:
    return "rg-sig" in query
