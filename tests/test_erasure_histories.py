"""Random histories with erasures end with the same records, and the same
erasure states, on every node.

Four nodes of two orgs (A has nodes 0 and 2, B has 1 and 3) create,
update, tag and delete records of one members registry, where any member
may edit any record, so both orgs create the same ids and edit each
other's records; they erase records, and A's first node switches the
registry's write policy between members and owner. Between steps, random
pairs of nodes exchange what they hold, in order or shuffled. In the end
every node has everything, and a fresh node takes it all in one shuffled
batch: no change may be rejected or stay parked, and all five nodes must
answer alike for every id (its record, or that it was erased, or that
there is none) and hold the same records.

A notice is judged against the record each node holds when it comes
(docs/erasure.md), so what a node decides must not depend on the order
things arrive in: a longer run of this search found the divergences
fixed on 2026-12-04, each with a named test in test_erasure_fuzz.py (and
one in test_registry_rules.py). Real LMDB stores exchanging real
envelopes.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import RegistryError
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.sdk import LocalRegistry
from tests.test_erasure_fuzz import parked
from tests.test_random_histories import exchange_all, send, served

REG = "erasure.histories"
ORG_A, ORG_B = KeyPair(b"\x53" * 32), KeyPair(b"\x54" * 32)
KEYS = [KeyPair(bytes([0x68 + i]) * 32) for i in range(4)]
ORGS = [ORG_A, ORG_B, ORG_A, ORG_B]
IDS = ["r0", "r1", "r2"]


def step(rnd: random.Random, nodes: list[LocalRegistry]) -> None:
    """One random write, erasure or exchange; a write its node refuses is fine."""
    i = rnd.randrange(len(nodes))
    node, record = nodes[i], rnd.choice(IDS)
    op = rnd.choice(["put", "put", "update", "update", "delete", "tags", "erase", "policy",
                     "send", "send", "send"])
    try:
        if op == "put":
            node.put(REG, "cluster", {"name": record, "by": i}, id=record)
        elif op == "update":
            node.update(REG, record, patch={rnd.choice("abc"): rnd.randrange(100)})
        elif op == "delete":
            node.delete(REG, record)
        elif op == "tags":
            node.update(REG, record, tags=rnd.sample(["t1", "t2", "t3"], rnd.randrange(3)))
        elif op == "erase":
            node.erase(REG, record, reason="a random history")
        elif op == "policy":
            nodes[0].update("grid.registries", REG, patch={"write_policy": rnd.choice(["members", "owner"])})
        else:
            j = rnd.randrange(len(nodes))
            if j != i:
                send(node, nodes[j], rnd if rnd.random() < 0.3 else None)
    except RegistryError:
        pass  # refused locally (not found, erased, not its own, ...): nothing was signed
    time.sleep(0.002)  # distinct clocks, mostly


def answers(grid: LocalRegistry) -> dict[str, object]:
    """What the node says of each id: its record, or the error it answers."""
    out: dict[str, object] = {}
    for record in IDS:
        try:
            got = grid.get(REG, record, include_deleted=True)
            out[record] = (got["owner"], sorted(got["fields"].items()), got["tags"], got["deleted"])
        except RegistryError as exc:
            out[record] = exc.code
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False))
def test_random_histories_with_erasures_end_alike_on_every_node(rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as root:
        nodes = [LocalRegistry.open_path(Path(root) / f"n{i}", key,
                                         delegation=sign_delegation(org, key.did, ["node", "writer"]))
                 for i, (key, org) in enumerate(zip(KEYS, ORGS, strict=True))]
        fresh = LocalRegistry.open_path(Path(root) / "fresh", KeyPair(b"\x71" * 32))
        try:
            exchange_all(nodes)
            nodes[0].create_registry(REG, ["cluster"], write_policy="members")
            exchange_all(nodes)
            for _ in range(40):
                step(rnd, nodes)
            for _ in range(3):  # what one node forwarded to another in the round before
                exchange_all(nodes)
            everything = list(dict.fromkeys(w for node in nodes for w in served(node)))
            rnd.shuffle(everything)
            results = fresh.execute([Remote(w, "peer") for w in everything])
            assert all(r.status != "rejected" for r in results), [r.error for r in results if r.status == "rejected"]
            grids = [*nodes, fresh]
            assert [parked(grid) for grid in grids] == [[]] * len(grids)
            said = [answers(grid) for grid in grids]
            assert all(view == said[0] for view in said), said
            assert len({grid.state_digest() for grid in grids}) == 1
            assert all(grid.verify().ok for grid in grids)
        finally:
            for grid in [*nodes, fresh]:
                grid.close()
