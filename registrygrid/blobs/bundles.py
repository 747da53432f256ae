"""ZIP archives over blobs: a stored ZIP's manifest and entries, and bundles
rebuilt on the fly from blobs, entries of stored ZIPs, and URLs.

    manifest_of(blobs, cid)                    # entries, sizes, CRCs, SHA-256s (cached beside the blob)
    entry_of(blobs, cid, "weights/model.bin")  # one entry's bytes, read from its offset on
    plan = Bundle.parse(members, allowed_hosts=("mirror.example.org",))
    for chunk in plan.chunks(blobs): ...       # a ZIP, built while it is sent; nothing staged

A manifest is computed in one streaming pass over the blob (blobs/
zipfiles.py, with its bounds on entries, sizes and inflation) and kept in
the object store under ``manifests/<CID>``: the blob never changes, so
neither does its manifest. A bundle member is a blob (``cid``), one entry
of a stored ZIP (``cid`` and ``entry``), or a URL on a host the node's
config allows (``assets.bundle_hosts``; none by default: a node that
fetched any URL a client names would be an open proxy into its network).
The same members give the same bytes (stored members with known size and
CRC-32, fixed times), so a bundle's ETag is a hash of its members.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from registrygrid.blobs.blobs import BlobStore, manifest_key
from registrygrid.blobs.digest import cid_text, parse_cid
from registrygrid.blobs.objects import CHUNK_BYTES, ObjectMissing
from registrygrid.blobs.zipfiles import (
    ZipEntry,
    ZipManifest,
    ZipMember,
    build_zip,
    check_name,
    entry_chunks,
    manifest,
)
from registrygrid.errors import PolicyDenied, TooLarge, Unavailable, ValidationError

MAX_MEMBERS = 10_000
URL_TIMEOUT_S = 30.0
# Every member's time in a bundle: a fixed instant, so the same members give
# the same bytes (and ETag) whenever the bundle is built.
BUNDLE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def manifest_of(blobs: BlobStore, cid: bytes) -> ZipManifest:
    """The manifest of stored ZIP ``cid`` (ZipRefused or ZipMalformed if it is not a sound ZIP)."""
    blobs.require(cid)
    key = manifest_key(cid)
    try:
        cached = b"".join(blobs.objects.get(key))
        data = json.loads(cached)
        return ZipManifest(entries=tuple(ZipEntry(**e) for e in data["entries"]), archive_size=data["archive_size"])
    except (ObjectMissing, ValueError, KeyError, TypeError):
        pass
    found = manifest(blobs.read(cid))
    encoded = json.dumps({"entries": [asdict(e) for e in found.entries], "archive_size": found.archive_size})
    blobs.objects.put(key, [encoded.encode()])
    return found


def _manifest(blobs: BlobStore, cid: bytes, read: dict[bytes, ZipManifest]) -> ZipManifest:
    """``cid``'s manifest, read and parsed once per ``read``: per member, a
    bundle re-read and re-parsed a 3.5 MB cached listing 6,000 times."""
    found = read.get(cid)
    if found is None:
        found = read[cid] = manifest_of(blobs, cid)
    return found


def manifest_view(cid: bytes, found: ZipManifest) -> dict[str, Any]:
    return {"cid": cid_text(cid), "archive_size": found.archive_size, "entry_count": len(found.entries),
            "total_size": found.total_size, "top_level": list(found.top_level()),
            "entries": [{"name": e.name, "size": e.size, "compressed_size": e.compressed_size,
                         "crc32": f"{e.crc32:08x}", "sha256": e.sha256, "is_dir": e.is_dir} for e in found.entries]}


def entry_of(blobs: BlobStore, cid: bytes, name: str, *,
             manifests: dict[bytes, ZipManifest] | None = None) -> tuple[ZipEntry, Iterator[bytes]]:
    """Entry ``name`` of stored ZIP ``cid``: its manifest line and its bytes,
    read from the entry's offset on (the entries before it are not inflated).
    ``manifests``: those read already (a bundle's members share them)."""
    found = _manifest(blobs, cid, manifests if manifests is not None else {})
    entry = found.entry(name)
    return entry, entry_chunks(blobs.read(cid, start=entry.offset), name, manifest=found)


@dataclass(frozen=True)
class Member:
    name: str
    cid: bytes | None = None
    entry: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Bundle:
    members: tuple[Member, ...]
    # The hosts its URLs may be fetched from, redirects included.
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, data: Any, *, allowed_hosts: Sequence[str] = ()) -> Bundle:
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_MEMBERS:
            raise ValidationError(f"members: a list of 1 to {MAX_MEMBERS} members", details=[{"path": "/members"}])
        members, names = [], set()
        for i, item in enumerate(data):
            at = f"/members/{i}"
            if not isinstance(item, dict) or set(item) - {"name", "cid", "entry", "url"}:
                raise ValidationError(f"{at}: an object of name and cid (and entry), or name and url",
                                      details=[{"path": at}])
            name = item.get("name")
            if not isinstance(name, str):
                raise ValidationError(f"{at}/name: a path inside the archive", details=[{"path": f"{at}/name"}])
            check_name(name)
            if name in names:
                raise ValidationError(f"{at}/name: {name!r} appears twice", details=[{"path": f"{at}/name"}])
            names.add(name)
            if "url" in item:
                url = item["url"]
                try:
                    host = urllib.parse.urlsplit(url).hostname if isinstance(url, str) else None
                except ValueError:  # "http://[::1": urllib refuses it
                    host = None
                if not isinstance(url, str) or not url.startswith(("https://", "http://")) or host is None:
                    raise ValidationError(f"{at}/url: an http(s) URL", details=[{"path": f"{at}/url"}])
                if host not in allowed_hosts:
                    raise PolicyDenied(f"{at}/url: this node fetches no URLs of {host} (config.json "
                                       "assets.bundle_hosts lists the hosts it may fetch from)",
                                       details=[{"path": f"{at}/url"}])
                members.append(Member(name, url=url))
                continue
            cid = parse_cid(item.get("cid", "")) if isinstance(item.get("cid"), str) else None
            if cid is None:
                raise ValidationError(f"{at}: a cid or a url", details=[{"path": f"{at}/cid"}])
            entry = item.get("entry")
            if entry is not None and not isinstance(entry, str):
                raise ValidationError(f"{at}/entry: the name of an entry of the ZIP blob",
                                      details=[{"path": f"{at}/entry"}])
            members.append(Member(name, cid=cid, entry=entry))
        return cls(tuple(members), frozenset(allowed_hosts))

    @property
    def etag(self) -> str:
        canonical = json.dumps([[m.name, cid_text(m.cid) if m.cid else None, m.entry, m.url]
                                for m in self.members]).encode()
        return f'"bundle-{hashlib.sha256(canonical).hexdigest()[:32]}"'

    def check(self, blobs: BlobStore) -> None:
        """Fail before the first byte is sent if a blob or an entry is missing."""
        manifests: dict[bytes, ZipManifest] = {}
        for m in self.members:
            if m.cid is not None:
                blobs.require(m.cid)
                if m.entry is not None:
                    _manifest(blobs, m.cid, manifests).entry(m.entry)

    def chunks(self, blobs: BlobStore) -> Iterator[bytes]:
        return build_zip(self._zip_members(blobs))

    def _zip_members(self, blobs: BlobStore) -> Iterator[ZipMember]:
        manifests: dict[bytes, ZipManifest] = {}
        for m in self.members:
            if m.url is not None:
                yield ZipMember(m.name, BUNDLE_TIME, None, _fetch(m.url, blobs.limits.max_blob_bytes,
                                                                   self.allowed_hosts))
            elif m.entry is not None:
                assert m.cid is not None
                entry, data = entry_of(blobs, m.cid, m.entry, manifests=manifests)
                yield ZipMember(m.name, BUNDLE_TIME, entry.size, data, crc32=entry.crc32)
            else:
                assert m.cid is not None
                stored = blobs.require(m.cid)
                yield ZipMember(m.name, BUNDLE_TIME, stored.size, blobs.read(m.cid),
                                crc32=stored.crc32 if stored.crc32 >= 0 else None)


class _RedirectsToAllowedHosts(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an http(s) URL of an allowed host: else an
    allowed host (or an open redirect on it) could send the node to any
    address it reaches, a cloud's metadata service or its own bridge, and
    the bundle would hand those bytes to whoever asked for it."""

    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        super().__init__()
        self.allowed_hosts = allowed_hosts

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            target = urllib.parse.urlsplit(newurl)
            host = target.hostname
        except ValueError:
            host = None
        if host is None or target.scheme not in ("http", "https") or host not in self.allowed_hosts:
            raise PolicyDenied(f"{req.full_url} redirects to {newurl[:200]}, not to a host this node fetches "
                               "from (config.json assets.bundle_hosts)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, limit: int, allowed_hosts: frozenset[str]) -> Iterator[bytes]:
    opener = urllib.request.build_opener(_RedirectsToAllowedHosts(allowed_hosts))
    try:
        response = opener.open(url, timeout=URL_TIMEOUT_S)
    except OSError as exc:
        raise Unavailable(f"cannot fetch {url}: {exc}") from None
    with response:
        seen = 0
        while chunk := response.read(CHUNK_BYTES):
            seen += len(chunk)
            if seen > limit:
                raise TooLarge(f"{url} is larger than a blob may be ({limit} bytes)")
            yield chunk
