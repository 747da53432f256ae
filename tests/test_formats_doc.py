"""docs/formats.md is pinned to the code: its worked example is rebuilt here
and must appear in the page byte for byte, and its offline verifier must
accept the example and refuse a tampered copy."""

from __future__ import annotations

import re
from pathlib import Path

import nacl.exceptions
import pytest

from registrygrid.crdt.record import RecordDoc
from registrygrid.crdt.snapshot import encode_snapshot, genesis_change, read_snapshot
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import (
    Envelope,
    SignedRoot,
    batch_message,
    draft,
    seal_batch,
)
from registrygrid.protocol.hlc import Hlc
from registrygrid.protocol.merkle import leaf_hash

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"
KEY = KeyPair(bytes(range(32)))
T = 1_764_547_200_000


def _example() -> tuple[list[Envelope], SignedRoot]:
    drafts, prev = [], b""
    for seq, (rid, region) in enumerate([("eu-1", "eu-west"), ("eu-2", "eu-north")], start=1):
        snapshot = encode_snapshot(kind="cluster", schema=1, owner=KEY.did, created_at=T, created_by=KEY.did,
                                   fields={"name": rid, "region": region}, tags=["gpu"], links=[])
        d = draft(author=KEY.did, registry="grid.clusters", record=rid, op="create", kind="cluster", schema=1,
                  seq=seq, prev=prev, hlc=Hlc(T, seq - 1), deps=[], change_hash=b"", payload=snapshot)
        drafts.append(d)
        prev = d.cid
    return seal_batch(KEY, drafts)


def test_the_worked_example_in_formats_md_is_what_the_code_makes() -> None:
    text = DOC.read_text()
    flat = "".join(text.split())
    envelopes, signed = _example()
    eu1, eu2 = envelopes
    assert eu2.wire.hex() in flat
    assert signed.root.hex() in flat and signed.signature.hex() in flat
    assert batch_message(signed.root, 2).hex()[:60] in flat
    for env, other in ((eu1, eu2), (eu2, eu1)):
        assert env.id in text and env.cid[4:].hex() in flat
        assert env.path == [leaf_hash(other.cid)] and env.path[0].hex() in flat  # each other's leaf hash
    genesis = genesis_change(read_snapshot(eu1.body.payload, kind="cluster", schema=1), KEY.did)
    assert genesis.hash.hex() in flat and genesis.raw_bytes[:12].hex() in flat
    update = RecordDoc.apply(None, genesis.raw_bytes).fork_with_actor(KEY.public_key).update(
        fields={"name": "eu-1", "region": "us-east"})
    assert update.raw_bytes[:8].hex() in flat


def test_the_offline_verifier_in_formats_md_accepts_the_example_and_refuses_a_tampered_change() -> None:
    block = re.search(r"<!-- offline-verifier[^>]*-->\s*```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block is not None
    scope: dict = {}
    exec(compile(block.group(1), "docs/formats.md", "exec"), scope)  # noqa: S102 (our own doc)
    envelopes, _ = _example()
    for env in envelopes:
        assert scope["verify_change"](env.wire) == env.cid
    wire = envelopes[1].wire
    at = wire.index(b"eu-north")  # same length: still canonical, but another ID, so another root
    with pytest.raises(nacl.exceptions.BadSignatureError):
        scope["verify_change"](wire[:at] + b"eu-south" + wire[at + 8:])
