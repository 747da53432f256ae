"""A node's home directory: keys, org membership, config, store, and the lock.

    HOME/
      config.json        node settings (listen addresses, bootstrap peers, bridge)
      keys/node.key      the node's Ed25519 seed (mode 0600)
      keys/org.key       the org's seed, when the org key lives here (0600)
      org.json           the org's did:key and its signed delegation for this node;
                         whether this home made the org's key (founder) and has
                         created the org's own record (org_record_published);
                         the node key that has signed changes (node_key_signed)
      federation.json    the federation this node joined: its signed genesis and
                         the org's invitation (rgrid federation create|join); without
                         it the node is in its org's own implicit federation
      store/             the LMDB environment
      store-mark.json    the node key's last change in each registry, as the store held
                         them when it last closed: a store that holds fewer (restored
                         from an older backup) opens recovering (sdk.py)
      node.lock          held (flock) by the one process that writes the store
      node.json          while a node runs with a federation: its peer ID, dialable
                         multiaddrs and pid (written by node/federation.py)

The home is ``--home``, else ``$RGRID_HOME``, else ``~/.registrygrid``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from registrygrid.errors import HomeLocked, NotFound, NotInitialized, ValidationError
from registrygrid.files import read_json
from registrygrid.identity.delegation import (
    Delegation,
    decode_delegation,
    sign_delegation,
    verify_delegation,
)
from registrygrid.identity.keys import KeyPair
from registrygrid.trust.federation import (
    Genesis,
    GenesisBody,
    Invitation,
    decode_genesis,
    decode_invitation,
    federation_id,
    implicit_genesis,
)

log = logging.getLogger(__name__)

# A key file is one line of JSON; a larger one is no key file (a device would never end).
MAX_KEY_FILE_BYTES = 64 * 1024

DEFAULT_CONFIG: dict[str, Any] = {
    # Loopback by default: a node joins a federation on purpose, with --listen.
    "listen": ["/ip4/127.0.0.1/tcp/4001"],
    "bootstrap": [],
    "federation": "default",
    "bridge": {"host": "127.0.0.1", "port": 8700},
}


def write_json_durably(path: Path, data: Any) -> None:
    """``path`` holds ``data`` as JSON whole or not at all, synced to disk
    (a temporary file beside it, fsync, rename): state files whose loss or
    tearing a crash must not cause (index cursors, follow state)."""
    write_text_durably(path, json.dumps(data) + "\n")


STORE_MARK = "store-mark.json"


def write_text_durably(path: Path, text: str, *, secret: bool = False) -> None:
    """``path`` holds ``text`` whole or not at all, on disk when this
    returns: a temporary file beside it, synced, renamed over it, and the
    rename synced in the folder (without that, a power cut may keep the
    old name or an empty file, whatever LMDB committed meanwhile).
    ``secret``: readable by its owner only (mode 0600) from its creation.
    Writers at once (threads of one process too) each write a temporary
    file of their own: the last rename wins, and the file is always one
    writer's text whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if not secret:
                os.fchmod(out.fileno(), 0o644)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            # A write or fsync that failed (a full disk) names no file: the
            # error said "No space left on device" and nothing of where.
            exc.filename = str(path)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_home() -> Path:
    env = os.environ.get("RGRID_HOME")
    return Path(env).expanduser() if env else Path.home() / ".registrygrid"


def _write_secret(path: Path, data: str) -> None:
    """Create a file only its owner can read; refuse to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValidationError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # a key lost to a power cut orphans what the store signed with it
    sync_folder(path.parent)


def write_key_file(path: Path, key: KeyPair) -> None:
    _write_secret(path, json.dumps({"type": "ed25519", "did": key.did, "seed": key.seed.hex()}) + "\n")


def read_key_file(path: Path) -> KeyPair:
    try:
        data = read_json(path, MAX_KEY_FILE_BYTES)
        if not isinstance(data, dict) or not isinstance(data.get("seed"), str):
            raise ValidationError("it is not a JSON object with a \"seed\" string")
        try:
            seed = bytes.fromhex(data["seed"])
        except ValueError:
            raise ValidationError("its seed is not hexadecimal") from None
        key = KeyPair(seed)
    except NotFound:
        raise NotInitialized(f"no key at {path}; run `rgrid init`") from None
    except ValidationError as exc:
        raise ValidationError(f"{path} is not a RegistryGrid key file: {exc.message}") from None
    if data.get("did") not in (None, key.did):
        raise ValidationError(f"{path}: its did does not match its seed")
    _warn_if_others_may_read(path)
    return key


def _warn_if_others_may_read(path: Path) -> None:
    """A seed that other users may read is a key they may sign with. A
    warning, not a refusal as ssh does: an org key kept on a USB stick
    (FAT has no owners) shows mode 0755 whatever one does."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            log.warning("%s holds a secret key and other users may read it (mode %04o): "
                        "chmod 600 it, or keep it where only you can read", path, mode)


@dataclass(frozen=True)
class FederationMembership:
    """The federation a home belongs to: its genesis claims and id, and the
    signed genesis and invitation when it is not the org's implicit one."""

    name: str
    id: str
    claims: GenesisBody
    genesis: Genesis | None = None
    invitation: Invitation | None = None


@dataclass(frozen=True)
class OrgMembership:
    org: str  # did:key
    name: str
    delegation: Delegation
    # The org's own record (grid.orgs/<org>) is created once, by the home
    # that made the org's key, at its first open: were every node of the
    # org to create it when its store lacks it, two nodes opened before
    # they met would race two creates of one record, a conflict every node
    # shows for good (and a joined node's default name would beat the
    # founder's). Other nodes get it by replication.
    founder: bool = False
    org_record_published: bool = False


class Home:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_home()
        try:
            str(self.path).encode("utf-8")
        except UnicodeEncodeError as exc:
            # LMDB and the search index take UTF-8 paths only: the store
            # failed to open with a traceback.
            raise ValidationError(f"the home {str(self.path)!r} is not UTF-8 text (byte "
                                  f"{ord(str(self.path)[exc.start]) - 0xDC00:#04x} at character {exc.start}); "
                                  "choose a home whose path is") from None
        self._lock_fd: int | None = None

    @property
    def store_path(self) -> Path:
        return self.path / "store"

    @property
    def node_key_path(self) -> Path:
        return self.path / "keys" / "node.key"

    @property
    def org_key_path(self) -> Path:
        return self.path / "keys" / "org.key"

    def exists(self) -> bool:
        return self.node_key_path.exists()

    def init(self, *, org_name: str = "", org_key_file: Path | None = None) -> dict[str, Any]:
        """Create the home: node key, org key (new, or an existing one's
        file), a signed delegation org -> node, default config."""
        if self.exists():
            raise ValidationError(f"{self.path} is already initialised (node key exists); refusing to overwrite")
        # Every input is checked before anything is written: the node key
        # marks a home initialised, and written before a bad --org-key was
        # read, it left a half-made home that `rgrid init` refused to redo.
        _check_org_name(org_name)
        if org_key_file is not None:
            org_key = read_key_file(Path(org_key_file))
            org_source = str(org_key_file)
        elif self.org_key_path.exists():
            raise ValidationError(f"{self.org_key_path} exists already: pass it with --org-key to join its org, "
                                  "or move it away to found a new one")
        else:
            org_key = KeyPair.generate()
            org_source = str(self.org_key_path)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if org_key_file is None:
            write_key_file(self.org_key_path, org_key)
        node_key = KeyPair.generate()
        write_key_file(self.node_key_path, node_key)
        delegation = sign_delegation(org_key, node_key.did, ["node", "writer"])
        write_text_durably(self.path / "org.json", json.dumps({
            "org": org_key.did,
            "name": org_name,
            "founder": org_key_file is None,
            "key_file": org_source,
            "delegation": base64.b64encode(delegation.encode()).decode(),
        }, indent=2) + "\n")
        if not (self.path / "config.json").exists():
            write_text_durably(self.path / "config.json", json.dumps(DEFAULT_CONFIG, indent=2) + "\n")
        return {"home": str(self.path), "node": node_key.did, "org": org_key.did}

    def node_key(self) -> KeyPair:
        return read_key_file(self.node_key_path)

    def node_dids(self) -> list[str]:
        """The did:keys this home's node has signed with: its key, and the
        keys `rgrid node rotate-key` retired (kept beside it for audits).
        A retired key file that can't be read is left out: what it signed
        then shows as signed by a key this node does not know."""
        dids = [self.node_key().did]
        for retired in sorted(self.node_key_path.parent.glob(f"{self.node_key_path.name}.retired-*")):
            try:
                dids.append(read_key_file(retired).did)
            except (OSError, ValidationError):
                continue
        return dids

    def org(self) -> OrgMembership | None:
        data = self._org_file()
        if data is None:
            return None
        try:
            delegation = decode_delegation(base64.b64decode(data["delegation"]))
            org = str(data["org"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(f"{self.path / 'org.json'} is not an org file: {exc!r}") from None
        # A home from before "founder" was written: the founder's is the
        # one whose org key it made itself.
        founder = data.get("founder", data.get("key_file") == str(self.org_key_path))
        name = data.get("name", "")
        # Checked, not coerced: "founder": "false" counted as a founder.
        if not isinstance(founder, bool) or not isinstance(name, str):
            raise ValidationError(f"{self.path / 'org.json'} is not an org file: founder is true or false, "
                                  "name a string")
        return OrgMembership(org=org, name=name, delegation=delegation,
                             founder=founder, org_record_published=bool(data.get("org_record_published")))

    def _org_file(self) -> dict[str, Any] | None:
        """org.json, or None when the home has none; a file that is not a
        JSON object (cut short, edited by hand) is a ValidationError."""
        path = self.path / "org.json"
        try:
            data = read_json(path)
        except NotFound:
            return None
        except ValidationError as exc:
            raise ValidationError(f"{exc.message}; restore it from a backup (it holds this "
                                  "node's org and its signed delegation)") from None
        if not isinstance(data, dict):
            raise ValidationError(f"{path} is not an org file: a JSON object was expected")
        return data

    def verified_org(self) -> OrgMembership | None:
        """The home's org and delegation, signature checked. An expired
        delegation still opens the home (reads, serving, sync go on); the
        engine refuses new writes until it is renewed."""
        membership = self.org()
        if membership is not None:
            verify_delegation(membership.delegation, org=membership.org, subject=self.node_key().did, role="node",
                              check_window=False)
        return membership

    def set_delegation(self, delegation: Delegation) -> None:
        """Replace this node's delegation (a renewal), atomically."""
        self._update_org_file(delegation=base64.b64encode(delegation.encode()).decode())

    def key_has_signed(self, did: str) -> bool:
        """Whether this home's node signed changes with ``did`` (recorded at
        each open that finds the node's delegation in the store)."""
        data = self._org_file()
        return data is not None and data.get("node_key_signed") == did

    def note_key_signed(self, did: str) -> None:
        self._update_org_file(node_key_signed=did)

    def store_mark(self, did: str) -> dict[str, int]:
        """registry -> the last sequence number key ``did`` signed there that
        this home's store held when it last closed; {} when none is known
        (another key's, or a file that does not read: the mark only ever
        adds a refusal, so losing it costs nothing but that)."""
        path = self.path / STORE_MARK
        if not path.exists():
            return {}
        try:
            data = read_json(path)
            heads = data["heads"] if data.get("key") == did else {}
            return {str(r): int(s) for r, s in heads.items() if isinstance(s, int) and not isinstance(s, bool)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ValidationError):
            return {}

    def save_store_mark(self, did: str, heads: dict[str, int]) -> None:
        """Raise the mark of key ``did`` to ``heads`` (never lowered: a store
        that went back in time must not move it back with it)."""
        merged = self.store_mark(did)
        for registry, seq in heads.items():
            merged[registry] = max(seq, merged.get(registry, 0))
        write_text_durably(self.path / STORE_MARK, json.dumps({"key": did, "heads": merged}, sort_keys=True) + "\n")

    def note_org_record_published(self) -> None:
        """The org's own record is in this node's store: its founder home
        never creates it again (OrgMembership.founder says why)."""
        self._update_org_file(org_record_published=True)

    def _update_org_file(self, **changes: Any) -> None:
        path = self.path / "org.json"
        data = self._org_file() or {}
        data.update(changes)
        write_text_durably(path, json.dumps(data, indent=2) + "\n")

    # ---- the federation ----

    @property
    def federation_path(self) -> Path:
        return self.path / "federation.json"

    def federation(self) -> FederationMembership:
        """The federation this home joined, or its org's implicit one
        (named by config.json's "federation")."""
        if self.federation_path.exists():
            try:
                data = read_json(self.federation_path)
                genesis = decode_genesis(base64.b64decode(data["genesis"]))
                invitation = decode_invitation(base64.b64decode(data["invitation"])) if data.get("invitation") \
                    else None
            except (ValueError, KeyError, TypeError) as exc:
                raise ValidationError(f"{self.federation_path} is not a federation file: {exc}") from None
            return FederationMembership(genesis.name, genesis.id, genesis.claims, genesis, invitation)
        membership = self.org()
        org = membership.org if membership is not None else self.node_key().did
        claims = implicit_genesis(str(self.config().get("federation", "default")), org=org)
        return FederationMembership(claims.name, federation_id(msgspec.msgpack.encode(claims)), claims)

    def set_federation(self, genesis: Genesis, invitation: Invitation | None = None) -> None:
        """Join ``genesis``'s federation (atomically), and name it in config.json."""
        data = {"federation": genesis.id, "name": genesis.name,
                "genesis": base64.b64encode(genesis.encode()).decode(),
                "invitation": base64.b64encode(invitation.encode()).decode() if invitation else None}
        write_text_durably(self.federation_path, json.dumps(data, indent=2) + "\n")
        config = self.config()
        config["federation"] = genesis.name
        write_text_durably(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def config(self) -> dict[str, Any]:
        path = self.path / "config.json"
        merged = json.loads(json.dumps(DEFAULT_CONFIG))
        if path.exists():
            given = read_json(path)  # ValidationError: not JSON, not UTF-8, not a file, too big
            if not isinstance(given, dict):
                raise ValidationError(f"{path} must hold a JSON object of settings")
            merged.update(given)
        return merged

    def require(self) -> None:
        if not self.exists():
            raise NotInitialized(f"{self.path} is not a RegistryGrid home; run `rgrid init --home {self.path}`")

    # ---- the running node's network identity ----

    @property
    def node_info_path(self) -> Path:
        return self.path / "node.json"

    def write_node_info(self, info: dict[str, Any]) -> None:
        """Publish the running node's peer ID and addresses (atomically: write, then rename)."""
        tmp = self.path / f".node.json.{os.getpid()}"
        tmp.write_text(json.dumps({**info, "pid": os.getpid()}, indent=2) + "\n")
        os.replace(tmp, self.node_info_path)

    def clear_node_info(self) -> None:
        self.node_info_path.unlink(missing_ok=True)

    def node_info(self) -> dict[str, Any] | None:
        """What the running node wrote, or None if no node runs here (a file
        left by a killed node names a pid that no longer holds the lock)."""
        try:
            info = read_json(self.node_info_path)
        except (NotFound, ValidationError):
            return None
        holder = (self.lock_holder() or "") + " "
        if not isinstance(info, dict) or not holder.startswith(f"pid {info.get('pid')} "):
            return None
        return info

    # ---- the writer lock ----

    def lock(self, owner: str = "") -> None:
        """Take the home's writer lock, or raise HomeLocked naming the holder."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 256).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise HomeLocked(
                    f"{self.path} is in use by another process ({holder or 'unknown'}); "
                    "stop it first, or use `rgrid` commands, which talk to the running node"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} {owner}".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def lock_holder(self) -> str | None:
        """Who holds the lock, or None if nobody does."""
        path = self.path / "node.lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return os.read(fd, 256).decode(errors="replace").strip() or "unknown"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def _check_org_name(name: str) -> None:
    """The org's name as its grid.orgs record will take it: a name the org
    kind refuses left the home made and its org record never written, an
    audited refusal at every open and no way to fix it."""
    from registrygrid.errors import SchemaViolation
    from registrygrid.schemas.catalog import SchemaCatalog

    try:
        SchemaCatalog().validate("org", SchemaCatalog().latest_version("org"), {"name": name or "org"})
    except SchemaViolation as exc:
        raise ValidationError(f"--org-name is not a name an org record takes ({len(name)} characters; "
                              f"{exc.message[:200]})") from None
