"""Helpers for the federation tests: real nodes (own home, LMDB, libp2p host on 127.0.0.1) in one trio process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from registrygrid.engine.ops import Put, WriteResult
from registrygrid.home import Home
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair, did_from_peer_id
from registrygrid.membership import (
    create_federation,
    current_genesis,
    invite_org,
    join_federation,
)
from registrygrid.node.federation import Federation, FederationConfig
from registrygrid.node.node import Node
from registrygrid.node.p2p import P2PHost
from registrygrid.protocol.hello import HELLO_PROTOCOL_ID, encode_hello
from registrygrid.sdk import LocalRegistry
from registrygrid.storage.store import Store
from registrygrid.trust.admission import encode_proof

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
CLUSTERS = "grid.clusters"

# Test timings: fast redials and short periods so a test sees each behaviour
# within seconds. Each test that needs gossip alone to do the work says so by
# raising sync_interval beyond its own deadline.
FAST = FederationConfig(sync_interval=2.0, gap_sync_delay=0.2, backoff_base=0.2, backoff_cap=1.0,
                        persist_interval=0.3)


@dataclass
class Member:
    name: str
    home: Home
    node: Node
    fed: Federation
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> str:
        assert self.fed.host is not None
        return self.fed.host.peer_id

    @property
    def registry(self) -> LocalRegistry:
        assert self.node.registry is not None
        return self.node.registry

    def digest(self) -> str:
        return self.registry.state_digest()

    def records(self) -> int:
        return sum(1 for _ in self.registry.iter_all(CLUSTERS))

    async def write(self, prefix: str, n: int, *, batch: int = 50) -> list[WriteResult]:
        results: list[WriteResult] = []
        for start in range(0, n, batch):
            ops = [Put(CLUSTERS, "cluster", {"name": f"{prefix}{i}"}, record_id=f"{prefix}{i}")
                   for i in range(start, min(n, start + batch))]
            outcomes = await self.node.submit(ops)
            assert all(isinstance(o, WriteResult) for o in outcomes), outcomes[:2]
            results += outcomes  # type: ignore[arg-type]
        return results


class Cluster:
    """Nodes started and stopped one by one inside a nursery."""

    def __init__(self, nursery: trio.Nursery, root: Path, config: FederationConfig, name: str = "testfed",
                 transport: Any = None) -> None:
        self.nursery = nursery
        self.transport = transport  # every node's, unless start() names one: py-libp2p by default
        self.root = root
        self.config = config
        self.name = name  # the federation every node of this cluster belongs to
        self.members: list[Member] = []
        self.founder: Home | None = None

    def home(self, name: str, org: str | None = None) -> Home:
        """The member's home; nodes started with the same ``org`` share its
        org key (the first one's), so they may edit each other's records."""
        home = Home(self.root / name)
        if not home.exists():
            first = Home(self.root / org) if org is not None else None
            if first is not None and first.exists():
                home.init(org_name=org or name, org_key_file=first.org_key_path)
            else:
                home.init(org_name=org or name)
            self.admit(home)
        return home

    def admit(self, home: Home) -> None:
        """Every node of the cluster is in one federation (``name``): the
        first home's org founds it and invites each other org."""
        if self.founder is None:
            self.founder = home
            create_federation(home, self.name)
            return
        genesis = current_genesis(self.founder)
        org = home.org().org  # type: ignore[union-attr]
        invitation = None if org in genesis.claims.founders else invite_org(self.founder, org)
        join_federation(home, genesis, invitation)

    async def start(self, name: str, bootstrap: Sequence[str] = (), *, listen: str = LOOPBACK,
                    config: FederationConfig | None = None, org: str | None = None,
                    components: Sequence[Any] = (), transport: Any = None) -> Member:
        """Start node ``name``; ``components`` run beside its federation (a
        search index); ``transport``: the federation's (a MemoryNetwork's
        factory), py-libp2p on ``listen`` by default."""
        home = self.home(name, org)
        fed = Federation(listen=[listen], bootstrap=list(bootstrap), federation=self.name,
                         config=config or self.config, transport=transport or self.transport)
        node = Node(home, [fed, *components])
        member = Member(name, home, node, fed)

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await node.run(task_status=task_status)
            finally:
                member.stopped.set()

        await self.nursery.start(run)
        self.members = [m for m in self.members if m.name != name] + [member]
        return member

    async def stop(self, member: Member) -> None:
        member.node.stop()
        with trio.fail_after(15):
            await member.stopped.wait()
        self.members.remove(member)


@asynccontextmanager
async def cluster(root: Path, config: FederationConfig = FAST, name: str = "testfed", *,
                  transport: Any = None) -> AsyncIterator[Cluster]:
    """Nodes on py-libp2p, or on ``transport`` (a MemoryNetwork's factory)."""
    async with trio.open_nursery() as nursery:
        nodes = Cluster(nursery, root, config, name, transport)
        try:
            yield nodes
        finally:
            for member in list(nodes.members):
                member.node.stop()
            # the nursery waits for every node to close its host and store


async def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it is truthy; fail naming ``what`` and the last value."""
    deadline = trio.current_time() + timeout
    value = None
    while trio.current_time() < deadline:
        value = check()
        if value:
            return value
        await trio.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what} (last: {value!r})")


async def full_mesh(members: Sequence[Member], timeout: float = 20) -> None:
    """Every member is connected to every other and knows it subscribes to the topic."""
    def ready() -> bool:
        for m in members:
            assert m.fed.host is not None
            others = {o.peer_id for o in members if o is not m}
            if not others <= set(m.fed.host.connected_peers()):
                return False
            if not others <= set(m.fed.host.topic_peers(m.fed.topic)):
                return False
        return True

    await eventually(ready, timeout, "a full mesh")


async def converged(members: Sequence[Member], timeout: float, *, records: int | None = None) -> str:
    def same() -> bool:
        digests = {m.digest() for m in members}
        return len(digests) == 1 and (records is None or all(m.records() == records for m in members))

    await eventually(same, timeout, f"identical state on {[m.name for m in members]}",
                     interval=0.2)
    return members[0].digest()


def stored_digest(home: Home) -> str:
    """The state digest of a home's store, read-only (works while another process writes it)."""
    store = Store(home.store_path, readonly=True)
    try:
        return LocalRegistry(store, engine=None).state_digest()  # type: ignore[arg-type]
    finally:
        store.close()


def make_member(nodes: Cluster, host: P2PHost, *, federation_id: str | None = None) -> None:
    """Make a bare libp2p host pass for a member's node: a new org, invited
    into the cluster's federation by its founder, delegates the host's key,
    and the host answers hellos with that proof (or, with
    ``federation_id``, claims another federation of the same name)."""
    assert nodes.founder is not None, "start a node first: its org founds the federation"
    org = KeyPair.generate()
    genesis = current_genesis(nodes.founder)
    invitation = invite_org(nodes.founder, org.did)
    delegation = sign_delegation(org, did_from_peer_id(host.peer_id), ["node"])
    proof = encode_proof(delegation.encode(), invitation.encode(), genesis.encode())

    async def answer(peer: str, request: bytes) -> bytes:
        return encode_hello("testfed", host.listen_addrs(), [], federation_id or genesis.id, proof)

    host.set_handler(HELLO_PROTOCOL_ID, answer)


def serve_forged_reads(liar: Member) -> None:
    """Make ``liar`` answer remote reads (``/registrygrid/read/1.0.0``) with
    its true answer but one change's bytes altered: a forged record."""
    import msgspec

    from registrygrid.node import remote_read as node_read
    from registrygrid.protocol import remote_read

    async def lie(peer_id: str, request: bytes) -> bytes:
        answer = remote_read.decode_response(node_read.answer_read(request, liar.node.engine))
        forged = bytearray(answer.envelopes[0])
        forged[len(forged) // 2] ^= 0xFF
        return remote_read.encode_response(msgspec.structs.replace(
            answer, envelopes=[bytes(forged), *answer.envelopes[1:]]))

    assert liar.fed.host is not None
    liar.fed.host.set_handler(remote_read.READ_PROTOCOL_ID, lie)
