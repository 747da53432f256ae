"""`rgrid asset`: the bytes asset records describe (blobs/, node/bridge/asset_routes.py).

    rgrid asset upload model.safetensors --record grid.assets/llama-3-8b   # resumable; links the record
    rgrid asset get grid.assets/llama-3-8b -o model.safetensors            # or by CID; resumable
    rgrid asset info CID
    rgrid asset presign CID --expires-in 600
    rgrid asset hold CID case-7 --reason "litigation"; rgrid asset release CID case-7
    rgrid asset retain CID --until 2030-01-01
    rgrid asset rm CID
    rgrid asset lifecycle [--apply]                                     # the S3 bucket's lifecycle rules

With a node running on the home, uploads and downloads go through its
bridge: an upload in parts on parallel connections that resumes where it
stopped when run again, a download that resumes its ``.part`` file. With
no node, the command stores or reads the blob in the home itself.

An asset record names its bytes in ``file_info``: ``cid`` (the blob's
CID), ``size`` and ``checksums`` (sha256, md5). The record's signature
covers the CID, and the CID is the SHA-256 of the bytes: whoever holds the
record can check the bytes from any source.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import home_option, json_option
from registrygrid.errors import NotFound, Unavailable, ValidationError
from registrygrid.home import Home


def _bridge(backend: Any) -> bool:
    from registrygrid.client import BridgeClient

    return isinstance(backend, BridgeClient)


def _assets(home: Path | None, backend: Any) -> Any:
    from registrygrid.blobs.service import Assets

    # Lifecycle rules are set at the node's start or by `asset lifecycle
    # --apply`, not as a side effect of every command that reads a blob.
    return Assets.open(Home(home), backend.store, apply_lifecycle=False)


def _cid_of(backend: Any, target: str) -> str:
    """TARGET is a blob CID, or REGISTRY/ID of a record whose file_info.cid names one."""
    from registrygrid.blobs.digest import cid_text, parse_cid

    if "/" not in target:
        return cid_text(parse_cid(target))
    registry, _, record_id = target.partition("/")
    record = backend.get(registry, record_id)
    cid = ((record.get("fields") or {}).get("file_info") or {}).get("cid")
    if not isinstance(cid, str):
        raise NotFound(f"record {target} names no blob (its fields.file_info.cid is not set)")
    return cid_text(parse_cid(cid))


def _progress(quiet: bool) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    transient=True, disable=quiet or not sys.stderr.isatty(), console=render.stderr_console)


def register(cli: click.Group) -> None:

    @cli.group(name="asset")
    def asset_group() -> None:
        """Asset content: upload, fetch and govern the bytes asset records describe."""

    @asset_group.command(name="upload", epilog="""\b
Examples:
  rgrid asset upload weights.safetensors
  rgrid asset upload dataset.zip --record grid.assets/eu-corpus --content-type application/zip""")
    @home_option
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--content-type", default="application/octet-stream", show_default=True)
    @click.option("--record", default=None, metavar="REGISTRY/ID",
                  help="Then set this asset record's file_info (cid, size, checksums, mime_type).")
    @click.option("--part-size", type=int, default=None, help="Bytes per part (default: the node's, 8 MiB).")
    @click.option("--parallel", type=click.IntRange(1, 32), default=4, show_default=True,
                  help="Parts in flight at once.")
    @json_option
    def asset_upload(home: Path | None, file: Path, content_type: str, record: str | None, part_size: int | None,
                     parallel: int, as_json: bool) -> None:
        """Store FILE as a blob; print its CID. Run it again after an interruption: it resumes."""
        from registrygrid.blobs.digest import Expected, cid_text

        if not file.is_file():  # a pipe's or a device's size is unknown until it ends, if it ends
            raise ValidationError(f"{file} is not a regular file: upload a file (its size is declared first)")
        with open_backend(home) as backend, _progress(as_json) as bar:
            task = bar.add_task(f"{file.name}", total=file.stat().st_size)

            def show(phase: str, done: int, total: int) -> None:
                bar.update(task, description=f"{phase} {file.name}", completed=done, total=total)

            if _bridge(backend):
                from registrygrid.client.assets import upload_file

                done = upload_file(backend, file, state_dir=Home(home).path / "uploads", content_type=content_type,
                                   part_size=part_size, parallel=parallel, progress=show)
                info = backend.request("GET", f"/v1/blobs/{done.cid}/meta")[2]
                result = {**info, "session": done.session, "sent_parts": done.sent_parts,
                          "deduplicated": done.deduplicated}
            else:
                assets = _assets(home, backend)
                size = file.stat().st_size

                def chunks() -> Any:
                    sent = 0
                    with open(file, "rb") as f:
                        while chunk := f.read(1 << 20):
                            sent += len(chunk)
                            show("store", sent, size)
                            yield chunk

                cid, entry, stored = assets.blobs.put(chunks(), expected=Expected(size=size),
                                                      content_type=content_type)
                from registrygrid.node.bridge.asset_routes import blob_view

                result = {**blob_view(cid, entry), "deduplicated": not stored}
                result["cid"] = cid_text(cid)
            if record is not None:
                result["record"] = _link(backend, record, result)
        if as_json:
            render.dump_json(result)
        else:
            click.echo(result["cid"])
            click.echo(f"{result['size']} bytes, sha256 {result['sha256']}"
                       + (" (the node held it already)" if result.get("deduplicated") else ""), err=True)

    def _link(backend: Any, target: str, blob: dict[str, Any]) -> str:
        registry, sep, record_id = target.partition("/")
        if not sep:
            raise ValidationError(f"--record is REGISTRY/ID, not {target!r}")
        file_info = {"cid": blob["cid"], "size": blob["size"], "mime_type": blob["content_type"],
                     "checksums": {"sha256": blob["sha256"], **({"md5": blob["md5"]} if blob.get("md5") else {})}}
        backend.update(registry, record_id, patch={"file_info": file_info})
        return target

    @asset_group.command(name="get", epilog="""\b
Examples:
  rgrid asset get bafkreib... -o model.bin
  rgrid asset get grid.assets/llama-3-8b -o model.safetensors""")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="Write the bytes here (a partial download resumes from OUT.part).")
    @json_option
    def asset_get(home: Path | None, target: str, out: Path, as_json: bool) -> None:
        """Fetch a blob by CID, or the blob an asset record names; checked against its CID."""
        from registrygrid.blobs.digest import StreamDigest, parse_cid

        with open_backend(home) as backend, _progress(as_json) as bar:
            cid = _cid_of(backend, target)
            task = bar.add_task(f"get {cid[:16]}", total=None)

            def show(phase: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            if _bridge(backend):
                from registrygrid.client.assets import download_blob

                size = download_blob(backend, cid, out, progress=show)
            else:
                import os

                blobs = _assets(home, backend).blobs
                raw = parse_cid(cid)
                digest = StreamDigest()
                tmp = out.with_name(out.name + ".part")
                with open(tmp, "wb") as f:
                    for chunk in digest.tee(blobs.read(raw)):
                        f.write(chunk)
                        show("get", digest.size, blobs.require(raw).size)
                if digest.cid != raw:
                    tmp.unlink()
                    raise ValidationError(f"the stored bytes do not hash to {cid}: run `rgrid verify`")
                os.replace(tmp, out)
                size = digest.size
        if as_json:
            render.dump_json({"cid": cid, "size": size, "out": str(out)})
        else:
            click.echo(f"{out}: {size} bytes, {cid}")

    @asset_group.command(name="info")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @json_option
    def asset_info(home: Path | None, target: str, as_json: bool) -> None:
        """Size, digests, content type, retention and holds of a blob."""
        from registrygrid.blobs.digest import parse_cid
        from registrygrid.node.bridge.asset_routes import blob_view

        with open_backend(home) as backend:
            cid = _cid_of(backend, target)
            if _bridge(backend):
                info = backend.request("GET", f"/v1/blobs/{cid}/meta")[2]
            else:
                raw = parse_cid(cid)
                info = blob_view(raw, _assets(home, backend).blobs.require(raw))
        if as_json:
            render.dump_json(info)
        else:
            for key, value in info.items():
                click.echo(render.visible(f"{key:16} {value}"))  # what the bytes say of themselves

    @asset_group.command(name="presign")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @click.option("--expires-in", type=click.IntRange(1, 7 * 24 * 3600), default=3600, show_default=True,
                  help="Seconds the URL works.")
    @click.option("--ip", default=None, help="Only from this address or network (CIDR).")
    @json_option
    def asset_presign(home: Path | None, target: str, expires_in: int, ip: str | None, as_json: bool) -> None:
        """A URL that fetches the blob without a token, until it expires (needs the running node)."""
        with open_backend(home) as backend:
            if not _bridge(backend):
                raise Unavailable("presigned URLs are served by the running node: start it first "
                                      "(`rgrid node start`)")
            cid = _cid_of(backend, target)
            answer = backend.request("POST", f"/v1/blobs/{cid}/presign",
                                     body={"expires_in": expires_in, **({"ip": ip} if ip else {})})[2]
        url = backend.url + answer["url"]
        if as_json:
            render.dump_json({**answer, "url": url})
        else:
            click.echo(url)

    @asset_group.command(name="fetch")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @json_option
    def asset_fetch(home: Path | None, target: str, as_json: bool) -> None:
        """Bring a blob this node lacks from the federation's members that hold it
        (verified against its CID; needs the running node)."""
        with open_backend(home) as backend:
            if not _bridge(backend):
                raise Unavailable("fetching from peers needs the running node: start it (`rgrid node start`)")
            cid = _cid_of(backend, target)
            answer = backend.request("POST", f"/v1/blobs/{cid}/fetch")[2]
        if as_json:
            render.dump_json(answer)
        else:
            how = f"from {', '.join(answer['providers'])}" if answer.get("fetched") else "(held already)"
            click.echo(f"{answer['cid']}: {answer['size']} bytes {how}")

    @asset_group.command(name="verify")
    @home_option
    @click.option("--repair", is_flag=True,
                  help="Also make the index and the object store agree (the node must be stopped): index stored "
                       "blobs that hash to their name, remove those that do not, clear interrupted puts.")
    @json_option
    def asset_verify(home: Path | None, repair: bool, as_json: bool) -> None:
        """Read every blob back and check it hashes to its CID (exit 65 if one does not or is gone)."""
        from registrygrid.blobs.service import Assets
        from registrygrid.errors import EX_DATAERR

        with open_backend(home, direct_read=not repair) as backend:
            if repair and _bridge(backend):
                raise ValidationError("--repair changes the store: stop the node first")
            assets = Assets.open(Home(home), backend.store, apply_lifecycle=False)
            repaired = assets.blobs.reconcile() if repair else None
            report = assets.blobs.verify()
        if repaired is not None:
            report["repaired"] = repaired
        if as_json:
            render.dump_json(report)
        else:
            click.echo(f"{report['checked']} blobs, {report['bytes']} bytes checked; "
                       f"{len(report['corrupt'])} corrupt, {len(report['missing'])} missing, "
                       f"{len(report['unindexed'])} unindexed" + (f"; repaired: {repaired}" if repaired else ""))
            for cid in report["corrupt"]:
                click.echo(f"corrupt: {cid}")
            for cid in report["missing"]:
                click.echo(f"missing: {cid}")
        if not report["ok"]:
            sys.exit(EX_DATAERR)

    @asset_group.command(name="rotate-keys")
    @home_option
    @json_option
    def asset_rotate_keys(home: Path | None, as_json: bool) -> None:
        """A new signing key for presigned URLs. URLs signed before keep working
        until they expire; keys retired a URL lifetime (7 days) ago are dropped."""
        with open_backend(home) as backend:
            if _bridge(backend):
                answer = backend.request("POST", "/v1/presign/rotate")[2]
            else:
                from registrygrid.blobs.presign import PresignKeys
                from registrygrid.blobs.service import PRESIGN_KEYS

                keys = PresignKeys.open(Home(home).path / PRESIGN_KEYS)
                key = keys.rotate()
                answer = {"kid": key.kid, "keys": [k.kid for k in keys.keys]}
        if as_json:
            render.dump_json(answer)
        else:
            click.echo(f"presigned URLs are signed with key {answer['kid']} from now; "
                       f"{len(answer['keys'])} key(s) held: {', '.join(answer['keys'])}")

    @asset_group.command(name="hold")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @click.argument("name")
    @click.option("--reason", required=True, help="Why (kept with the hold and in the audit ledger).")
    @json_option
    def asset_hold(home: Path | None, target: str, name: str, reason: str, as_json: bool) -> None:
        """Set legal hold NAME: the blob cannot be deleted until it is released."""
        _govern(home, target, "hold", as_json, name=name, reason=reason)

    @asset_group.command(name="release")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @click.argument("name")
    @json_option
    def asset_release(home: Path | None, target: str, name: str, as_json: bool) -> None:
        """Release legal hold NAME."""
        _govern(home, target, "release", as_json, name=name)

    @asset_group.command(name="retain")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @click.option("--until", "until", required=True, metavar="DATE",
                  help="ISO date or time (UTC unless it says); retention can only be extended.")
    @json_option
    def asset_retain(home: Path | None, target: str, until: str, as_json: bool) -> None:
        """Keep the blob until DATE: deletion is refused before."""
        try:
            when = datetime.fromisoformat(until)
        except ValueError:
            raise ValidationError(f"--until is an ISO date or time, not {until!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        _govern(home, target, "retain", as_json, until_ms=int(when.timestamp() * 1000))

    @asset_group.command(name="rm")
    @home_option
    @click.argument("target", metavar="CID|REGISTRY/ID")
    @json_option
    def asset_rm(home: Path | None, target: str, as_json: bool) -> None:
        """Purge the blob's bytes (refused under retention or a legal hold). Records naming it keep the CID."""
        _govern(home, target, "delete", as_json)

    @asset_group.command(name="lifecycle", epilog="""\b
Examples:
  rgrid asset lifecycle            # what the node would set, what the bucket has
  rgrid asset lifecycle --apply    # write the node's rules, keeping every other rule""")
    @home_option
    @click.option("--apply", "apply_", is_flag=True,
                  help="Write the node's rules into the bucket's lifecycle configuration.")
    @json_option
    def asset_lifecycle(home: Path | None, apply_: bool, as_json: bool) -> None:
        """The S3 bucket's lifecycle rules for this node: staging/ and uploads/ expire, incomplete
        multipart uploads are aborted, blobs/ is never touched. Rules of other tenants of the bucket
        (IDs not starting with this node's rgrid:PREFIX:) are kept as they are."""
        # Bucket configuration, not node state: read from config.json and
        # sent to S3 directly, whether or not a node runs on the home.
        from registrygrid.blobs.service import BucketLifecycle

        bucket = BucketLifecycle.open(Home(home))
        wanted = bucket.plan.rules()
        current, changed = bucket.apply() if apply_ else (bucket.current(), False)
        lock_enabled = bucket.control.object_lock_enabled()
        report = {
            "bucket": bucket.control.bucket, "endpoint": bucket.control.endpoint, "id_prefix": bucket.plan.id_prefix,
            "wanted": wanted, "in_place": bucket.plan.in_place(current), "applied": changed,
            "ours": [r for r in current if bucket.plan.owns(r)],
            "others": [r for r in current if not bucket.plan.owns(r)],
            "object_lock": {"bucket": lock_enabled},
        }
        if as_json:
            render.dump_json(report)
            return
        click.echo(f"bucket {report['bucket']} at {report['endpoint']}; this node's rules are {report['id_prefix']}*")
        for rule in wanted:
            click.echo(f"  {rule['ID']:32} {rule['Filter']['Prefix']:24} expire {rule['Expiration']['Days']} d, "
                       f"abort multipart {rule['AbortIncompleteMultipartUpload']['DaysAfterInitiation']} d, "
                       f"old versions {rule['NoncurrentVersionExpiration']['NoncurrentDays']} d")
        state = "written now" if changed else ("in place" if report["in_place"] else
                                               "NOT in place (run with --apply)")
        click.echo(f"in the bucket: {state}; {len(report['others'])} other rule(s) kept"
                   + (": " + ", ".join(str(r.get("ID", "?")) for r in report["others"]) if report["others"] else ""))
        click.echo(f"object lock on the bucket: {'enabled' if lock_enabled else 'not enabled'}")

    def _govern(home: Path | None, target: str, action: str, as_json: bool, **args: Any) -> None:
        from registrygrid.blobs.blobs import check_hold_name, check_hold_reason
        from registrygrid.blobs.digest import parse_cid
        from registrygrid.node.bridge.asset_routes import blob_view

        if "name" in args:  # checked here as the bridge checks it: never another hold's name in its URL
            check_hold_name(args["name"])
        if action == "hold":
            check_hold_reason(args["reason"])
        with open_backend(home) as backend:
            cid = _cid_of(backend, target)
            if _bridge(backend):
                method, path, body = {
                    "hold": ("PUT", f"/v1/blobs/{cid}/holds/{args.get('name')}", {"reason": args.get("reason")}),
                    "release": ("DELETE", f"/v1/blobs/{cid}/holds/{args.get('name')}", None),
                    "retain": ("PUT", f"/v1/blobs/{cid}/retention", {"until_ms": args.get("until_ms")}),
                    "delete": ("DELETE", f"/v1/blobs/{cid}", None),
                }[action]
                answer = backend.request(method, path, body=body)[2]
            else:
                blobs = _assets(home, backend).blobs
                raw = parse_cid(cid)
                if action == "hold":
                    answer = blob_view(raw, blobs.hold(raw, args["name"], f"{args['reason']} (by the CLI)"))
                elif action == "release":
                    answer = blob_view(raw, blobs.release(raw, args["name"]))
                elif action == "retain":
                    answer = blob_view(raw, blobs.retain(raw, args["until_ms"]))
                else:
                    entry = blobs.delete(raw)
                    answer = {"cid": cid, "purged": True, "size": entry.size}
        if as_json:
            render.dump_json(answer)
        elif action == "delete":
            click.echo(f"{answer['cid']}: {answer['size']} bytes purged")
        else:
            holds = ", ".join(render.visible(name) for name in answer["holds"]) or "none"
            until = answer["retain_until_ms"]
            kept = (datetime.fromtimestamp(until / 1000, UTC).isoformat(timespec="seconds") if until
                    else "no retention")
            click.echo(f"{answer['cid']}: legal holds {holds}; kept until {kept}")
