"""The hello exchange, sans-IO: who a peer is, where it listens, whom it knows.

Sent both ways right after a connection opens (and again on each
anti-entropy round, which also measures the round trip):

* ``federation`` and ``federation_id``: the federation's name and the id of
  its genesis (trust/federation.py); a peer of another federation, even
  one of the same name, is told so and dropped, so two federations on one
  network never mix their changefeeds;
* ``proof``: the sender's membership proof (trust/admission.py: its org's
  delegation of its node key, its org's invitation, the genesis), checked
  before anything else is exchanged;
* ``addrs``: the sender's own dialable multiaddrs. A peer that dialed us is
  known only by the ephemeral port it dialed from; with these we can redial
  it after a cut (py-libp2p's identify would say the same, but our host
  wrapper does not expose the peer store);
* ``peers``: a few other peers the sender knows (peer exchange), so a node
  that bootstrapped from one address learns the federation, and stays in it
  when its bootstrap peer goes away.

Wire form: msgpack ``[v, federation, [addr, ...], [addr, ...], federation_id, proof]``.
"""

from __future__ import annotations

import msgspec

from registrygrid.errors import MalformedInput, TooLarge

HELLO_PROTOCOL_ID = "/registrygrid/hello/1.0.0"
HELLO_VERSION = 2  # 2: federation_id and the membership proof

# A host listens on a handful of addresses (one per interface and transport);
# 8 covers a dual-stack host with several interfaces.
MAX_OWN_ADDRS = 8
# Peer exchange shares at most 16 peers: go-libp2p-pubsub's GossipSubPrunePeers
# (peer exchange on PRUNE) uses the same number. Enough to learn a federation
# of tens of nodes in a few rounds; small enough that a hostile peer can only
# suggest 16 addresses a round (the peer table is bounded too).
MAX_SHARED_PEERS = 16
# "/ip6/<39 chars>/tcp/65535/p2p/<52-char peer id>" is about 110 characters;
# 256 leaves room for DNS names.
MAX_ADDR_CHARS = 256
# Federation names share the registry-name alphabet and length cap.
MAX_FEDERATION_CHARS = 128
# Addresses and peers fit in well under 8 KiB; the membership proof adds at
# most 56 KiB (trust/admission.py MAX_PROOF_BYTES). 64 KiB is the cap.
MAX_HELLO_BYTES = 64 * 1024
MAX_FEDERATION_ID_CHARS = 64


class Hello(msgspec.Struct, array_like=True, frozen=True):
    v: int
    federation: str
    addrs: list[str]
    peers: list[str]
    federation_id: str = ""
    proof: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Hello)


def encode_hello(federation: str, addrs: list[str], peers: list[str], federation_id: str = "",
                 proof: bytes = b"") -> bytes:
    return _encoder.encode(Hello(HELLO_VERSION, federation, addrs[:MAX_OWN_ADDRS], peers[:MAX_SHARED_PEERS],
                                 federation_id, proof))


def decode_hello(data: bytes) -> Hello:
    """A checked Hello; TooLarge or MalformedInput for anything else."""
    if len(data) > MAX_HELLO_BYTES:
        raise TooLarge(f"hello of {len(data)} bytes exceeds {MAX_HELLO_BYTES}")
    try:
        hello = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:  # bad UTF-8 is its own error
        raise MalformedInput(f"undecodable hello: {exc}") from None
    if hello.v != HELLO_VERSION:
        raise MalformedInput(f"hello version {hello.v}; this node speaks {HELLO_VERSION}")
    if not 0 < len(hello.federation) <= MAX_FEDERATION_CHARS:
        raise MalformedInput("hello: bad federation name")
    if len(hello.federation_id) > MAX_FEDERATION_ID_CHARS:
        raise MalformedInput("hello: bad federation id")
    if len(hello.addrs) > MAX_OWN_ADDRS or len(hello.peers) > MAX_SHARED_PEERS:
        raise MalformedInput(f"hello: at most {MAX_OWN_ADDRS} addrs and {MAX_SHARED_PEERS} peers")
    for addr in (*hello.addrs, *hello.peers):
        if not is_peer_addr(addr):
            raise MalformedInput(f"hello: not a dialable /.../p2p/<peer id> multiaddr: {addr[:80]!r}")
    return hello


def is_peer_addr(addr: str) -> bool:
    """Shape check only (the dialer parses it for real): ASCII, bounded, ends in /p2p/<id>."""
    return (0 < len(addr) <= MAX_ADDR_CHARS and addr.isascii() and addr.startswith("/")
            and "/p2p/" in addr and not addr.endswith("/p2p/"))


def peer_of(addr: str) -> str:
    """The peer ID at the end of a ``.../p2p/<id>`` multiaddr."""
    return addr.rsplit("/p2p/", 1)[1].split("/", 1)[0]
