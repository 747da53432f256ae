"""Creating, joining and growing a federation from a node's home.

What `rgrid federation create|invite|sign|join` do, as functions (the CLI,
tests and benchmarks call the same ones). The signed statements themselves
are in ``trust/federation.py``; a home keeps the federation it belongs to
in ``federation.json`` (``Home.set_federation``), and opening it publishes
the genesis, the org's invitation and its delegation into ``grid.members``
so they replicate.

An invitation file is what an admin hands to the org it invites: JSON with
the genesis and the invitation, both base64 of their signed bytes.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from registrygrid.errors import Conflict, NotInitialized, ValidationError
from registrygrid.files import read_json
from registrygrid.home import Home, read_key_file, sync_folder, write_key_file, write_text_durably
from registrygrid.identity.keys import KeyPair
from registrygrid.trust.federation import (
    Genesis,
    Invitation,
    check_invitation,
    cosign,
    decode_genesis,
    decode_invitation,
    invite,
    make_genesis,
)


def org_key(home: Home, key_file: Path | None = None) -> KeyPair:
    """The home's org key (``keys/org.key``, or ``key_file`` for one kept offline)."""
    membership = home.org()
    if membership is None:
        raise NotInitialized(f"{home.path} has no org; run `rgrid init`")
    path = key_file or home.org_key_path
    if not path.exists():
        if key_file is not None:  # it was given: say so, not "give it"
            raise NotInitialized(f"--org-key {key_file}: no such file")
        raise NotInitialized(f"the org key is not in this home ({home.org_key_path}); give it with --org-key FILE")
    key = read_key_file(path)
    if key.did != membership.org:
        raise ValidationError(f"{path} is the key of {key.did}, not of this home's org {membership.org}")
    return key


def create_federation(home: Home, name: str, *, quorum: int = 1, org_key_file: Path | None = None,
                      co_founders: Sequence[KeyPair] = ()) -> Genesis:
    """A new federation founded by this home's org (and ``co_founders``, whose
    keys sign the genesis too), joined by this home."""
    genesis = make_genesis(name, [org_key(home, org_key_file), *co_founders], quorum=quorum)
    home.set_federation(genesis)
    return genesis


def current_genesis(home: Home) -> Genesis:
    federation = home.federation()
    if federation.genesis is None:
        raise ValidationError(f"{home.path} is in its org's own implicit federation; create one first "
                              "(`rgrid federation create NAME`) or join one (`rgrid federation join FILE`)")
    return federation.genesis


def invite_org(home: Home, org: str, *, admin: bool = False, org_key_file: Path | None = None,
               attributes: dict[str, str] | None = None) -> Invitation:
    return invite(current_genesis(home), org, org_key(home, org_key_file), admin=admin, attributes=attributes)


def cosign_invitation(home: Home, invitation: Invitation, *, org_key_file: Path | None = None) -> Invitation:
    return cosign(invitation, current_genesis(home), org_key(home, org_key_file))


def invitation_file(genesis: Genesis, invitation: Invitation | None) -> str:
    """The file an invited org joins with; without an invitation, the file
    a co-founder's nodes join with (they need only the genesis)."""
    return json.dumps({"federation": genesis.id, "name": genesis.name,
                       "org": invitation.claims.org if invitation else None,
                       "genesis": base64.b64encode(genesis.encode()).decode(),
                       "invitation": base64.b64encode(invitation.encode()).decode() if invitation else None},
                      indent=2) + "\n"


def read_invitation_file(text: str) -> tuple[Genesis, Invitation | None]:
    try:
        data: dict[str, Any] = json.loads(text)
        genesis = decode_genesis(base64.b64decode(data["genesis"]))
        invitation = decode_invitation(base64.b64decode(data["invitation"])) if data.get("invitation") else None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"not an invitation file: {exc}") from None
    except RecursionError:  # nested past the parser's depth: a traceback before
        raise ValidationError("not an invitation file: nested too deeply") from None
    return genesis, invitation


def join_federation(home: Home, genesis: Genesis, invitation: Invitation | None) -> None:
    """Join with an invitation of this home's org that has its quorum (or as a founder's node)."""
    membership = home.org()
    if membership is None:
        raise NotInitialized(f"{home.path} has no org; run `rgrid init`")
    if membership.org not in genesis.claims.founders:
        if invitation is None:
            raise ValidationError(f"org {membership.org} is not a founder of {genesis.name}: it needs an invitation")
        if invitation.claims.org != membership.org:
            raise ValidationError(f"the invitation admits {invitation.claims.org}, not this home's org "
                                  f"{membership.org}")
        check_invitation(invitation, genesis.claims, genesis.id)
    home.set_federation(genesis, invitation)


def federate(homes: Sequence[Home], name: str) -> Genesis:
    """Put initialised homes into one new federation: the first home's org
    founds it and invites every other org (tests, benchmarks, demos)."""
    founder = homes[0]
    genesis = create_federation(founder, name)
    invitations: dict[str, Invitation] = {}
    for home in homes[1:]:
        membership = home.org()
        assert membership is not None, f"{home.path} is not initialised"
        if membership.org in genesis.claims.founders:
            home.set_federation(genesis)
            continue
        if membership.org not in invitations:
            invitations[membership.org] = invite_org(founder, membership.org)
        home.set_federation(genesis, invitations[membership.org])
    return genesis


# A rotation's plan, written before its key swap: what finish_rotation
# completes, at the rotation itself or at the next open of a home a crash
# stopped midway (the plan names the new key, its delegation and the
# revocation of the old key still to publish).
ROTATION_FILE = "rotation.json"


def rotate_node_key(home: Home, *, org_key_file: Path | None = None, reason: str = "",
                    on_step: Callable[[str], None] = lambda step: None) -> dict[str, Any]:
    """Give this home's node a new key, without losing history or breaking chains.

    The org delegates the new key (same roles) and revokes the old one with
    cutoffs at every change the old key made here, so all of them stay
    valid everywhere while anything the old key signs from now on (a copy
    left on a disk, a thief) is refused. The new key starts chains of its
    own. The old key file is kept beside the new one, renamed, for audits.
    The node must not be running (this takes the home's lock); its peer ID
    changes with the key, so peers that bootstrap from its address need the
    new one (`rgrid id`).

    Safe to stop at any point: the home always has a key and the delegation
    of the key it has once it is opened again. The new key and a copy of
    the old one are written first, then the plan (ROTATION_FILE); the key
    swap, the delegation and the revocation's publication follow it, and
    the next open of the home finishes what a crash left undone.
    ``on_step`` hears each step as it is done ("keys written", "plan
    written", "key swapped", "published")."""
    from registrygrid.identity.delegation import sign_delegation
    from registrygrid.sdk import LocalRegistry, StoreChecks
    from registrygrid.trust.statements import revocation_record, sign_revocation

    home.require()
    signer = org_key(home, org_key_file)
    if (home.path / ROTATION_FILE).exists():
        # One a crash stopped: finished (its revocation published) before
        # this one's plan takes the file's place.
        with LocalRegistry.open_home(home):
            pass
    home.lock("rotate-key")
    try:
        membership = home.org()
        assert membership is not None
        old = home.node_key()
        cutoffs: dict[str, int] = {}
        recovering = False
        if (home.store_path / "data.mdb").exists():  # else never opened (`rgrid init` alone): nothing signed
            checks = StoreChecks(home)
            try:
                cutoffs, recovering = checks.heads_of(old.did), checks.recovering()
            finally:
                checks.close()
        if home.key_has_signed(old.did) and (not cutoffs or recovering):
            # The cutoffs are the last change the old key made of each chain,
            # as this store holds them: from a store lost, emptied or still
            # recovering, the revocation named none (or too few), and every
            # node then dropped what the old key had signed.
            raise Conflict(f"this node's key {old.did} has signed changes, and this home's store "
                           + ("is still recovering them from peers" if recovering else "holds none of them")
                           + ": its revocation would cut them everywhere. Recover the store first (start the node "
                           "in its federation until `rgrid stats` shows recovering 0), then rotate")
        short = {r: s for r, s in home.store_mark(old.did).items() if cutoffs.get(r, 0) < s}
        if short:
            # A store restored from an older backup, not opened since (which
            # would have made it recover): its cutoffs stop before changes
            # the key signed, and the revocation would cut those everywhere.
            registry, seq = sorted(short.items())[0]
            raise Conflict(f"this home's store holds {cutoffs.get(registry, 0)} of the changes {old.did} signed in "
                           f"{registry}, where it held {seq} when it last closed (restored from an older backup?): "
                           "its revocation would cut the rest everywhere. Start the node in its federation until "
                           "they are back and `rgrid store recovered` ends its recovery, then rotate")
        new = KeyPair.generate()
        delegation = sign_delegation(signer, new.did, membership.delegation.claims.roles)
        revocation = sign_revocation(signer, old.did, cutoffs, reason=reason or f"rotated to {new.did}")
        retired = home.node_key_path.with_name(f"node.key.retired-{old.did[-8:]}")
        staged = _staged_key(home)
        staged.unlink(missing_ok=True)  # a rotation stopped before its plan: that key never signed
        write_key_file(staged, new)
        if not retired.exists():
            write_key_file(retired, old)
        on_step("keys written")
        record_id, fields = revocation_record(revocation)
        write_text_durably(home.path / ROTATION_FILE, json.dumps({
            "old": old.did, "new": new.did, "delegation": base64.b64encode(delegation.encode()).decode(),
            "revocation": {"id": record_id, "fields": fields}}) + "\n")
        on_step("plan written")
        finish_rotation(home)
        on_step("key swapped")
    finally:
        home.unlock()
    with LocalRegistry.open_home(home):  # publishes the new delegation and the revocation, and ends the plan
        pass
    on_step("published")
    return {"old": old.did, "new": new.did, "peer_id": new.peer_id, "cutoffs": cutoffs,
            "retired_key": str(retired)}


def _staged_key(home: Home) -> Path:
    return home.node_key_path.with_name("node.key.new")


def finish_rotation(home: Home) -> dict[str, Any] | None:
    """Complete the key swap of a rotation whose plan is in ROTATION_FILE:
    the new key in place, its delegation in the home (each step skipped if
    done). The plan, for its revocation still to publish (LocalRegistry
    removes the file once it has), or None when no rotation is under way.
    The caller holds the home's lock."""
    from registrygrid.identity.delegation import decode_delegation

    path = home.path / ROTATION_FILE
    if not path.exists():
        return None
    try:
        plan = read_json(path)
        new_did, delegation = plan["new"], decode_delegation(base64.b64decode(plan["delegation"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"{path} is not a key rotation's plan: {exc}") from None
    staged = _staged_key(home)
    if staged.exists():
        if read_key_file(staged).did != new_did:
            raise ValidationError(f"{staged} is not the key {path} names ({new_did})")
        os.replace(staged, home.node_key_path)
        sync_folder(home.node_key_path.parent)
    if home.node_key().did != new_did:
        raise ValidationError(f"{home.node_key_path} is neither the key a rotation left nor the one it made "
                              f"({new_did}); see {path}")
    membership = home.org()
    if membership is None or membership.delegation.encode() != delegation.encode():
        home.set_delegation(delegation)
    return dict(plan)
