"""A small closed-loop HTTP load generator for loopback benchmarks.

Usage::

    python -m benchmarks.loadgen URL [--method GET|POST] [--body-file F]
        [--header K:V ...] [--duration 3] [--connections 16]
        [--max-requests N] [--timeout S] [--wrk PATH|auto] [--json]

It prints (with ``--json``) one JSON object::

    {"requests", "errors", "duration", "rps", "p50_ms", "p90_ms", "p99_ms",
     "generator", ...}

``requests`` counts completed requests answered with a 2xx/3xx status,
``errors`` counts other statuses, timeouts and connection failures, and
``rps`` is ``requests / duration``.

Closed loop: ``connections`` workers each send one request, wait for the
whole response, and send the next, until ``duration`` seconds have passed or
``max_requests`` requests have been started (so a run is bounded in both time
and count). The aiohttp ``ClientSession`` uses a connector limited to
``connections`` keep-alive connections.

Only loopback targets are accepted (``127.0.0.1`` and the rest of
``127.0.0.0/8``, ``::1`` and ``localhost``): this is a benchmark tool for a
node on the same machine, never a way to load somebody else's server. Any
other host is refused with a clear message before a request is sent.

CPU caveat: the Python generator is itself an asyncio program that needs
roughly as much CPU per request as a small aiohttp server. On this 2-core
machine it competes with the server for the cores, so its figure is a
*lower bound* of what the server can do (measured here: a third to a half of what
``wrk`` sees against the same bare aiohttp server). When the ``wrk`` binary
is available, pass ``--wrk auto`` (or a path) to drive the load with wrk
instead (one wrk thread, same connection count; a Lua script is generated
for methods, bodies and headers). The result's ``generator`` field says
which one was used; report it beside every figure, and compare a figure
only with a raw limit measured by the same generator.

In-process use: ``run_load(url, ...)`` (Python generator, runs its own
asyncio loop; ``run_load_async`` inside a running loop) and
``run_wrk(url, ...)`` return the same dict.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = [
    "LoadgenError",
    "check_loopback_url",
    "ensure_wrk",
    "find_wrk",
    "percentiles_ms",
    "run_load",
    "run_load_async",
    "run_wrk",
]

DEFAULT_MAX_REQUESTS = 2_000_000
MAX_DURATION = 600.0
MAX_CONNECTIONS = 1024


class LoadgenError(ValueError):
    """A bad argument (e.g. a non-loopback URL) or a failed load run."""


def check_loopback_url(url: str) -> str:
    """Return ``url`` if it is an http(s) URL on a loopback host, else raise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise LoadgenError(f"refusing {url!r}: only http:// or https:// URLs are supported")
    host = parts.hostname or ""
    if host.lower() == "localhost":
        return url
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise LoadgenError(
            f"refusing {url!r}: loadgen only targets this machine "
            f"(127.0.0.1, localhost or ::1), not host {host!r}"
        )
    return url


def _check_bounds(duration: float, connections: int, max_requests: int) -> None:
    if not (0 < duration <= MAX_DURATION):
        raise LoadgenError(f"duration must be in (0, {MAX_DURATION}] seconds, got {duration}")
    if not (1 <= connections <= MAX_CONNECTIONS):
        raise LoadgenError(f"connections must be in [1, {MAX_CONNECTIONS}], got {connections}")
    if max_requests < 1:
        raise LoadgenError(f"max_requests must be >= 1, got {max_requests}")


def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 in milliseconds (nearest-rank) of latencies in seconds."""
    if not latencies_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    xs = sorted(latencies_s)
    n = len(xs)

    def rank(p: float) -> float:
        i = min(n - 1, max(0, round(p / 100.0 * n + 0.5) - 1))
        return round(xs[i] * 1000.0, 3)

    return {"p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99)}


# ---------------------------------------------------------------- Python


async def run_load_async(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    duration: float = 3.0,
    connections: int = 16,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    timeout: float = 10.0,
) -> dict:
    """Closed-loop load from the running asyncio loop; see the module doc."""
    import aiohttp

    check_loopback_url(url)
    _check_bounds(duration, connections, max_requests)
    method = method.upper()
    hdrs = dict(headers or {})
    latencies: list[float] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    started = 0

    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout, auto_decompress=False
    ) as session:
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def worker() -> None:
            nonlocal errors, started
            while started < max_requests:
                now = time.perf_counter()
                if now >= deadline:
                    return
                started += 1
                try:
                    async with session.request(method, url, data=body, headers=hdrs) as resp:
                        await resp.read()
                        status = resp.status
                    t1 = time.perf_counter()
                    if 200 <= status < 400:
                        latencies.append(t1 - now)
                    else:
                        errors += 1
                        k = f"status {status}"
                        error_kinds[k] = error_kinds.get(k, 0) + 1
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    errors += 1
                    k = type(exc).__name__
                    error_kinds[k] = error_kinds.get(k, 0) + 1

        # The deadline bounds the loop; the outer timeout bounds a hung request.
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(connections))),
            timeout=duration + timeout + 5.0,
        )
        elapsed = time.perf_counter() - t0

    result = {
        "requests": len(latencies),
        "errors": errors,
        "duration": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        **percentiles_ms(latencies),
        "generator": "python-aiohttp",
        "connections": connections,
    }
    if error_kinds:
        result["error_kinds"] = error_kinds
    return result


def run_load(url: str, **kwargs) -> dict:
    """Run ``run_load_async`` in a fresh asyncio loop (for synchronous callers)."""
    return asyncio.run(run_load_async(url, **kwargs))


# ------------------------------------------------------------------- wrk


def find_wrk(path: str | None = "auto") -> str | None:
    """Resolve ``--wrk``: "auto" looks on PATH; a path must be executable."""
    if path is None:
        return None
    if path == "auto":
        return shutil.which("wrk")
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    found = shutil.which(path)
    if found is None:
        raise LoadgenError(f"wrk binary {path!r} not found or not executable")
    return found


WRK_INSTALL = "apt-get update && apt-get install -y wrk"  # Debian/Ubuntu package "wrk"
# Ten minutes for each apt-get step: an index update and one small package
# take well under a minute from a reachable mirror; past that apt is waiting
# on a lock or a dead network, and the benchmark should say so, not hang.
APT_STEP_TIMEOUT_S = 600.0


def ensure_wrk(*, install: bool = True) -> str:
    """The path of the wrk binary; installed first with apt-get if it is missing.

    It is installed only when this process runs as root on a system with
    apt-get (each command is printed to stderr before it runs, apt's output
    follows it there, so a ``--json`` stdout stays clean); otherwise, or if
    the install fails, LoadgenError names the command to run.
    """
    found = shutil.which("wrk")
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise LoadgenError(f"wrk is not on PATH and there is no apt-get here: install wrk with your package "
                           f"manager (Debian/Ubuntu: `{WRK_INSTALL}`) or build it from https://github.com/wg/wrk")
    if os.geteuid() != 0:
        sudo = " && ".join(f"sudo {step.strip()}" for step in WRK_INSTALL.split("&&"))
        raise LoadgenError(f"wrk is not on PATH; install it with `{sudo}` (not root here, so not done for you)")
    if not install:
        raise LoadgenError(f"wrk is not on PATH; install it with `{WRK_INSTALL}`")
    print(f"wrk is not on PATH; installing it: {WRK_INSTALL}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}  # no debconf prompt
    for step in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        print(f"+ {' '.join(step)}", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(step, check=False, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env,
                                  timeout=APT_STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LoadgenError(f"`{' '.join(step)}` took over {APT_STEP_TIMEOUT_S:.0f} s; "
                               f"install wrk by hand: `{WRK_INSTALL}`") from None
        if proc.returncode != 0:
            raise LoadgenError(f"`{' '.join(step)}` failed (exit {proc.returncode}); "
                               f"install wrk by hand: `{WRK_INSTALL}`")
    found = shutil.which("wrk")
    if found is None:
        raise LoadgenError(f"apt-get installed wrk but it is not on PATH ({os.environ.get('PATH', '')})")
    print(f"wrk installed: {found}", file=sys.stderr, flush=True)
    return found


def _lua_string(data: bytes) -> str:
    """A Lua string literal of arbitrary bytes (decimal escapes, no quoting traps)."""
    out = []
    for b in data:
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in " _-.,:/;=+*()[]{}<>!?@#$%&|~^"):
            out.append(c)
        else:
            out.append(f"\\{b:03d}")
    return '"' + "".join(out) + '"'


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _parse_wrk_latency(text: str, pct: str) -> float | None:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    if not m:
        return None
    return round(float(m.group(1)) * _UNIT_MS[m.group(2)], 3)


def parse_wrk_output(text: str) -> dict:
    """Extract totals, errors and latency percentiles from ``wrk --latency``."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise LoadgenError(f"could not parse wrk output:\n{text}")
    total = int(m.group(1))
    duration = float(m.group(2)) * _UNIT_MS[m.group(3)] / 1000.0
    errors = 0
    kinds: dict[str, int] = {}
    m2 = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m2:
        kinds["non-2xx/3xx"] = int(m2.group(1))
    m3 = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if m3:
        for name, v in zip(("connect", "read", "write", "timeout"), m3.groups()):
            if int(v):
                kinds[name] = int(v)
    # wrk counts non-2xx responses inside "requests"; socket errors are separate.
    non2xx = kinds.get("non-2xx/3xx", 0)
    errors = sum(kinds.values())
    ok = total - non2xx
    result = {
        "requests": ok,
        "errors": errors,
        "duration": round(duration, 3),
        "rps": round(ok / duration, 1) if duration > 0 else 0.0,
        "p50_ms": _parse_wrk_latency(text, "50"),
        "p90_ms": _parse_wrk_latency(text, "90"),
        "p99_ms": _parse_wrk_latency(text, "99"),
    }
    if kinds:
        result["error_kinds"] = kinds
    return result


def run_wrk(
    url: str,
    *,
    wrk: str = "auto",
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    duration: float = 3.0,
    connections: int = 16,
    threads: int = 1,
    timeout: float = 10.0,
) -> dict:
    """Drive ``url`` with the wrk binary; same result keys as ``run_load``.

    wrk has no request-count bound; the run is bounded by ``duration`` (whole
    seconds, at least 1) and by a subprocess timeout.
    """
    check_loopback_url(url)
    _check_bounds(duration, connections, DEFAULT_MAX_REQUESTS)
    wrk_path = find_wrk(wrk)
    if wrk_path is None:
        raise LoadgenError(f"wrk not found on PATH; install it with `{WRK_INSTALL}` (or call ensure_wrk())")
    threads = max(1, min(threads, connections))
    secs = max(1, round(duration))
    cmd = [
        wrk_path,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{secs}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
    ]
    script_path = None
    method = method.upper()
    try:
        if method != "GET" or body or headers:
            lines = [f"wrk.method = {_lua_string(method.encode())}"]
            if body:
                lines.append(f"wrk.body = {_lua_string(body)}")
            for k, v in (headers or {}).items():
                lines.append(
                    f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}"
                )
            fd, script_path = tempfile.mkstemp(prefix="loadgen-", suffix=".lua")
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            cmd += ["-s", script_path]
        cmd.append(url)
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=secs + timeout + 10
        )
    finally:
        if script_path:
            os.unlink(script_path)
    if proc.returncode != 0:
        raise LoadgenError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    result = parse_wrk_output(proc.stdout)
    result["generator"] = f"wrk ({threads} thread{'s' if threads > 1 else ''})"
    result["connections"] = connections
    return result


# ------------------------------------------------------------------- CLI


def _parse_header(text: str) -> tuple[str, str]:
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"header must be K:V, got {text!r}")
    k, v = text.split(":", 1)
    return k.strip(), v.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Closed-loop HTTP load against a loopback URL.",
    )
    ap.add_argument("url")
    ap.add_argument("--method", default="GET", type=str.upper, choices=["GET", "POST"])
    ap.add_argument("--body-file", help="file whose bytes are sent as the request body")
    ap.add_argument("--header", action="append", default=[], type=_parse_header,
                    metavar="K:V", help="extra request header (repeatable)")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    ap.add_argument("--wrk", metavar="PATH|auto",
                    help="use the wrk binary (path, or 'auto' to find it on PATH)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    body = None
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    headers = dict(args.header)
    try:
        check_loopback_url(args.url)
        if args.wrk:
            result = run_wrk(
                args.url, wrk=args.wrk, method=args.method, body=body, headers=headers,
                duration=args.duration, connections=args.connections,
                threads=args.threads, timeout=args.timeout,
            )
        else:
            result = run_load(
                args.url, method=args.method, body=body, headers=headers,
                duration=args.duration, connections=args.connections,
                max_requests=args.max_requests, timeout=args.timeout,
            )
    except LoadgenError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>12}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
