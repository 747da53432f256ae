"""Following a public registry of another federation: a verified copy on
the follower, kept up to date from the registry's providers. Real nodes,
each with its home, LMDB store, py-libp2p host and Kademlia DHT on
127.0.0.1, in one trio process."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from test_federation_support import (
    FAST,
    Cluster,
    Member,
    cluster,
    eventually,
    full_mesh,
    serve_forged_reads,
)

from registrygrid.engine.ops import Erase, Put, Update
from registrygrid.errors import (
    Conflict,
    MalformedInput,
    NotFound,
    PolicyDenied,
    RegistryError,
    Unavailable,
    ValidationError,
)
from registrygrid.node.remote_read import check_parts
from registrygrid.protocol import remote_read
from registrygrid.protocol.sync import GonePlace

REG = "acme.models"
PUBLIC = {"name": REG, "kinds": ["cluster"], "replication": {"scope": "public"}}
# Syncs every half second, so a test sees a new change arrive in about that.
FOLLOWING = dataclasses.replace(FAST, follow_interval=0.5)

pytestmark = pytest.mark.timeout(150)


async def _published(owner: Member, others: list[Member], readers: list[Member], descriptor: dict[str, Any]) -> None:
    """``owner`` creates the registry; once its federation holds it, every
    host publishes and the readers' DHT is ready to resolve it."""
    await owner.node.submit([Put("grid.registries", "registry", descriptor, record_id=REG)])
    await eventually(lambda: all(_hosts(m) for m in [owner, *others]), 20, "the descriptor in federation one")
    await eventually(lambda: all(m.fed.directory.dht.get_routing_table_size() > 0
                                 for m in [owner, *others, *readers]), 20, "routing tables")
    for member in [owner, *others]:
        await member.fed.directory.publish()


@asynccontextmanager
async def _owner_and_follower(tmp_path: Path, descriptor: dict[str, Any]) -> AsyncIterator[tuple[Cluster, Member,
                                                                                               Member]]:
    """a0 of federation one owns the registry ``descriptor`` describes, published;
    b0 of federation two (its cluster first) may follow it."""
    async with cluster(tmp_path / "a", name="fed-one") as one, \
            cluster(tmp_path / "b", FOLLOWING, name="fed-two") as two:
        a0 = await one.start("a0")
        b0 = await two.start("b0", a0.fed.addrs())
        await _published(a0, [], [b0], descriptor)
        yield two, a0, b0


def _hosts(member: Member) -> bool:
    try:
        member.registry.describe_registry(REG)
        return True
    except RegistryError:
        return False


def _copy(member: Member) -> dict[str, dict[str, Any]]:
    """The live records of the follower's copy, by id."""
    mirror = member.fed.follows.mirror(REG)
    assert mirror is not None
    with mirror.use() as registry:
        return {r["id"]: r for r in registry.iter_all(REG)}


async def test_a_followed_registry_is_copied_verified_and_kept_up_to_date(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path / "a", name="fed-one") as one, \
                cluster(tmp_path / "b", FOLLOWING, name="fed-two") as two:
            a0 = await one.start("a0")
            a1 = await one.start("a1", a0.fed.addrs())
            b0 = await two.start("b0", a0.fed.addrs())
            await full_mesh([a0, a1])
            await _published(a0, [a1], [b0], PUBLIC)
            await a0.node.submit([Put(REG, "cluster", {"name": f"gpu-{i}"}, record_id=f"gpu-{i}") for i in range(3)])
            await eventually(lambda: _has(a1, "gpu-2"), 20, "the records across federation one")
            requests: list[remote_read.ReadRequest] = []
            for host in (a0, a1):
                _spy_on_reads(host, requests)

            status = await b0.fed.follows.follow(REG)
            assert status["records"] == 3 and status["owner"] == a0.node.engine.owner
            assert status["last_provider"] in {a0.peer_id, a1.peer_id}
            assert sorted(_copy(b0)) == ["gpu-0", "gpu-1", "gpu-2"]
            assert not _hosts(b0)  # the copy is not in b0's own store: its federation's trust is its own

            # Changes by another author of federation one, and an update, arrive by the periodic sync.
            await a1.node.submit([Put(REG, "cluster", {"name": "tpu"}, record_id="tpu")])
            await a0.node.submit([Update(REG, "gpu-0", patch={"region": "eu"})])
            await eventually(lambda: "tpu" in _copy(b0) and _copy(b0)["gpu-0"]["fields"].get("region") == "eu",
                             20, "the new changes in the copy")
            # Later syncs ask only for what the copy lacks: its statements and descriptor are not sent again.
            assert not requests[0].statements_after and requests[-1].statements_after
            assert requests[-1].descriptor_after and requests[-1].after
            assert b0.fed.follows.list()[0]["last_error"] is None


def _has(member: Member, record_id: str) -> bool:
    try:
        member.registry.get(REG, record_id)
        return True
    except RegistryError:
        return False


def _spy_on_reads(member: Member, seen: list[remote_read.ReadRequest]) -> None:
    serve = member.fed._answer_read

    async def spy(peer_id: str, request: bytes) -> bytes:
        seen.append(remote_read.decode_request(request))
        return await serve(peer_id, request)

    member.fed.host.set_handler(remote_read.READ_PROTOCOL_ID, spy)


async def test_a_node_keeps_following_after_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (two, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])
            await b0.fed.follows.follow(REG)
            await two.stop(b0)
            await a0.node.submit([Put(REG, "cluster", {"name": "tpu"}, record_id="tpu")])
            b0 = await two.start("b0", a0.fed.addrs())
            assert b0.fed.follows.mirror(REG) is not None  # reopened from its home
            await eventually(lambda: sorted(_copy(b0)) == ["gpu", "tpu"], 30, "the change made while it was down")


async def test_a_copy_that_cannot_be_read_is_skipped_at_start_and_following_again_replaces_it(
        tmp_path: Path) -> None:
    # A follow.json of [] raised TypeError out of every start of the node, and
    # one naming "../../etc" was reopened as a mirror of that name.
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (two, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])
            await b0.fed.follows.follow(REG)
            root = b0.fed.follows.root
            await two.stop(b0)
            (root / REG / "follow.json").write_text("[]")
            (root / "acme.stray").mkdir()
            (root / "acme.stray" / "follow.json").write_text(
                json.dumps({"registry": "../../etc", "owner": "x", "followed_at": 1}))
            b0 = await two.start("b0", a0.fed.addrs())
            assert b0.fed.follows.mirror(REG) is None and b0.fed.follows.mirror("acme.stray") is None
            assert b0.fed.follows.metrics["follow.unreadable"] == 2
            await b0.fed.follows.follow(REG)
            assert sorted(_copy(b0)) == ["gpu"]


async def test_a_lying_provider_at_the_first_sync_leaves_nothing_behind(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path / "a", name="fed-one") as one, \
                cluster(tmp_path / "b", FOLLOWING, name="fed-two") as two:
            a0 = await one.start("a0")
            liar = await one.start("a1", a0.fed.addrs())
            b0 = await two.start("b0", a0.fed.addrs())
            await full_mesh([a0, liar])
            await liar.fed.host.connect(b0.fed.addrs()[0])
            await _published(a0, [liar], [b0], PUBLIC)
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])
            await eventually(lambda: _has(liar, "gpu"), 20, "the record at the liar")

            serve_forged_reads(liar)
            await one.stop(a0)  # only the liar answers
            with pytest.raises(Unavailable) as refused:
                await b0.fed.follows.follow(REG)
            assert any(r.startswith(f"{liar.peer_id}: refused") for r in refused.value.details["refusals"])
            assert b0.fed.metrics["follow.lying_provider"] == 1
            assert b0.fed.follows.mirror(REG) is None
            follows_dir = b0.home.path / "follows"
            assert not follows_dir.exists() or not list(follows_dir.iterdir())


async def test_a_provider_that_adds_another_registrys_changes_to_its_answer_is_a_liar_and_nothing_applies(
        tmp_path: Path) -> None:
    # The follower stored acme.other's changes in the copy of acme.models
    # (never shown, never cleaned) and counted the sync a success.
    import msgspec

    from registrygrid.node import remote_read as node_read
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (two, a0, b0):
            other = {**PUBLIC, "name": "acme.other"}
            await a0.node.submit([Put("grid.registries", "registry", other, record_id="acme.other")])
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu"),
                                  Put("acme.other", "cluster", {"name": "stuffed"}, record_id="x1")])

            async def stuffing(peer_id: str, request: bytes) -> bytes:
                answer = remote_read.decode_response(node_read.answer_read(request, a0.node.engine))
                extra = a0.node.engine.envelopes_after("acme.other", a0.node.engine.key.did, 0, limit=10)
                return remote_read.encode_response(msgspec.structs.replace(
                    answer, envelopes=[*answer.envelopes, *extra]))

            assert a0.fed.host is not None
            a0.fed.host.set_handler(remote_read.READ_PROTOCOL_ID, stuffing)
            with pytest.raises(RegistryError, match="has no place for"):
                await b0.fed.follows.follow(REG)
            assert b0.fed.follows.mirror(REG) is None
            assert b0.fed.follows.metrics["follow.lying_provider"] >= 1


async def test_following_is_refused_for_registries_it_may_not_or_need_not_hold(tmp_path: Path) -> None:
    with trio.fail_after(120):
        scoped = {"name": REG, "kinds": ["cluster"], "replication": {"scope": "federation"}}
        async with _owner_and_follower(tmp_path, scoped) as (_, a0, b0):
            with pytest.raises(PolicyDenied):  # its federation only
                await b0.fed.follows.follow(REG)
            with pytest.raises(NotFound):
                await b0.fed.follows.follow("nobody.published")
            with pytest.raises(Conflict):  # a0 hosts it: it replicates it already
                await a0.fed.follows.follow(REG)
            with pytest.raises(NotFound):
                await b0.fed.follows.unfollow(REG)


async def test_unfollowing_deletes_the_copy(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (_, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])
            await b0.fed.follows.follow(REG)
            again = await b0.fed.follows.follow(REG)  # followed already: a sync now, same copy
            assert again["records"] == 1
            mirror = b0.fed.follows.mirror(REG)
            assert mirror is not None and mirror.path.exists()
            assert await b0.fed.follows.unfollow(REG) == {"registry": REG, "unfollowed": True}
            assert b0.fed.follows.mirror(REG) is None and not mirror.path.exists()
            with pytest.raises(NotFound), mirror.use():
                pass


async def test_a_follow_while_an_unfollow_of_that_registry_runs_is_refused_and_keeps_the_copy_intact(
        tmp_path: Path) -> None:
    # An unfollow waits for the copy's readers before it deletes the copy's
    # directory. A follow of the same name meanwhile would put a new copy in
    # that directory, for the unfollow's deletion to take away under it.
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (_, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])
            follows = b0.fed.follows
            await follows.follow(REG)
            mirror = follows.mirror(REG)
            assert mirror is not None
            reading, release = threading.Event(), threading.Event()

            def a_long_read() -> None:
                with mirror.use():
                    reading.set()
                    release.wait(30)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.to_thread.run_sync, a_long_read))
                await trio.to_thread.run_sync(reading.wait, 10)
                nursery.start_soon(follows.unfollow, REG)
                await eventually(lambda: follows.mirror(REG) is None, 10, "the unfollow under way")
                with pytest.raises(Conflict, match="being unfollowed"):
                    await follows.follow(REG)
                release.set()
            assert not mirror.path.exists()

            status = await follows.follow(REG)  # once the unfollow is done, a follow makes a new copy
            assert status["records"] == 1
            again = follows.mirror(REG)
            assert again is not None and (again.path / "follow.json").exists()


async def test_an_unfollow_during_the_first_sync_is_refused_with_the_reason(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (_, a0, b0):
            follows = b0.fed.follows
            follows._starting.add(REG)  # as follow() marks a first sync under way
            try:
                with pytest.raises(Conflict, match="first sync"):
                    await follows.unfollow(REG)
            finally:
                follows._starting.discard(REG)


async def test_a_registry_larger_than_a_page_whose_authors_edit_each_others_records_is_copied_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An answer was cut author by author: the first author's edits of the
    # other's record filled the page, waited for the other's change, and the
    # next page (its cursor unmoved) sent them again, until the read gave
    # up. A page is now cut in causal order, as a sync's is.
    monkeypatch.setattr(remote_read, "MAX_RESPONSE_ENVELOPES", 3)
    with trio.fail_after(120):
        async with cluster(tmp_path / "a", name="fed-one") as one, \
                cluster(tmp_path / "b", FOLLOWING, name="fed-two") as two:
            a0 = await one.start("a0")
            a1 = await one.start("a1", a0.fed.addrs(), org="a0")  # two authors (node keys) of one org
            b0 = await two.start("b0", a0.fed.addrs())
            await full_mesh([a0, a1])
            await _published(a0, [a1], [b0], PUBLIC)
            await a0.node.submit([Put(REG, "cluster", {"name": "a"}, record_id="of-a0")])
            await a1.node.submit([Put(REG, "cluster", {"name": "b"}, record_id="of-a1")])
            await eventually(lambda: _has(a0, "of-a1") and _has(a1, "of-a0"), 20, "both records on both")
            for n in range(4):  # each edits the other's record: whichever sorts first waits on the other
                await a0.node.submit([Update(REG, "of-a1", patch={"n": n})])
                await a1.node.submit([Update(REG, "of-a0", patch={"n": n})])
            await eventually(lambda: a0.node.engine.version_vector(REG) == a1.node.engine.version_vector(REG),
                             20, "every edit on both")

            await b0.fed.follows.follow(REG)
            copy = _copy(b0)
            assert copy["of-a0"]["fields"]["n"] == 3 and copy["of-a1"]["fields"]["n"] == 3
            read = await b0.fed.reader.read(REG)
            assert sorted(r["id"] for r in read["records"]) == ["of-a0", "of-a1"]


async def test_a_registry_with_an_erased_record_can_be_followed_and_its_later_changes_arrive(
        tmp_path: Path) -> None:
    # The provider holds the erased record's places without their bytes: it
    # sent the changes around them, the author's next change waited for the
    # gap for good, and every sync refused the provider as a liar. An answer
    # now names the places gone there (as a sync's does) and the copy links
    # past them.
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (two, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": n}, record_id=n) for n in ("gpu", "secret")])
            await b0.fed.follows.follow(REG)
            await a0.node.submit([Erase(REG, "secret", "GDPR art. 17")])
            await a0.node.submit([Put(REG, "cluster", {"name": "tpu"}, record_id="tpu")])
            await eventually(lambda: "tpu" in _copy(b0), 20, "the change after the erased one in the copy")
            assert b0.fed.follows.list()[0]["lying_providers"] == 0

            await b0.fed.follows.unfollow(REG)
            status = await b0.fed.follows.follow(REG)  # a first sync, past the gap
            assert sorted(_copy(b0)) == ["gpu", "tpu"] and status["last_error"] is None
            read = await b0.fed.reader.read(REG)
            assert sorted(r["id"] for r in read["records"]) == ["gpu", "tpu"]


def test_a_read_answer_naming_gone_places_is_checked_before_any_of_it_applies() -> None:
    author = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    bad_run = remote_read.ReadResponse(REG, [], [], [], False, [GonePlace(REG, author, 5, 2)])
    with pytest.raises(MalformedInput):
        remote_read.decode_response(remote_read.encode_response(bad_run))
    elsewhere = remote_read.ReadResponse(REG, [], [], [], False, [GonePlace("acme.other", author, 1, 2)])
    with pytest.raises(ValidationError, match="acme.other"):
        check_parts(remote_read.decode_response(remote_read.encode_response(elsewhere)))
    # An answer without gone places is encoded as before they existed.
    plain = remote_read.ReadResponse(REG, [], [], [], False)
    assert msgspec.msgpack.decode(remote_read.encode_response(plain)) == [REG, [], [], [], False]


async def test_a_registry_larger_than_one_read_is_refused_for_a_follow_which_takes_it_in_several_syncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # After its pages ran out, a read showed the records of the pages it got
    # as the registry's, and a follow counted its sync whole.
    from registrygrid.node import remote_read as node_read

    monkeypatch.setattr(remote_read, "MAX_RESPONSE_ENVELOPES", 2)
    monkeypatch.setattr(node_read, "MAX_PAGES", 2)
    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (two, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": f"gpu-{i}"}, record_id=f"gpu-{i}") for i in range(9)])
            with pytest.raises(Unavailable, match="larger than one read"):
                await b0.fed.reader.read(REG)
            await b0.fed.follows.follow(REG)
            await eventually(lambda: len(_copy(b0)) == 9, 30, "every record, sync after sync")
            assert b0.fed.follows.metrics["follow.partial"] >= 1


async def test_a_provider_that_says_it_has_more_but_sends_nothing_new_is_a_liar(tmp_path: Path) -> None:
    # The reader asked again and again until its pages ran out, and a follow
    # counted that a success.
    import msgspec

    from registrygrid.node import remote_read as node_read

    with trio.fail_after(120):
        async with _owner_and_follower(tmp_path, PUBLIC) as (two, a0, b0):
            await a0.node.submit([Put(REG, "cluster", {"name": "gpu"}, record_id="gpu")])

            async def stall(peer_id: str, request: bytes) -> bytes:
                answer = remote_read.decode_response(node_read.answer_read(request, a0.node.engine))
                return remote_read.encode_response(msgspec.structs.replace(answer, more=True))

            assert a0.fed.host is not None
            a0.fed.host.set_handler(remote_read.READ_PROTOCOL_ID, stall)
            with pytest.raises(Unavailable, match="sent nothing that moved"):
                await b0.fed.follows.follow(REG)


async def test_peers_reads_take_threads_of_their_own_and_a_node_busy_with_them_still_syncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads and federated searches waited on the limiter of this node's own
    # sync sessions: any peer, member or not, that kept asking queued its
    # reads ahead of them and held this node's replication back.
    from registrygrid.node import federation as federation_mod
    from registrygrid.node.transport import RemoteError

    release = threading.Event()

    def slow_read(request: bytes, engine: Any) -> bytes:
        release.wait(20)
        return b""

    monkeypatch.setattr(federation_mod, "answer_read", slow_read)
    with trio.fail_after(60):
        async with cluster(tmp_path) as nodes:
            a = await nodes.start("a")
            b = await nodes.start("b", a.fed.addrs())
            await full_mesh([a, b])
            reads = 4  # the reading threads a node keeps (federation.MAX_SERVED_READS; before, the sync sessions')
            answers: list[Any] = []

            async def read() -> None:
                try:
                    answers.append(await b.fed.host.request(a.peer_id, remote_read.READ_PROTOCOL_ID, b"x", timeout=30))
                except RemoteError as exc:
                    answers.append(exc)

            async with trio.open_nursery() as readers:
                for _ in range(reads):
                    readers.start_soon(read)
                await eventually(lambda: a.fed.metrics["remote_read.served"] == reads, 10, "every read taken")
                await trio.sleep(0.3)  # their threads run
                with trio.move_on_after(5):
                    await read()  # one more: busy at once, not queued behind them
                assert answers and isinstance(answers[-1], RemoteError) and "busy" in str(answers[-1]), answers
                assert a.fed.metrics["remote_read.refused_busy"] == 1
                release.set()
