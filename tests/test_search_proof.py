"""A record another node sent, rebuilt from its signed changes (search/proof.py).

Real LMDB stores and real envelopes: org A's node writes, a verifier of
A's federation holds the registry's descriptor and A's statements (as a
member of the federation does) and rebuilds records from the changes a
federated search hit would carry. A rebuilt record must be exactly the
record its writer's node stores; anything forged, foreign, out of place
or forked is refused with ``Unverifiable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registrygrid.engine.ops import Remote
from registrygrid.errors import Unverifiable
from registrygrid.identity.delegation import sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import peek
from registrygrid.sdk import LocalRegistry
from registrygrid.search.proof import rebuild_record
from registrygrid.storage import changes, records
from registrygrid.trust.federation import make_genesis
from registrygrid.trust.statements import MEMBERS_REGISTRY
from tests.test_engine import wires_in_feed_order

REG = "acme.clusters"
ORG_A, ORG_B = KeyPair(b"\xa1" * 32), KeyPair(b"\xb1" * 32)
NODE_A, NODE_B, NODE_V = KeyPair(b"\xa2" * 32), KeyPair(b"\xb2" * 32), KeyPair(b"\xc2" * 32)
GENESIS = make_genesis("acme-grid", [ORG_A])


class Grids:
    def __init__(self, root: Path) -> None:
        self.a = LocalRegistry.open_path(root / "a", NODE_A, delegation=sign_delegation(ORG_A, NODE_A.did, ["node"]),
                                         federation=GENESIS)
        # b: an org outside A's federation, writing a registry of the same name in its own store.
        self.b = LocalRegistry.open_path(root / "b", NODE_B, delegation=sign_delegation(ORG_B, NODE_B.did, ["node"]))
        self.verifier = LocalRegistry.open_path(root / "v", NODE_V, federation=GENESIS)
        self.a.create_registry(REG, ["cluster"])
        self.b.create_registry(REG, ["cluster"])

    def replicate_a(self) -> None:
        results = self.verifier.execute([Remote(w, "a") for w in wires_in_feed_order(self.a)])
        assert {r.status for r in results} <= {"applied", "duplicate"}, [r.error for r in results]

    def close(self) -> None:
        for grid in (self.a, self.b, self.verifier):
            grid.close()


@pytest.fixture
def grids(tmp_path: Path) -> Iterator[Grids]:
    made = Grids(tmp_path)
    yield made
    made.close()


def history(grid: LocalRegistry, record_id: str) -> list[bytes]:
    """The changes a federated search hit carries: the record's, in applied order."""
    with grid.store.read() as txn:
        return [changes.wire(grid.store, txn, cid) for _, cid in records.history(grid.store, txn, REG, record_id)]


def test_a_record_rebuilt_from_its_changes_is_the_record_its_writer_stores(grids: Grids) -> None:
    grids.a.put(REG, "cluster", {"name": "gpu-1", "description": "eight H100"}, id="gpu-1", tags=["h100"])
    grids.a.update(REG, "gpu-1", patch={"region": "eu-west"})
    grids.a.update(REG, "gpu-1", patch={"description": "sixteen H100"}, tags=["h100", "up"])
    grids.a.put(REG, "cluster", {"name": "gpu-2"}, id="gpu-2")
    grids.replicate_a()

    for record_id in ("gpu-1", "gpu-2"):
        assert rebuild_record(grids.verifier.engine, REG, record_id, history(grids.a, record_id)) \
            == grids.a.get(REG, record_id)


def test_a_forged_change_is_refused(grids: Grids) -> None:
    grids.a.put(REG, "cluster", {"name": "gpu-1"}, id="gpu-1")
    grids.a.update(REG, "gpu-1", patch={"region": "eu-west"})
    grids.replicate_a()
    wires = history(grids.a, "gpu-1")
    forged = bytearray(wires[1])
    forged[len(forged) // 2] ^= 0xFF

    with pytest.raises(Unverifiable, match="does not verify"):
        rebuild_record(grids.verifier.engine, REG, "gpu-1", [wires[0], bytes(forged)])


def test_changes_of_another_record_or_out_of_order_or_missing_are_refused(grids: Grids) -> None:
    grids.a.put(REG, "cluster", {"name": "gpu-1"}, id="gpu-1")
    grids.a.update(REG, "gpu-1", patch={"region": "eu-west"})
    grids.a.update(REG, "gpu-1", patch={"region": "us-east"})
    grids.a.put(REG, "cluster", {"name": "gpu-2"}, id="gpu-2")
    grids.replicate_a()
    one, two = history(grids.a, "gpu-1"), history(grids.a, "gpu-2")
    engine = grids.verifier.engine

    with pytest.raises(Unverifiable, match="not acme.clusters/gpu-1"):
        rebuild_record(engine, REG, "gpu-1", [*one, *two])
    with pytest.raises(Unverifiable, match="is not the record's create"):
        rebuild_record(engine, REG, "gpu-1", one[1:])
    with pytest.raises(Unverifiable, match="concurrently"):  # the middle change left out: deps do not line up
        rebuild_record(engine, REG, "gpu-1", [one[0], one[2]])
    with pytest.raises(Unverifiable, match="sent twice"):
        rebuild_record(engine, REG, "gpu-1", [one[0], one[0]])
    with pytest.raises(Unverifiable, match="none of the record's changes"):
        rebuild_record(engine, REG, "gpu-1", [])
    # A prefix of the history verifies: the record as it was (a peer may be behind).
    assert rebuild_record(engine, REG, "gpu-1", one[:2])["fields"]["region"] == "eu-west"


def test_a_record_by_an_org_outside_the_federation_is_refused(grids: Grids) -> None:
    grids.replicate_a()  # the verifier knows A's registry, and A's federation
    grids.b.put(REG, "cluster", {"name": "gpu-9"}, id="gpu-9")

    # B's node key speaks for nobody the verifier knows of, even with B's own
    # delegation delivered: a federation takes statements of its members only.
    grids.verifier.execute([Remote(w, "b") for w in wires_in_feed_order(grids.b)
                            if (body := peek(w)) is not None and body.registry == MEMBERS_REGISTRY])
    with pytest.raises(Unverifiable, match="delegation of .* is not known here"):
        rebuild_record(grids.verifier.engine, REG, "gpu-9", history(grids.b, "gpu-9"))


def test_a_record_of_a_registry_the_verifier_does_not_know_is_refused(grids: Grids) -> None:
    grids.b.create_registry("bravo.models", ["cluster"])
    grids.b.put("bravo.models", "cluster", {"name": "m"}, id="m")
    with grids.b.store.read() as txn:
        wires = [changes.wire(grids.b.store, txn, cid)
                 for _, cid in records.history(grids.b.store, txn, "bravo.models", "m")]

    with pytest.raises(Unverifiable, match="unknown_registry"):
        rebuild_record(grids.verifier.engine, "bravo.models", "m", wires)


def test_a_deleted_record_is_not_shown(grids: Grids) -> None:
    grids.a.put(REG, "cluster", {"name": "gpu-1"}, id="gpu-1")
    grids.a.delete(REG, "gpu-1")
    grids.replicate_a()

    with pytest.raises(Unverifiable, match="delete"):
        rebuild_record(grids.verifier.engine, REG, "gpu-1", history(grids.a, "gpu-1"))
