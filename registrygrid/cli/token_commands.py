"""`rgrid token create|list|revoke`: API tokens of the node's HTTP bridge.

Like every command, these go through the running node's bridge when a node
holds the home (with the home's admin token from bridge.json), and open the
store directly otherwise. The secret of a new token is printed once; the
store keeps only its hash (``storage/tokens.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from registrygrid.cli import render
from registrygrid.cli.backend import open_backend
from registrygrid.cli.options import home_option, json_option
from registrygrid.sdk import LocalRegistry
from registrygrid.storage import tokens


class _LocalTokens:
    """The token methods of BridgeClient, on a store opened in this process."""

    def __init__(self, registry: LocalRegistry) -> None:
        self.registry = registry

    def create_token(self, role: str, *, registry: str | None = None, expires_in: int | None = None,
                     name: str | None = None) -> dict[str, Any]:
        expires_at = time.time_ns() // 1_000_000 + expires_in * 1000 if expires_in else None
        created, secret = tokens.create(self.registry.store, role=role, name=name or "", registry=registry,
                                        expires_at=expires_at, created_by="cli")
        self.registry.audit_note("create", "cli", f"tokens/{created.id}", f"token {created.name} role {created.role}")
        return {**created.to_api(), "token": secret}

    def list_tokens(self) -> list[dict[str, Any]]:
        # No node runs on this home (else the command would go through its
        # bridge), so no token is a running node's own CLI credential.
        return [t.to_api(local=False) for t in tokens.list_all(self.registry.store)]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        revoked, now = tokens.revoke_once(self.registry.store, token_id)
        if now:
            self.registry.audit_note("delete", "cli", f"tokens/{revoked.id}", f"token {revoked.name} revoked")
        return revoked.to_api()


def _tokens_of(backend: Any) -> Any:
    return _LocalTokens(backend) if isinstance(backend, LocalRegistry) else backend


def _when(ms: int | None) -> str:
    return "" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def register(cli: click.Group) -> None:

    @cli.group()
    def token() -> None:
        """API tokens for the node's HTTP bridge."""

    @token.command(name="create")
    @home_option
    @click.option("--role", type=click.Choice(list(tokens.ROLES)), required=True,
                  help="reader: read; writer: also write; admin: also tokens and the audit log.")
    @click.option("--registry", default=None, help="Limit the token to one registry.")
    @click.option("--expires", default=None, metavar="DURATION", help="Lifetime, e.g. 30d, 12h, 2w (default: never).")
    @click.option("--name", default=None, help="A label for people and the audit log.")
    @json_option
    def create(home: Path | None, role: str, registry: str | None, expires: str | None, name: str | None,
               as_json: bool) -> None:
        """Create a token and print its secret (shown this once)."""
        expires_in = tokens.parse_duration(expires) if expires is not None else None  # "" is no duration
        with open_backend(home) as backend:
            created = _tokens_of(backend).create_token(role, registry=registry, expires_in=expires_in, name=name)
        if as_json:
            render.dump_json(created)
            return
        render.mapping({k: v for k, v in created.items() if k != "token"}, False, title="token created")
        click.echo(f"\n{created['token']}\n")
        click.echo("This is the only time the token is shown; store it now.", err=True)

    @token.command(name="list")
    @home_option
    @json_option
    def list_tokens(home: Path | None, as_json: bool) -> None:
        """Every token (never their secrets); "local" marks the running node's own CLI credential."""
        with open_backend(home) as backend:
            found = _tokens_of(backend).list_tokens()
        if not as_json:
            found = [{**t, "expires_at": _when(t["expires_at"]), "revoked_at": _when(t["revoked_at"]),
                      "created_at": _when(t["created_at"]), "local": "yes" if t.get("local") else ""}
                     for t in found]
        render.rows(found, as_json, columns=["id", "name", "role", "registry", "created_at", "expires_at",
                                             "revoked_at", "created_by", "local"], title="tokens", whole=["id"])

    @token.command(name="revoke")
    @home_option
    @click.argument("token_id")
    @json_option
    def revoke(home: Path | None, token_id: str, as_json: bool) -> None:
        """Revoke a token at once (kept, marked revoked, so the audit log still names it).

        The running node's own CLI credential is refused (it is revoked when the node stops)."""
        with open_backend(home) as backend:
            revoked = _tokens_of(backend).revoke_token(token_id)
        render.mapping(revoked, as_json, title="token revoked")
