"""`rgrid store backup|restore`: a home in one file, and back.

    backup(home, Path("acme.rgrid.tar"))      # while the node runs or not
    restore(Path("acme.rgrid.tar"), home)     # into a new home only; it opens recovering

A backup is a tar archive (gzip-compressed when its name ends in ``.gz``):
``rgrid-backup.json`` first (what it is: format, node key, when, what it
holds), then the home's files as they are, and ``store/data.mdb``, a
consistent copy of the store made in one read transaction (LMDB's compacting
copy, so a running node goes on writing meanwhile and freed pages stay
behind). Left out: what the node rebuilds (``index/``, the search index) and
what only a running node means (``node.lock``, ``node.json``,
``bridge.json``), and with ``objects=False`` the local asset bytes (peers
that hold them give them back: ``rgrid asset fetch``).

Restoring a home is restoring its node key, and that key may have signed
changes after the backup was made: the restored node would sign its next
change with a sequence number its peers already hold (an equivocation,
which they answer by quarantining the key). So a restored store opens
**recovering** (docs/trust.md, "A lost store"): it syncs and serves, signs
nothing, and the operator ends the recovery (``rgrid store recovered``)
once the node's own changes are back from its peers. A restore goes only
into a home that does not exist or is empty: never over a node's live
files, let alone a running one's.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registrygrid.errors import (
    AlreadyExists,
    FileFailed,
    MalformedInput,
    NotFound,
    RegistryError,
    StorageFailed,
    ValidationError,
)
from registrygrid.home import Home
from registrygrid.storage.store import Store

MANIFEST = "rgrid-backup.json"
FORMAT = 1
# Rebuilt by the node, or meaningful only while one runs.
_LEFT_OUT = frozenset({"index", "node.lock", "node.json", "bridge.json", "store", "store.compact.tmp"})
_OBJECTS = "objects"
_STORE_FILE = "store/data.mdb"
# What a cut-short or foreign archive fails with as it is read.
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class BackupReport:
    path: str
    bytes: int
    key: str
    store_bytes: int
    objects: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "key": self.key, "store_bytes": self.store_bytes,
                "objects": self.objects}


def backup(home: Home, out: Path, *, objects: bool = True) -> BackupReport:
    """Write ``home`` to ``out`` (replaced whole or not at all)."""
    home.require()
    if not (home.store_path / "data.mdb").is_file() and home.lock_holder() is None:
        # A home just made (`rgrid init`): its keys are what most need a
        # backup, and its first open makes the store and its statements.
        from registrygrid.sdk import LocalRegistry

        LocalRegistry.open_home(home).close()
    if not (home.store_path / "data.mdb").is_file():
        raise NotFound(f"{home.path} has no store to back up")
    key = home.node_key().did
    mode = "w:gz" if out.name.endswith(".gz") else "w"
    with tempfile.TemporaryDirectory(prefix=".rgrid-backup-", dir=out.parent) as scratch:
        copy = Path(scratch) / "store"
        copy.mkdir()
        store = Store(home.store_path, readonly=True)
        try:
            store.copy_compacted(copy)  # one read transaction: consistent while the node writes
        finally:
            store.close()
        partial = Path(scratch) / "backup.tar"
        manifest = {"format": FORMAT, "key": key, "made_at_ms": int(time.time() * 1000), "objects": objects}
        try:
            with tarfile.open(partial, mode) as archive:
                _add_bytes(archive, MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
                for path, name in _home_files(home.path, objects=objects):
                    try:
                        archive.add(path, arcname=name, recursive=False)
                    except FileNotFoundError:
                        continue  # gone since it was listed (an upload's staging file): the node runs
                archive.add(copy / "data.mdb", arcname=_STORE_FILE)
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, out)
        except OSError as exc:
            # A full disk names no file: the backup's is the one that matters.
            where = exc.filename if exc.filename and not str(exc.filename).startswith(scratch) else out
            raise FileFailed(f"{where}: {exc.strerror or exc}; nothing was written") from None
    return BackupReport(str(out), out.stat().st_size, key, (home.store_path / "data.mdb").stat().st_size, objects)


def _home_files(root: Path, *, objects: bool) -> Iterator[tuple[Path, str]]:
    """(path, name in the archive) of what a backup holds, folders before
    what they hold; what is left out is named in the module's docstring.
    Uploads still coming in (``objects/staging``) are no asset yet."""
    for entry in sorted(root.iterdir()):
        if entry.name in _LEFT_OUT or entry.name.startswith(".") or (entry.name == _OBJECTS and not objects):
            continue
        yield entry, entry.name
        if entry.is_dir() and not entry.is_symlink():
            for folder, dirs, files in os.walk(entry):
                here = Path(folder)
                if here.relative_to(root).parts[:2] == (_OBJECTS, "staging"):
                    dirs.clear()
                    continue
                dirs.sort()
                for name in [*dirs, *sorted(files)]:
                    path = here / name
                    if path.relative_to(root).parts[:2] == (_OBJECTS, "staging"):
                        continue
                    yield path, str(path.relative_to(root))


def restore(archive_path: Path, target: Home) -> dict[str, Any]:
    """Unpack a backup into ``target``, a home that does not exist or is
    empty, its store opened recovering. What the backup says of itself.

    Everything happens in a staging folder beside the target, which takes
    the target's place only once the home opens and its store says
    recovering: a restore that fails midway (a damaged store in the
    archive, a full disk) leaves nothing, never a home that opens without
    recovering and whose next write reuses a sequence number."""
    final = _restore_target(target.path)
    if not archive_path.is_file():  # a device or a FIFO was read forever
        raise (NotFound(f"{archive_path}: no such file") if not archive_path.exists() else
               ValidationError(f"{archive_path} is not a regular file"))
    try:
        archive = tarfile.open(archive_path)
    except _DAMAGED as exc:
        raise MalformedInput(f"{archive_path} is not a RegistryGrid backup: {exc}") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.restoring-", dir=final.parent))
    try:
        with archive:
            manifest = _manifest(archive, archive_path)
            try:
                # The "data" filter refuses absolute paths, '..', links out of
                # the folder and device files: a crafted archive writes nowhere else.
                archive.extractall(staging, filter="data")
            except _DAMAGED as exc:
                raise MalformedInput(f"{archive_path} is cut short, damaged or unsafe to unpack: {exc}") from None
            except OSError as exc:  # a full disk names no file
                raise FileFailed(f"{final}: {exc.strerror or exc}; nothing was restored") from None
        (staging / MANIFEST).unlink()
        if not (staging / _STORE_FILE).is_file() or not (staging / "keys" / "node.key").is_file():
            raise MalformedInput(f"{archive_path} holds no store or no node key: not a whole backup")
        (staging / "keys").chmod(0o700)  # the "data" filter leaves folders 0755: keys are the node's alone
        try:
            _begin_recovery(Home(staging))
        except StorageFailed:
            raise  # the disk's, not the backup's
        except RegistryError as exc:  # a damaged store, key or org file in the archive
            raise MalformedInput(f"{archive_path} does not restore: {exc.message}") from None
        if final.exists():
            final.rmdir()  # empty, checked above
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _restore_target(path: Path) -> Path:
    """Where a restore goes: ``path``, or the empty folder a link at
    ``path`` names (homes are often linked onto a data disk)."""
    if path.is_symlink():
        if not path.is_dir():
            raise ValidationError(f"{path} is a link to no folder: restore into the folder it should name")
        path = path.resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise AlreadyExists(f"{path} is not empty: a backup is restored into a new home (move this one aside "
                            "first, its node stopped)")
    return path


def _begin_recovery(home: Home) -> None:
    from registrygrid.sdk import LocalRegistry

    with LocalRegistry.open_home(home) as registry:
        registry.engine.begin_recovery(restored=True)


def _manifest(archive: tarfile.TarFile, path: Path) -> dict[str, Any]:
    try:
        member = archive.next()
        if member is None or member.name != MANIFEST or not member.isfile() or member.size > 64 * 1024:
            raise MalformedInput(f"{path} is not a RegistryGrid backup (it does not start with {MANIFEST})")
        handle = archive.extractfile(member)
        manifest = json.loads(handle.read() if handle is not None else b"")
    except (*_DAMAGED, ValueError, RecursionError) as exc:
        raise MalformedInput(f"{path} is not a RegistryGrid backup: {str(exc)[:200]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MalformedInput(f"{path} is a backup of format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
                             f"; this version restores format {FORMAT}")
    return manifest


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))
