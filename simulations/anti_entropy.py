"""Lossy gossip plus anti-entropy, simulated: do N nodes converge, and how fast?

The same protocol code the node runs over libp2p (``protocol.gossip``
batches, ``protocol.sync`` sessions, the engine's one write path) runs here
over an in-memory network with virtual rounds: no sockets, no trio, no
clocks. Each round, every node writes a few records and gossips its new
envelopes to every peer, each message lost with probability ``loss``; then
every node pulls from one random peer (anti-entropy). The run reports the
number of quiet rounds (no writes, one random pull per node) after the last
write until every node holds the same records (``state_digest``).

    python -m simulations.anti_entropy --nodes 6 --rounds 12 --loss 0.3
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from registrygrid.engine.ops import (
    Operation,
    Outcome,
    Put,
    Remote,
    Update,
)
from registrygrid.errors import RegistryError
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.gossip import decode_batch, encode_batch
from registrygrid.protocol.sync import answer_sync
from registrygrid.protocol.sync_session import Applied, SyncSession, run_session
from registrygrid.sdk import LocalRegistry

FEDERATION = "sim"


@dataclass
class SimNode:
    name: str
    grid: LocalRegistry
    outbox: list[bytes] = field(default_factory=list)

    def write(self, ops: list[Operation]) -> list[Outcome]:
        """Commit ops; this node's new changes go to its gossip outbox."""
        executed = self.grid.engine.run(ops, publish=True)
        self.outbox.extend(executed.committed.local_envelopes)
        return executed.outcomes


@dataclass
class Report:
    converged_at: int | None  # quiet anti-entropy rounds after the last write until all digests were equal
    rounds: int
    records: int
    gossip_sent: int
    gossip_lost: int
    sync_rounds: int
    digests_equal: bool


def pull(puller_node: SimNode, responder: SimNode) -> int:
    """One anti-entropy session, through bytes only: the node's own session
    state machine (protocol/sync_session.py), driven step by step."""
    engine = puller_node.grid.engine

    def apply(wires: list[bytes]) -> Applied:
        return Applied.of(puller_node.grid.execute([Remote(w, responder.name) for w in wires]))

    report = run_session(SyncSession(FEDERATION), vector=engine.replicated_vector, apply=apply,
                         exchange=lambda request: answer_sync(request, responder.grid.engine, federation=FEDERATION))
    return report.rounds


def run(nodes: int = 5, rounds: int = 10, writes_per_round: int = 3, loss: float = 0.3, seed: int = 1,
        workdir: Path | None = None) -> Report:
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="rgrid-sim-", dir=workdir))
    sim: list[SimNode] = []
    try:
        # The nodes belong to one org, so each may edit what another created.
        org = KeyPair.generate()
        for i in range(nodes):
            key = KeyPair.generate()
            grid = LocalRegistry.open_path(base / f"n{i}", key, delegation=sign_delegation(org, key.did, ["node"]))
            node = SimNode(f"n{i}", grid)
            sim.append(node)
        sent = lost = sync_rounds = 0
        converged_at = None
        shared_ids = [f"shared-{k}" for k in range(4)]
        for round_no in range(1, rounds + 1):
            for node in sim:  # local writes: fresh records and concurrent edits of shared ones
                for w in range(writes_per_round):
                    record_id = f"{node.name}-{round_no}-{w}"
                    node.write([Put("grid.tools", "tool", {"name": record_id}, record_id=record_id)])
                target = rng.choice(shared_ids)
                edited = node.write([Update("grid.tools", target, patch={node.name: round_no})])[0]
                if isinstance(edited, RegistryError):  # not created yet here
                    node.write([Put("grid.tools", "tool", {"name": target}, record_id=target)])
            for node in sim:  # lossy gossip of each node's batch
                if not node.outbox:
                    continue
                message = encode_batch(node.outbox)
                node.outbox.clear()
                for peer in sim:
                    if peer is node:
                        continue
                    sent += 1
                    if rng.random() < loss:
                        lost += 1
                        continue
                    peer.grid.execute([Remote(w, node.name) for w in decode_batch(message)])
            for node in sim:  # anti-entropy with one random peer
                sync_rounds += pull(node, rng.choice([p for p in sim if p is not node]))
        # Quiet rounds: no more writes; each node pulls from one random peer
        # per round, until all agree. Epidemic theory says O(log N) rounds.
        for quiet in range(1, 4 * nodes + 1):
            if len({node.grid.state_digest() for node in sim}) == 1:
                converged_at = quiet - 1
                break
            for node in sim:
                sync_rounds += pull(node, rng.choice([p for p in sim if p is not node]))
        final = {node.grid.state_digest() for node in sim}
        records = sum(1 for _ in sim[0].grid.iter_all("grid.tools"))
        return Report(converged_at, rounds, records, sent, lost, sync_rounds, len(final) == 1)
    finally:
        for node in sim:
            node.grid.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writes", type=int, default=3)
    parser.add_argument("--loss", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report = run(args.nodes, args.rounds, args.writes, args.loss, args.seed)
    print(report)


if __name__ == "__main__":
    main()
