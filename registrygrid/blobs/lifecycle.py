"""The node's S3 lifecycle rules: derived from its config, merged into a shared bucket's.

A node writes three kinds of keys under its prefix (blobs/blobs.py,
blobs/uploads.py): ``blobs/<cid>`` (kept until deleted on purpose),
``staging/<token>`` (a put in progress) and ``uploads/<session>/...`` (the
parts of an upload session). If the node dies mid-put, or a session is
abandoned while the node is down, staging objects, parts and incomplete
multipart uploads stay in the bucket: the node's sweeps only clean what
its index still names. These rules let the service clean them instead:

- ``rgrid:<prefix>:staging`` and ``rgrid:<prefix>:uploads``: on
  ``<prefix>/staging/`` and ``<prefix>/uploads/``, Expiration after
  ``expire_days``, NoncurrentVersionExpiration after 1 day (a bucket with
  Object Lock is versioned, so every move and delete there leaves an old
  version behind; 1 day is S3's minimum), and AbortIncompleteMultipartUpload
  after ``abort_days``. Only these two prefixes carry multipart uploads
  (S3Objects.put of staging objects and of parts), so the abort rule needs
  no wider scope, and on a bucket shared at its root it touches no other
  tenant's uploads.
- Never a rule on ``blobs/``: blobs are deleted on purpose only.

S3 lifecycle counts whole days, from an object's creation rounded to the
next midnight UTC (AWS S3 user guide, "Lifecycle rules: based on an
object's age"), so the days here are rounded up, never down.

``expire_days`` defaults to the upload TTL in days, rounded up, plus
``MARGIN_DAYS``. The TTL is a session's idle limit, renewed by every part
and heartbeat, not a cap on its age: the rule counts from each part's own
creation, so a session kept alive longer than ``expire_days`` in all loses
its first parts to the rule (finalize then fails and the upload starts
again). Set ``assets.s3.lifecycle_expire_days`` above the longest upload
you expect; values below the default are refused.

The rules are the node's only in the bucket's single lifecycle
configuration (S3 has no per-rule call), so ``merged`` keeps every rule
whose ID does not start with this node's ``rgrid:<prefix>:`` and replaces
the rest. A read-modify-write: two writers at once can lose one update (S3
has no conditional write of bucket configuration); applying again heals it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from registrygrid.blobs.blobs import STAGING
from registrygrid.blobs.uploads import UPLOADS
from registrygrid.errors import ValidationError

DAY_S = 86_400
# One day past the TTL: covers the node's upload sweep interval (10 min,
# node/node.py SWEEP_UPLOADS_S), a stopped node's downtime of up to a day,
# and clock skew, so the service never removes what the node still counts on.
MARGIN_DAYS = 1
# A single multipart put is aborted this long after it began: AWS's own
# example value, and the time to send the largest blob (1 TiB,
# BlobLimits.max_blob_bytes) at 1.8 MB/s.
ABORT_DAYS = 7
# A version made noncurrent under staging/ or uploads/ (a move, a delete)
# is garbage at once; 1 day is the least S3 accepts.
NONCURRENT_DAYS = 1
# S3's limits: a rule's ID has at most 255 characters; Days are positive.
MAX_RULE_ID = 255
MAX_DAYS = 36_500  # a century: a larger value is a typo, not a policy
_ID_ROOT = "rgrid"


@dataclass(frozen=True)
class LifecyclePlan:
    """The rules one node (one key prefix) keeps on its bucket."""

    prefix: str  # the node's key prefix in the bucket, "" for the bucket's root
    expire_days: int
    abort_days: int = ABORT_DAYS

    @property
    def id_prefix(self) -> str:
        # ":" never occurs in a key prefix (objects.check_key), so
        # "rgrid:a:" and "rgrid:a/b:" never claim each other's rules.
        return f"{_ID_ROOT}:{self.prefix}:"

    def rules(self) -> list[dict[str, Any]]:
        base = f"{self.prefix}/" if self.prefix else ""
        return [{
            "ID": f"{self.id_prefix}{name}",
            "Status": "Enabled",
            "Filter": {"Prefix": f"{base}{name}/"},
            "Expiration": {"Days": self.expire_days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": self.abort_days},
        } for name in (STAGING, UPLOADS)]

    def owns(self, rule: dict[str, Any]) -> bool:
        return str(rule.get("ID", "")).startswith(self.id_prefix)

    def merged(self, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The bucket's rules with this node's replaced: others' kept as read, in their order."""
        return [rule for rule in current if not self.owns(rule)] + self.rules()

    def in_place(self, current: list[dict[str, Any]]) -> bool:
        """Whether the bucket holds exactly this node's rules already."""
        ours = sorted(_canonical(r) for r in current if self.owns(r))
        return ours == sorted(_canonical(r) for r in self.rules())


def plan(prefix: str, upload_ttl_s: float, *, expire_days: Any = None, abort_days: Any = None) -> LifecyclePlan:
    """The plan for a node at ``prefix`` whose upload sessions idle out after
    ``upload_ttl_s``; ValidationError for days that are not whole, positive,
    or (``expire_days``) shorter than the TTL and its margin."""
    least = math.ceil(upload_ttl_s / DAY_S) + MARGIN_DAYS
    expire = least if expire_days is None else _days(expire_days, "assets.s3.lifecycle_expire_days")
    if expire < least:
        raise ValidationError(
            f"config.json assets.s3.lifecycle_expire_days: at least {least} (the upload TTL of "
            f"{upload_ttl_s:g} s in whole days, rounded up, plus {MARGIN_DAYS}), not {expire}: the service "
            "would delete parts of uploads the node still holds open",
            details=[{"path": "assets.s3.lifecycle_expire_days", "minimum": least}])
    abort = ABORT_DAYS if abort_days is None else _days(abort_days, "assets.s3.lifecycle_abort_days")
    result = LifecyclePlan(prefix=prefix, expire_days=expire, abort_days=abort)
    if len(result.id_prefix) + len(UPLOADS) > MAX_RULE_ID:
        raise ValidationError(f"config.json assets.s3.prefix: too long for an S3 lifecycle rule ID "
                              f"(at most {MAX_RULE_ID} characters in all)")
    return result


def _days(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise ValidationError(f"config.json {path}: whole days from 1 to {MAX_DAYS} (S3 lifecycle counts "
                              f"days), not {value!r}", details=[{"path": path}])
    return value


def _canonical(rule: dict[str, Any]) -> str:
    return json.dumps(rule, sort_keys=True, default=str)
