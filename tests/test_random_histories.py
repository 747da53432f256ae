"""Random histories of three nodes end with the same records everywhere.

Two orgs' nodes (A has two, B one) write records of one registry, update
fields of every size, tags, links and deletes, while A's first node keeps
changing the registry's rules (its kinds, its size cap, its write policy,
its conflict policy, an access policy for it; it even deletes the registry
and creates it again); between
steps, random pairs of nodes exchange what they hold, in order or
shuffled. In the end every node has everything, and a fresh replica takes
it all in one shuffled batch. No change may be rejected (a refusal is kept
as evidence, a change that waits is parked) and all four stores must hold
the same state. This search found nine convergence defects (a delete of a
dropped kind, kinds racing within one org, a reused Automerge sequence
number, a late intermediate descriptor version, refusals judged before
their signer was known or before their dependencies arrived, access
policies of a deleted registry, and of one whose descriptor came after
them). Erasures have their own search, of two orgs racing for the
same ids (test_erasure_histories.py).
Real LMDB stores exchanging real envelopes.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.errors import NotFound, RegistryError
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import open_envelope
from registrygrid.sdk import LocalRegistry

REG = "random.histories"
ORG_A, ORG_B = KeyPair(b"\x51" * 32), KeyPair(b"\x52" * 32)
KEYS = [KeyPair(bytes([0x60 + i]) * 32) for i in range(3)]
ORGS = [ORG_A, ORG_B, ORG_A]
IDS = [f"r{i}" for i in range(6)]
CONFLICT_POLICIES = ["last-writer-wins", "owner-wins", "union", "max",
                     {"fields": {"a": "max", "b": "manual"}, "delete": "update-wins"}]
ACCESS_RULES = [[{"id": "no-a", "effect": "forbid", "actions": ["update"], "fields": ["a"]}],
                [{"id": "no-creates", "effect": "forbid", "actions": ["create"]}],
                [{"id": "any-edit", "effect": "permit", "actions": ["update", "delete"]}]]


def served(grid: LocalRegistry) -> list[bytes]:
    """What the node serves a peer that holds nothing, as sync does: every
    change of every chain, refused ones too (kept in their author's chain as
    evidence; a feed lists only what counts), in causal order (HLC, author,
    seq). An erased change's bytes are gone: it is never served again
    (test_erasure_histories.py)."""
    wires = [wire for registry, authors in grid.engine.replicated_vector().items() for author in authors
             for wire in grid.engine.envelopes_after(registry, author, 0, limit=100_000, max_bytes=2**40)]
    return sorted(wires, key=_causal)


def _causal(wire: bytes) -> tuple[tuple[int, int], str, int]:
    body = open_envelope(wire, verify=False).body
    return tuple(body.hlc), body.author, body.seq  # type: ignore[return-value]


def send(source: LocalRegistry, target: LocalRegistry, rnd: random.Random | None = None, *,
         tolerate: frozenset[str] = frozenset()) -> None:
    """Everything ``source`` serves, to ``target``: nothing may be rejected
    but with an error code in ``tolerate``."""
    wires = served(source)
    if rnd is not None:
        rnd.shuffle(wires)
    results = target.execute([Remote(w, "peer") for w in wires])
    rejected = [r.error for r in results if r.status == "rejected" and r.error.code not in tolerate]
    assert not rejected, rejected


# How one node passes what it holds to another: ``send`` (everything), or a
# sync pass (test_equivocation_histories.py).
Exchange = Callable[..., None]


def exchange_all(nodes: list[LocalRegistry], *, tolerate: frozenset[str] = frozenset(),
                 exchange: Exchange = send) -> None:
    for source in nodes:
        for target in nodes:
            if source is not target:
                exchange(source, target, tolerate=tolerate)


def open_registry(nodes: list[LocalRegistry], *, exchange: Exchange = send) -> None:
    """Every node knows every other's delegation; A's first node opens REG."""
    exchange_all(nodes, exchange=exchange)
    nodes[0].create_registry(REG, ["cluster", "tool"], write_policy="members", limits={"max_record_bytes": 4096})
    exchange_all(nodes, exchange=exchange)


def settle(nodes: list[LocalRegistry], *, tolerate: frozenset[str] = frozenset(),
           exchange: Exchange = send) -> None:
    """The nodes exchange all they hold until none has anything new (what
    one node forwarded to another, a report a node filed on what it took)."""
    for _ in range(8):
        held = [len(served(node)) for node in nodes]
        exchange_all(nodes, tolerate=tolerate, exchange=exchange)
        if [len(served(node)) for node in nodes] == held:
            return
    raise AssertionError("the nodes still file new changes after 8 rounds of exchanging everything")


def fresh_takes_everything(nodes: list[LocalRegistry], fresh: LocalRegistry, rnd: random.Random, *,
                           tolerate: frozenset[str] = frozenset()) -> None:
    """The nodes settle, then ``fresh`` takes it all in one shuffled batch:
    nothing may be rejected but with an error code in ``tolerate``."""
    settle(nodes, tolerate=tolerate)
    everything = list(dict.fromkeys(w for node in nodes for w in served(node)))
    rnd.shuffle(everything)
    results = fresh.execute([Remote(w, "peer") for w in everything])
    rejected = [r.error for r in results if r.status == "rejected" and r.error.code not in tolerate]
    assert not rejected, rejected


def step(rnd: random.Random, nodes: list[LocalRegistry], *, tolerate: frozenset[str] = frozenset(),
         exchange: Exchange = send) -> None:
    """One random write or exchange; a write its node refuses is fine, and
    so is a change an exchange rejects with a code in ``tolerate``."""
    i = rnd.randrange(3)
    node, record = nodes[i], rnd.choice(IDS)
    op = rnd.choice(["put", "put", "update", "update", "update", "delete", "rules", "tags", "send", "send",
                     "conflicts", "access", "access", "close", "links"])
    try:
        if op == "put" and rnd.random() < 0.3:
            node.put(REG, "tool", {"name": record, "description": "d" * rnd.randrange(1, 3000)}, id=record)
        elif op == "put":
            node.put(REG, "cluster", {"name": record, "v": rnd.randrange(100)}, id=record)
        elif op == "update":
            node.update(REG, record, patch={rnd.choice("abc"): "x" * rnd.choice([1, 10, 1500])})
        elif op == "delete":
            node.delete(REG, record)
        elif op == "tags":
            node.update(REG, record, tags=rnd.sample(["t1", "t2", "t3", "t4"], rnd.randrange(4)))
        elif op == "rules":
            nodes[0].update("grid.registries", REG, patch={
                "kinds": rnd.choice([["cluster"], ["cluster", "tool"]]),
                "limits": {"max_record_bytes": rnd.choice([1024, 2048, 4096])},
                "write_policy": rnd.choice(["members", "open"])})
        elif op == "conflicts":
            nodes[0].update("grid.registries", REG, patch={"conflict_policy": rnd.choice(CONFLICT_POLICIES)})
        elif op == "access":
            access = {"name": "rules", "policy_type": "access", "targets": [REG],
                      "access": {"rules": rnd.choice(ACCESS_RULES)}}
            try:
                nodes[0].update("grid.policies", "rules", fields=access)
            except NotFound:
                nodes[0].put("grid.policies", "policy", access, id="rules")
        elif op == "close":  # the registry's delete, or its creation again
            if rnd.random() < 0.5:
                nodes[0].delete("grid.registries", REG)
            else:
                nodes[0].create_registry(REG, ["cluster", "tool"], write_policy="members")
        elif op == "links":
            node.update(REG, record, links=[{"rel": "dep", "registry": REG, "record": rnd.choice(IDS)}])
        else:
            j = rnd.randrange(3)
            if j != i:
                exchange(node, nodes[j], rnd if rnd.random() < 0.3 else None, tolerate=tolerate)
    except RegistryError:
        pass  # refused locally (not found, too large, a kind not held, ...): nothing was signed
    time.sleep(0.002)  # distinct clocks, mostly


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False))
def test_random_histories_end_with_the_same_records_on_every_node(rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as root:
        nodes = [LocalRegistry.open_path(Path(root) / f"n{i}", key,
                                         delegation=sign_delegation(org, key.did, ["node", "writer"]))
                 for i, (key, org) in enumerate(zip(KEYS, ORGS, strict=True))]
        fresh = LocalRegistry.open_path(Path(root) / "fresh", KeyPair(b"\x70" * 32))
        try:
            open_registry(nodes)
            for _ in range(40):
                step(rnd, nodes)
            fresh_takes_everything(nodes, fresh, rnd)
            digests = {grid.state_digest() for grid in [*nodes, fresh]}
            assert len(digests) == 1, [sorted((r["id"], r["kind"], sorted(r["fields"]), r["deleted"])
                                              for r in grid.list(REG, include_deleted=True).items)
                                       for grid in [*nodes, fresh]]
        finally:
            for grid in [*nodes, fresh]:
                grid.close()
