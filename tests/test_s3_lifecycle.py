"""S3 lifecycle rules and Object Lock, against a real SeaweedFS 4.48 (the ``seaweed`` fixture).

The lifecycle rules (blobs/lifecycle.py) are derived from config.json and
merged into the bucket's configuration beside other tenants' rules;
retention and legal holds (BlobStore.retain/hold/release) are set on the
object through Object Lock (blobs/s3_control.py), so the service itself
refuses to delete the object's version. Each test makes a bucket of its
own: Object Lock is chosen when a bucket is created, and the lifecycle
configuration is one per bucket. "Someone with the bucket's credentials"
is played by a plain botocore client, as such a person would use one.

SeaweedFS stores the rules and returns them; it runs them with its
lifecycle worker, days later: expiry itself is not waited for here.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from seaweed_support import SeaweedS3

from registrygrid.blobs import lifecycle
from registrygrid.blobs.blobs import BlobStore, blob_key
from registrygrid.blobs.digest import cid_text
from registrygrid.blobs.erasure import purge_blobs, still_held
from registrygrid.blobs.objects import LocalObjects
from registrygrid.blobs.s3 import S3Objects
from registrygrid.blobs.s3_control import ObjectLocked, ObjectLockMissing
from registrygrid.blobs.service import Assets, BucketLifecycle
from registrygrid.blobs.uploads import UploadExpired, Uploads
from registrygrid.errors import ValidationError
from registrygrid.home import Home
from registrygrid.sdk import LocalRegistry

DAY = 86_400


def new_bucket(seaweed: SeaweedS3, *, object_lock: bool = False) -> str:
    return seaweed.create_bucket(f"t-{uuid.uuid4().hex[:16]}", object_lock=object_lock)


def s3_home(tmp_path: Path, seaweed: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch,
            **s3: Any) -> Home:
    home = Home(tmp_path / "home")
    home.init(org_name="lifecycle org")
    config = json.loads((home.path / "config.json").read_text())
    config["assets"] = {"backend": "s3", "upload_ttl_s": DAY, "s3": {
        "endpoint": seaweed.endpoint, "bucket": bucket, "access_key": seaweed.access_key,
        "secret_key_env": "RGRID_TEST_S3_SECRET", "prefix": "node-1", **s3}}
    (home.path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("RGRID_TEST_S3_SECRET", seaweed.secret_key)
    return home


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def other_tenant_rule(rule_id: str, prefix: str) -> dict[str, Any]:
    return {"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": prefix}, "Expiration": {"Days": 30}}


# ------------------------------------------------------------------ the rules


def test_the_node_rules_cover_staging_and_uploads_and_never_blobs() -> None:
    rules = lifecycle.plan("node-1", DAY).rules()
    assert [r["Filter"]["Prefix"] for r in rules] == ["node-1/staging/", "node-1/uploads/"]
    assert all(r["ID"].startswith("rgrid:node-1:") for r in rules)
    assert all(r["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": lifecycle.ABORT_DAYS} for r in rules)
    assert not any("blobs" in json.dumps(r) for r in rules)


@pytest.mark.parametrize(("ttl_s", "days"), [(3600, 2), (DAY, 2), (DAY + 1, 3), (7 * DAY, 8)])
def test_expiry_is_the_upload_ttl_in_whole_days_rounded_up_plus_a_margin(ttl_s: float, days: int) -> None:
    assert lifecycle.plan("", ttl_s).expire_days == days


def test_a_node_at_the_bucket_root_still_scopes_its_rules_to_its_own_prefixes() -> None:
    rules = lifecycle.plan("", DAY).rules()
    assert [r["Filter"]["Prefix"] for r in rules] == ["staging/", "uploads/"]
    assert [r["ID"] for r in rules] == ["rgrid::staging", "rgrid::uploads"]


def test_a_nested_nodes_rules_are_not_claimed_by_its_parent_prefix() -> None:
    parent, nested = lifecycle.plan("a", DAY), lifecycle.plan("a/b", DAY)
    assert not any(parent.owns(r) for r in nested.rules())
    assert not any(nested.owns(r) for r in parent.rules())


@pytest.mark.parametrize(("options", "fragment"), [
    ({"expire_days": 1}, "at least 2"),
    ({"expire_days": 0}, "whole days from 1"),
    ({"expire_days": 2.5}, "whole days from 1"),
    ({"abort_days": "7"}, "lifecycle_abort_days: whole days"),
    ({"abort_days": True}, "lifecycle_abort_days: whole days"),
])
def test_bad_lifecycle_days_are_validation_errors_that_name_the_setting(options: dict[str, Any],
                                                                        fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment) as caught:
        lifecycle.plan("node-1", DAY, **options)
    assert "config.json assets.s3.lifecycle_" in caught.value.message


# ------------------------------------------------------------------ rules in a real bucket


def test_applied_rules_read_back_from_the_bucket(seaweed: SeaweedS3) -> None:
    control = seaweed.control(new_bucket(seaweed))
    bucket = BucketLifecycle(control, lifecycle.plan("node-1", DAY))
    assert bucket.current() == []  # NoSuchLifecycleConfiguration reads as none
    _rules, changed = bucket.apply()
    assert changed
    assert control.lifecycle() == bucket.plan.rules()
    assert bucket.plan.in_place(control.lifecycle())


def test_other_tenants_rules_are_kept_when_the_node_applies_its_own(seaweed: SeaweedS3) -> None:
    control = seaweed.control(new_bucket(seaweed))
    others = [other_tenant_rule("logs-expiry", "logs/"),
              *lifecycle.plan("node-1/b", DAY).rules(),  # another node, nested under ours
              other_tenant_rule("rgrid-like-but-not-ours", "node-1/tmp/")]
    stale_ours = lifecycle.plan("node-1", 30 * DAY).rules()  # an earlier config of this node
    control.put_lifecycle(others + stale_ours)

    rules, changed = BucketLifecycle(control, lifecycle.plan("node-1", DAY)).apply()

    assert changed
    assert control.lifecycle() == rules == others + lifecycle.plan("node-1", DAY).rules()


def test_applying_again_writes_nothing_and_changes_nothing(seaweed: SeaweedS3) -> None:
    control = seaweed.control(new_bucket(seaweed))
    control.put_lifecycle([other_tenant_rule("logs-expiry", "logs/")])
    bucket = BucketLifecycle(control, lifecycle.plan("node-1", DAY))
    first, changed_first = bucket.apply()
    second, changed_second = bucket.apply()
    assert (changed_first, changed_second) == (True, False)
    assert first == second == control.lifecycle()


def test_the_node_applies_its_rules_when_it_opens_its_assets_with_the_lifecycle_flag(
        seaweed: SeaweedS3, tmp_path: Path, grid: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(seaweed)
    home = s3_home(tmp_path, seaweed, bucket, monkeypatch, lifecycle=True)
    Assets.open(home, grid.store)  # what CLI commands do: no bucket change
    assert seaweed.control(bucket).lifecycle() == []
    assets = Assets.open(home, grid.store, apply_lifecycle=True)  # as the node does once started
    assert seaweed.control(bucket).lifecycle() == lifecycle.plan("node-1", DAY).rules()
    assert assets.apply_lifecycle() is True  # again: in place, nothing written


def test_under_a_lifecycle_rule_no_upload_session_outlives_its_parts(
        seaweed: SeaweedS3, tmp_path: Path, grid: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts expire by their own age, so heartbeats may not keep a session
    open past the rule: it ends an hour before its first part could go."""
    home = s3_home(tmp_path, seaweed, seaweed.bucket, monkeypatch, lifecycle=True)
    assets = Assets.open(home, grid.store)
    days = lifecycle.plan("node-1", DAY).expire_days
    assert assets.uploads.limits.max_age_s == days * 86400 - 3600
    clock = [1_000_000.0]
    uploads = Uploads(assets.blobs, assets.uploads.limits, now=lambda: clock[0])
    session = uploads.create("token-1", size=10)
    for _ in range(days * 24):  # a heartbeat every hour, for as many days as the rule allows
        clock[0] += 3600
        try:
            renewed = uploads.heartbeat(session.id, "token-1")
        except UploadExpired:
            break
    else:
        raise AssertionError("the session outlived its parts")
    assert renewed.expires_ms <= session.created_ms + (days * 86400 - 3600) * 1000
    plain = s3_home(tmp_path / "plain", seaweed, seaweed.bucket, monkeypatch)  # no lifecycle rule: no cap
    assert Assets.open(plain, grid.store).uploads.limits.max_age_s is None


def test_a_node_whose_bucket_is_unreachable_starts_without_its_rules(
        seaweed: SeaweedS3, tmp_path: Path, grid: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    home = s3_home(tmp_path, seaweed, "no-such-service", monkeypatch, lifecycle=True,
                   endpoint=f"http://127.0.0.1:{closed}")
    warnings = Recorded()
    logger = logging.getLogger("registrygrid.blobs.service")
    logger.addHandler(warnings)  # the suite runs with -p no:logging: no caplog
    started = time.monotonic()
    try:
        assets = Assets.open(home, grid.store, apply_lifecycle=True)
    finally:
        logger.removeHandler(warnings)
    assert assets.lifecycle is not None
    assert any("could not set the bucket's lifecycle rules" in m for m in warnings.messages)
    # 6 s measured: botocore's standard mode, 3 retries with jittered backoff (blobs/s3_control.py).
    assert time.monotonic() - started < 20


def test_the_lifecycle_command_shows_then_applies_the_rules(
        seaweed: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        rgrid: Callable[..., Any]) -> None:
    bucket = new_bucket(seaweed)
    seaweed.control(bucket).put_lifecycle([other_tenant_rule("logs-expiry", "logs/")])
    s3_home(tmp_path, seaweed, bucket, monkeypatch)

    shown = rgrid("asset", "lifecycle", "--json")
    assert shown.returncode == 0, shown.stderr
    before = json.loads(shown.stdout)
    assert before["in_place"] is False and before["applied"] is False and before["ours"] == []
    assert [r["ID"] for r in before["wanted"]] == ["rgrid:node-1:staging", "rgrid:node-1:uploads"]

    applied = rgrid("asset", "lifecycle", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert "written now" in applied.stdout and "logs-expiry" in applied.stdout

    after = json.loads(rgrid("asset", "lifecycle", "--json").stdout)
    assert after["in_place"] is True and [r["ID"] for r in after["others"]] == ["logs-expiry"]
    assert after["object_lock"] == {"bucket": False}


def test_the_lifecycle_command_on_a_local_backend_is_a_validation_error(
        tmp_path: Path, rgrid: Callable[..., Any]) -> None:
    Home(tmp_path / "home").init(org_name="local org")
    result = rgrid("asset", "lifecycle")
    assert result.returncode == ValidationError.exit_code
    assert "S3 bucket configuration" in result.stderr


@pytest.mark.parametrize(("s3", "fragment"), [
    ({"object_lock": "strict"}, "assets.s3.object_lock: 'governance' or 'compliance'"),
    ({"lifecycle": "yes"}, "assets.s3.lifecycle: true or false"),
    ({"lifecycle": True, "lifecycle_expire_days": 1}, "lifecycle_expire_days: at least 2"),
    # A number where a string goes was a TypeError or AttributeError
    # traceback, and "false" (a string, so true) turned encryption on.
    ({"server_side_encryption": "false"}, "assets.s3.server_side_encryption: true or false"),
    ({"region": 7}, "assets.s3.region: a string"),
    ({"prefix": 5}, "assets.s3.prefix: a string"),
    ({"access_key": 123}, "assets.s3.access_key: a string"),
])
def test_config_errors_are_validation_errors_with_the_setting_named(
        seaweed: SeaweedS3, tmp_path: Path, grid: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
        s3: dict[str, Any], fragment: str) -> None:
    home = s3_home(tmp_path, seaweed, seaweed.bucket, monkeypatch, **s3)
    with pytest.raises(ValidationError, match=fragment):
        Assets.open(home, grid.store)


# ------------------------------------------------------------------ Object Lock


def locked_blob(seaweed: SeaweedS3, grid: LocalRegistry, mode: str = "compliance") -> tuple[BlobStore, bytes, str]:
    """A blob in a bucket with Object Lock, and its key in the bucket."""
    bucket = new_bucket(seaweed, object_lock=True)
    objects = S3Objects(bucket, seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                        prefix="node-1", allow_http=True, object_lock=mode)
    blobs = BlobStore(objects, grid.store)
    cid, _entry, _stored = blobs.put([b"weights " * 1000])
    return blobs, cid, objects.full_key(blob_key(cid))


def delete_for_good(seaweed: SeaweedS3, store: S3Objects, key: str) -> list[str]:
    """What someone with the bucket's credentials would do to destroy the
    bytes: delete every version of the key; the error codes S3 answered."""
    client = seaweed.control(store.bucket).client()
    refused = []
    for version in client.list_object_versions(Bucket=store.bucket, Prefix=key).get("Versions", []):
        try:
            client.delete_object(Bucket=store.bucket, Key=key, VersionId=version["VersionId"])
        except ClientError as exc:
            refused.append(exc.response["Error"]["Code"])
    return refused


def test_a_retained_blob_is_refused_deletion_by_the_service_itself(seaweed: SeaweedS3,
                                                                   grid: LocalRegistry) -> None:
    blobs, cid, key = locked_blob(seaweed, grid)
    store: S3Objects = blobs.objects  # type: ignore[assignment]
    until = int(time.time() * 1000) + 3000
    blobs.retain(cid, until)
    mode, retained_ms = store.control.retention(key)  # type: ignore[misc]
    assert mode == "compliance" and until <= retained_ms < until + 1000  # rounded up to the second

    # A plain DELETE hides the object behind a delete marker, as on AWS; the
    # retained version stays and cannot be deleted.
    store.control.client().delete_object(Bucket=store.bucket, Key=key)
    assert delete_for_good(seaweed, store, key) == ["AccessDenied"]

    time.sleep(max(0.0, retained_ms / 1000 - time.time()) + 0.5)
    assert delete_for_good(seaweed, store, key) == []  # the date passed: the service lets it go


def test_a_legal_hold_is_on_while_any_named_hold_exists_and_the_last_release_lifts_it(
        seaweed: SeaweedS3, grid: LocalRegistry) -> None:
    blobs, cid, key = locked_blob(seaweed, grid, mode="governance")
    store: S3Objects = blobs.objects  # type: ignore[assignment]
    blobs.hold(cid, "case-7", "litigation")
    blobs.hold(cid, "audit-2026", "audit")
    blobs.release(cid, "case-7")
    assert store.control.legal_hold(key) is True  # audit-2026 still holds it
    assert delete_for_good(seaweed, store, key) == ["AccessDenied"]

    entry = blobs.release(cid, "audit-2026")
    assert entry.holds == {} and store.control.legal_hold(key) is False
    assert delete_for_good(seaweed, store, key) == []


def test_protect_says_whether_the_backend_enforces_retention(seaweed: SeaweedS3, tmp_path: Path,
                                                             grid: LocalRegistry) -> None:
    local = LocalObjects(tmp_path / "objects")
    local.put("blobs/x", [b"x"])
    plain = seaweed.objects(prefix=f"t-{uuid.uuid4().hex[:12]}")
    plain.put("blobs/x", [b"x"])
    _blobs, _cid, _key = locked_blob(seaweed, grid)
    locked: S3Objects = _blobs.objects  # type: ignore[assignment]
    assert local.protect("blobs/x", legal_hold=True) is False  # the node's index alone
    assert plain.protect("blobs/x", legal_hold=True) is False  # S3 without object_lock: likewise
    assert locked.protect(blob_key(_cid), legal_hold=True) is True


def test_object_lock_asked_of_a_bucket_without_it_is_refused_and_nothing_is_recorded(
        seaweed: SeaweedS3, grid: LocalRegistry) -> None:
    objects = S3Objects(new_bucket(seaweed), seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                        prefix="node-1", allow_http=True, object_lock="governance")
    blobs = BlobStore(objects, grid.store)
    cid, _entry, _stored = blobs.put([b"bytes"])
    with pytest.raises(ObjectLockMissing, match="has no Object Lock"):
        blobs.retain(cid, int(time.time() * 1000) + 60_000)
    with pytest.raises(ObjectLockMissing):
        blobs.hold(cid, "case-7", "litigation")
    entry = blobs.require(cid)
    assert entry.retain_until_ms == 0 and entry.holds == {}



def versions_of(store: S3Objects, key: str) -> list[tuple[str, str]]:
    """Every version and delete marker of exactly ``key``, as (kind, version id)."""
    answer = store.control.client().list_object_versions(Bucket=store.bucket, Prefix=key)
    return [(kind, v["VersionId"]) for kind in ("Versions", "DeleteMarkers")
            for v in answer.get(kind) or [] if v["Key"] == key]


def test_deleting_a_blob_from_a_locked_bucket_removes_every_version_of_its_bytes(seaweed: SeaweedS3,
                                                                                grid: LocalRegistry) -> None:
    """A locked bucket is versioned, and a plain DELETE there only hides the
    bytes behind a marker: a purge or an erasure would leave them readable
    by version id for good. Past its retention, a delete leaves nothing."""
    blobs, cid, key = locked_blob(seaweed, grid)
    store: S3Objects = blobs.objects  # type: ignore[assignment]
    until = int(time.time() * 1000) + 1500
    blobs.retain(cid, until)
    _mode, retained_ms = store.control.retention(key)  # type: ignore[misc]
    time.sleep(max(0.0, retained_ms / 1000 - time.time()) + 0.5)
    assert [kind for kind, _ in versions_of(store, key)] == ["Versions"]

    blobs.delete(cid)
    assert versions_of(store, key) == []
    assert blobs.entry(cid) is None
    assert store.delete(blob_key(cid)) is False  # nothing left to delete


def test_a_delete_the_service_still_refuses_leaves_the_blob_indexed_and_readable(seaweed: SeaweedS3,
                                                                                 grid: LocalRegistry) -> None:
    """The node's index lets the blob go, but the service's lock still holds
    it (set by someone with the bucket's credentials, or a date S3 rounded
    up): the delete fails typed, the blob stays indexed with its bytes, and
    an erasure's purge reports it failed and finds it again later."""

    blobs, cid, key = locked_blob(seaweed, grid)
    store: S3Objects = blobs.objects  # type: ignore[assignment]
    store.control.put_retention(key, int(time.time() * 1000) + 60_000, "compliance")
    total = blobs.entry(cid)

    with pytest.raises(ObjectLocked):
        blobs.delete(cid)
    assert blobs.entry(cid) == total
    assert b"".join(blobs.read(cid)) == b"weights " * 1000
    assert blobs.used_bytes() == total.size  # counted once, as before the attempt

    [outcome] = purge_blobs(blobs, [cid_text(cid)])
    assert outcome.outcome == "failed" and outcome.reason.startswith("object_locked")
    assert still_held(blobs, [cid_text(cid)]) == [cid_text(cid)]


def test_a_bucket_versioned_without_object_lock_loses_every_version_of_a_deleted_blob(seaweed: SeaweedS3,
                                                                                    grid: LocalRegistry) -> None:
    """Versioning turned on by the bucket's owner, not by the node's config:
    the node asks the bucket at its first delete, and a purge leaves no
    version behind there either; a bucket that is not versioned keeps
    plain deletes."""
    bucket = new_bucket(seaweed)
    seaweed.control(bucket).client().put_bucket_versioning(Bucket=bucket,
                                                           VersioningConfiguration={"Status": "Enabled"})
    objects = S3Objects(bucket, seaweed.endpoint, seaweed.access_key, seaweed.secret_key, prefix="node-1",
                        allow_http=True)
    blobs = BlobStore(objects, grid.store)
    cid, _entry, _stored = blobs.put([b"weights " * 1000])
    key = objects.full_key(blob_key(cid))
    assert [kind for kind, _ in versions_of(objects, key)] == ["Versions"]
    blobs.delete(cid)
    assert versions_of(objects, key) == [] and blobs.entry(cid) is None

    plain = S3Objects(new_bucket(seaweed), seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                      prefix="node-1", allow_http=True)
    plain.put("blobs/x", [b"x"])
    assert plain.delete("blobs/x") is True and plain.size("blobs/x") is None
    assert plain._versioned is False
