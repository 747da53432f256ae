"""The receiving side of gossip (protocol/gossip_intake.py), with no network
and no clock: real signed envelopes, a store lookup given as a function,
and time passed in, as node/gossip.py runs it inside py-libp2p's receive
path and the simulator runs it in virtual time."""

from __future__ import annotations

from registrygrid.errors import MalformedInput, SignatureInvalid
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol.envelope import claimed_id, seal
from registrygrid.protocol.gossip import encode_batch
from registrygrid.protocol.gossip_intake import (
    VALIDATION_BURST_S,
    Duplicate,
    Fresh,
    GossipIntake,
    Invalid,
    Throttled,
)
from registrygrid.protocol.hlc import Hlc

KEY = KeyPair(b"\x07" * 32)


def wire(i: int) -> bytes:
    return seal(KEY, registry="grid.clusters", record=f"r{i}", op="create", kind="cluster", schema=1, seq=1,
                prev=b"", hlc=Hlc(1_700_000_000_000 + i, 0), deps=[], change_hash=b"",
                payload=b"\x80").wire


def nothing_stored(ids: object) -> set[bytes]:
    return set()


def test_new_changes_are_fresh_once_and_a_replay_is_a_duplicate() -> None:
    intake = GossipIntake()
    message = encode_batch([wire(0), wire(1)])

    verdict = intake.check("peer-a", message, 0.0, nothing_stored)
    assert isinstance(verdict, Fresh) and len(verdict.envelopes) == 2
    assert [e.body.record for e in verdict.envelopes] == ["r0", "r1"]
    # Not seen until accepted: a message the caller's policy refused may come again.
    assert isinstance(intake.check("peer-b", message, 0.0, nothing_stored), Fresh)
    intake.accept(verdict)
    assert isinstance(intake.check("peer-b", message, 0.0, nothing_stored), Duplicate)
    # Only the new change of a mixed message is opened.
    mixed = intake.check("peer-b", encode_batch([wire(1), wire(2)]), 0.0, nothing_stored)
    assert isinstance(mixed, Fresh) and [e.body.record for e in mixed.envelopes] == ["r2"]


def test_changes_the_store_holds_are_duplicates_and_become_seen() -> None:
    intake = GossipIntake()
    held = {claimed_id(wire(0))}
    asked: list[list[bytes]] = []

    def stored(ids: list[bytes]) -> set[bytes]:
        asked.append(list(ids))
        return held & set(ids)

    assert isinstance(intake.check("peer-a", encode_batch([wire(0)]), 0.0, stored), Duplicate)
    assert isinstance(intake.check("peer-a", encode_batch([wire(0)]), 0.0, stored), Duplicate)
    assert len(asked) == 1, "the second time the seen-set answers, not the store"


def test_undecodable_or_forged_messages_are_invalid_with_their_typed_error() -> None:
    intake = GossipIntake()
    garbage = intake.check("peer-a", b"\x93not a batch", 0.0, nothing_stored)
    assert isinstance(garbage, Invalid) and isinstance(garbage.error, MalformedInput)

    forged = bytearray(wire(3))
    forged[-5] ^= 0xFF  # inside the signature
    verdict = intake.check("peer-a", encode_batch([bytes(forged)]), 0.0, nothing_stored)
    assert isinstance(verdict, Invalid) and isinstance(verdict.error, (SignatureInvalid, MalformedInput))


def test_an_origin_that_spent_its_validation_budget_is_throttled_until_it_refills() -> None:
    intake = GossipIntake(share=0.5, burst=1.0)
    assert isinstance(intake.check("flood", encode_batch([wire(4)]), 0.0, nothing_stored), Fresh)
    intake.budget("flood", 0.0).spend(VALIDATION_BURST_S + 0.5)  # one very costly check
    assert isinstance(intake.check("flood", encode_batch([wire(5)]), 1.0, nothing_stored), Throttled)
    assert isinstance(intake.check("quiet", encode_batch([wire(5)]), 1.0, nothing_stored), Fresh)
    assert isinstance(intake.check("flood", encode_batch([wire(5)]), 3.5, nothing_stored), Fresh)
