"""`rgrid federation create|invite|sign|join|members|revoke`: who is in the federation.

A federation is its signed genesis (founders, admins, how many admin
signatures an invitation needs); an org is admitted by an invitation that
enough admins signed; every node proves its membership at the handshake
(docs/trust.md). Until a home creates or joins one, its node is in its
org's own implicit federation: it federates with its org's other nodes
and nobody else.

    rgrid federation create acme-grid --quorum 2 --co-founder-key partner.key
    rgrid federation invite did:key:z6Mk... --out invite.json     # an admin
    rgrid federation sign invite.json                             # another admin, if the quorum is 2
    rgrid federation join invite.json --bootstrap /ip4/.../p2p/12D3KooW...   # the invited org's node
    rgrid federation members
    rgrid federation revoke did:key:z6Mk... --reason "left the consortium"   # an org or one key

Membership changes (create, join) take effect when the node (re)starts.
Invitations and revocations are published as grid.members records and
replicate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend, publish_statement
from registrygrid.cli.options import home_option, json_option, org_key_option
from registrygrid.cli.values import check_writable, read_text_file
from registrygrid.errors import NotFound, PolicyDenied, ValidationError
from registrygrid.home import Home, read_key_file, write_text_durably
from registrygrid.identity.keys import public_key_from_did
from registrygrid.membership import (
    cosign_invitation,
    create_federation,
    current_genesis,
    invitation_file,
    invite_org,
    join_federation,
    org_key,
    read_invitation_file,
)
from registrygrid.sdk import heads_held
from registrygrid.trust.federation import check_invitation, invitation_record
from registrygrid.trust.statements import (
    INVITATION_KIND,
    MEMBERS_REGISTRY,
    REVOCATION_KIND,
    revocation_record,
    sign_revocation,
)


# Where each node announces itself: a system subject of its org, one record per node.
SUBJECTS_REGISTRY = "grid.subjects"


def _restart_note(home: Home) -> str:
    return "restart the node to use it" if home.lock_holder() else "takes effect when the node starts"


def register(cli: click.Group) -> None:

    @cli.group()
    def federation() -> None:
        """The federation this node belongs to: genesis, invitations, members."""

    @federation.command(name="create")
    @home_option
    @json_option
    @org_key_option
    @click.argument("name")
    @click.option("--quorum", type=click.IntRange(1, 64), default=1, show_default=True,
                  help="Admin signatures an invitation needs (k of the n founding admins).")
    @click.option("--co-founder-key", "co_founder_keys", multiple=True,
                  type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="Another founding org's key file; it signs the genesis too. Repeatable.")
    @click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
                  help="Also write the genesis file the co-founders' nodes join with.")
    def federation_create(home: Path | None, as_json: bool, org_key_file: Path | None, name: str, quorum: int,
                          co_founder_keys: tuple[Path, ...], out: Path | None) -> None:
        """Found federation NAME with this home's org (and co-founders) as admins."""
        home_obj = Home(home)
        home_obj.require()
        if out is not None:
            check_writable(out)
        genesis = create_federation(home_obj, name, quorum=quorum, org_key_file=org_key_file,
                                    co_founders=[read_key_file(p) for p in co_founder_keys])
        if out is not None:
            write_text_durably(out, invitation_file(genesis, None))
        claims = genesis.claims
        render.mapping({"federation": genesis.id, "name": claims.name, "founders": list(claims.founders),
                        "quorum": claims.quorum, "note": _restart_note(home_obj)}, as_json, title="created")

    @federation.command(name="invite")
    @home_option
    @json_option
    @org_key_option
    @click.argument("org")
    @click.option("--admin", is_flag=True, help="Admit the org as an admin too.")
    @click.option("--attribute", "attributes", multiple=True, metavar="NAME=VALUE",
                  help="A fact the admins vouch for (e.g. jurisdiction=eu), for access policies. Repeatable.")
    @click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write the invitation file here (default: print it).")
    def federation_invite(home: Path | None, as_json: bool, org_key_file: Path | None, org: str, admin: bool,
                          attributes: tuple[str, ...], out: Path | None) -> None:
        """Invite ORG (its did:key) into this federation; signed by this home's org, an admin."""
        home_obj = Home(home)
        home_obj.require()
        public_key_from_did(org)
        if out is not None:
            check_writable(out)
        vouched = dict(a.split("=", 1) for a in attributes if "=" in a)
        if len(vouched) != len(attributes):
            raise ValidationError("--attribute takes NAME=VALUE")
        genesis = current_genesis(home_obj)
        invitation = invite_org(home_obj, org, admin=admin, org_key_file=org_key_file, attributes=vouched)
        _finish_invitation(home_obj, genesis, invitation, out, as_json)

    @federation.command(name="sign")
    @home_option
    @json_option
    @org_key_option
    @click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
    def federation_sign(home: Path | None, as_json: bool, org_key_file: Path | None, file: Path) -> None:
        """Add this home's org's signature (an admin) to the invitation in FILE."""
        home_obj = Home(home)
        home_obj.require()
        check_writable(file, "FILE")  # signed into it
        genesis, invitation = read_invitation_file(read_text_file(file)[0])
        if genesis.id != current_genesis(home_obj).id:
            raise ValidationError(f"{file} invites into federation {genesis.id}, not this home's")
        if invitation is None:
            raise ValidationError(f"{file} holds a genesis, no invitation to sign")
        _finish_invitation(home_obj, genesis, cosign_invitation(home_obj, invitation, org_key_file=org_key_file),
                           file, as_json)

    def _finish_invitation(home_obj: Home, genesis: Any, invitation: Any, out: Path | None, as_json: bool) -> None:
        text = invitation_file(genesis, invitation)
        signers = [did for did, _ in invitation.signatures]
        try:
            check_invitation(invitation, genesis.claims, genesis.id)
        except PolicyDenied as exc:
            status = f"needs more admin signatures: {exc.message}; next: `rgrid federation sign FILE`"
        else:
            status = "complete: " + publish_statement(home_obj, INVITATION_KIND, *invitation_record(invitation))
        summary: dict[str, Any] = {"org": invitation.claims.org, "roles": list(invitation.claims.roles),
                                   "signers": signers, "quorum": genesis.claims.quorum, "status": status,
                                   "file": str(out) if out else "-"}
        if out is not None:
            write_text_durably(out, text)
        elif as_json:
            summary["invitation"] = json.loads(text)  # what --out would have written: nothing to hand over else
        else:
            # stdout is the invitation file (`... > invite.json`); what was
            # done goes to stderr, or the file would not read back.
            click.echo(text, nl=False)
        render.mapping(summary, as_json, title="invitation", to_stderr=out is None and not as_json)

    @federation.command(name="join")
    @home_option
    @json_option
    @click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @click.option("--bootstrap", multiple=True, help="A member node's multiaddr to dial. Repeatable.")
    def federation_join(home: Path | None, as_json: bool, file: Path, bootstrap: tuple[str, ...]) -> None:
        """Join the federation of the invitation in FILE (made for this home's
        org), or of the genesis in FILE (for a co-founder's nodes)."""
        from registrygrid.cli.node_commands import _listed
        from registrygrid.node.multiaddrs import check_peer_addrs

        home_obj = Home(home)
        home_obj.require()
        addrs = check_peer_addrs(bootstrap, source="--bootstrap")
        genesis, invitation = read_invitation_file(read_text_file(file)[0])
        config = home_obj.config()
        # Checked before the join: a bootstrap that was one string was taken
        # letter by letter, and one that was a number failed after the
        # home had switched federations.
        known = _listed(config, "bootstrap") if addrs else []
        join_federation(home_obj, genesis, invitation)
        if addrs:
            config = home_obj.config()  # as the join left it (it names the federation)
            config["bootstrap"] = sorted({str(a) for a in known} | set(addrs))
            write_text_durably(home_obj.path / "config.json", json.dumps(config, indent=2) + "\n")
        render.mapping({"federation": genesis.id, "name": genesis.name, "bootstrap": addrs,
                        "note": _restart_note(home_obj)}, as_json, title="joined")

    @federation.command(name="announce")
    @home_option
    @json_option
    @click.option("--endpoint", "endpoints", multiple=True, required=True,
                  help="A multiaddr other members can dial this node at (/ip4|ip6|dns/.../tcp/PORT/p2p/ID). "
                       "Repeatable.")
    @click.option("--capability", "capabilities", multiple=True,
                  help="Something this node offers the federation (default: gossip, sync). Repeatable.")
    def federation_announce(home: Path | None, as_json: bool, endpoints: tuple[str, ...],
                            capabilities: tuple[str, ...]) -> None:
        """Publish where this node can be reached and what it offers, in the
        members view: its own record grid.subjects/<node did> (a system
        subject of its org), which only this node writes."""
        from registrygrid.node.multiaddrs import check_peer_addrs

        home_obj = Home(home)
        home_obj.require()
        addrs = check_peer_addrs(endpoints, source="--endpoint")
        membership = home_obj.org()
        if membership is None:
            raise ValidationError(f"{home_obj.path} has no org; run `rgrid init`")
        key = home_obj.node_key()
        # An endpoint names the peer it dials: another node's would send the
        # members who dial it there, where it is not this node.
        others = [addr for addr in addrs if not addr.endswith(f"/p2p/{key.peer_id}")]
        if others:
            raise ValidationError(f"--endpoint {others[0]} names another peer than this node ({key.peer_id})",
                                  details=[{"path": "--endpoint"}])
        fields = {"subject_type": "system", "display_name": f"node {key.peer_id}", "did": key.did,
                  "org": f"grid.orgs/{membership.org}", "status": "active",
                  "capabilities": sorted(set(capabilities or ("gossip", "sync"))),
                  "identifiers": [{"scheme": "libp2p", "value": addr} for addr in addrs]}
        with open_backend(home_obj.path) as backend:
            try:
                backend.get(SUBJECTS_REGISTRY, key.did)
            except NotFound:
                result = backend.put(SUBJECTS_REGISTRY, "subject", fields, id=key.did)
            else:
                result = backend.update(SUBJECTS_REGISTRY, key.did, fields=fields)
        render.mapping({"node": key.did, "endpoints": addrs, "capabilities": fields["capabilities"],
                        "status": result.status}, as_json, title="announced")

    @federation.command(name="members")
    @home_option
    @json_option
    def federation_members(home: Path | None, as_json: bool) -> None:
        """Every org of this federation, its roles, its known nodes, and whether it was revoked."""
        home_obj = Home(home)
        home_obj.require()
        fed = home_obj.federation()
        with open_backend(home_obj.path) as backend:
            statements = list(backend.iter_all(MEMBERS_REGISTRY))
        roles: dict[str, set[str]] = {org: {"founder"} for org in fed.claims.founders}
        for org in fed.claims.admins:
            roles[org].add("admin")
        for s in statements:
            f = s["fields"]
            if s["kind"] == INVITATION_KIND and f["federation"] == fed.id \
                    and len(set(f["signers"]) & set(fed.claims.admins)) >= fed.claims.quorum:
                roles.setdefault(f["org"], set()).update(f["roles"])
        now = time.time()
        nodes: dict[str, int] = {}
        revoked = {s["fields"]["subject"] for s in statements if s["kind"] == REVOCATION_KIND}
        for s in statements:
            f = s["fields"]
            if s["kind"] == "delegation" and f["org"] in roles and f["not_before"] <= now < f["expires"] \
                    and f["subject"] not in revoked:
                nodes[f["org"]] = nodes.get(f["org"], 0) + 1
        with open_backend(home_obj.path) as backend:
            subjects = list(backend.iter_all(SUBJECTS_REGISTRY))
        endpoints: dict[str, list[str]] = {org: [] for org in roles}
        for subject in subjects:  # what each node announced (rgrid federation announce)
            f = subject["fields"]
            org = str(f.get("org", "")).removeprefix("grid.orgs/")
            if org in endpoints and subject["owner"] == org and f.get("status") == "active" \
                    and f.get("did") not in revoked:
                endpoints[org] += [i["value"] for i in f.get("identifiers", []) if i.get("scheme") == "libp2p"]
        rows = [{"org": org, "roles": ",".join(sorted(r)), "nodes": nodes.get(org, 0),
                 "revoked": org in revoked, "endpoints": endpoints[org]} for org, r in sorted(roles.items())]
        if as_json:
            click.echo(json.dumps({"federation": fed.id, "name": fed.name, "quorum": fed.claims.quorum,
                                   "implicit": fed.genesis is None, "members": rows}, indent=2))
            return
        render.mapping({"federation": fed.id, "name": fed.name, "quorum": fed.claims.quorum,
                        "implicit": fed.genesis is None}, False, title="federation")
        render.rows(rows, False, columns=["org", "roles", "nodes", "revoked"], whole=["org"])
        for row in rows:  # whole, one per line: what a joining node bootstraps from
            for addr in row["endpoints"]:
                click.echo(f"{row['org']}  {addr}")

    @federation.command(name="revoke")
    @home_option
    @json_option
    @org_key_option
    @click.argument("subject")
    @click.option("--reason", default="", help="Why (kept in the signed statements).")
    def federation_revoke(home: Path | None, as_json: bool, org_key_file: Path | None, subject: str,
                          reason: str) -> None:
        """Revoke SUBJECT, an org or one key, as a federation admin. An org
        takes every key it delegated with it; each keeps the changes this
        node holds of it, and any later one is refused on every node."""
        home_obj = Home(home)
        home_obj.require()
        public_key_from_did(subject)
        fed = home_obj.federation()
        key = org_key(home_obj, org_key_file)
        if key.did not in fed.claims.admins:
            raise PolicyDenied(f"{key.did} is not an admin of federation {fed.name}; admins: {list(fed.claims.admins)}")
        with open_backend(home_obj.path) as backend:
            statements = list(backend.iter_all(MEMBERS_REGISTRY))
        # An admin's revocation cuts a key whole, so it names only the keys
        # the org alone delegated: another org may delegate any key (a node
        # of its own that the revoked org delegated too), and its changes for
        # the revoked org count no more once the org is revoked anyway.
        delegators: dict[str, set[str]] = {}
        for s in statements:
            if s["kind"] == "delegation":
                delegators.setdefault(s["fields"]["subject"], set()).add(s["fields"]["org"])
        subjects = [subject] + sorted(key for key, orgs in delegators.items() if orgs == {subject})
        cutoffs = heads_held(home_obj, subjects)
        published = []
        for did in subjects:
            record_id, fields = revocation_record(sign_revocation(key, did, cutoffs[did], reason=reason))
            published.append({"subject": did, "status": publish_statement(home_obj, REVOCATION_KIND, record_id, fields),
                              "cutoffs": json.dumps(cutoffs[did])})
        if as_json:
            click.echo(json.dumps({"revoked": published}, indent=2))
            return
        render.rows(published, False, columns=["subject", "status", "cutoffs"], whole=["subject"])
