"""The multiaddrs an operator gives the node, checked whole before it starts.

``--listen`` and ``--bootstrap`` (and their ``config.json`` keys) name
addresses as text. Before this check, a malformed one was accepted and only
showed up later, as a bootstrap peer stuck in backoff or a host that would
not listen; now ``rgrid node start`` refuses it at once with a
``ValidationError`` (exit 65) that names the address and what is wrong.

The checks are pure (no sockets, no DNS lookups): the ``multiaddr`` package
parses the text (every protocol's value: IP addresses, ports, domain names,
the peer ID's multihash), libp2p's ``ID.from_base58`` reads the peer ID as
this node's dialer and peer table do, and the shape rules below come from
what our host can use. They live in ``node/`` because they import libp2p,
which only ``node/`` and ``cli/`` may.

Shapes:

* a peer to dial: ``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/p2p/<peer id>``.
  TCP only, because the host speaks TCP + Noise + yamux (``node/p2p.py``);
  py-libp2p's TCP transport resolves the DNS forms before dialing. The
  ``/p2p`` part is required: the Noise handshake proves the peer holds that
  ID's key, and the peer table is keyed by it.
* an address to listen on: ``/ip4|ip6/<address>/tcp/<port>``, the only
  form ``P2PHost`` binds (a socket binds an interface address, not a name);
  port 0 asks the kernel for a free one. No ``/p2p`` part: the node's own ID
  is appended when it publishes its addresses.
* a bare peer ID (``rgrid peers deny|allow``, ``POST /v1/peers/deny|allow``):
  the ``/p2p`` part of a peer's address alone, checked the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from libp2p.peer.id import ID
from multiaddr import Multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from registrygrid.errors import ValidationError
from registrygrid.protocol.hello import MAX_ADDR_CHARS

DIAL_HOSTS = ("ip4", "ip6", "dns", "dns4", "dns6")
LISTEN_HOSTS = ("ip4", "ip6")
PEER_SHAPE = "/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/p2p/<peer id>"
LISTEN_SHAPE = "/ip4|ip6/<address>/tcp/<port>"
# TCP ports are 16 bits (RFC 9293 3.1).
MAX_PORT = 65535
# Enough of a bad address to recognise it in an error message; hello.py caps
# a real one at MAX_ADDR_CHARS.
_SHOWN_CHARS = 120


def peer_addr_problem(text: object) -> str | None:
    """What is wrong with ``text`` as the address of a peer to dial, or None."""
    return _problem(text, DIAL_HOSTS, peer=True)


def listen_addr_problem(text: object) -> str | None:
    """What is wrong with ``text`` as an address to listen on, or None."""
    return _problem(text, LISTEN_HOSTS, peer=False)


def peer_id_problem(text: object) -> str | None:
    """What is wrong with ``text`` as a bare libp2p peer ID, or None."""
    if not isinstance(text, str):
        return f"a peer ID is text, not {type(text).__name__}"
    return _peer_id_problem(text)


def check_peer_addrs(addrs: Iterable[object], *, source: str = "bootstrap") -> list[str]:
    """The addresses in canonical form, or a ValidationError naming every bad one."""
    return _check(addrs, source, peer_addr_problem, PEER_SHAPE)


def check_listen_addrs(addrs: Iterable[object], *, source: str = "listen") -> list[str]:
    """The addresses in canonical form, or a ValidationError naming every bad one."""
    return _check(addrs, source, listen_addr_problem, LISTEN_SHAPE)


def _check(addrs: Iterable[object], source: str, problem_of: Callable[[object], str | None],
           shape: str) -> list[str]:
    checked: list[str] = []
    bad: list[str] = []
    for addr in addrs:
        problem = problem_of(addr)
        if problem is None:
            # Canonical text (e.g. /tcp/04001 -> /tcp/4001, /ip6/0:0::1 -> /ip6/::1),
            # so the peer table never holds one address under two spellings.
            checked.append(str(Multiaddr(str(addr))))
        else:
            bad.append(f"bad {source} address {_shown(addr)}: {problem}")
    if bad:
        raise ValidationError("; ".join(bad) + f" (expected {shape})")
    return checked


def _shown(addr: object) -> str:
    if isinstance(addr, str) and len(addr) > _SHOWN_CHARS:
        return repr(addr[:_SHOWN_CHARS]) + "..."
    return repr(addr)


def _problem(text: object, hosts: tuple[str, ...], *, peer: bool) -> str | None:
    if not isinstance(text, str):
        return f"a multiaddr is text, not {type(text).__name__}"
    if not text:
        return "it is empty"
    if len(text) > MAX_ADDR_CHARS:
        # Peers would refuse it in a hello anyway (protocol/hello.py).
        return f"it is longer than {MAX_ADDR_CHARS} characters"
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        return "it holds spaces, control or non-ASCII characters"
    if not text.startswith("/"):
        return "a multiaddr starts with '/'"
    parts = text[1:].split("/")
    if "" in parts:
        return "it has an empty part ('//' or a trailing '/')"
    proto = parts[0]
    if proto not in hosts:
        return f"it must start with {' or '.join('/' + h for h in hosts)}, not /{proto}"
    if len(parts) < 2:
        return f"/{proto} needs an address after it"
    host = parts[1]
    if proto in ("ip4", "ip6"):
        version = 4 if proto == "ip4" else 6
        try:
            is_ip = ipaddress.ip_address(host).version == version
        except ValueError:
            is_ip = False
        if not is_ip:
            return f"{host!r} is not an IPv{version} address"
    if len(parts) < 4 or parts[2] != "tcp":
        return f"expected /tcp/<port> after /{proto}/{host}"
    port = parts[3]
    if not port.isdigit() or int(port) > MAX_PORT:
        return f"TCP port {port!r} is not a number from 0 to {MAX_PORT}"
    if peer and int(port) == 0:
        return "TCP port 0 cannot be dialed (it only asks for a free port when listening)"
    rest = parts[4:]
    if peer:
        if not rest:
            return "it names no peer: add /p2p/<peer id> (the dialer checks the peer proves that ID)"
        if rest[0] != "p2p" or len(rest) != 2:
            return f"expected only /p2p/<peer id> after the port, not /{'/'.join(rest)}"
        problem = _peer_id_problem(rest[1])
        if problem is not None:
            return problem
    elif rest:
        if rest[0] == "p2p":
            return "a listen address names no peer: drop the /p2p/... part"
        return f"nothing may follow the port, not /{'/'.join(rest)}"
    try:
        Multiaddr(text)
    except (MultiaddrError, ValueError) as exc:  # e.g. a DNS name with a character no name may hold
        return str(getattr(exc, "message", exc))
    return None


def _peer_id_problem(peer_id: str) -> str | None:
    """A libp2p peer ID in the base58 form this node's peer table and dialer
    use (libp2p peer-ids spec: a base58btc multihash, so "Qm..." for SHA-256
    or "1..." for an inlined key, "12D3KooW..." for Ed25519)."""
    bad = f"{peer_id!r} is not a libp2p peer ID (base58, like 12D3KooW...)"
    if not peer_id.startswith(("Qm", "1")):
        return bad  # CIDv1 and other multibase forms: our peer table is keyed by base58
    try:
        Multiaddr(f"/p2p/{peer_id}")  # the p2p codec checks the multihash (length, hash code)
        if ID.from_base58(peer_id).to_base58() != peer_id:
            return bad
    except (MultiaddrError, ValueError):
        return bad
    return None
