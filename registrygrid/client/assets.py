"""Asset bytes through a node's bridge: resumable uploads and downloads.

    uploaded = upload_file(client, Path("model.safetensors"), progress=print_progress)
    downloaded = download_blob(client, uploaded.cid, Path("copy.safetensors"))

An upload hashes the file first (SHA-256: the node may hold it already,
and checks the whole against it), opens a session, sends the parts the
node lacks on ``parallel`` connections, and finalizes. Its session id is
kept in ``state_dir`` under the file's identity (path, size, mtime), so
running the same upload again after a cut, a Ctrl-C or a node restart
asks the node which parts it holds and sends only the rest.

A download writes ``OUT.part`` and resumes it with a Range request from
its length; the whole is checked against the CID (its SHA-256) before it
is renamed to ``OUT``.

Plain ``http.client`` on threads, as the rest of the sync client: a part
is read from the file into memory (one part per connection: 8 MiB by
default), a download streams in 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from registrygrid.client.sync import BridgeClient
from registrygrid.errors import (
    MalformedInput,
    NotFound,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.node.bridge.errors import rebuild

CHUNK = 1 << 20
Progress = Callable[[str, int, int], None]  # (phase, done, total): phase "hash", "upload" or "download"


@dataclass(frozen=True)
class Uploaded:
    cid: str
    size: int
    sha256: str
    session: str
    sent_parts: int  # parts this run sent (0 when the node held the blob or every part already)
    deduplicated: bool


def _connection(client: BridgeClient, timeout: float = 120.0) -> http.client.HTTPConnection:
    return client._new_connection(timeout)


def _raw(client: BridgeClient, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, conn: http.client.HTTPConnection | None = None) -> Any:
    own = conn is None
    conn = conn or _connection(client)
    try:
        send = {"Authorization": f"Bearer {client.token}"} if client.token else {}
        send.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=send)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"the bridge at {client.url} failed during {method} {path}: {exc!r}") from None
        data = json.loads(raw) if raw else None
        if response.status >= 400:
            raise rebuild(response.status, data)
        return data
    finally:
        if own:
            conn.close()


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress("hash", done, size)
    return digest.hexdigest()


def _state_file(state_dir: Path, path: Path) -> Path:
    stat = path.stat()
    identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    return state_dir / f"{hashlib.sha256(identity).hexdigest()[:32]}.json"


def upload_file(client: BridgeClient, path: Path, *, state_dir: Path, content_type: str = "application/octet-stream",
                part_size: int | None = None, parallel: int = 4, progress: Progress | None = None) -> Uploaded:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no file {path}")
    size = path.stat().st_size
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _state_file(state_dir, path)
    session: dict[str, Any] | None = None
    sha256 = ""
    if state.exists():
        try:
            kept = json.loads(state.read_text())
            sha256 = kept["sha256"]
            session = _raw(client, "GET", f"/v1/uploads/{quote(kept['session'])}")
        except (ValueError, KeyError, NotFound):
            session = None  # expired, cancelled or unreadable: start again
    if session is None or session["state"] == "cancelled":
        sha256 = sha256 or file_sha256(path, progress)
        body: dict[str, Any] = {"size": size, "sha256": sha256, "content_type": content_type, "name": path.name}
        if part_size is not None:
            body["part_size"] = part_size
        session = _raw(client, "POST", "/v1/uploads", json.dumps(body).encode(),
                       {"Content-Type": "application/json"})
        state.write_text(json.dumps({"session": session["id"], "sha256": sha256, "file": str(path)}))
    assert session is not None
    missing = list(session["missing"])
    sent = _send_parts(client, path, session, missing, parallel, progress) if session["state"] == "open" else 0
    if session["state"] == "open":
        session = _raw(client, "POST", f"/v1/uploads/{quote(session['id'])}/finalize")
    state.unlink(missing_ok=True)
    assert session is not None
    return Uploaded(session["cid"], size, sha256, session["id"], sent, bool(session["deduplicated"]))


def _send_parts(client: BridgeClient, path: Path, session: dict[str, Any], missing: list[int], parallel: int,
                progress: Progress | None) -> int:
    part_size, size = session["part_size"], session["size"]
    done = [session["received_bytes"]]
    lock = threading.Lock()
    local = threading.local()

    def send(n: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = _connection(client)
        offset = (n - 1) * part_size
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(min(part_size, size - offset))
        _raw(client, "PUT", f"/v1/uploads/{quote(session['id'])}/parts/{n}", data,
             {"X-Checksum-Sha256": hashlib.sha256(data).hexdigest(), "Content-Type": "application/octet-stream"},
             conn=conn)
        with lock:
            done[0] += len(data)
            if progress is not None:
                progress("upload", done[0], size)

    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    try:
        for future in [pool.submit(send, n) for n in missing]:
            future.result()  # the first failure is raised; the parts sent so far stay on the node
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure (or Ctrl-C), send no more
    return len(missing)


def download_blob(client: BridgeClient, cid: str, out: Path, *, progress: Progress | None = None) -> int:
    """Fetch blob ``cid`` into ``out`` (resuming ``out.part``); its size."""
    out = Path(out)
    partial = out.with_name(out.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    digest = hashlib.sha256()
    if have:
        with open(partial, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    conn = _connection(client)
    try:
        headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
        if have:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = f'"{cid}"'
        try:
            conn.request("GET", f"/v1/blobs/{quote(cid)}", headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"the bridge at {client.url} failed: {exc!r}") from None
        if response.status == 416:  # the partial file is whole already (or longer: start again)
            response.read()
            total = int(response.getheader("Content-Range", "bytes */0").rsplit("/", 1)[1])
            if have != total:
                partial.unlink()
                return download_blob(client, cid, out, progress=progress)
        elif response.status >= 400:
            raw = response.read()
            raise rebuild(response.status, json.loads(raw) if raw else None)
        else:
            if response.status == 200 and have:  # the node sent the whole: start over
                have, digest = 0, hashlib.sha256()
            total = have + int(response.getheader("Content-Length", "0"))
            with open(partial, "ab" if have else "wb") as f:
                done = have
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress("download", done, total)
                f.flush()
                os.fsync(f.fileno())
    finally:
        conn.close()
    expected = _sha256_of_cid(cid)
    if digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise ValidationError(f"the bytes received do not hash to {cid}; the partial download was removed")
    os.replace(partial, out)
    return out.stat().st_size


def _sha256_of_cid(cid: str) -> str:
    from registrygrid.blobs.digest import parse_cid, sha256_of

    try:
        return sha256_of(parse_cid(cid))
    except RegistryError:
        raise MalformedInput(f"not a blob CID: {cid!r}") from None
