"""The asset layer of one node, built from its home's config.json.

    assets = Assets.open(home, store)     # blobs, uploads and presigned URLs, ready to use
    assets.blobs.put(...); assets.uploads.create(...); assets.presign.sign(...)

config.json's ``assets`` section (every member optional):

    "assets": {
      "backend": "local",                 # or "s3"
      "path": "objects",                  # local: a directory, relative to the home
      "s3": {"endpoint": "http://127.0.0.1:8333", "bucket": "rgrid", "region": "us-east-1",
             "access_key": "...", "secret_key_env": "RGRID_S3_SECRET", "prefix": "node-1",
             "server_side_encryption": false,
             "object_lock": null,          # "governance" or "compliance": retention and holds set on
                                           # the objects too (the bucket must have Object Lock)
             "lifecycle": false,           # true: set the lifecycle rules at the node's start
             "lifecycle_expire_days": null,   # staging/ and uploads/ expire (default: TTL + 1 day)
             "lifecycle_abort_days": 7},      # incomplete multipart uploads aborted (blobs/lifecycle.py)
      "quota_bytes": null,                # all blobs together; null: unlimited
      "max_blob_bytes": 1099511627776,
      "part_bytes": 8388608,              # the default part size of an upload
      "upload_ttl_s": 86400,              # an untouched upload expires after this
      "checks": {"max_bytes": 10737418240, "content_types": ["application/*", "text/*"],
                 "licenses": ["apache-2.0", "mit"], "refuse_unstated_license": false,
                 "license_on_download": false},   # blobs/scanners.py
      "policy": "grid.policies/asset-rules",      # a policy record whose "assets" member adds rules
      "bundle_hosts": ["mirror.example.org"]      # hosts a bundle (POST /v1/bundles) may fetch URLs from
    }

The S3 secret is read from the environment variable ``secret_key_env``
names (or ``secret_key`` itself, discouraged: config.json is not a secret
store). Presigning keys live in HOME/presign-keys.json (mode 0600).

With ``assets.s3.lifecycle`` the node sets its bucket's lifecycle rules
(blobs/lifecycle.py) when it opens its assets at start; ``rgrid asset
lifecycle --apply`` does it on demand. A failure there is logged, not
fatal: the node's data path does not depend on the rules.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

from registrygrid.blobs import lifecycle
from registrygrid.blobs.blobs import BlobLimits, BlobStore
from registrygrid.blobs.metadata import extract
from registrygrid.blobs.objects import LocalObjects, ObjectStore
from registrygrid.blobs.presign import PresignKeys
from registrygrid.blobs.s3_control import LOCK_MODES, S3Control
from registrygrid.blobs.scanners import Checks, Subject, Verdict, summary
from registrygrid.blobs.uploads import UploadLimits, Uploads
from registrygrid.errors import RegistryError, ValidationError
from registrygrid.home import Home
from registrygrid.storage.blobs import BlobEntry
from registrygrid.storage.store import Store

PRESIGN_KEYS = "presign-keys.json"
log = logging.getLogger(__name__)


@dataclass
class Assets:
    blobs: BlobStore
    uploads: Uploads
    presign: PresignKeys
    checks: Checks = field(default_factory=Checks)  # config.json's assets.checks
    # REGISTRY/ID of a policy record whose ``assets`` member adds rules (read
    # at each check, so an update of the replicated record applies at once),
    # and how to read it: (registry, id) -> the record's fields, or None.
    policy: str | None = None
    bundle_hosts: tuple[str, ...] = ()  # hosts a bundle may fetch URLs from (config assets.bundle_hosts)
    read_record: Callable[[str, str], dict[str, Any] | None] | None = None
    # The bucket's lifecycle rules, when config.json asks the node to set
    # them (assets.s3.lifecycle); see apply_lifecycle.
    lifecycle: BucketLifecycle | None = None

    def __post_init__(self) -> None:
        self.uploads.declare = self._declared
        self.uploads.vet = self.vet

    # ---- the checks (blobs/scanners.py)

    def _rules(self) -> tuple[Checks, bool]:
        """The checks in force, and whether they are enforced (a policy record
        with ``enforcement: audit`` only records its verdicts)."""
        if self.policy is None or self.read_record is None:
            return self.checks, True
        registry, _, record_id = self.policy.partition("/")
        fields = self.read_record(registry, record_id) or {}
        if fields.get("enforcement") == "disabled":
            return self.checks, True
        extra = Checks.from_config(fields.get("assets"), where=f"policy {self.policy} assets")
        return self.checks + extra, fields.get("enforcement", "enforce") != "audit"

    def judge(self, subject: Subject) -> list[Verdict]:
        """Every verdict on ``subject``; CheckRefused if an enforced one refuses."""
        checks, enforced = self._rules()
        return checks.enforce(subject) if enforced else checks.judge(subject)

    def _declared(self, size: int, content_type: str, name: str) -> None:
        self.judge(Subject("declare", size, content_type, name))

    def vet(self, key: str, size: int, content_type: str, name: str) -> tuple[dict[str, Any], str]:
        """What staged bytes say of themselves, and the checks' verdicts on them
        (a refusal raises: the caller discards the bytes)."""
        try:
            extracted = extract(name, content_type, self.blobs.objects.get(key))
            meta = {k: v for k, v in msgspec.structs.asdict(extracted).items() if v not in (None, (), {}, [])}
        except RegistryError as exc:
            meta = {"unreadable": f"{exc.code}: {exc.message}"[:300]}
        meta = msgspec.json.decode(msgspec.json.encode(meta))  # plain JSON types, for LMDB and answers
        license_ = meta.get("license") if isinstance(meta.get("license"), str) else None
        verdicts = self.judge(Subject("upload", size, content_type, name, license_, meta))
        return meta, summary(verdicts)

    def may_serve(self, entry: BlobEntry) -> str:
        """The download checks' verdict line; CheckRefused if one refuses."""
        license_ = entry.meta.get("license") if isinstance(entry.meta.get("license"), str) else None
        return summary(self.judge(Subject("download", entry.size, entry.content_type, "", license_, entry.meta)))

    @classmethod
    def open(cls, home: Home, store: Store,
             read_record: Callable[[str, str], dict[str, Any] | None] | None = None, *,
             apply_lifecycle: bool = False) -> Assets:
        """The home's assets; with ``apply_lifecycle`` also sets the bucket's
        lifecycle rules when config.json asks for them (a blocking call: a
        few requests, their retries if S3 is down; the node makes it on a
        worker thread once started, ``Node._keep_assets``)."""
        section = _section(home)
        objects = _objects(home, section)
        wanted = section.get("backend") == "s3" and _s3_section(section).get("lifecycle")
        bucket = BucketLifecycle.of(section, objects) if wanted else None  # config errors now, not later
        default_blob, default_upload = BlobLimits(), UploadLimits()
        try:
            quota = section.get("quota_bytes")
            blob_limits = BlobLimits(max_blob_bytes=int(section.get("max_blob_bytes", default_blob.max_blob_bytes)),
                                     quota_bytes=None if quota is None else int(quota))
            upload_limits = UploadLimits(
                default_part_bytes=int(section.get("part_bytes", default_upload.default_part_bytes)),
                ttl_s=float(section.get("upload_ttl_s", default_upload.ttl_s)))
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int() of 1e309, an infinity
            raise ValidationError(f"config.json assets: {exc}") from None
        if not (math.isfinite(upload_limits.ttl_s) and upload_limits.ttl_s > 0) or blob_limits.max_blob_bytes < 1 \
                or (blob_limits.quota_bytes is not None and blob_limits.quota_bytes < 0) \
                or not upload_limits.min_part_bytes <= upload_limits.default_part_bytes <= upload_limits.max_part_bytes:
            raise ValidationError(f"config.json assets: max_blob_bytes and upload_ttl_s must be positive and finite, "
                                  f"quota_bytes >= 0, part_bytes {upload_limits.min_part_bytes} to "
                                  f"{upload_limits.max_part_bytes}")
        if bucket is not None:
            # The bucket expires upload objects expire_days after their
            # creation: a session ends an hour before its first part could go.
            upload_limits = replace(upload_limits, max_age_s=bucket.plan.expire_days * 86400.0 - 3600.0)
        blobs = BlobStore(objects, store, blob_limits)
        policy = section.get("policy")
        if policy is not None and (not isinstance(policy, str) or "/" not in policy):
            raise ValidationError("config.json assets.policy: REGISTRY/ID of a policy record")
        assets = cls(blobs, Uploads(blobs, upload_limits), PresignKeys.open(home.path / PRESIGN_KEYS),
                     checks=Checks.from_config(section.get("checks"), where="config.json assets.checks"),
                     policy=policy, read_record=read_record, bundle_hosts=_hosts(section.get("bundle_hosts")),
                     lifecycle=bucket)
        if apply_lifecycle:
            assets.apply_lifecycle()
        return assets

    def apply_lifecycle(self) -> bool:
        """Set the bucket's lifecycle rules if config.json asks for them;
        whether the bucket holds them now. A failure is logged, not raised:
        the node's data path does not depend on the rules, and a node that
        cannot reach its bucket at start should still start."""
        if self.lifecycle is None:
            return False
        try:
            _rules, changed = self.lifecycle.apply()
        except RegistryError as exc:
            log.warning("could not set the bucket's lifecycle rules (assets.s3.lifecycle): %s; the node runs "
                        "without them until `rgrid asset lifecycle --apply` succeeds", exc.message)
            return False
        if changed:
            log.info("set lifecycle rules %s on bucket %s",
                     ", ".join(r["ID"] for r in self.lifecycle.plan.rules()), self.lifecycle.control.bucket)
        return True


def _hosts(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(h, str) and h for h in value):
        raise ValidationError("config.json assets.bundle_hosts: a list of host names")
    return tuple(h.lower() for h in value)


@dataclass(frozen=True)
class BucketLifecycle:
    """The node's lifecycle rules (blobs/lifecycle.py) and the bucket they go on."""

    control: S3Control
    plan: lifecycle.LifecyclePlan

    @classmethod
    def open(cls, home: Home) -> BucketLifecycle:
        """From the home's config.json; ValidationError unless its backend is S3."""
        section = _section(home)
        if section.get("backend", "local") != "s3":
            raise ValidationError("lifecycle rules are S3 bucket configuration: config.json assets.backend is "
                                  f"{section.get('backend', 'local')!r}, not 's3'")
        return cls.of(section, _objects(home, section))

    @classmethod
    def of(cls, section: dict[str, Any], objects: ObjectStore) -> BucketLifecycle:
        from registrygrid.blobs.s3 import S3Objects

        if not isinstance(objects, S3Objects):
            raise ValidationError("lifecycle rules are S3 bucket configuration: config.json assets.backend is not 's3'")
        s3 = _s3_section(section)
        try:
            ttl = float(section.get("upload_ttl_s", UploadLimits().ttl_s))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"config.json assets.upload_ttl_s: {exc}") from None
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValidationError(f"config.json assets.upload_ttl_s: a positive number of seconds, not {ttl}")
        return cls(objects.control, lifecycle.plan(objects.prefix, ttl, expire_days=s3.get("lifecycle_expire_days"),
                                                   abort_days=s3.get("lifecycle_abort_days")))

    def current(self) -> list[dict[str, Any]]:
        return self.control.lifecycle()

    def apply(self) -> tuple[list[dict[str, Any]], bool]:
        """Write the node's rules into the bucket's, keeping every other rule;
        (the bucket's rules now, whether they changed). Nothing is written
        when the bucket holds exactly the node's rules already."""
        current = self.current()
        if self.plan.in_place(current):
            return current, False
        merged = self.plan.merged(current)
        self.control.put_lifecycle(merged)
        return merged, True


def _section(home: Home) -> dict[str, Any]:
    section = home.config().get("assets") or {}
    if not isinstance(section, dict):
        raise ValidationError("config.json assets: an object")
    return section


def _s3_section(section: dict[str, Any]) -> dict[str, Any]:
    s3 = section.get("s3") or {}
    if not isinstance(s3, dict):
        raise ValidationError("config.json assets.s3: an object")
    # Checked here, by name: a number where a string goes was a TypeError or
    # AttributeError traceback, and bool("false") turned encryption on.
    for key in ("lifecycle", "server_side_encryption"):
        if not isinstance(s3.get(key, False), bool):
            raise ValidationError(f"config.json assets.s3.{key}: true or false, not {s3[key]!r}",
                                  details=[{"path": f"assets.s3.{key}"}])
    for key in ("endpoint", "bucket", "access_key", "secret_key", "secret_key_env", "region", "prefix"):
        if key in s3 and s3[key] is not None and not isinstance(s3[key], str):
            raise ValidationError(f"config.json assets.s3.{key}: a string, not {s3[key]!r}",
                                  details=[{"path": f"assets.s3.{key}"}])
    lock = s3.get("object_lock")
    if lock is not None and lock not in LOCK_MODES:
        raise ValidationError(f"config.json assets.s3.object_lock: {' or '.join(map(repr, LOCK_MODES))} (S3 Object "
                              f"Lock's retention modes), or null, not {lock!r}",
                              details=[{"path": "assets.s3.object_lock"}])
    return s3


def _objects(home: Home, section: dict[str, Any]) -> ObjectStore:
    backend = section.get("backend", "local")
    if backend == "local":
        path = Path(section.get("path", "objects"))
        return LocalObjects(path if path.is_absolute() else home.path / path)
    if backend == "s3":
        from registrygrid.blobs.s3 import S3Objects

        s3 = _s3_section(section)
        secret = os.environ.get(s3.get("secret_key_env", ""), "") if s3.get("secret_key_env") \
            else s3.get("secret_key", "")
        missing = [k for k in ("endpoint", "bucket", "access_key") if not s3.get(k)]
        if missing or not secret:
            raise ValidationError("config.json assets.s3 needs endpoint, bucket, access_key and a secret "
                                  "(secret_key_env names the environment variable holding it)",
                                  details=[{"path": f"assets.s3.{k}"} for k in missing or ["secret_key_env"]])
        return S3Objects(bucket=s3["bucket"], endpoint=s3["endpoint"], access_key=s3["access_key"],
                         secret_key=secret, region=s3.get("region", "us-east-1"), prefix=s3.get("prefix", ""),
                         server_side_encryption=s3.get("server_side_encryption", False),
                         object_lock=s3.get("object_lock"))
    raise ValidationError(f"config.json assets.backend: 'local' or 's3', not {backend!r}")
