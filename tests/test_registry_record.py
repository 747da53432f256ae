"""Signed registry records for the DHT (protocol/registry_record.py): each value
is its own evidence, checked on put and on get, and choosing between valid
values is first-come by owner, newest by version."""

from __future__ import annotations

import base64

import msgspec
import pytest

from registrygrid.errors import (
    MalformedInput,
    PolicyDenied,
    SchemaViolation,
    SignatureInvalid,
    TooLarge,
    ValidationError,
)
from registrygrid.identity.delegation import ROLES, sign_delegation
from registrygrid.identity.keys import KeyPair
from registrygrid.protocol import registry_record as rr

ORG, NODE, OTHER = KeyPair(b"\x01" * 32), KeyPair(b"\x02" * 32), KeyPair(b"\x03" * 32)
NOW = 1_800_000_000_000
NAME = "acme.models"


def record(key: KeyPair = NODE, *, owner: KeyPair = ORG, delegated: bool = True, name: str = NAME,
           claimed_at: int = NOW - 10_000, version: tuple[int, int] = (NOW - 5_000, 0), issued_at: int = NOW,
           descriptor: dict | None = None, roles: tuple[str, ...] = ("node", "writer")) -> bytes:
    delegation = sign_delegation(owner, key.did, list(roles), now=(issued_at / 1000) - 60) if delegated else None
    return rr.sign_record(key, delegation, name=name, owner=owner.did, claimed_at=claimed_at, version=version,
                          change_id="bafyexample", descriptor=descriptor or {"name": name, "kinds": ["asset"]},
                          federations=["fed-x"], issued_at=issued_at)


def test_a_record_signed_by_a_key_the_owner_delegated_reads_back() -> None:
    body = rr.read_record(rr.dht_key(NAME), record(), now_ms=NOW)
    assert (body.name, body.owner, body.signer) == (NAME, ORG.did, NODE.did)


def test_the_owner_org_may_sign_its_own_record() -> None:
    assert rr.read_record(rr.dht_key(NAME), record(ORG, delegated=False), now_ms=NOW).signer == ORG.did


def test_a_record_signed_by_a_key_the_owner_never_delegated_is_forged() -> None:
    forged = record(OTHER, delegated=False)  # claims ORG's registry, signed by someone else
    with pytest.raises(MalformedInput):  # no delegation to show
        rr.read_record(rr.dht_key(NAME), forged, now_ms=NOW)
    with pytest.raises(SignatureInvalid):  # a delegation of the signer by another org
        rr.read_record(rr.dht_key(NAME), _with_foreign_delegation(), now_ms=NOW)


def _with_foreign_delegation() -> bytes:
    """NODE signs ORG's registry, showing a delegation from OTHER, not ORG."""
    delegation = sign_delegation(OTHER, NODE.did, ["node"], now=NOW / 1000 - 60)
    return rr.sign_record(NODE, delegation, name=NAME, owner=ORG.did, claimed_at=NOW, version=(NOW, 0),
                          change_id="x", descriptor={"name": NAME, "kinds": ["asset"]}, federations=[], issued_at=NOW)


def test_a_tampered_record_fails_its_signature() -> None:
    signed = msgspec.msgpack.decode(record(), type=rr.SignedRecord)
    body = msgspec.msgpack.decode(signed.body, type=rr.RecordBody)
    altered = msgspec.structs.replace(body, descriptor={"name": NAME, "kinds": ["tool"]})
    tampered = msgspec.msgpack.encode(rr.SignedRecord(msgspec.msgpack.encode(altered), signed.signature))
    with pytest.raises(SignatureInvalid):
        rr.read_record(rr.dht_key(NAME), tampered, now_ms=NOW)


def test_a_record_under_another_name_is_refused() -> None:
    with pytest.raises(ValidationError):
        rr.read_record(rr.dht_key("acme.other"), record(), now_ms=NOW)


def test_a_stale_record_is_refused_and_so_is_one_from_the_future() -> None:
    with pytest.raises(ValidationError, match="stale"):
        rr.read_record(rr.dht_key(NAME), record(issued_at=NOW - rr.RECORD_MAX_AGE_MS - 1), now_ms=NOW)
    with pytest.raises(ValidationError, match="ahead"):
        rr.read_record(rr.dht_key(NAME), record(issued_at=NOW + rr.MAX_FUTURE_MS + 60_000), now_ms=NOW)


def test_an_oversized_record_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(TooLarge):
        rr.read_record(rr.dht_key(NAME), b"\x92" + b"x" * rr.MAX_VALUE_BYTES, now_ms=NOW)
    with pytest.raises(TooLarge):
        record(descriptor={"name": NAME, "description": "x" * rr.MAX_VALUE_BYTES})


def test_a_delegation_without_a_publishing_role_is_refused() -> None:
    role = next(r for r in sorted(ROLES) if r not in rr.PUBLISHING_ROLES)
    with pytest.raises(PolicyDenied):
        rr.read_record(rr.dht_key(NAME), record(roles=(role,)), now_ms=NOW)


def test_garbage_is_malformed() -> None:
    with pytest.raises(MalformedInput):
        rr.read_record(rr.dht_key(NAME), b"\xff\x00garbage", now_ms=NOW)


def test_a_descriptor_nested_past_the_parsers_depth_is_malformed_not_a_crash() -> None:
    """Any peer on the DHT may store bytes under a name: a descriptor nested
    thousands deep raised RecursionError out of the decoder before."""
    marker = msgspec.msgpack.encode("@@deep@@")
    body = msgspec.msgpack.encode(rr.RecordBody(NAME, ORG.did, NOW, (NOW, 0), "bafyexample",
                                                {"name": NAME, "deep": "@@deep@@"}, [], NOW, NODE.did, b""))
    body = body.replace(marker, b"\x91" * 5_000 + b"\xc0")
    value = msgspec.msgpack.encode(rr.SignedRecord(body, b"\x00" * 64))
    with pytest.raises(MalformedInput, match="malformed registry record"):
        rr.read_record(rr.dht_key(NAME), value, now_ms=NOW)


def test_the_newest_descriptor_of_one_owner_is_chosen() -> None:
    old = rr.read_record(rr.dht_key(NAME), record(version=(NOW - 9_000, 0)), now_ms=NOW)
    new = rr.read_record(rr.dht_key(NAME), record(version=(NOW - 1_000, 0)), now_ms=NOW)
    assert rr.choose([old, new]) == 1 and rr.choose([new, old]) == 0


def test_between_owners_the_first_claim_holds_whatever_its_version() -> None:
    first = rr.read_record(rr.dht_key(NAME), record(claimed_at=NOW - 50_000, version=(NOW - 40_000, 0)), now_ms=NOW)
    squatter = rr.read_record(rr.dht_key(NAME), record(OTHER, owner=OTHER, delegated=False, claimed_at=NOW - 1_000,
                                                        version=(NOW - 500, 0)), now_ms=NOW)
    assert rr.choose([squatter, first]) == 1 and rr.choose([first, squatter]) == 0


# ---------------------------------------------------------------- transfers

CLAIM = NOW - 10_000


def transfer(giver: KeyPair, to: KeyPair, *, at: int = NOW - 1_000, claimed_at: int = CLAIM,
             name: str = NAME) -> bytes:
    return rr.sign_transfer(giver, name=name, to_owner=to.did, claimed_at=claimed_at, at=at)


def held(owner: KeyPair, transfers: list[bytes], *, claimed_at: int = CLAIM, version: tuple[int, int] = (NOW, 0),
         issued_at: int = NOW) -> bytes:
    """A record of ``owner`` (signed by its org key) carrying ``transfers``."""
    return rr.sign_record(owner, None, name=NAME, owner=owner.did, claimed_at=claimed_at, version=version,
                          change_id=f"bafy-{owner.did[-4:]}", descriptor={"name": NAME, "kinds": ["asset"]}, federations=[],
                          issued_at=issued_at, transfers=transfers)


def read(value: bytes) -> rr.RecordBody:
    return rr.read_record(rr.dht_key(NAME), value, now_ms=NOW)


def test_a_received_name_is_held_by_the_last_receiver_of_its_chain() -> None:
    body = read(held(OTHER, [transfer(ORG, OTHER)]))
    assert rr.holder(body) == OTHER.did
    pointer = read(held(ORG, [transfer(ORG, OTHER)]))  # the giver's record, pointing at the receiver
    assert rr.holder(pointer) == OTHER.did
    third = KeyPair(b"\x04" * 32)
    relayed = read(held(third, [transfer(ORG, OTHER, at=NOW - 2_000), transfer(OTHER, third)]))
    assert rr.holder(relayed) == third.did


def test_a_transfer_the_giver_did_not_sign_is_refused() -> None:
    signed = msgspec.msgpack.decode(transfer(ORG, OTHER), type=rr.SignedTransfer)
    signed_by_receiver = msgspec.msgpack.encode(rr.SignedTransfer(signed.body, OTHER.sign(signed.body)))
    with pytest.raises(SignatureInvalid):
        read(held(OTHER, [signed_by_receiver]))
    with pytest.raises(ValidationError):  # and nobody gives a name to itself
        rr.sign_transfer(OTHER, name=NAME, to_owner=OTHER.did, claimed_at=CLAIM, at=NOW)


@pytest.mark.parametrize("why, value", [
    ("another name", lambda: held(OTHER, [transfer(ORG, OTHER, name="acme.other")])),
    ("another claim time", lambda: held(OTHER, [transfer(ORG, OTHER, claimed_at=CLAIM - 1)])),
    ("a broken chain", lambda: held(OTHER, [transfer(ORG, OTHER), transfer(ORG, OTHER, at=NOW)])),
    ("an owner the chain does not reach", lambda: held(KeyPair(b"\x05" * 32), [transfer(ORG, OTHER)])),
    ("a transfer from the future", lambda: held(OTHER, [transfer(ORG, OTHER, at=NOW + rr.MAX_FUTURE_MS + 1)])),
])
def test_a_chain_of_transfers_must_lead_from_the_first_claim_to_the_owner(why, value) -> None:
    with pytest.raises(ValidationError):
        read(value())


def test_after_a_transfer_the_receiver_holds_the_name_and_the_giver_cannot_take_it_back() -> None:
    original = read(held(ORG, [], version=(NOW + 5, 0)))  # the giver republishes its old claim, newer version
    pointer = read(held(ORG, [transfer(ORG, OTHER)]))
    receivers = read(held(OTHER, [transfer(ORG, OTHER)]))
    assert rr.choose([original, pointer]) == 1  # before the receiver publishes, the pointer holds
    assert rr.choose([original, pointer, receivers]) == 2
    later_claimer = read(held(KeyPair(b"\x06" * 32), [], claimed_at=CLAIM + 1))
    assert rr.choose([later_claimer, receivers]) == 1  # the receiver keeps the first claim's place


def test_an_owner_that_gives_one_name_twice_loses_it_to_the_transfer_dated_first() -> None:
    third = KeyPair(b"\x07" * 32)
    first = read(held(OTHER, [transfer(ORG, OTHER, at=NOW - 5_000)]))
    second = read(held(third, [transfer(ORG, third, at=NOW - 1_000)]))
    assert rr.choose([second, first]) == 1


def test_the_transfer_member_of_a_descriptor_must_be_its_owners_transfer_of_it() -> None:
    field = {"to": OTHER.did, "statement": base64.b64encode(transfer(ORG, OTHER)).decode()}
    assert rr.transfer_field(NAME, ORG.did, field).to_owner == OTHER.did
    with pytest.raises(ValidationError):  # the descriptor of another org's registry
        rr.transfer_field(NAME, OTHER.did, field)
    with pytest.raises(ValidationError):  # names another receiver
        rr.transfer_field(NAME, ORG.did, {**field, "to": NODE.did})
    with pytest.raises(ValidationError):
        rr.transfer_field(NAME, ORG.did, {"to": OTHER.did, "statement": "not base64!"})


@pytest.mark.parametrize("descriptor", [
    {"name": NAME, "kinds": 5},
    {"name": NAME, "kinds": ["asset"], "replication": {"scope": "public", "readers": 5}},
    {"name": NAME, "kinds": ["asset"], "replication": "public"},
])
def test_a_descriptor_of_another_shape_than_every_stored_one_is_refused(descriptor: dict) -> None:
    # Signed by its owner and accepted on put and get, such a record made
    # every remote read and follow of the name fail with a TypeError (500).
    with pytest.raises(SchemaViolation):
        rr.read_record(rr.dht_key(NAME), record(descriptor=descriptor), now_ms=NOW)


def test_a_key_whose_delegation_lapsed_cannot_date_a_record_back_into_its_old_window() -> None:
    # The delegation was checked at issued_at alone, which the signer picks:
    # a key whose delegation expired 22 h ago signed a record dated just
    # inside its old window, and it won over the owner's own for two days.
    lapsed_at = NOW // 1000 - 22 * 3600
    delegation = sign_delegation(ORG, NODE.did, ["node", "writer"], now=lapsed_at - 3600, valid_for=3600)
    backdated = rr.sign_record(NODE, delegation, name=NAME, owner=ORG.did, claimed_at=(lapsed_at - 600) * 1000,
                               version=((lapsed_at - 60) * 1000, 0), change_id="x", descriptor={"name": NAME, "kinds": ["asset"]},
                               federations=[], issued_at=(lapsed_at - 60) * 1000)
    with pytest.raises(PolicyDenied, match="expired"):
        rr.read_record(rr.dht_key(NAME), backdated, now_ms=NOW)
    # Read while its delegation held, the same record was sound.
    assert rr.read_record(rr.dht_key(NAME), backdated, now_ms=(lapsed_at - 30) * 1000).signer == NODE.did


@pytest.mark.parametrize("claimed_at", [-1, NOW + rr.MAX_FUTURE_MS + 1])
def test_a_claim_before_the_epoch_or_after_its_own_signing_is_refused(claimed_at: int) -> None:
    with pytest.raises(ValidationError, match="claims the name"):
        rr.read_record(rr.dht_key(NAME), record(claimed_at=claimed_at), now_ms=NOW)


def test_a_descriptor_version_from_the_future_is_refused() -> None:
    # Within one owner the newest version wins: a record whose version was
    # 2**62 held the name against every later descriptor of its owner.
    with pytest.raises(ValidationError, match="descriptor version dated"):
        rr.read_record(rr.dht_key(NAME), record(version=(2**62, 0)), now_ms=NOW)
    assert rr.read_record(rr.dht_key(NAME), record(version=(NOW, 7)), now_ms=NOW).version == (NOW, 7)
