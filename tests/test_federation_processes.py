"""Nodes as separate OS processes: `python -m registrygrid node start --listen ... --bootstrap ... --no-bridge`.

The writer runs in this process (a trio Node with a Federation), because the
CLI writes to a running node through its HTTP bridge and this test must not
depend on the bridge; the followers are real `rgrid node start` processes.
Their state is read from their stores through read-only LMDB environments
while they run (LMDB allows readers beside another process's writer). One
follower is also stopped, written to offline with the SDK (it holds the
home's lock then), and restarted: its changes reach the others by sync on
connect, so replication is checked in both directions across processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from registrygrid.engine.ops import Put, WriteResult
from registrygrid.errors import KeyRevoked
from registrygrid.home import Home, read_key_file
from registrygrid.ports import unused_ports
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import records
from registrygrid.storage.store import Store
from registrygrid.trust.statements import MEMBERS_REGISTRY, REVOCATION_KIND, revocation_record, sign_revocation
from test_federation_support import CLUSTERS, Member, cluster, eventually, stored_digest

pytestmark = pytest.mark.slow


class Follower:
    def __init__(self, root: Path, name: str, *, org_key_file: Path | None = None) -> None:
        self.home = Home(root / name)
        self.home.init(org_name=name, org_key_file=org_key_file)
        self.port = unused_ports(1)[0]
        self.peer_id = self.home.node_key().peer_id
        self.addr = f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, bootstrap: list[str]) -> None:
        cmd = [sys.executable, "-m", "registrygrid", "node", "start", "--home", str(self.home.path),
               "--listen", f"/ip4/127.0.0.1/tcp/{self.port}", "--no-bridge"]
        for addr in bootstrap:
            cmd += ["--bootstrap", addr]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        info = self.home.node_info()
        return info is not None and self.proc is not None and info["pid"] == self.proc.pid

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def followers(tmp_path: Path) -> Iterator[list[Follower]]:
    made = [Follower(tmp_path, "p1"), Follower(tmp_path, "p2")]
    yield made
    for follower in made:
        follower.kill()


def rgrid_json(*args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-m", "registrygrid", *args, "--json"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def test_nodes_in_separate_processes_replicate_both_ways_and_after_a_restart(
        tmp_path: Path, followers: list[Follower]) -> None:
    p1, p2 = followers
    with trio.fail_after(150):
        async with cluster(tmp_path / "inproc") as nodes:
            writer: Member = await nodes.start("w", listen=f"/ip4/127.0.0.1/tcp/{unused_ports(1)[0]}")
            # The followers' orgs are invited into the writer's federation.
            for follower in followers:
                nodes.admit(follower.home)
            p1.start(writer.fed.addrs())
            p2.start([*writer.fed.addrs(), p1.addr])
            await eventually(lambda: p1.running() and p2.running(), 40, "both processes up")
            await eventually(lambda: {p1.peer_id, p2.peer_id} <= set(writer.fed.host.connected_peers()),  # type: ignore[union-attr]
                             20, "the writer connected to both")

            await writer.write("w", 50)
            await eventually(lambda: stored_digest(p1.home) == stored_digest(p2.home) == writer.digest(), 30,
                             "both followers hold the writer's state", interval=0.3)

            def p1_lists_the_writer() -> bool:  # `rgrid peers` in a third process
                listed = rgrid_json("peers", "--home", str(p1.home.path))
                return listed["node"]["peer_id"] == p1.peer_id and any(
                    row["peer"] == writer.peer_id and row["state"] == "connected" for row in listed["peers"])

            await eventually(p1_lists_the_writer, 20, "the writer in p1's peer table", interval=1)

            # p2 stops; the writer goes on; p2 gets changes of its own while offline.
            assert p2.stop() == 0
            assert not p2.home.node_info_path.exists()
            await writer.write("v", 20)
            with LocalRegistry.open_home(p2.home) as offline:
                for i in range(5):
                    offline.put(CLUSTERS, "cluster", {"name": f"p2-{i}"}, id=f"p2-{i}")
            p2.start([])  # no bootstrap flag: it redials the peers it persisted
            await eventually(p2.running, 40, "p2 up again")
            await eventually(lambda: writer.records() == 75
                             and stored_digest(p1.home) == stored_digest(p2.home) == writer.digest(), 40,
                             "all three converged on 75 records", interval=0.3)
            assert p1.stop() == 0 and p2.stop() == 0
            listed = rgrid_json("peers", "--home", str(p2.home.path))
            assert listed["node"] is None and {r["peer"] for r in listed["peers"]} >= {writer.peer_id, p1.peer_id}
            assert all(r["state"] == "offline" for r in listed["peers"])
    for follower in followers:
        assert b"Traceback" not in follower.log.read_bytes(), follower.log.read_text()[-3000:]


def stored_ids(home: Home, registry: str = CLUSTERS) -> set[str]:
    store = Store(home.store_path, readonly=True)
    try:
        with store.read() as txn:
            return {r["id"] for r in records.iter_records(store, txn, registry=registry) if not r["deleted"]}
    finally:
        store.close()


async def test_a_revoked_node_that_keeps_writing_is_refused_by_every_other_node(tmp_path: Path) -> None:
    """w (org O, holds the org key), p1 (a second node of O) and p2 (org P)
    run as a federation, w in this process, p1 and p2 as `rgrid node start`
    processes. p1 writes while cut off, comes back, and its late writes
    spread; then O revokes p1's key at w. Every other node rebuilds those
    records from the changes that stay valid, refuses p1 at the handshake
    from then on, and never takes what p1 writes next."""
    with trio.fail_after(170):
        async with cluster(tmp_path / "inproc") as nodes:
            writer: Member = await nodes.start("w", listen=f"/ip4/127.0.0.1/tcp/{unused_ports(1)[0]}")
            p1 = Follower(tmp_path, "p1", org_key_file=writer.home.org_key_path)
            p2 = Follower(tmp_path, "p2")
            try:
                for follower in (p1, p2):
                    nodes.admit(follower.home)  # p1 is of the founder's org; p2's org is invited
                with LocalRegistry.open_home(p1.home) as offline:  # p1's first writes
                    for i in range(5):
                        offline.put(CLUSTERS, "cluster", {"name": f"early-{i}"}, id=f"early-{i}")
                p1.start(writer.fed.addrs())
                p2.start([*writer.fed.addrs(), p1.addr])
                await eventually(lambda: p1.running() and p2.running(), 40, "both processes up")
                await writer.write("w", 3)
                await eventually(lambda: writer.records() == 8 and stored_digest(p2.home) == writer.digest()
                                 and stored_digest(p1.home) == writer.digest(), 40, "all hold 8 records",
                                 interval=0.3)
                cutoffs = writer.registry.engine.version_vector()  # what O accepts of p1: all it holds now

                # p1 writes while cut off, then comes back: its late writes spread.
                assert p1.stop() == 0
                with LocalRegistry.open_home(p1.home) as offline:
                    for i in range(4):
                        offline.put(CLUSTERS, "cluster", {"name": f"late-{i}"}, id=f"late-{i}")
                    offline.update(CLUSTERS, "w0", patch={"tampered": True})  # O's record: p1 may, until revoked
                p1.start([])
                await eventually(lambda: writer.records() == 12 and stored_digest(p2.home) == writer.digest(), 40,
                                 "the late writes reached w and p2", interval=0.3)

                # O revokes p1's key at w, naming what it had accepted before.
                p1_key = p1.home.node_key().did
                revocation = sign_revocation(read_key_file(writer.home.org_key_path), p1_key,
                                             {reg: authors[p1_key] for reg, authors in cutoffs.items()
                                              if p1_key in authors}, reason="node stolen")
                record_id, fields = revocation_record(revocation)
                outcomes = await writer.node.submit([Put(MEMBERS_REGISTRY, REVOCATION_KIND, fields, record_id)])
                assert isinstance(outcomes[0], WriteResult), outcomes
                expected = {f"early-{i}" for i in range(5)} | {"w0", "w1", "w2"}
                await eventually(lambda: stored_ids(p2.home) == expected and stored_digest(p2.home) == writer.digest(),
                                 40, "w and p2 rebuilt without p1's late changes", interval=0.3)
                assert {r["id"] for r in writer.registry.iter_all(CLUSTERS)} == expected
                assert "tampered" not in writer.registry.get(CLUSTERS, "w0")["fields"]
                assert writer.registry.engine.metrics["trust.refused_on_rebuild"] >= 5
                # From its next hello (or sync) on, p1 is refused.
                await eventually(lambda: writer.fed.peers.blocked(p1.peer_id), 40,  # type: ignore[union-attr]
                                 "w refused p1 at a hello", interval=0.3)

                # p1 keeps writing (offline, then online again): nobody takes it.
                assert p1.stop() == 0
                with LocalRegistry.open_home(p1.home) as offline:
                    try:
                        offline.put(CLUSTERS, "cluster", {"name": "more"}, id="more")
                    except KeyRevoked:
                        pass  # p1 got the revocation itself and refuses its own writes: as good
                p1.start([])
                await eventually(p1.running, 40, "p1 up again")
                await trio.sleep(3)
                assert stored_ids(p2.home) == expected and writer.digest() == stored_digest(p2.home)
                # Refused at a hello, or expelled when next served if it said none since its revocation.
                assert writer.fed.metrics["hello.not_member"] + writer.fed.metrics["peers.expelled"] >= 1
            finally:
                p1.kill()
                p2.kill()
    for follower in (p1, p2):
        assert b"Traceback" not in follower.log.read_bytes(), follower.log.read_text()[-3000:]


async def test_a_non_member_process_is_refused_and_never_gets_a_private_registry(tmp_path: Path) -> None:
    """Three processes: w (org W, founder, in this process), p1 (org P,
    invited, named a reader of w's private registry) and p2 (org Q, never
    invited, configured for a federation of the same name). p1 gets the
    private records by sync; p2 is refused at every handshake and holds
    nothing of w's, private or not."""
    with trio.fail_after(120):
        async with cluster(tmp_path / "inproc") as nodes:
            writer: Member = await nodes.start("w", listen=f"/ip4/127.0.0.1/tcp/{unused_ports(1)[0]}")
            p1, p2 = Follower(tmp_path, "p1"), Follower(tmp_path, "p2")
            try:
                nodes.admit(p1.home)
                config = json.loads((p2.home.path / "config.json").read_text())  # the name, not the genesis
                (p2.home.path / "config.json").write_text(json.dumps({**config, "federation": "testfed"}))
                p1_org = p1.home.org().org  # type: ignore[union-attr]
                writer.registry.create_registry("w.private", ["tool"], replication="private", readers=[p1_org])
                outcomes = await writer.node.submit([Put("w.private", "tool", {"name": f"s{i}"}, record_id=f"s{i}")
                                                     for i in range(3)])
                assert all(isinstance(o, WriteResult) for o in outcomes), outcomes
                await writer.write("public", 2)
                p1.start(writer.fed.addrs())
                p2.start(writer.fed.addrs() + [p1.addr])
                await eventually(lambda: p1.running() and p2.running(), 40, "both processes up")
                await eventually(lambda: stored_ids(p1.home, "w.private") == {"s0", "s1", "s2"}, 40,
                                 "the reader's node holds the private records", interval=0.3)
                await eventually(lambda: writer.fed.metrics["hello.not_member"] >= 1, 30, "p2 refused by w")
                await trio.sleep(3)  # more dial rounds, a sync interval
                assert stored_ids(p2.home, "w.private") == set() and stored_ids(p2.home) == set()
                assert writer.fed.peers.blocked(p2.peer_id)  # type: ignore[union-attr]
                assert b"not_member" in p2.log.read_bytes() or b"refused" in p2.log.read_bytes()
            finally:
                p1.kill()
                p2.kill()
