"""Random histories with a cloned key end with the same records on every node.

The nodes and revocations of test_trust_histories.py, and once past the
first quarter of a history, A's revocable key is cloned: its node's store
is copied, and the copy goes on signing with the same key, so the next
change either copy signs in a registry is an equivocation. The copy writes
(creates and updates) now and then and takes part in exchanges like any
node. Half of the random exchanges are sync passes (what the version
vector lacks, and the head tags that show a branch of the same length);
the others send everything. Nodes that hold different branches of the
fork build on what they hold; a node that sees both reports the
equivocation, and the report quarantines the key's changes there from
that sequence on.

In the end every node has everything (exchanged until no node files
anything new), and a fresh node takes it all in one shuffled batch, then
all settle again (fresh may report pairs no other node met). No change may
be rejected but the fork's (an equivocation, a broken chain), and all stores
must hold the same records and the same chains of every key but the cloned
one (each node holds the branch it took first). Before 2026-12-04 a node
that held one branch parked for ever a change built on the other, and its
author's later changes behind it (test_disputes.py). Real LMDB stores
exchanging real envelopes.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.errors import RegistryError
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from tests.test_disputes import sync
from tests.test_random_histories import IDS, REG, fresh_takes_everything, open_registry, send, settle
from tests.test_trust_histories import KEYS, STEPS, open_nodes, revoke_or_step

CLONED = 3  # A's revocable key: its node's store is copied mid-history
FORK = frozenset({"equivocation", "chain_broken"})  # what an exchange may reject once the key is cloned


def clone(root: Path, nodes: list[LocalRegistry]) -> None:
    """Copy the cloned key's store while its node is stopped; both go on."""
    nodes[CLONED].close()
    shutil.copytree(root / f"n{CLONED}", root / "clone")
    nodes[CLONED] = LocalRegistry.open_path(root / f"n{CLONED}", KEYS[CLONED])
    nodes.append(LocalRegistry.open_path(root / "clone", KEYS[CLONED]))


def chains_but(grid: LocalRegistry, keys: set[str]) -> dict[str, dict[str, int]]:
    return {registry: {author: seq for author, seq in authors.items() if author not in keys}
            for registry, authors in grid.engine.version_vector().items()}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_random_histories_with_a_cloned_key_end_alike_on_every_node(seed: int) -> None:
    rnd = random.Random(seed)
    expiring = rnd.random() < 0.4  # B's revocable key's delegation lasts one second
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nodes = open_nodes(root, expiring)
        fresh = LocalRegistry.open_path(root / "fresh", KeyPair(b"\x73" * 32))
        try:
            open_registry(nodes)
            for n in range(STEPS):
                revoke_or_step(rnd, nodes, n, tolerate=FORK)
                if len(nodes) == len(KEYS) and n > STEPS // 4 and rnd.random() < 0.05:
                    clone(root, nodes)
                if len(nodes) > len(KEYS) and rnd.random() < 0.3:
                    try:
                        if rnd.random() < 0.5:
                            nodes[-1].put(REG, "cluster", {"name": "the clone's", "v": n}, id=rnd.choice(IDS))
                        else:
                            nodes[-1].update(REG, rnd.choice(IDS), patch={"v": n})
                    except RegistryError:
                        pass  # refused locally (exists, quarantined, revoked, ...)
                if rnd.random() < 0.25:
                    source, target = rnd.sample(nodes, 2)
                    if rnd.random() < 0.5:  # a sync pass: only what the vector lacks, and the head tags
                        rejected = {r.error.code for r in sync(source, target) if r.status == "rejected"}
                        assert rejected <= FORK, rejected
                    else:
                        send(source, target, rnd if rnd.random() < 0.3 else None, tolerate=FORK)
            fresh_takes_everything(nodes, fresh, rnd, tolerate=FORK)
            everyone = [*nodes, fresh]
            settle(everyone, tolerate=FORK)  # what fresh reported of pairs no other node met
            assert len({grid.state_digest() for grid in everyone}) == 1
            others = {KEYS[CLONED].did, fresh.engine.key.did}
            assert all(chains_but(grid, others) == chains_but(fresh, others) for grid in nodes)
        finally:
            for grid in [*nodes, fresh]:
                grid.close()
