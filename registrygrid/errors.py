"""The typed errors of RegistryGrid.

Every error a user, an app or a peer can cause is one of these. Each carries a
stable machine-readable ``code``, the HTTP status the bridge answers with, and
the exit code the CLI ends with (from BSD ``sysexits.h`` so shell scripts can
tell a bad input from a refused one). ``details`` holds structured context,
for example every failing field path of a schema violation.

This module imports nothing of ours, so every layer may raise these.
"""

from __future__ import annotations

import errno
import shutil
from typing import Any

# sysexits.h: the conventional exit codes of Unix tools.
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class RegistryError(Exception):
    """Base of every error RegistryGrid raises on purpose."""

    code = "registry_error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def audit_reason(self) -> str:
        """What the audit ledger keeps of this error (a ``deny`` entry). The
        ledger is hash-chained and never scrubbed, so no erasure can reach
        it: an error whose message quotes the values it refuses says less here."""
        return f"{self.code}: {self.message}"


class ValidationError(RegistryError):
    """The input is well-formed but breaks a rule (schema, limit, naming)."""

    code = "validation_failed"
    http_status = 422
    exit_code = EX_DATAERR


class SchemaViolation(ValidationError):
    """Record fields break their kind's JSON Schema; details list every failing path."""

    code = "schema_violation"

    def audit_reason(self) -> str:
        # A schema message quotes the value it refuses ("'alice@...' is not
        # of type 'integer'"), and a field path may hold the keys of a map
        # ("/members/alice@example.org"): the ledger keeps where in the
        # schema each failing rule is, which names the schema's words only.
        kind = self.message.split(":", 1)[0]
        details = self.details if isinstance(self.details, list) else []
        failing = ", ".join(f"{d.get('schema_path') or '/'} ({d.get('validator')})" for d in details[:10]
                            if isinstance(d, dict))
        more = f" and {len(details) - 10} more" if len(details) > 10 else ""
        return f"{self.code}: {kind}: {failing or 'fields'}{more}"


class UnknownKind(ValidationError):
    code = "unknown_kind"


class MalformedInput(ValidationError):
    """Bytes or text that cannot be decoded at all (bad JSON, bad msgpack)."""

    code = "malformed_input"
    http_status = 400


class Unverifiable(ValidationError):
    """A record another node sent does not verify here: a change's signature
    or form, a signer without standing, or a history this node cannot
    judge alone (an unknown registry, a fork); search/proof.py."""

    code = "unverifiable"


class TooLarge(ValidationError):
    code = "too_large"
    http_status = 413


class NotFound(RegistryError):
    code = "not_found"
    http_status = 404
    exit_code = EX_NOINPUT


class RecordErased(NotFound):
    """The record was erased (an erasure notice: docs/erasure.md): gone for good."""

    code = "record_erased"
    http_status = 410


class UnknownRegistry(NotFound):
    code = "unknown_registry"


class KindNotFound(NotFound):
    """A read of a kind (or kind version) this node has not registered: 404.
    A write that names one is refused with UnknownKind (422): there the
    request is what is wrong, here the resource is missing."""

    code = "kind_not_found"


class BodyTimeout(RegistryError):
    """A request body stalled: nothing arrived for the bridge's idle timeout."""

    code = "body_timeout"
    http_status = 408
    exit_code = EX_TEMPFAIL


class Conflict(RegistryError):
    code = "conflict"
    http_status = 409
    exit_code = EX_DATAERR


class AlreadyExists(Conflict):
    code = "already_exists"


class PolicyDenied(RegistryError):
    """The actor may not do this (registry write policy, delegation, role)."""

    code = "policy_denied"
    http_status = 403
    exit_code = EX_NOPERM


class NotOwner(PolicyDenied):
    """The signer does not speak for the record's owner org (nor holds a
    role the registry's policy grants over other orgs' records)."""

    code = "not_owner"


class DelegationExpired(PolicyDenied):
    """The signer's org delegation does not cover the change's time."""

    code = "delegation_expired"


class KeyRevoked(PolicyDenied):
    """The signer's key was revoked by its org before this change."""

    code = "key_revoked"


class Quarantined(PolicyDenied):
    """The signer was proven to equivocate in this registry at or before this
    change's sequence (docs/conflicts.md)."""

    code = "quarantined"


class NotMember(PolicyDenied):
    """A peer or org that is not an admitted member of this federation."""

    code = "not_member"


class Unauthorized(RegistryError):
    code = "unauthorized"
    http_status = 401
    exit_code = EX_NOPERM


class RateLimited(RegistryError):
    code = "rate_limited"
    http_status = 429
    exit_code = EX_TEMPFAIL


class SignatureInvalid(RegistryError):
    """A signed envelope or delegation does not verify."""

    code = "signature_invalid"
    http_status = 400
    exit_code = EX_DATAERR


class Equivocation(SignatureInvalid):
    """One author signed two different changes with the same sequence number."""

    code = "equivocation"


class ChainBroken(SignatureInvalid):
    """An envelope's ``prev`` does not name the author's previous envelope."""

    code = "chain_broken"


class MissingDependencies(RegistryError):
    """A remote change waits for changes this node has not seen yet."""

    code = "missing_dependencies"
    http_status = 409
    exit_code = EX_TEMPFAIL


class IntegrityError(RegistryError):
    """Stored data fails its own checks (tampering or corruption)."""

    code = "integrity_error"
    http_status = 500
    exit_code = EX_SOFTWARE


class NotInitialized(RegistryError):
    code = "not_initialized"
    http_status = 503
    exit_code = EX_CONFIG


class HomeLocked(RegistryError):
    """Another node already runs on this home."""

    code = "home_locked"
    http_status = 409
    exit_code = EX_TEMPFAIL


class Unavailable(RegistryError):
    code = "unavailable"
    http_status = 503
    exit_code = EX_TEMPFAIL


class Disabled(Unavailable):
    """What was asked needs a part this node runs without (--no-search,
    --no-dht, --no-p2p, no asset store): unavailable until the operator
    restarts it otherwise, so no Retry-After and clients don't retry."""

    code = "disabled"
    exit_code = EX_UNAVAILABLE


class StoreRecovering(Disabled):
    """The node's store was made anew while its key had signed changes
    before: it signs nothing until its operator ends the recovery (docs/
    trust.md, "A lost store"). Lasts like Disabled: no Retry-After, and
    clients don't retry."""

    code = "store_recovering"


class StorageFailed(RegistryError):
    """The store's disk refused a write: full, over a quota or a file-size
    limit, read-only, failing. The whole write was aborted, so the store is
    as it was and nothing was acknowledged. Asking again fails the same way
    until the operator frees space or fixes the disk, so no Retry-After and
    clients don't retry (HTTP 507 Insufficient Storage, RFC 4918 11.5)."""

    code = "storage_failed"
    http_status = 507
    exit_code = EX_IOERR

    # What the OS says when the disk, not our data, refuses a write.
    ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})

    @classmethod
    def at(cls, path: Any, cause: BaseException, *, what: str = "the store",
           fix: str = "free space (or fix the disk), then write again", kept: str | None = None) -> StorageFailed:
        """The error for a write of ``what`` under ``path`` the disk refused,
        saying how much room is left (a full disk is the common cause, and
        the fix); ``kept``: what is as it was (``what`` itself by default)."""
        try:
            free: int | None = shutil.disk_usage(path).free
        except OSError:
            free = None
        room = f"{free:,} bytes free on its disk" if free is not None else "its disk's free space unknown"
        return cls(f"{what} in {path} could not be written ({cause}; {room}). The write was not made and "
                   f"{kept or what} is as it was: {fix}",
                   details={"path": str(path), "free_bytes": free, "cause": str(cause)})


class FileFailed(RegistryError):
    """The CLI could not read or write a file or folder it was given, or
    writes (a missing folder, no permission, a folder where a file goes, a
    full disk): the path and the OS's reason, not a traceback."""

    code = "file_failed"
    exit_code = EX_IOERR

    @classmethod
    def of(cls, exc: OSError) -> FileFailed:
        reason = exc.strerror or str(exc)
        return cls(f"{exc.filename}: {reason}" if exc.filename is not None else reason)


class BadUsage(RegistryError):
    """A command line the CLI cannot parse: a missing argument, an unknown
    option, a value outside its range or choices (click's own checks)."""

    code = "usage"
    exit_code = EX_USAGE


class FeatureUnavailable(RegistryError):
    """A capability of an optional extra this installation lacks (e.g.
    semantic search without ``registrygrid[semantic]``): asking again won't help."""

    code = "feature_unavailable"
    http_status = 501
    exit_code = EX_UNAVAILABLE
