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
one (each node holds the branch it took first, or none: a node that took a
report of the fork before either branch holds both as evidence; so a
registry only that key wrote in may be missing from a node's vector).
Before 2026-12-04 a node that held one branch parked for ever a change
built on the other, and its author's later changes behind it
(test_disputes.py).

A second test makes every exchange a sync pass, the fresh node's too (no
node ever sends everything): all nodes end alike as well. Real LMDB stores
exchanging real envelopes.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registrygrid.errors import RegistryError
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from registrygrid.trust.federation import Genesis, make_genesis
from tests.test_disputes import sync
from tests.test_random_histories import IDS, ORG_A, ORG_B, REG, Exchange, fresh_takes_everything, open_registry, send, settle
from tests.test_trust_histories import KEYS, STEPS, open_nodes, revoke_or_step

CLONED = 3  # A's revocable key: its node's store is copied mid-history
FORK = frozenset({"equivocation", "chain_broken"})  # what an exchange may reject once the key is cloned


def clone(root: Path, nodes: list[LocalRegistry], federation: Genesis | None = None) -> None:
    """Copy the cloned key's store while its node is stopped; both go on
    (in ``federation``, as the node was)."""
    nodes[CLONED].close()
    shutil.copytree(root / f"n{CLONED}", root / "clone")
    nodes[CLONED] = LocalRegistry.open_path(root / f"n{CLONED}", KEYS[CLONED], federation=federation)
    nodes.append(LocalRegistry.open_path(root / "clone", KEYS[CLONED], federation=federation))


def chains_but(grid: LocalRegistry, keys: set[str]) -> dict[str, dict[str, int]]:
    """The node's version vector without the chains of ``keys``, and without
    a registry only they wrote in (a node may hold none of the cloned key's
    changes there: it held each as the other branch's evidence)."""
    kept = {registry: {author: seq for author, seq in authors.items() if author not in keys}
            for registry, authors in grid.engine.version_vector().items()}
    return {registry: authors for registry, authors in kept.items() if authors}


def sync_pass(source: LocalRegistry, target: LocalRegistry, rnd: random.Random | None = None, *,
              tolerate: frozenset[str] = frozenset()) -> None:
    """An exchange as peers that only sync make it: what ``target``'s vector
    lacks, what its head tags show, and what its evidence asks for by ID."""
    rejected = {r.error.code for r in sync(source, target) if r.status == "rejected"}
    assert rejected <= tolerate, rejected


def run_history(root: Path, seed: int, *, exchange: Exchange,
                federation: Genesis | None = None) -> tuple[list[LocalRegistry], LocalRegistry]:
    """A random history with a cloned key on five nodes and the clone, then
    a fresh node takes everything and all settle. ``exchange`` is how nodes
    pass changes: ``send`` gives half of the random exchanges as sync passes
    (the others send everything) and ``fresh`` one shuffled batch;
    ``sync_pass`` makes every exchange a sync pass, ``fresh``'s too. With a
    ``federation``, every node runs in it (the fresh one is no member's)."""
    rnd = random.Random(seed)
    expiring = rnd.random() < 0.4  # B's revocable key's delegation lasts one second
    nodes = open_nodes(root, expiring, federation)
    fresh = LocalRegistry.open_path(root / "fresh", KeyPair(b"\x73" * 32), federation=federation)
    opened = [*nodes, fresh]
    try:
        open_registry(nodes, exchange=exchange)
        for n in range(STEPS):
            revoke_or_step(rnd, nodes, n, tolerate=FORK, exchange=exchange)
            if len(nodes) == len(KEYS) and n > STEPS // 4 and rnd.random() < 0.05:
                clone(root, nodes, federation)
                opened = [*nodes, fresh]
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
                if rnd.random() < 0.5:  # a sync pass: only what the vector lacks, the head tags, and IDs asked
                    sync_pass(source, target, tolerate=FORK)
                else:
                    exchange(source, target, rnd if rnd.random() < 0.3 else None, tolerate=FORK)
        if exchange is send:
            fresh_takes_everything(nodes, fresh, rnd, tolerate=FORK)
        else:
            settle(nodes, tolerate=FORK, exchange=exchange)
            for node in nodes:
                exchange(node, fresh, tolerate=FORK)
        settle([*nodes, fresh], tolerate=FORK, exchange=exchange)  # what fresh reported of pairs no other node met
        return nodes, fresh
    except BaseException:
        for grid in opened:
            grid.close()
        raise


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_random_histories_with_a_cloned_key_end_alike_on_every_node(seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nodes, fresh = run_history(Path(tmp), seed, exchange=send)
        try:
            everyone = [*nodes, fresh]
            assert len({grid.state_digest() for grid in everyone}) == 1
            others = {KEYS[CLONED].did, fresh.engine.key.did}
            assert all(chains_but(grid, others) == chains_but(fresh, others) for grid in nodes)
        finally:
            for grid in [*nodes, fresh]:
                grid.close()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
# Found by searches on 2026-12-04. 6004 and 6017 ended with B's node apart,
# its key revoked: one walked back only by asking for the other branch's
# changes by ID (B's node alone held the clone's branch from its start);
# in one B's node held, as evidence only, a report the forked key carried,
# and settled once it showed the forks it could not report. 7011 and 7013
# ended with the cloned key's own node or the clone apart: each met forks
# of its own key that only it knew, and reported them in its own forked
# chain, until it showed them to its peers.
@example(seed=6004)
@example(seed=6017)
@example(seed=7011)
@example(seed=7013)
def test_sync_only_histories_with_a_cloned_key_end_alike_on_every_node(seed: int) -> None:
    """Peers that only sync end alike, the cloned key's two nodes too."""
    with tempfile.TemporaryDirectory() as tmp:
        nodes, fresh = run_history(Path(tmp), seed, exchange=sync_pass)
        try:
            assert len({grid.state_digest() for grid in [*nodes, fresh]}) == 1
        finally:
            for grid in [*nodes, fresh]:
                grid.close()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_sync_only_histories_with_a_cloned_key_in_a_federation_end_alike_on_every_node(seed: int) -> None:
    """In a federation of A and B every node ends alike too, the fresh one
    included: it is no member's node, so it files no reports of the forks
    it meets (equivocation.unreported), and takes the members'. (A search
    on 2026-12-05 that left the clone, the cloned key's reopened node and
    the fresh node out of the federation found them apart from the
    members: a node outside a federation counts every key's reports, as
    it should.)"""
    with tempfile.TemporaryDirectory() as tmp:
        nodes, fresh = run_history(Path(tmp), seed, exchange=sync_pass,
                                   federation=make_genesis("grid", [ORG_A, ORG_B]))
        try:
            assert len({grid.state_digest() for grid in [*nodes, fresh]}) == 1
        finally:
            for grid in [*nodes, fresh]:
                grid.close()
