"""The protocol layer: canonical signed envelopes, change IDs, identities, clocks, delegations.

Everything here is pure (no LMDB, no network): bytes in, typed values or typed
errors out.
"""

from __future__ import annotations

import msgspec
import multiformats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiformats import multihash

from registrygrid.errors import MalformedInput, PolicyDenied, RegistryError, SignatureInvalid, TooLarge, ValidationError
from registrygrid.identity.delegation import (
    DelegationBody,
    Delegation,
    decode_delegation,
    sign_delegation,
    verify_delegation,
)
from registrygrid.identity.keys import (
    KeyPair,
    did_from_public_key,
    peer_id_from_public_key,
    public_key_from_did,
)
from registrygrid.protocol import limits
from registrygrid.protocol.envelope import (
    CID_BYTES,
    OPS,
    PROTOCOL_VERSION,
    ChangeBody,
    batch_message,
    change_id,
    cid_from_str,
    cid_to_str,
    open_envelope,
    seal,
)
from registrygrid.protocol.hlc import MAX_DRIFT_MS, Hlc, HybridClock
from registrygrid.protocol.merkle import leaf_hash

# Fixed keys: hypothesis reruns examples, and the same input must give the same bytes.
KEY = KeyPair(bytes(range(32)))
OTHER_KEY = KeyPair(bytes(range(1, 33)))

BOUNDED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

registry_names = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z")
record_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@~+-]{0,30}\Z")
kind_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,15}\Z")
hashes = st.binary(min_size=32, max_size=32)


@st.composite
def seal_args(draw: st.DrawFn) -> dict:
    seq = draw(st.integers(min_value=1, max_value=2**63 - 1))
    return {
        "registry": draw(registry_names),
        "record": draw(record_ids),
        "op": (op := draw(st.sampled_from(OPS))),
        "kind": draw(kind_names),
        "schema": draw(st.integers(min_value=1, max_value=2**16 - 1)),
        "seq": seq,
        "prev": b"" if seq == 1 else draw(st.binary(min_size=CID_BYTES, max_size=CID_BYTES)),
        "hlc": Hlc(draw(st.integers(0, 2**48 - 1)), draw(st.integers(0, 2**32 - 1))),
        "deps": (deps := draw(st.lists(hashes, max_size=4))),
        # A record's first create (no deps) is a snapshot: no Automerge hash.
        "change_hash": b"" if op == "create" and not deps else draw(hashes),
        "payload": draw(st.binary(min_size=1, max_size=512)),
    }


def _example_args(**overrides: object) -> dict:
    args = {
        "registry": "grid.functions",
        "record": "resize",
        "op": "create",
        "kind": "function",
        "schema": 1,
        "seq": 1,
        "prev": b"",
        "hlc": Hlc(1_700_000_000_000, 0),
        "deps": [],
        "change_hash": b"",
        "payload": b"snapshot bytes",
    }
    args.update(overrides)
    return args


def _crafted_fields(key: KeyPair) -> dict:
    return {
        "v": PROTOCOL_VERSION,
        "registry": "grid.functions",
        "record": "resize",
        "op": "create",
        "kind": "function",
        "schema": 1,
        "author": key.did,
        "seq": 1,
        "prev": b"",
        "hlc": (1_700_000_000_000, 0),
        "deps": [],
        "change_hash": b"",
        "payload": b"snapshot bytes",
    }


def _signed_alone(body: bytes, key: KeyPair) -> bytes:
    """The wire of ``body`` signed by ``key`` as a batch of one, whatever
    the body says."""
    root = leaf_hash(change_id(body))
    return msgspec.msgpack.encode([body, 0, 1, [], key.sign(batch_message(root, 1))])


def _crafted_wire(key: KeyPair, **overrides: object) -> bytes:
    """A signed envelope whose body may break the rules that seal() keeps."""
    fields = {**_crafted_fields(key), **overrides}
    return _signed_alone(msgspec.msgpack.encode(ChangeBody(**fields)), key)


# ---------------------------------------------------------------- canonical encoding


@BOUNDED
@given(seal_args())
def test_sealed_envelope_opens_to_the_same_body_wire_and_id(args: dict) -> None:
    env = seal(KEY, **args)
    opened = open_envelope(env.wire)
    assert opened.body == env.body
    assert opened.body.author == KEY.did
    assert opened.wire == env.wire
    assert opened.cid == env.cid
    assert opened.id == env.id
    # Sealing the same values again gives the same bytes (Ed25519 is
    # deterministic, msgpack is canonical), hence the same change ID.
    again = seal(KEY, **args)
    assert again.wire == env.wire
    assert again.id == env.id


@BOUNDED
@given(st.binary(min_size=0, max_size=2048))
def test_change_id_text_is_a_cidv1_raw_sha256_in_base32(wire: bytes) -> None:
    cid = change_id(wire)
    expected = str(multiformats.CID("base32", 1, "raw", multihash.digest(wire, "sha2-256")))
    assert cid_to_str(cid) == expected
    assert cid_from_str(cid_to_str(cid)) == cid


@pytest.mark.parametrize(
    "text",
    ["", "b", "zQmSomething", "bafkrei", "b" + "a" * 200, 42, cid_to_str(b"\x01\x70\x12\x20" + b"\x00" * 32)],
)
def test_text_that_is_not_a_change_id_is_refused_with_a_validation_error(text: object) -> None:
    with pytest.raises(ValidationError):
        cid_from_str(text)  # type: ignore[arg-type]


# ---------------------------------------------------------------- tampering and fuzzing

_TAMPER_TARGET = seal(KEY, **_example_args(op="update", deps=[b"\x22" * 32, b"\x33" * 32], change_hash=b"\x11" * 32,
                                           seq=7, prev=b"\x01" * CID_BYTES))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(_TAMPER_TARGET.wire) * 8 - 1))
def test_any_single_bit_flip_in_an_envelope_fails_verification(bit: int) -> None:
    tampered = bytearray(_TAMPER_TARGET.wire)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(RegistryError) as caught:
        open_envelope(bytes(tampered))
    assert isinstance(caught.value, (SignatureInvalid, MalformedInput, TooLarge))


def test_every_single_bit_flip_of_a_small_envelope_is_refused() -> None:
    # Exhaustive companion of the property above for one envelope.
    wire = _TAMPER_TARGET.wire
    for bit in range(len(wire) * 8):
        tampered = bytearray(wire)
        tampered[bit // 8] ^= 1 << (bit % 8)
        try:
            open_envelope(bytes(tampered))
        except (SignatureInvalid, MalformedInput, TooLarge):
            continue
        raise AssertionError(f"flipping bit {bit} gave an envelope that opens")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash_the_envelope_decoder(data: bytes) -> None:
    try:
        open_envelope(data)
    except RegistryError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_envelopes_raise_only_registry_errors(data: st.DataObject) -> None:
    # Structured fuzzing: splice, truncate and extend a valid envelope, so the
    # decoder sees inputs that are almost msgpack of the right shape.
    wire = bytearray(_TAMPER_TARGET.wire)
    cut = data.draw(st.integers(0, len(wire)))
    insert = data.draw(st.binary(max_size=16))
    skip = data.draw(st.integers(0, 8))
    mutated = bytes(wire[:cut]) + insert + bytes(wire[cut + skip:])
    if mutated == _TAMPER_TARGET.wire:
        return
    with pytest.raises(RegistryError):
        open_envelope(mutated)


def test_envelope_over_the_size_cap_is_too_large() -> None:
    wire = _crafted_wire(KEY, payload=b"x" * (limits.MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(TooLarge):
        open_envelope(wire)


def test_sealing_a_change_over_the_size_cap_is_refused() -> None:
    with pytest.raises(TooLarge):
        seal(KEY, **_example_args(payload=b"x" * limits.MAX_ENVELOPE_BYTES))


def test_a_well_formed_crafted_envelope_opens() -> None:
    # The control for the refusals below: the crafting itself is sound.
    env = open_envelope(_crafted_wire(KEY))
    assert env.body.author == KEY.did


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"v": PROTOCOL_VERSION + 1}, id="future-protocol-version"),
        pytest.param({"v": 0}, id="protocol-version-zero"),
        pytest.param({"op": "merge"}, id="unknown-op"),
        pytest.param({"seq": 0}, id="seq-zero"),
        pytest.param({"seq": 1, "prev": b"\x01" * CID_BYTES}, id="prev-on-first-change"),
        pytest.param({"seq": 2, "prev": b""}, id="no-prev-on-later-change"),
        pytest.param({"schema": 0}, id="schema-zero"),
        pytest.param({"registry": "Grid/Functions"}, id="bad-registry-name"),
        pytest.param({"record": "a/b"}, id="bad-record-id"),
        pytest.param({"kind": "Function"}, id="bad-kind"),
        pytest.param({"hlc": (2**48, 0)}, id="clock-out-of-range"),
        pytest.param({"deps": [b"short"]}, id="dep-not-a-hash"),
        pytest.param({"deps": [b"\x00" * 32] * (limits.MAX_DEPS + 1)}, id="too-many-deps"),
        pytest.param({"op": "update", "deps": [b"\x00" * 32], "change_hash": b"\x00" * 31}, id="short-change-hash"),
        pytest.param({"change_hash": b"\x00" * 32}, id="first-create-as-an-automerge-change"),
        pytest.param({"op": "update", "deps": [b"\x00" * 32]}, id="update-as-a-snapshot"),
        pytest.param({"payload": b""}, id="empty-payload"),
    ],
)
def test_signed_envelope_with_an_out_of_range_field_is_malformed(overrides: dict) -> None:
    with pytest.raises(MalformedInput):
        open_envelope(_crafted_wire(KEY, **overrides))


def test_envelope_in_non_canonical_msgpack_is_malformed() -> None:
    env = seal(KEY, **_example_args())
    outer = msgspec.msgpack.decode(env.wire)
    # The same array, written with a 16-bit array header instead of a fixarray.
    non_canonical = b"\xdc\x00\x05" + env.wire[1:]
    with pytest.raises(MalformedInput):
        open_envelope(non_canonical)
    assert msgspec.msgpack.decode(non_canonical) == outer


def test_envelope_with_invalid_utf8_in_a_text_field_is_malformed() -> None:
    # A signed body whose record id is not UTF-8: msgpack-valid, but not a
    # string. The decoder must answer MalformedInput, not leak a UnicodeDecodeError.
    body = msgspec.msgpack.encode(ChangeBody(**{**_crafted_fields(KEY), "record": "resize"}))
    assert body.count(b"\xa6resize") == 1
    body = body.replace(b"\xa6resize", b"\xa6resiz\xff")
    wire = _signed_alone(body, KEY)
    with pytest.raises(MalformedInput):
        open_envelope(wire)


def test_envelope_signed_by_another_key_than_its_author_is_refused() -> None:
    wire = _crafted_wire(KEY, author=OTHER_KEY.did)
    with pytest.raises(SignatureInvalid):
        open_envelope(wire)


def test_envelope_whose_author_is_not_a_did_key_is_refused() -> None:
    with pytest.raises(SignatureInvalid):
        open_envelope(_crafted_wire(KEY, author="did:web:example.org"))


# ---------------------------------------------------------------- identities


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_did_key_round_trips_to_the_same_public_key(seed: bytes) -> None:
    key = KeyPair(seed)
    assert key.did.startswith("did:key:z6Mk")
    assert did_from_public_key(key.public_key) == key.did
    assert public_key_from_did(key.did) == key.public_key


@pytest.mark.parametrize(
    "did",
    ["", "did:web:example.org", "did:key:", "did:key:z", "did:key:zzzz",
     # a valid multibase of the secp256k1-pub codec (0xe7), not Ed25519
     "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"],
)
def test_malformed_or_non_ed25519_did_is_refused(did: str) -> None:
    with pytest.raises(ValidationError):
        public_key_from_did(did)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_peer_id_is_the_one_py_libp2p_derives_from_the_same_key(seed: bytes) -> None:
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    key = KeyPair(seed)
    expected = str(ID.from_pubkey(Ed25519PublicKey.from_bytes(key.public_key)))
    assert peer_id_from_public_key(key.public_key) == expected
    assert key.peer_id == expected
    assert expected.startswith("12D3KooW")


def test_peer_id_matches_the_libp2p_key_pair_made_from_the_same_seed() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    key = KeyPair(bytes(range(32)))
    libp2p_pair = create_new_key_pair(key.seed)
    assert libp2p_pair.public_key.to_bytes() == key.public_key
    assert str(ID.from_pubkey(libp2p_pair.public_key)) == key.peer_id


def test_signature_of_one_key_does_not_verify_under_another() -> None:
    from registrygrid.identity.keys import verify_signature

    signature = KEY.sign(b"message")
    verify_signature(KEY.public_key, b"message", signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(OTHER_KEY.public_key, b"message", signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(KEY.public_key, b"messagE", signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(KEY.public_key, b"message", signature[:-1])


def test_key_pair_repr_never_shows_the_seed() -> None:
    assert KEY.seed.hex() not in repr(KEY)
    assert KEY.did in repr(KEY)


# ---------------------------------------------------------------- hybrid logical clock


class SteppingClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_hlc_follows_the_wall_clock_when_it_advances() -> None:
    wall = SteppingClock(1000)
    clock = HybridClock(wall)
    assert clock.tick() == Hlc(1000, 0)
    wall.now = 1005
    assert clock.tick() == Hlc(1005, 0)


def test_hlc_stays_monotonic_when_the_wall_clock_steps_back() -> None:
    wall = SteppingClock(10_000)
    clock = HybridClock(wall)
    stamps = [clock.tick()]
    for now in (9_000, 9_500, 10_000, 2_000, 10_001, 10_001):
        wall.now = now
        stamps.append(clock.tick())
    assert all(a < b for a, b in zip(stamps, stamps[1:])), stamps
    assert stamps[1] == Hlc(10_000, 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50))
def test_hlc_ticks_strictly_increase_whatever_the_wall_clock_does(walls: list[int]) -> None:
    wall = SteppingClock(walls[0])
    clock = HybridClock(wall)
    previous = clock.tick()
    for now in walls[1:]:
        wall.now = now
        current = clock.tick()
        assert current > previous
        previous = current


def test_hlc_observe_moves_past_a_remote_timestamp_ahead_of_it() -> None:
    wall = SteppingClock(1000)
    clock = HybridClock(wall)
    clock.tick()
    remote = Hlc(1000 + 60_000, 7)
    assert clock.observe(remote) is True
    after = clock.tick()
    assert after > remote


def test_hlc_observe_of_an_older_remote_keeps_the_clock() -> None:
    wall = SteppingClock(5000)
    clock = HybridClock(wall)
    mine = clock.tick()
    assert clock.observe(Hlc(10, 3)) is True
    assert clock.last == mine


def test_hlc_refuses_a_remote_timestamp_beyond_the_drift_limit() -> None:
    wall = SteppingClock(1_000_000)
    clock = HybridClock(wall)
    before = clock.tick()
    assert clock.observe(Hlc(1_000_000 + MAX_DRIFT_MS + 1, 0)) is False
    assert clock.last == before
    # Exactly at the limit is still accepted.
    assert clock.observe(Hlc(1_000_000 + MAX_DRIFT_MS, 0)) is True


# ---------------------------------------------------------------- delegations

ORG = KeyPair(b"\x07" * 32)
NODE = KeyPair(b"\x08" * 32)
NOW = 1_700_000_000


def test_delegation_signed_by_the_org_verifies_for_its_subject_and_role() -> None:
    delegation = sign_delegation(ORG, NODE.did, ["node", "writer"], now=NOW, valid_for=3600)
    decoded = decode_delegation(delegation.encode())
    claims = verify_delegation(decoded, org=ORG.did, subject=NODE.did, role="node", now=NOW + 10)
    assert claims.org == ORG.did
    assert claims.subject == NODE.did
    assert claims.roles == ("node", "writer")
    assert claims.expires == NOW + 3600


def test_expired_delegation_is_policy_denied() -> None:
    delegation = sign_delegation(ORG, NODE.did, ["node"], now=NOW, valid_for=3600)
    with pytest.raises(PolicyDenied):
        verify_delegation(delegation, role="node", now=NOW + 3600)
    with pytest.raises(PolicyDenied):
        verify_delegation(delegation, role="node", now=NOW - 1)  # not valid yet


def test_delegation_without_the_needed_role_is_policy_denied() -> None:
    delegation = sign_delegation(ORG, NODE.did, ["reader"], now=NOW)
    with pytest.raises(PolicyDenied):
        verify_delegation(delegation, role="writer", now=NOW + 1)


def test_tampered_delegation_body_fails_its_signature() -> None:
    delegation = sign_delegation(ORG, NODE.did, ["reader"], now=NOW)
    claims = delegation.claims
    widened = DelegationBody(org=claims.org, subject=claims.subject, roles=("admin", "reader"),
                             not_before=claims.not_before, expires=claims.expires + 10**9)
    forged = Delegation(body=msgspec.msgpack.encode(widened), signature=delegation.signature)
    with pytest.raises(SignatureInvalid):
        verify_delegation(decode_delegation(forged.encode()), now=NOW + 1)


def test_delegation_for_another_subject_or_from_another_org_is_refused() -> None:
    delegation = sign_delegation(ORG, NODE.did, ["node"], now=NOW)
    with pytest.raises(SignatureInvalid):
        verify_delegation(delegation, subject=OTHER_KEY.did, now=NOW + 1)
    with pytest.raises(SignatureInvalid):
        verify_delegation(delegation, org=OTHER_KEY.did, now=NOW + 1)


def test_delegation_with_an_unknown_role_cannot_be_signed() -> None:
    with pytest.raises(ValidationError):
        sign_delegation(ORG, NODE.did, ["superuser"], now=NOW)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_delegation_decoder(data: bytes) -> None:
    try:
        verify_delegation(decode_delegation(data), now=NOW)
    except RegistryError:
        pass


# ---------------------------------------------------------------- one signature per batch


def _batch(n: int) -> list:
    from registrygrid.protocol.envelope import draft, seal_batch

    drafts = [draft(author=KEY.did, **_example_args(record=f"r{i}")) for i in range(n)]
    envelopes, signed = seal_batch(KEY, drafts)
    return [envelopes, signed, drafts]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 100])
def test_every_change_of_a_batch_opens_alone_with_its_path_and_the_one_signature(n: int) -> None:
    envelopes, signed, drafts = _batch(n)
    assert signed.size == n and signed.author == KEY.did
    assert len({env.signature for env in envelopes}) == 1
    for env, made in zip(envelopes, drafts):
        opened = open_envelope(env.wire)
        assert opened.cid == made.cid == change_id(made.body_bytes)  # the ID is the body's alone
        assert opened.root == signed.root
        assert len(opened.path) <= (0 if n == 1 else (n - 1).bit_length())  # log2 of the batch


def test_a_batch_signature_is_checked_once_then_found_in_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from registrygrid.protocol import envelope

    envelopes, _, _ = _batch(50)
    envelope.forget_verified()
    checks = []
    real = envelope.verify_signature
    monkeypatch.setattr(envelope, "verify_signature", lambda *a: (checks.append(1), real(*a))[1])
    for env in envelopes:
        open_envelope(env.wire)
    assert len(checks) == 1


def test_a_change_moved_to_another_index_or_batch_size_is_refused() -> None:
    envelopes, _, _ = _batch(8)
    body, index, size, path, signature = msgspec.msgpack.decode(envelopes[3].wire)
    for forged in ([body, index ^ 1, size, path, signature], [body, index, size + 1, path, signature],
                   [body, index, size, path[:-1], signature]):
        with pytest.raises((SignatureInvalid, MalformedInput)):
            open_envelope(msgspec.msgpack.encode(forged))


def test_a_body_swapped_into_another_changes_proof_is_refused() -> None:
    envelopes, _, _ = _batch(4)
    body_a = msgspec.msgpack.decode(envelopes[0].wire)[0]
    _, index, size, path, signature = msgspec.msgpack.decode(envelopes[1].wire)
    with pytest.raises(SignatureInvalid):
        open_envelope(msgspec.msgpack.encode([body_a, index, size, path, signature]))


def test_another_keys_signature_over_the_same_root_is_refused() -> None:
    envelopes, signed, _ = _batch(4)
    body, index, size, path, _ = msgspec.msgpack.decode(envelopes[2].wire)
    forged = msgspec.msgpack.encode([body, index, size, path, OTHER_KEY.sign(batch_message(signed.root, size))])
    with pytest.raises(SignatureInvalid):
        open_envelope(forged)
