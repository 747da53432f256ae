"""Bounded memory: a large file streamed up to and back from a real node
process (`rgrid node start`, the local object store) raises the node's
peak RSS by a few MB, not by the file's size. The node's peak is reset
just before the transfer (/proc/PID/clear_refs, 5) and read after it
(VmHWM), so start-up does not hide what the transfer costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registrygrid.ports import unused_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SIZE = 256 << 20
LIMIT = 48 << 20  # what the transfer may add to the node's peak: parts in flight, chunks, buffers


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rgrid(home: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], check=False,
                          capture_output=True,
                          text=True, timeout=180, env={**os.environ, "RGRID_HOME": ""})
    assert proc.returncode == 0, f"rgrid {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_a_256_mib_upload_and_download_through_the_bridge_add_a_few_mb_to_the_nodes_peak(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rgrid(home, "init", "--org-name", "big files")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # not all zeros, so nothing along the way can shortcut it
        block = os.urandom(1 << 20)
        f.writelines(block[:-8] + i.to_bytes(8, "big") for i in range(SIZE >> 20))
    node = subprocess.Popen([sys.executable, "-m", "registrygrid", "node", "start", "--no-p2p", "--no-search",
                             "--home", str(home), "--bridge-port", str(unused_ports(1)[0]), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (home / "bridge.json").exists():
            assert node.poll() is None, node.stderr.read() if node.stderr else ""
            assert time.monotonic() < deadline, "the node did not start"
            time.sleep(0.1)
        rgrid(home, "id")  # warm: the bridge answers
        before = _status_kib(node.pid, "VmRSS")
        Path(f"/proc/{node.pid}/clear_refs").write_text("5")  # reset the peak to the current RSS

        uploaded = json.loads(rgrid(home, "asset", "upload", str(big), "--json"))
        out = tmp_path / "back.bin"
        rgrid(home, "asset", "get", uploaded["cid"], "-o", str(out))
        peak = _status_kib(node.pid, "VmHWM")
    finally:
        node.terminate()
        node.wait(timeout=30)

    assert uploaded["size"] == SIZE and out.stat().st_size == SIZE
    assert os.path.getsize(big) == SIZE and _same(big, out)
    grown = (peak - before) * 1024
    assert grown < LIMIT, f"the node's peak RSS grew by {grown >> 20} MiB moving {SIZE >> 20} MiB each way"


def _same(a: Path, b: Path) -> bool:
    with open(a, "rb") as x, open(b, "rb") as y:
        while True:
            left, right = x.read(1 << 20), y.read(1 << 20)
            if left != right:
                return False
            if not left:
                return True
