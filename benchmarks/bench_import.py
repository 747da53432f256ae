"""Import throughput: generated MCP server.json documents through `rgrid import`.

Prints, in one run over N generated server.json documents (default
10,000, each ~600 bytes: a name, a description, a version, an npm package
with arguments and environment variables, a repository, publisher `_meta`):

  - `rgrid import DIR` as a user runs it, in a fresh home with no node
    running (the documents read, recognized, checked against the kind's
    schema, and written 2,000 per transaction): documents/s, wall time
    of the whole command included;
  - the same documents imported in-process (formats/importer.py into a
    LocalRegistry), without the command's start-up;
  - the machine's floor beside them: the same records written with the
    engine's batched `put_many` directly (the node's raw batched write
    rate: signature, Automerge-free snapshot, LMDB), in the same run.

    python -m benchmarks.bench_import [--documents 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from registrygrid.engine.ops import Put
from registrygrid.formats import importer, mcp
from registrygrid.sdk import LocalRegistry

WORDS = ["weather", "files", "search", "github", "postgres", "slack", "maps", "calendar", "docs", "browser"]


def document(i: int, rng: random.Random) -> dict[str, Any]:
    word = rng.choice(WORDS)
    return {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json",
        "name": f"io.github.publisher{i % 997}/{word}-{i}",
        "description": f"An MCP server for {word}, number {i}",
        "version": f"1.{i % 10}.{i % 7}",
        "repository": {"url": f"https://github.com/publisher{i % 997}/{word}-{i}", "source": "github"},
        "packages": [{"registryType": "npm", "identifier": f"@publisher{i % 997}/{word}-{i}",
                      "version": f"1.{i % 10}.{i % 7}", "transport": {"type": "stdio"},
                      "packageArguments": [{"type": "positional", "valueHint": "path"}],
                      "environmentVariables": [{"name": "API_KEY", "isSecret": True, "isRequired": True}]}],
        "_meta": {"io.modelcontextprotocol.registry/publisher-provided": {"tool": "bench", "n": i}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10_000)
    args = parser.parse_args()
    n = args.documents
    rng = random.Random(1)
    root = Path(tempfile.mkdtemp(prefix="rgrid-bench-import-"))
    try:
        docs = [document(i, rng) for i in range(n)]
        (root / "docs").mkdir()
        for start in range(0, n, 1000):  # a directory of files holding lists, as exports are often shipped
            (root / "docs" / f"part-{start:06}.json").write_text(json.dumps(docs[start:start + 1000]))

        # The floor: the same records through the engine's batched writes.
        with LocalRegistry.open_path(root / "raw") as grid:
            started = time.perf_counter()
            for start in range(0, n, importer.BATCH):
                puts = []
                for doc in docs[start:start + importer.BATCH]:
                    record_id, fields, tags = mcp.to_record(doc)
                    puts.append(Put(mcp.REGISTRY, mcp.KIND, fields, record_id=record_id, tags=tags))
                grid.put_many(puts)
            raw = n / (time.perf_counter() - started)

        with LocalRegistry.open_path(root / "inproc") as grid:
            started = time.perf_counter()
            report = importer.Importer(grid).run(importer.read_documents(root / "docs"))
            inproc = n / (time.perf_counter() - started)
            assert report.created == n, report.invalid[:3]

        home = root / "home"
        env = {**os.environ, "RGRID_HOME": ""}
        subprocess.run([sys.executable, "-m", "registrygrid", "init", "--home", str(home)], check=True,
                       capture_output=True, env=env)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "registrygrid", "import", str(root / "docs"), "--home",
                               str(home), "--json"], capture_output=True, text=True, env=env, check=False)
        command = n / (time.perf_counter() - started)
        assert done.returncode == 0 and json.loads(done.stdout)["created"] == n, done.stderr[-2000:]

        print(f"import of {n:,} generated server.json documents")
        print(f"  floor: engine put_many of the same records   {raw:8,.0f} records/s")
        print(f"  importer in-process                           {inproc:8,.0f} documents/s  ({inproc / raw:.2f}x)")
        print(f"  `rgrid import DIR` (whole command)            {command:8,.0f} documents/s  ({command / raw:.2f}x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
