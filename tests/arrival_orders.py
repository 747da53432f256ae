"""The engine's arrival-order property, shared by the scenarios that test
it: fresh stores take one scenario's changes in orders and batch cuts that
hypothesis draws, and must all end the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

from registrygrid.engine.ops import Remote
from registrygrid.protocol.envelope import cid_from_str, open_envelope
from registrygrid.sdk import LocalRegistry
from registrygrid.trust.statements import MEMBERS_REGISTRY
from tests.doc_checks import assert_documents_in_memory_are_as_stored


def first_and_rest(registry: str, *grids: LocalRegistry) -> tuple[list[bytes], list[bytes]]:
    """Every change the nodes hold, each once: what a replica takes first
    (the members' statements and ``registry``'s create), and the rest."""
    seen: dict[bytes, None] = {}
    for grid in grids:
        for event in grid.changes(since=0, limit=10_000):
            wire = grid.change(cid_from_str(event.change))
            assert wire is not None
            seen.setdefault(wire, None)
    bodies = {wire: open_envelope(wire).body for wire in seen}
    first = [w for w, body in bodies.items() if body.registry == MEMBERS_REGISTRY
             or (body.record == registry and body.op == "create")]
    return first, [w for w in seen if w not in first]


def replicas_agree_in_any_order(root: Path, first: list[bytes], rest: list[bytes], data: st.DataObject,
                                check: Callable[[LocalRegistry], None], replicas: int = 3) -> None:
    """Each replica takes ``first`` in one batch, then ``rest``: the first
    replica in order, the others permuted, all cut into batches at drawn
    points. No change may be rejected (a refusal is kept, a change that
    waits is parked); ``check`` runs on each replica; every replica ends
    with the same state digest, and its documents in memory as stored."""
    digests = []
    for i in range(replicas):
        order = rest if i == 0 else data.draw(st.permutations(rest), label=f"order{i}")
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(order)), max_size=4), label=f"cuts{i}")))
        with LocalRegistry.open_path(root / f"replica{i}") as replica:
            replica.execute([Remote(w, "p") for w in first])
            bounds = [0, *cuts, len(order)]
            for start, end in zip(bounds, bounds[1:], strict=False):
                if start < end:
                    results = replica.execute([Remote(w, "p") for w in order[start:end]])
                    assert all(r.status != "rejected" for r in results), [r.error for r in results]
            check(replica)
            digests.append(replica.state_digest())
            assert_documents_in_memory_are_as_stored(replica)
    assert len(set(digests)) == 1
