"""S3 control-plane calls: bucket lifecycle rules, Object Lock retention and legal holds.

obstore (blobs/s3.py) moves the bytes; it has no call for bucket
configuration or Object Lock (object_store is a data-path library). These
few signed requests go through botocore, the AWS SDK's own request layer:

- it is the reference implementation of the S3 API's shapes and SigV4
  signing, maintained by AWS with the Python SDK and released with it
  almost every weekday; S3-compatible services test against exactly it;
- PutObjectRetention and PutObjectLegalHold require a body checksum
  (Content-MD5 or x-amz-checksum-*, "httpChecksumRequired" in the model);
  botocore adds it from the service model, where a hand-signed request
  would have to know it per operation;
- its dependencies (jmespath, python-dateutil, urllib3) are small and pure
  Python; boto3 on top adds nothing used here. minio 7.2 has these calls
  too, but it is MinIO's client with a signer of its own, and it brings
  argon2-cffi and pycryptodome.

Measured against SeaweedFS 4.48 (``weed mini``, tests/test_s3_lifecycle.py):
Put/Get/DeleteBucketLifecycleConfiguration store and return the rules as
given (Expiration.Days, AbortIncompleteMultipartUpload,
NoncurrentVersionExpiration; GET of none is NoSuchLifecycleConfiguration);
a bucket created with Object Lock has versioning enabled; Object Lock cannot
be turned on for an existing bucket (409 InvalidBucketState, while AWS now
allows it on a versioned bucket); PutObjectRetention and PutObjectLegalHold
on a bucket without Object Lock answer 400 InvalidRequest; under a legal
hold or before its retain-until date an object version's DELETE is refused
(403 AccessDenied), a compliance retention cannot be shortened (403), a
governance one yields to x-amz-bypass-governance-retention; a DELETE
without a version id succeeds on a locked object as on AWS: it adds a
delete marker and the locked version stays (list_object_versions shows it).

    control = S3Control("assets", "https://s3.example.org", access_key, secret_key)
    control.lifecycle()                       # the bucket's rules, [] when none
    control.put_retention("node-1/blobs/bafk...", until_ms, "compliance")
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from registrygrid.blobs.objects import ObjectMissing, ObjectStoreUnavailable
from registrygrid.errors import PolicyDenied, ValidationError

LOCK_MODES = ("governance", "compliance")
# Error codes S3 answers for "nothing configured", which read as empty here.
_NO_LIFECYCLE = "NoSuchLifecycleConfiguration"
_NO_LOCK = "ObjectLockConfigurationNotFoundError"
_ABSENT = ("NoSuchKey", "NoSuchVersion", "404")
# A service that has no bucket versioning at all answers one of these.
_NO_VERSIONING = ("NotImplemented", "MethodNotAllowed", "XNotImplemented")


class ObjectLockMissing(ValidationError):
    """Object Lock was asked for (config.json assets.s3.object_lock) on a bucket that lacks it."""

    code = "object_lock_missing"


class ObjectLocked(PolicyDenied):
    """The S3 service refused a change because Object Lock protects the object."""

    code = "object_locked"


class S3Control:
    """Signed control-plane requests to ``bucket`` at ``endpoint`` (path-style).

    Keys here are whole keys in the bucket (the node's prefix included):
    ``S3Objects`` joins its prefix before calling. Every failure of the
    service or the network is ``ObjectStoreUnavailable``, an absent key
    ``ObjectMissing``, a refusal by Object Lock ``ObjectLocked``."""

    def __init__(self, bucket: str, endpoint: str, access_key: str, secret_key: str, *,
                 region: str = "us-east-1", timeout_seconds: float = 30.0, retries: int = 3) -> None:
        self.bucket = bucket
        self.endpoint = endpoint.rstrip("/")
        self._settings: dict[str, Any] = {"access_key": access_key, "secret_key": secret_key, "region": region,
                                          "timeout_seconds": timeout_seconds, "retries": retries}
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Control(bucket={self.bucket!r}, endpoint={self.endpoint!r})"

    # ---- bucket lifecycle

    def lifecycle(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules as S3 returns them; [] when it has none."""
        with self._call("read of the lifecycle rules", empty=_NO_LIFECYCLE) as answer:
            answer.value = self.client().get_bucket_lifecycle_configuration(Bucket=self.bucket)
        return list((answer.value or {}).get("Rules") or [])

    def put_lifecycle(self, rules: list[dict[str, Any]]) -> None:
        """Replace the bucket's whole lifecycle configuration with ``rules``
        (S3 has no per-rule call; an empty list deletes it, as S3 refuses an
        empty configuration)."""
        with self._call("write of the lifecycle rules"):
            if rules:
                self.client().put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
            else:
                self.client().delete_bucket_lifecycle(Bucket=self.bucket)

    # ---- Object Lock

    def object_lock_enabled(self) -> bool:
        with self._call("read of the Object Lock configuration", empty=_NO_LOCK) as answer:
            answer.value = self.client().get_object_lock_configuration(Bucket=self.bucket)
        config = (answer.value or {}).get("ObjectLockConfiguration") or {}
        return config.get("ObjectLockEnabled") == "Enabled"

    def put_retention(self, key: str, until_ms: int, mode: str) -> None:
        """Retain the object's current version until ``until_ms``, rounded up
        to the whole second (S3 dates carry seconds, and SeaweedFS drops a
        fraction: rounding down would protect less than the node's index)."""
        if mode not in LOCK_MODES:
            raise ValidationError(f"Object Lock mode is one of {', '.join(LOCK_MODES)}, not {mode!r}")
        until = datetime.fromtimestamp(math.ceil(until_ms / 1000), UTC)
        with self._call(f"retention of {key}", key=key):
            self.client().put_object_retention(Bucket=self.bucket, Key=key,
                                            Retention={"Mode": mode.upper(), "RetainUntilDate": until})

    def retention(self, key: str) -> tuple[str, int] | None:
        """(mode, retain-until in ms since the epoch) of the current version, or None."""
        with self._call(f"read of the retention of {key}", key=key,
                        empty="NoSuchObjectLockConfiguration") as answer:
            answer.value = self.client().get_object_retention(Bucket=self.bucket, Key=key)
        retention = (answer.value or {}).get("Retention")
        if not retention:
            return None
        return retention["Mode"].lower(), int(retention["RetainUntilDate"].timestamp() * 1000)

    def put_legal_hold(self, key: str, on: bool) -> None:
        with self._call(f"legal hold of {key}", key=key):
            self.client().put_object_legal_hold(Bucket=self.bucket, Key=key,
                                             LegalHold={"Status": "ON" if on else "OFF"})

    def legal_hold(self, key: str) -> bool:
        with self._call(f"read of the legal hold of {key}", key=key,
                        empty="NoSuchObjectLockConfiguration") as answer:
            answer.value = self.client().get_object_legal_hold(Bucket=self.bucket, Key=key)
        return ((answer.value or {}).get("LegalHold") or {}).get("Status") == "ON"

    def versioned(self) -> bool:
        """Whether the bucket keeps old versions of what is overwritten or
        deleted (versioning enabled, or suspended after it was: the versions
        made meanwhile stay). A service without the call keeps none."""
        with self._call("read of the bucket's versioning", empty=_NO_VERSIONING) as answer:
            answer.value = self.client().get_bucket_versioning(Bucket=self.bucket)
        return (answer.value or {}).get("Status") in ("Enabled", "Suspended")

    def delete_versions(self, key: str) -> int:
        """Delete every version of ``key`` (and its delete markers), the
        current one last: in a versioned bucket (every bucket with Object
        Lock) a plain DELETE only hides the bytes behind a marker, and a
        purge must not leave them readable by version id. ObjectLocked if
        the service still protects a version: then the current one, if any,
        is still there. How many versions there were."""
        client = self.client()
        versions: list[tuple[bool, str]] = []
        with self._call(f"listing of the versions of {key}", key=key):
            for page in client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
                for entry in (page.get("Versions") or []) + (page.get("DeleteMarkers") or []):
                    if entry["Key"] == key:  # the prefix also matches longer keys
                        versions.append((bool(entry.get("IsLatest")), entry["VersionId"]))
        for _latest, version in sorted(versions):  # False (older) first: the current one last
            with self._call(f"delete of version {version} of {key}", key=key):
                client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
        return len(versions)

    # ---- plumbing

    def client(self) -> Any:
        """The botocore client (for calls this class does not wrap), made at
        first use: importing botocore and loading the S3 service model take
        0.7 s here, which a node without Object Lock or the lifecycle flag
        never spends."""
        with self._client_lock:
            if self._client is None:
                self._client = _client(self.endpoint, **self._settings)
            return self._client

    @contextmanager
    def _call(self, action: str, *, key: str | None = None,
              empty: str | tuple[str, ...] | None = None) -> Iterator[_Answer]:
        from botocore.exceptions import BotoCoreError, ClientError

        answer = _Answer()
        try:
            yield answer
        except ClientError as exc:
            error = exc.response.get("Error") or {}
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if empty is not None and code in ((empty,) if isinstance(empty, str) else empty):
                answer.value = None
                return
            if key is not None and code in _ABSENT:
                raise ObjectMissing(f"no object {key}") from None
            if code == "AccessDenied" and key is not None:
                raise ObjectLocked(f"S3 refused the {action} (bucket {self.bucket}): AccessDenied; Object Lock "
                                   "protects the object, or the credentials lack the permission",
                                   details={"bucket": self.bucket, "key": key}) from None
            if code == "InvalidRequest" and key is not None:
                raise ObjectLockMissing(f"S3 refused the {action}: bucket {self.bucket} has no Object Lock "
                                        "(it can only be enabled when the bucket is created)") from None
            raise ObjectStoreUnavailable(
                f"S3 {action} failed ({self.endpoint}, bucket {self.bucket}): {code or status} "
                f"{error.get('Message', '')}".rstrip(),
                details={"endpoint": self.endpoint, "bucket": self.bucket, "code": code}) from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailable(f"S3 {action} failed ({self.endpoint}, bucket {self.bucket}): {exc}",
                                         details={"endpoint": self.endpoint, "bucket": self.bucket}) from exc


class _Answer:
    value: Any = None


def _client(endpoint: str, *, access_key: str, secret_key: str, region: str, timeout_seconds: float,
            retries: int) -> Any:
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    # The profile and credential chain of the environment must not replace
    # what config.json says: explicit keys, explicit endpoint, path style
    # (what every S3-compatible service serves), and the data path's timeout
    # and retry count (blobs/s3.py: TIMEOUT_SECONDS, RETRIES). botocore's
    # standard mode backs off from up to 1 s (jittered, doubling), so a
    # service that is down fails a call here in ~6 s (measured against a
    # closed port; 0.8 s without retries), where obstore takes 0.5 s: these
    # calls are rare, and a retention call riding out a short restart (or
    # S3's SlowDown) is worth the wait.
    return session.create_client(
        "s3", endpoint_url=endpoint, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=None,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      connect_timeout=timeout_seconds, read_timeout=timeout_seconds,
                      retries={"max_attempts": retries + 1, "mode": "standard"}))
