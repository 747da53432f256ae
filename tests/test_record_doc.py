"""A record's Automerge document: what a create writes is what reading it gives back."""

from __future__ import annotations

import os

from automerge.core import extract
from hypothesis import given, settings
from hypothesis import strategies as st

from registrygrid.crdt.record import RecordDoc

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20) | st.floats(
    allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4),
    max_leaves=20,
)
field_maps = st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(fields=field_maps, tags=st.lists(st.sampled_from(["a", "b", "gpu", "text"]), unique=True))
def test_materialize_gives_back_what_create_wrote_and_agrees_with_automerge_extract(fields, tags):
    doc = RecordDoc.new(os.urandom(32))
    doc.create(kind="tool", schema=1, owner="did:key:z6Mkowner", created_at=1_764_000_000_000,
               created_by="did:key:z6Mkauthor", fields=fields, tags=tags,
               links=[{"rel": "uses", "registry": "grid.tools", "record": "t1"}])
    state = doc.materialize()
    assert state["fields"] == fields
    assert state["tags"] == sorted(tags)
    assert state["links"] == [{"rel": "uses", "registry": "grid.tools", "record": "t1"}]
    assert state["created"] == {"at": 1_764_000_000_000, "by": "did:key:z6Mkauthor"}
    assert (state["kind"], state["schema"], state["owner"], state["deleted"]) == ("tool", 1, "did:key:z6Mkowner", False)
    reference = extract(doc.doc)  # the binding's own reader, one get() per key
    reference["tags"] = sorted(reference["tags"])
    assert state == reference
