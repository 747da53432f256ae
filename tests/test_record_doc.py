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


# ---- a remote change taken in place (add_change), as against loading the document again


def _doc_with_history(updates: int) -> RecordDoc:
    doc = RecordDoc.new(os.urandom(32))
    doc.create(kind="tool", schema=1, owner="did:key:z6Mkowner", created_at=1, created_by="did:key:z6Mkauthor",
               fields={"n": 0}, tags=[], links=[])
    for n in range(1, updates + 1):
        doc.update(fields={"n": n})
    return doc


@settings(max_examples=40, deadline=None)
@given(before=field_maps, after=field_maps)
def test_a_change_added_in_place_gives_the_document_a_fresh_load_of_it_gives(before, after):
    """The sync message that carries the change (a one-byte type, three
    empty lists, the change with its LEB128 length: crdt/record.py
    _carrying) is what the binding reads, for changes of any size."""
    author = _doc_with_history(3)
    author.update(fields=before)
    receiver = RecordDoc.load(author.save())
    change = author.update(fields={**after, "padding": "x" * 300})  # lengths of two LEB128 bytes and more
    receiver.add_change(change.raw_bytes)
    assert receiver.heads() == author.heads() == RecordDoc.apply(receiver.save(), b"").heads()
    assert receiver.materialize() == author.materialize()


def test_a_change_whose_deps_are_missing_or_bytes_that_are_no_change_leave_the_heads_as_they_were():
    """Automerge holds such a change back, or drops bytes it cannot read,
    without an error: the engine checks that the change's hash became a
    head, and drops the document otherwise (engine/ingest.py)."""
    author = _doc_with_history(2)
    heads = author.heads()
    skipped = author.update(fields={"n": 10})
    later = author.update(fields={"n": 11})
    assert skipped is not None and later is not None
    receiver = RecordDoc(author.doc.fork(heads))  # a copy at the older heads
    receiver.add_change(later.raw_bytes)  # its dep, ``skipped``, is missing
    assert receiver.heads() == heads
    for junk in (b"\x85\x6f\x4a\x83 not a change", b"", b"garbage"):
        receiver.add_change(junk)
        assert receiver.heads() == heads
    receiver.add_change(skipped.raw_bytes)
    receiver.add_change(later.raw_bytes)
    assert receiver.heads() == author.heads()
