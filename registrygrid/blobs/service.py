"""The asset layer of one node, built from its home's config.json.

    assets = Assets.open(home, store)     # blobs, uploads and presigned URLs, ready to use
    assets.blobs.put(...); assets.uploads.create(...); assets.presign.sign(...)

config.json's ``assets`` section (every member optional):

    "assets": {
      "backend": "local",                 # or "s3"
      "path": "objects",                  # local: a directory, relative to the home
      "s3": {"endpoint": "http://127.0.0.1:8333", "bucket": "rgrid", "region": "us-east-1",
             "access_key": "...", "secret_key_env": "RGRID_S3_SECRET", "prefix": "node-1",
             "server_side_encryption": false},
      "quota_bytes": null,                # all blobs together; null: unlimited
      "max_blob_bytes": 1099511627776,
      "part_bytes": 8388608,              # the default part size of an upload
      "upload_ttl_s": 86400               # an untouched upload expires after this
    }

The S3 secret is read from the environment variable ``secret_key_env``
names (or ``secret_key`` itself, discouraged: config.json is not a secret
store). Presigning keys live in HOME/presign-keys.json (mode 0600).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registrygrid.blobs.blobs import BlobLimits, BlobStore
from registrygrid.blobs.objects import LocalObjects, ObjectStore
from registrygrid.blobs.presign import PresignKeys
from registrygrid.blobs.uploads import UploadLimits, Uploads
from registrygrid.errors import ValidationError
from registrygrid.home import Home
from registrygrid.storage.store import Store

PRESIGN_KEYS = "presign-keys.json"


@dataclass
class Assets:
    blobs: BlobStore
    uploads: Uploads
    presign: PresignKeys

    @classmethod
    def open(cls, home: Home, store: Store) -> Assets:
        section = home.config().get("assets") or {}
        if not isinstance(section, dict):
            raise ValidationError("config.json assets: an object")
        objects = _objects(home, section)
        default_blob, default_upload = BlobLimits(), UploadLimits()
        try:
            quota = section.get("quota_bytes")
            blob_limits = BlobLimits(max_blob_bytes=int(section.get("max_blob_bytes", default_blob.max_blob_bytes)),
                                     quota_bytes=None if quota is None else int(quota))
            upload_limits = UploadLimits(
                default_part_bytes=int(section.get("part_bytes", default_upload.default_part_bytes)),
                ttl_s=float(section.get("upload_ttl_s", default_upload.ttl_s)))
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"config.json assets: {exc}") from None
        blobs = BlobStore(objects, store, blob_limits)
        return cls(blobs, Uploads(blobs, upload_limits), PresignKeys.open(home.path / PRESIGN_KEYS))


def _objects(home: Home, section: dict[str, Any]) -> ObjectStore:
    backend = section.get("backend", "local")
    if backend == "local":
        path = Path(section.get("path", "objects"))
        return LocalObjects(path if path.is_absolute() else home.path / path)
    if backend == "s3":
        from registrygrid.blobs.s3 import S3Objects

        s3 = section.get("s3") or {}
        secret = os.environ.get(s3.get("secret_key_env", ""), "") if s3.get("secret_key_env") \
            else s3.get("secret_key", "")
        missing = [k for k in ("endpoint", "bucket", "access_key") if not s3.get(k)]
        if missing or not secret:
            raise ValidationError("config.json assets.s3 needs endpoint, bucket, access_key and a secret "
                                  "(secret_key_env names the environment variable holding it)",
                                  details=[{"path": f"assets.s3.{k}"} for k in missing or ["secret_key_env"]])
        return S3Objects(bucket=s3["bucket"], endpoint=s3["endpoint"], access_key=s3["access_key"],
                         secret_key=secret, region=s3.get("region", "us-east-1"), prefix=s3.get("prefix", ""),
                         server_side_encryption=bool(s3.get("server_side_encryption", False)))
    raise ValidationError(f"config.json assets.backend: 'local' or 's3', not {backend!r}")
