"""`rgrid org show|delegate|renew|revoke`: an org's signed statements about its keys.

The org key signs; the node publishes. Each command signs a statement with
the org key (the home's ``keys/org.key``, or ``--org-key FILE`` for an org
key kept offline, e.g. on a laptop or a USB stick that is plugged in only
for this) and publishes it as a record of ``grid.members``, through the
running node's bridge when a node holds the home, else into the store
directly; either way it replicates to the federation like any record.

* ``delegate KEY``: this key speaks for the org (a new node, or a member).
* ``renew``: a fresh delegation of this node (before or after the old one
  expired); it also replaces the home's ``org.json`` so the node writes
  again at once.
* ``revoke KEY``: the key stops speaking for the org. The revocation names,
  per registry, the key's last change this node holds; those stay valid,
  anything after is refused on every node (docs/trust.md).
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
from registrygrid.errors import NotInitialized
from registrygrid.home import Home
from registrygrid.identity.delegation import ROLES, sign_delegation
from registrygrid.identity.keys import public_key_from_did
from registrygrid.membership import org_key
from registrygrid.sdk import heads_held
from registrygrid.trust.statements import (
    DELEGATION_KIND,
    MEMBERS_REGISTRY,
    REVOCATION_KIND,
    delegation_record,
    revocation_record,
    sign_revocation,
)

DAY = 24 * 3600


def _publish(home: Home, kind: str, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"status": publish_statement(home, kind, record_id, fields), "id": record_id}


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def register(cli: click.Group) -> None:
    days_option = click.option("--days", type=click.IntRange(1, 10 * 365), default=365, show_default=True,
                               help="How long the delegation is valid.")

    @cli.group()
    def org() -> None:
        """The org this node speaks for, and its signed statements about keys."""

    @org.command(name="show")
    @home_option
    @json_option
    def org_show(home: Path | None, as_json: bool) -> None:
        """This home's org, and every delegation and revocation of the org's keys known here."""
        home_obj = Home(home)
        home_obj.require()
        membership = home_obj.org()
        if membership is None:
            raise NotInitialized(f"{home_obj.path} has no org; run `rgrid init`")
        claims = membership.delegation.claims
        now = time.time()
        status = "valid" if claims.not_before <= now < claims.expires else "EXPIRED: run `rgrid org renew`"
        # The org's own statements about its keys: grid.members also holds
        # the federation's genesis and other orgs' statements (with no
        # "org" member in the genesis: `org show` failed with a KeyError in
        # every home that had made a federation), and every page of them.
        with open_backend(home_obj.path) as backend:
            statements = [s for kind in ("delegation", "revocation")
                          for s in backend.iter_all(MEMBERS_REGISTRY, kind=kind)
                          if s["fields"].get("org") == membership.org]
        rows = [{"kind": s["kind"], "subject": s["fields"]["subject"],
                 "roles": ",".join(s["fields"].get("roles", [])),
                 "until": _when(s["fields"]["expires"]) if "expires" in s["fields"] else "revoked",
                 "id": s["id"]} for s in sorted(statements, key=lambda s: s["id"])]
        if as_json:
            click.echo(json.dumps({"org": membership.org, "name": membership.name, "node": claims.subject,
                                   "roles": list(claims.roles), "expires": claims.expires, "status": status,
                                   "statements": rows}, indent=2))
            return
        render.mapping({"org": membership.org, "name": membership.name, "node": claims.subject,
                        "roles": ", ".join(claims.roles), "expires": _when(claims.expires), "status": status},
                       False, title="org")
        render.rows(rows, False, columns=["kind", "subject", "roles", "until", "id"], whole=["subject", "id"])

    @org.command(name="delegate")
    @home_option
    @json_option
    @org_key_option
    @days_option
    @click.argument("subject")
    @click.option("--role", "roles", multiple=True, type=click.Choice(sorted(ROLES)),
                  default=("node", "writer"), show_default=True, help="Roles granted. Repeatable.")
    def org_delegate(home: Path | None, as_json: bool, org_key_file: Path | None, days: int, subject: str,
                     roles: tuple[str, ...]) -> None:
        """Let the key SUBJECT (a did:key) speak for this org."""
        home_obj = Home(home)
        home_obj.require()
        public_key_from_did(subject)
        delegation = sign_delegation(org_key(home_obj, org_key_file), subject, roles, valid_for=days * DAY)
        record_id, fields = delegation_record(delegation)
        result = _publish(home_obj, DELEGATION_KIND, record_id, fields)
        render.mapping({**result, "subject": subject, "roles": ", ".join(fields["roles"]),
                        "expires": _when(fields["expires"])}, as_json, title="delegated")

    @org.command(name="renew")
    @home_option
    @json_option
    @org_key_option
    @days_option
    def org_renew(home: Path | None, as_json: bool, org_key_file: Path | None, days: int) -> None:
        """Sign a fresh delegation of this node (before or after the old one expires)."""
        home_obj = Home(home)
        home_obj.require()
        signer = org_key(home_obj, org_key_file)  # refuses a home without an org
        membership = home_obj.org()
        assert membership is not None
        node = home_obj.node_key().did
        delegation = sign_delegation(signer, node, membership.delegation.claims.roles, valid_for=days * DAY)
        record_id, fields = delegation_record(delegation)
        # Published first (a running node takes it at once), then kept in
        # org.json for the node's next start.
        result = _publish(home_obj, DELEGATION_KIND, record_id, fields)
        home_obj.set_delegation(delegation)
        render.mapping({**result, "subject": node, "expires": _when(fields["expires"])}, as_json, title="renewed")

    @org.command(name="revoke")
    @home_option
    @json_option
    @org_key_option
    @click.argument("subject")
    @click.option("--reason", default="", help="Why (kept in the signed statement).")
    @click.option("--yes", is_flag=True, help="Don't ask before revoking this node's own key or org.")
    def org_revoke(home: Path | None, as_json: bool, org_key_file: Path | None, subject: str, reason: str,
                   yes: bool) -> None:
        """Stop the key SUBJECT speaking for this org. Its changes this node
        holds stay valid; any later one is refused on every node."""
        home_obj = Home(home)
        home_obj.require()
        public_key_from_did(subject)
        signer = org_key(home_obj, org_key_file)
        if not yes and subject in (home_obj.node_key().did, signer.did):
            # Nothing takes a revocation back: this node would write nothing
            # more (a new key is `rgrid node rotate-key`).
            what = "this node's own key" if subject == home_obj.node_key().did else "this org itself"
            click.confirm(f"{subject} is {what}: once revoked, this node's writes are refused everywhere and "
                          "only `rgrid node rotate-key` gives it a key that writes. Revoke it?", abort=True, err=True)
        cutoffs = heads_held(home_obj, [subject])[subject]
        revocation = sign_revocation(signer, subject, cutoffs, reason=reason)
        record_id, fields = revocation_record(revocation)
        result = _publish(home_obj, REVOCATION_KIND, record_id, fields)
        render.mapping({**result, "subject": subject, "cutoffs": json.dumps(cutoffs)}, as_json, title="revoked")
