"""`rgrid node start` and the commands that need a running node's parts."""

from __future__ import annotations

import json
import os
import logging
from pathlib import Path
from typing import Any

import click
import trio

from registrygrid.errors import RegistryError, ValidationError
from registrygrid.home import Home
from registrygrid.logs import LineFormatter


def _bridge_address(config: dict[str, Any], options: dict[str, Any]) -> tuple[str, int]:
    """The bridge's host and port, from the flags or config.json's bridge
    section, checked: a section that was no object, or a port that was a
    string, 1e309 or NaN, stopped the start with a traceback; true served
    on port 1, 8795.7 on 8795, and 99999999 was taken for a port in use."""
    section = config.get("bridge", {})
    if not isinstance(section, dict):
        raise ValidationError("config.json bridge: an object of settings")
    host = options.get("bridge_host") or section.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ValidationError("config.json bridge.host: a host name or address")
    flag = options.get("bridge_port")
    port = flag if flag is not None else section.get("port", 8700)
    if type(port) is not int or not 0 <= port <= 65535:
        where = "--bridge-port" if flag is not None else "config.json bridge.port"
        raise ValidationError(f"{where}: a port number from 0 to 65535, not {str(port)[:40]}")
    return host, port


def build_components(home: Home, options: dict[str, Any]) -> list[Any]:
    """The node's optional parts, configured from the home's config and flags."""
    config = home.config()
    components: list[Any] = []
    if not options.get("p2p", True) and (options.get("dht_client") or not options.get("dht", True)):
        # The DHT runs on the federation's libp2p host: without p2p there is none to configure.
        raise ValidationError("--dht-client and --no-dht configure the DHT of the p2p node; drop them or --no-p2p")
    if options.get("dht_client") and not options.get("dht", True):
        raise ValidationError("--dht-client runs the DHT as a client, --no-dht runs none: give one of them")
    if options.get("listen") or options.get("bootstrap"):
        # What the operator typed is checked whole even with --no-p2p, and
        # named by its flag (config.json's addresses by their key, below).
        from registrygrid.node.multiaddrs import check_listen_addrs, check_peer_addrs

        check_listen_addrs(options.get("listen") or (), source="--listen")
        check_peer_addrs(options.get("bootstrap") or (), source="--bootstrap")
    if options.get("search", True):
        from registrygrid.node.search import SearchService

        components.append(SearchService())  # first: the bridge finds it running
    if options.get("bridge", True):
        try:
            from registrygrid.node.bridge import Bridge
        except ImportError:
            Bridge = None  # noqa: N806
        if Bridge is not None:
            host, port = _bridge_address(config, options)
            if host in ("0.0.0.0", "::") and not options.get("allow_public"):
                raise ValidationError(
                    f"refusing to serve the bridge on {host} (every interface) without --allow-public-bridge"
                )
            components.append(Bridge(host=host, port=port))
    if options.get("p2p", True):
        try:
            from registrygrid.node.federation import Federation, FederationConfig
        except ImportError:
            Federation = None  # noqa: N806
        if Federation is not None:
            from registrygrid.node.multiaddrs import check_listen_addrs, check_peer_addrs

            listen = list(options.get("listen") or check_listen_addrs(_listed(config, "listen"),
                                                                      source="config.json listen"))
            bootstrap = (check_peer_addrs(_listed(config, "bootstrap"), source="config.json bootstrap")
                         + list(options.get("bootstrap") or []))
            dht = FederationConfig(dht=bool(options.get("dht", True)), dht_client=bool(options.get("dht_client")))
            components.append(Federation(listen=listen, bootstrap=bootstrap,
                                         federation=config.get("federation", "default"), config=dht))
    return components


def _listed(config: dict[str, Any], key: str) -> list[Any]:
    value = config.get(key, [])
    if not isinstance(value, list):
        raise ValidationError(f"config.json {key} must be a list of multiaddrs, not {type(value).__name__}")
    return value


def register(cli: click.Group) -> None:
    @cli.group()
    def node() -> None:
        """Run this home's node."""

    @node.command()
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="RGRID_HOME", default=None)
    @click.option("--listen", multiple=True,
                  help="libp2p multiaddr to listen on, /ip4|ip6/<address>/tcp/<port> (default from config). "
                       "Repeatable.")
    @click.option("--bootstrap", multiple=True,
                  help="Peer multiaddr to dial at start, /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/p2p/<peer id> "
                       "(as `rgrid id` prints it). Repeatable.")
    @click.option("--bridge-host", default=None, help="HTTP bridge address (default 127.0.0.1).")
    @click.option("--bridge-port", type=int, default=None, help="HTTP bridge port (default 8700).")
    @click.option("--allow-public-bridge", "allow_public", is_flag=True,
                  help="Allow the bridge on 0.0.0.0 (it then needs tokens for everything).")
    @click.option("--no-bridge", "no_bridge", is_flag=True, help="Do not serve the HTTP bridge.")
    @click.option("--no-p2p", "no_p2p", is_flag=True, help="Do not join a federation (local node; no DHT either).")
    @click.option("--dht-client", "dht_client", is_flag=True,
                  help="Run the registry of registries' DHT as a client: look registries up and publish this "
                       "org's, but neither store others' records nor answer queries (for a node others can't "
                       "dial, e.g. behind NAT).")
    @click.option("--no-dht", "no_dht", is_flag=True,
                  help="Do not run the DHT: this node neither publishes its registries nor resolves others' "
                       "(`rgrid registry resolve` then fails).")
    @click.option("--no-search", "no_search", is_flag=True,
                  help="Do not keep the search index (HOME/index) up to date; `rgrid search` then indexes "
                       "when it runs with the node stopped.")
    @click.option("--init", "init_home", is_flag=True, help="Initialise the home first if it is new.")
    @click.option("--log-level", default="INFO", show_default=True,
                  type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
    def start(home: Path | None, listen: tuple[str, ...], bootstrap: tuple[str, ...], bridge_host: str | None,
              bridge_port: int | None, allow_public: bool, no_bridge: bool, no_p2p: bool, dht_client: bool,
              no_dht: bool, no_search: bool, init_home: bool, log_level: str) -> None:
        """Start the node in the foreground; Ctrl-C or SIGTERM stops it cleanly.

        With p2p it joins the federation and runs the Kademlia DHT of the
        registry of registries (server mode unless --dht-client): it
        publishes its org's registries there and resolves others'
        (`rgrid registry resolve`)."""
        from registrygrid.node.node import Node

        handler = logging.StreamHandler()
        handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=log_level.upper(), handlers=[handler])
        home_obj = Home(home)
        if init_home and not home_obj.exists():
            created = home_obj.init()
            click.echo(f"initialised {created['home']}: node {created['node']}, org {created['org']}")
        home_obj.require()
        components = build_components(home_obj, {
            "listen": listen, "bootstrap": bootstrap, "bridge_host": bridge_host, "bridge_port": bridge_port,
            "allow_public": allow_public, "bridge": not no_bridge, "p2p": not no_p2p, "dht": not no_dht,
            "dht_client": dht_client, "search": not no_search,
        })
        if not os.environ.get("LIBP2P_DEBUG"):
            # py-libp2p detaches its loggers when imported (above, with the
            # federation) unless LIBP2P_DEBUG is set, and its warnings then
            # reach stderr bare: give them the node's format.
            logging.getLogger("libp2p").propagate = True
        node_obj = Node(home_obj, components)

        async def main() -> None:
            await node_obj.run(handle_signals=True)

        try:
            trio.run(main)
        except BaseExceptionGroup as group:
            # A component that cannot start (a busy port, a bad address)
            # raises inside the node's nursery; show its typed error, not a
            # traceback of the group around it.
            errors = _leaves(group)
            typed = [e for e in errors if isinstance(e, RegistryError)]
            if typed and len(typed) == len(errors):
                raise typed[0] from None
            raise

    @node.command(name="rotate-key")
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="RGRID_HOME", default=None)
    @click.option("--org-key", "org_key_file", type=click.Path(dir_okay=False, path_type=Path),
                  help="The org key file, when it is not kept in this home.")
    @click.option("--reason", default="", help="Kept in the signed revocation of the old key.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def rotate_key(home: Path | None, org_key_file: Path | None, reason: str, as_json: bool) -> None:
        """Give this node a new key: the org delegates it and revokes the old
        one after every change the old key made (history stays valid). Run
        it with the node stopped; the peer ID changes with the key."""
        from registrygrid.cli import render
        from registrygrid.membership import rotate_node_key

        done = rotate_node_key(Home(home), org_key_file=org_key_file, reason=reason)
        render.mapping({**done, "cutoffs": json.dumps(done["cutoffs"])}, as_json, title="rotated")


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
