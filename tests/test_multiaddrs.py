"""Joining is hard to get wrong: every multiaddr the operator gives is checked
whole at start, and every multiaddr the CLI prints is printed whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registrygrid.cli.node_commands import build_components
from registrygrid.errors import EX_DATAERR, ValidationError
from registrygrid.home import Home
from registrygrid.identity.keys import KeyPair
from registrygrid.node.federation import Federation
from registrygrid.node.multiaddrs import (
    check_listen_addrs,
    check_peer_addrs,
    listen_addr_problem,
    peer_addr_problem,
)
from registrygrid.protocol.hello import is_peer_addr, peer_of
from registrygrid.storage import peers as peer_store
from registrygrid.storage.store import Store

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
OLD_PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"  # a SHA-256 (RSA-era) peer ID
GOOD = f"/ip4/10.0.0.7/tcp/4001/p2p/{PEER}"


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("addr", [
    GOOD,
    f"/ip6/::1/tcp/4001/p2p/{PEER}",
    f"/ip6/2001:db8::7/tcp/65535/p2p/{PEER}",
    f"/dns4/node.example.org/tcp/4001/p2p/{PEER}",
    f"/dns/node.example.org/tcp/4001/p2p/{PEER}",
    f"/dns6/node.example.org/tcp/1/p2p/{PEER}",
    f"/ip4/127.0.0.1/tcp/4001/p2p/{OLD_PEER}",
])
def test_a_dialable_peer_address_is_accepted(addr: str) -> None:
    assert peer_addr_problem(addr) is None
    assert check_peer_addrs([addr]) == [addr]


@pytest.mark.parametrize(("addr", "problem"), [
    (f"/ip4/999.1.1.1/tcp/4001/p2p/{PEER}", "'999.1.1.1' is not an IPv4 address"),
    (f"/ip4/::1/tcp/4001/p2p/{PEER}", "'::1' is not an IPv4 address"),
    (f"/ip6/10.0.0.1/tcp/4001/p2p/{PEER}", "is not an IPv6 address"),
    (f"/ip4/127.0.0.1/tcp/notaport/p2p/{PEER}", "TCP port 'notaport' is not a number"),
    (f"/ip4/127.0.0.1/tcp/70000/p2p/{PEER}", "TCP port '70000' is not a number from 0 to 65535"),
    (f"/ip4/127.0.0.1/tcp/0/p2p/{PEER}", "port 0 cannot be dialed"),
    ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWbad", "'12D3KooWbad' is not a libp2p peer ID"),
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER[:-1]}0", "is not a libp2p peer ID"),  # 0 is not base58
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}A", "is not a libp2p peer ID"),  # a multihash of the wrong length
    ("/ip4/127.0.0.1/tcp/4001/p2p/bafzaajaiaejcaxbzv6dv3uzwgx5ch6cmuhowjrqdhyqvhyvfqwjyk7tp2ldvcty",
     "is not a libp2p peer ID"),  # a CIDv1, not the base58 form our peer table keys by
    ("/ip4/127.0.0.1/tcp/4001", "names no peer: add /p2p/<peer id>"),
    (f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{PEER}", "expected /tcp/<port> after /ip4/127.0.0.1"),
    (f"/ip4/127.0.0.1/tcp/4001/ws/p2p/{PEER}", "expected only /p2p/<peer id> after the port, not /ws/p2p/"),
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}/p2p/{PEER}", "expected only /p2p/<peer id> after the port"),
    (f"/p2p/{PEER}", "must start with /ip4 or /ip6 or /dns or /dns4 or /dns6, not /p2p"),
    (f"/ipfs/{PEER}", "not /ipfs"),
    (f"ip4/127.0.0.1/tcp/4001/p2p/{PEER}", "starts with '/'"),
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}/", "empty part"),
    (f"/ip4//tcp/4001/p2p/{PEER}", "empty part"),
    (f" /ip4/127.0.0.1/tcp/4001/p2p/{PEER}", "spaces"),
    (f"/dns4/exa_mple.org/tcp/4001/p2p/{PEER}", "Invalid domain name"),
    (f"/dns4/{'a' * 300}/tcp/4001/p2p/{PEER}", "longer than 256 characters"),
    ("", "empty"),
    (4001, "a multiaddr is text, not int"),
])
def test_a_malformed_peer_address_is_refused_saying_what_is_wrong(addr: object, problem: str) -> None:
    found = peer_addr_problem(addr)
    assert found is not None and problem in found
    with pytest.raises(ValidationError) as caught:
        check_peer_addrs([GOOD, addr], source="--bootstrap")
    assert caught.value.exit_code == EX_DATAERR
    message = caught.value.message
    assert problem in message and "bad --bootstrap address" in message and GOOD not in message
    if isinstance(addr, str) and len(addr) <= 120:
        assert repr(addr) in message  # the address itself, as typed


def test_every_bad_address_is_named_in_one_error() -> None:
    with pytest.raises(ValidationError) as caught:
        check_peer_addrs([f"/ip4/999.1.1.1/tcp/1/p2p/{PEER}", GOOD, "/ip4/1.2.3.4/tcp/1"])
    message = caught.value.message
    assert "999.1.1.1" in message and "/ip4/1.2.3.4/tcp/1'" in message
    assert "expected /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/p2p/<peer id>" in message


def test_addresses_come_back_in_canonical_form() -> None:
    assert check_peer_addrs([f"/ip4/127.0.0.1/tcp/04001/p2p/{PEER}"]) == [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]
    assert check_listen_addrs(["/ip6/0:0::1/tcp/0"]) == ["/ip6/::1/tcp/0"]


@pytest.mark.parametrize("addr", ["/ip4/0.0.0.0/tcp/4001", "/ip4/127.0.0.1/tcp/0", "/ip6/::/tcp/4001"])
def test_a_listen_address_is_an_ip_and_a_tcp_port(addr: str) -> None:
    assert listen_addr_problem(addr) is None


@pytest.mark.parametrize(("addr", "problem"), [
    (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", "drop the /p2p/... part"),
    ("/dns4/node.example.org/tcp/4001", "must start with /ip4 or /ip6, not /dns4"),
    ("/ip4/127.0.0.1/tcp/99999", "TCP port '99999'"),
    ("/ip4/127.0.0.1/tcp/notaport", "TCP port 'notaport'"),
    ("/ip4/300.0.0.1/tcp/4001", "'300.0.0.1' is not an IPv4 address"),
    ("/ip4/127.0.0.1/udp/4001", "expected /tcp/<port>"),
    ("/ip4/127.0.0.1/tcp/4001/ws", "nothing may follow the port"),
])
def test_a_bad_listen_address_is_refused_saying_what_is_wrong(addr: str, problem: str) -> None:
    found = listen_addr_problem(addr)
    assert found is not None and problem in found
    with pytest.raises(ValidationError, match="bad --listen address"):
        check_listen_addrs([addr], source="--listen")


_SEGMENT = st.sampled_from(["ip4", "ip6", "dns4", "tcp", "udp", "p2p", "ws", "127.0.0.1", "::1", "999.1.1.1",
                            "4001", "0", "notaport", "70000", PEER, OLD_PEER, PEER[:20], "", "x y", "\u00e9"])


@given(st.one_of(st.text(max_size=300), st.lists(_SEGMENT, max_size=8).map(lambda parts: "/" + "/".join(parts))))
def test_no_text_crashes_the_checks_and_whatever_passes_dials_and_is_canonical(text: str) -> None:
    for problem_of in (peer_addr_problem, listen_addr_problem):
        problem = problem_of(text)
        assert problem is None or (isinstance(problem, str) and problem)
    if peer_addr_problem(text) is None:
        (canonical,) = check_peer_addrs([text])
        assert check_peer_addrs([canonical]) == [canonical]
        assert is_peer_addr(canonical) and peer_of(canonical) in (PEER, OLD_PEER)  # peers accept it in a hello
    if listen_addr_problem(text) is None:
        assert check_listen_addrs(check_listen_addrs([text])) == check_listen_addrs([text])


def test_every_peer_id_of_our_keys_passes() -> None:
    for _ in range(20):
        peer_id = KeyPair.generate().peer_id
        assert peer_addr_problem(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}") is None


# ---------------------------------------------------------------- the federation component and the CLI


def test_the_federation_refuses_a_bad_address_when_it_is_built() -> None:
    with pytest.raises(ValidationError, match="999.1.1.1"):
        Federation(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[f"/ip4/999.1.1.1/tcp/4001/p2p/{PEER}"])
    with pytest.raises(ValidationError, match="names no peer"):
        Federation(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=["/ip4/127.0.0.1/tcp/4001"])
    with pytest.raises(ValidationError, match="bad listen address '/ip4/127.0.0.1/tcp/notaport'"):
        Federation(listen=["/ip4/127.0.0.1/tcp/notaport"])
    with pytest.raises(ValidationError, match="at least one --listen"):
        Federation(listen=[])
    fed = Federation(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[f"/ip4/127.0.0.1/tcp/04001/p2p/{PEER}"])
    assert fed.bootstrap == [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]


def test_build_components_checks_flags_even_without_p2p_and_names_config_addresses_by_their_key(
        tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init()
    bad = f"/ip4/127.0.0.1/tcp/notaport/p2p/{PEER}"
    with pytest.raises(ValidationError, match="bad --bootstrap address"):
        build_components(home, {"bootstrap": [bad], "p2p": False, "bridge": False})
    with pytest.raises(ValidationError, match="bad --listen address"):
        build_components(home, {"listen": ["/ip4/1.2.3.4/tcp/1/p2p/" + PEER], "p2p": False, "bridge": False})
    config_path = home.path / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "bootstrap": [GOOD, bad]}))
    with pytest.raises(ValidationError, match="bad config.json bootstrap address"):
        build_components(home, {"bridge": False})
    config_path.write_text(json.dumps({**config, "bootstrap": GOOD}))
    with pytest.raises(ValidationError, match="must be a list"):
        build_components(home, {"bridge": False})
    config_path.write_text(json.dumps({**config, "bootstrap": [GOOD]}))
    (fed,) = build_components(home, {"bridge": False, "search": False, "bootstrap": [f"/ip6/::1/tcp/4001/p2p/{OLD_PEER}"]})
    assert fed.bootstrap == [GOOD, f"/ip6/::1/tcp/4001/p2p/{OLD_PEER}"]


def _rgrid(home: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RGRID_HOME": "", "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "registrygrid", *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize(("flag", "addr", "problem"), [
    ("--bootstrap", f"/ip4/999.1.1.1/tcp/4001/p2p/{PEER}", "'999.1.1.1' is not an IPv4 address"),
    ("--bootstrap", f"/ip4/127.0.0.1/tcp/notaport/p2p/{PEER}", "TCP port 'notaport'"),
    ("--bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWbad", "is not a libp2p peer ID"),
    ("--bootstrap", "/ip4/127.0.0.1/tcp/4001", "names no peer"),
    ("--listen", "/ip4/127.0.0.1/tcp/notaport", "TCP port 'notaport'"),
])
def test_rgrid_node_start_refuses_a_bad_address_at_once_with_exit_65(tmp_path: Path, flag: str, addr: str,
                                                                      problem: str) -> None:
    home = tmp_path / "home"
    Home(home).init()
    proc = _rgrid(home, "node", "start", "--no-bridge", flag, addr)
    assert proc.returncode == EX_DATAERR, proc.stderr
    assert "error[validation_failed]" in proc.stderr and f"bad {flag} address {addr!r}" in proc.stderr
    assert problem in proc.stderr
    assert Home(home).lock_holder() is None and not (home / "node.json").exists()  # nothing ran


# ---------------------------------------------------------------- printed whole

LONG = [
    f"/ip6/2001:db8:ffff:ffff:ffff:ffff:ffff:fffe/tcp/65535/p2p/{PEER}",
    f"/dns4/a-rather-long-host-name.eu-west-1.compute.example.org/tcp/4001/p2p/{PEER}",
    f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",
]


@pytest.fixture
def running_home(tmp_path: Path) -> Iterator[Home]:
    """A home whose lock this test holds, with a node.json as a running node writes it."""
    home = Home(tmp_path / "home")
    home.init(org_name="acme")
    home.lock(owner="test")
    home.write_node_info({"peer_id": home.node_key().peer_id, "addrs": LONG, "federation": "default"})
    yield home
    home.clear_node_info()
    home.unlock()


@pytest.mark.parametrize("columns", [80, 40])
def test_rgrid_id_prints_every_address_whole_on_a_line_of_its_own(running_home: Home, columns: int) -> None:
    proc = _rgrid(running_home.path, "id", columns=columns)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for addr in LONG:
        assert addr in lines, proc.stdout
    assert "…" not in proc.stdout  # nothing else is cut either (a narrow terminal folds the did)
    if columns == 80:
        assert running_home.node_key().did in proc.stdout
    assert json.loads(_rgrid(running_home.path, "id", "--json").stdout)["addrs"] == LONG


@pytest.mark.parametrize("columns", [80, 40])
def test_rgrid_peers_prints_every_address_whole_on_a_line_of_its_own(running_home: Home, columns: int) -> None:
    other = KeyPair.generate().peer_id
    peer_addrs = {PEER: [LONG[0], LONG[1]], other: [f"/ip4/192.168.100.200/tcp/40001/p2p/{other}"]}
    store = Store(running_home.store_path)
    try:
        peer_store.save(store, [peer_store.PeerRecord(peer_id=p, addrs=a, state="connected", last_seen_ms=1)
                                for p, a in peer_addrs.items()])
    finally:
        store.close()
    proc = _rgrid(running_home.path, "peers", columns=columns)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for addr in [*LONG, *peer_addrs[other]]:  # the node's own, then every peer's
        assert addr in lines, proc.stdout
    for peer_id, addrs in peer_addrs.items():  # each peer's whole ID heads its addresses
        at = lines.index(f"peer {peer_id}:")
        assert lines[at + 1:at + 1 + len(addrs)] == addrs
    # The table names a peer by the end of its ID (deliberately short), never a cut address.
    assert any(f"…{PEER[-8:]}" in line for line in lines)
    assert not any("/p2p/" in line and "…" in line for line in lines)
    shown = json.loads(_rgrid(running_home.path, "peers", "--json").stdout)
    assert {p["peer"]: p["addrs"] for p in shown["peers"]} == peer_addrs
