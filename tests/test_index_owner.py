"""A LevelDB index served by its owner (mkv/index/owner.py) and used through its socket
(mkv/index/remote.py), in one process and event loop: the frames, the engine against the Index
interface, one frame per loop turn, the per-key lock across connections, and what a lost or
silent owner does to the requests waiting on it."""

import asyncio
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_index import check_engine

from mkv.index import LevelDBIndex, open_index
from mkv.index.base import IndexUnavailable
from mkv.index.owner import SOCKET_NAME, IndexOwner, socket_path
from mkv.index.remote import RemoteIndex
from mkv.index.wire import GET, LOCK, MAX_FRAME, PUT, FrameError, Frames, frame
from mkv.record import Record, State

LIVE = Record(("127.0.0.1:1",), State.LIVE, "0" * 32)

messages = st.lists(st.lists(st.tuples(st.integers(0, 10), st.binary(max_size=40)),
                             max_size=5), min_size=1, max_size=6)


@given(messages, st.lists(st.integers(1, 64), max_size=20))
@settings(max_examples=300)
def test_frames_come_out_whole_however_the_bytes_are_cut(sent, cuts):
    stream = b"".join(frame(m) for m in sent)
    frames, got, at = Frames(), [], 0
    for cut in [*cuts, len(stream)]:
        got += frames.feed(stream[at:at + cut])
        at += cut
    got += frames.feed(stream[at:])
    assert got == [[tuple(r) for r in m] for m in sent]


def test_frames_refuse_garbage():
    with pytest.raises(FrameError):
        Frames().feed((MAX_FRAME + 1).to_bytes(4, "little"))
    with pytest.raises(FrameError):
        Frames().feed(b"\x03\x00\x00\x00\xff\xff\xff")
    with pytest.raises(FrameError):
        Frames().feed(frame({"not": "a list"}))  # type: ignore[arg-type]


async def served(db: Path) -> tuple[LevelDBIndex, IndexOwner]:
    index = LevelDBIndex(str(db))
    owner = IndexOwner(index, str(db))
    await owner.start()
    return index, owner


def run(check) -> None:
    asyncio.run(asyncio.wait_for(check(), 60))


def test_the_engine_through_its_owner(tmp_path: Path) -> None:
    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        index = await open_index(str(tmp_path / "db"))  # a command: the master's, remotely
        assert isinstance(index, RemoteIndex)
        await check_engine(index)
        assert await local.get(b"/a/2") == LIVE.with_state(State.UNLINKED)  # the owner's
        answers: list[Record | None] = []
        index.lookup(b"/a/1", answers.append)
        assert answers == []  # answered with the turn's frame
        await index.get(b"/a/1")
        assert answers == [LIVE]
        many = [(b"/z/%05d" % n, LIVE) for n in range(2500)]  # items pages past 1,000
        await index.put_many(many)
        assert [k async for k, _ in index.items(b"/z/")] == [k for k, _ in many]
        index.stats()
        await index.get(b"/a/1")
        assert index.stats()["engine"] == "leveldb"
        await index.clear()
        assert await local.count() == 0
        await index.close()
        await owner.close()
        assert not (tmp_path / "db" / SOCKET_NAME).exists()
        await local.close()
        alone = await open_index(str(tmp_path / "db"))  # no master: the directory itself
        assert isinstance(alone, LevelDBIndex)
        await alone.close()
    run(check)


def test_a_turns_requests_go_as_one_frame(tmp_path: Path) -> None:
    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        index = RemoteIndex(socket_path(str(tmp_path / "db")))
        await index.put(b"/k", LIVE)
        frames, requests = owner.frames, owner.requests
        got = await asyncio.gather(*(index.get(b"/k" if n % 2 else b"/none")
                                     for n in range(200)))
        assert got == [LIVE if n % 2 else None for n in range(200)]
        assert (owner.frames - frames, owner.requests - requests) == (1, 200)
        await index.close()
        await owner.close()
        await local.close()
    run(check)


def test_a_key_lock_is_one_connections_and_dies_with_it(tmp_path: Path) -> None:
    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        one, other = (RemoteIndex(socket_path(str(tmp_path / "db"))) for _ in range(2))
        assert await one.locks.acquire(b"/k")
        assert not await other.locks.acquire(b"/k")
        assert not await local.locks.acquire(b"/k")  # the owner's own master's lock
        one.locks.release(b"/k")
        assert await other.locks.acquire(b"/k")
        assert await local.locks.acquire(b"/mine")
        assert not await one.locks.acquire(b"/mine")
        local.locks.release(b"/mine")
        assert await one.locks.acquire(b"/mine")
        await other.close()  # its keys go with its connection
        while not await local.locks.acquire(b"/k"):
            await asyncio.sleep(0.01)
        await one.close()
        await owner.close()
        await local.close()
    run(check)


def test_a_write_under_a_lock_lost_with_its_connection_fails(tmp_path: Path) -> None:
    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        index = RemoteIndex(socket_path(str(tmp_path / "db")))
        assert await index.locks.acquire(b"/k")
        for connection in list(owner.connections):
            connection.drop()  # the owner restarted, say: the lock is gone
        with pytest.raises(IndexUnavailable):
            await index.get(b"/other")  # in flight as the connection went
        other = RemoteIndex(socket_path(str(tmp_path / "db")))
        assert await other.locks.acquire(b"/k")
        with pytest.raises(IndexUnavailable, match="lock was lost"):
            await index.put(b"/k", LIVE)  # reconnected, but not under the old lock
        assert await local.get(b"/k") is None
        await index.put(b"/unlocked", LIVE)  # the connection itself is back
        index.locks.release(b"/k")
        other.locks.release(b"/k")
        assert await index.locks.acquire(b"/k")
        await index.put(b"/k", LIVE)
        assert await local.get(b"/k") == LIVE
        for closing in (index, other, owner, local):
            await closing.close()
    run(check)


def test_an_owner_that_goes_or_stalls_answers_503_within_a_bound(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setattr("mkv.index.remote.ANSWER_SECONDS", 0.5)

    async def check() -> None:
        path = str(tmp_path / "silent.sock")
        silent = await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path)
        index = RemoteIndex(path)
        loop = asyncio.get_running_loop()
        began = loop.time()
        failed: list[Exception] = []
        index.lookup(b"/k", lambda record: None, failed.append)
        with pytest.raises(IndexUnavailable, match="did not answer"):
            await index.get(b"/k")
        assert len(failed) == 1 and 0.5 <= loop.time() - began < 5
        silent.close()
        await silent.wait_closed()
        (tmp_path / "silent.sock").unlink()
        began = loop.time()
        with pytest.raises(IndexUnavailable, match="cannot be reached"):
            await index.get(b"/k")  # nobody there: at once
        assert loop.time() - began < 1
        await index.close()
        with pytest.raises(IndexUnavailable, match="closed"):
            await index.get(b"/k")
    run(check)


def test_a_peer_sending_garbage_is_dropped_and_the_owner_serves_on(tmp_path: Path) -> None:
    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        path = socket_path(str(tmp_path / "db"))
        for garbage in (b"\xff\xff\xff\xff", b"\x02\x00\x00\x00ab", frame([(99, b"x")]),
                        frame([(GET,)]), frame([7])):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(garbage)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # dropped
            writer.close()
        # a peer that hangs up at any byte of a frame writing a record and taking a lock:
        # nothing of it happens, and the lock is free
        whole = frame([(LOCK, b"/cut"), (PUT, b"/cut", LIVE.encode())])
        for cut in range(1, len(whole)):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(whole[:cut])
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        index = RemoteIndex(path)
        assert await index.locks.acquire(b"/cut")
        assert await local.get(b"/cut") is None
        await index.put(b"/k", LIVE)
        assert await index.get(b"/k") == LIVE
        for closing in (index, owner, local):
            await closing.close()
    run(check)


def test_the_socket_is_the_owners_users_alone(tmp_path: Path) -> None:
    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        assert (tmp_path / "db" / SOCKET_NAME).stat().st_mode & 0o777 == 0o600
        await owner.close()
        await local.close()
    run(check)


def test_a_directory_path_too_long_for_a_socket_address(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)

    async def check() -> None:
        local, owner = await served(deep / "db")
        index = await open_index(str(deep / "db"))
        assert isinstance(index, RemoteIndex)
        await index.put(b"/k", LIVE)
        assert await local.get(b"/k") == LIVE
        for closing in (index, owner, local):
            await closing.close()
    run(check)


def test_a_socket_left_by_a_dead_owner_is_no_master(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(tmp_path / "db" / SOCKET_NAME))
    left.close()  # bound, never listening: as a killed owner leaves it

    async def check() -> None:
        index = await open_index(str(tmp_path / "db"))
        assert isinstance(index, LevelDBIndex)
        owner = IndexOwner(index, str(tmp_path / "db"))
        await owner.start()  # replaces it
        remote = await open_index(str(tmp_path / "db"))
        assert isinstance(remote, RemoteIndex)
        await remote.close()
        await owner.close()
        await index.close()
    run(check)


def test_an_idle_owner_leaves_an_empty_journal(tmp_path: Path, monkeypatch) -> None:
    """Writes, then quiet: the memtable goes to a table, so goleveldb reading the directory
    meanwhile sees every record (test_go_mkv runs Go mkv's leveldb_compare so)."""
    monkeypatch.setattr("mkv.index.owner.IDLE_FLUSH", 0.1)

    def journal(db: Path) -> int:
        return max(db.glob("[0-9]*.log"), key=lambda p: int(p.stem)).stat().st_size

    async def check() -> None:
        local, owner = await served(tmp_path / "db")
        index = RemoteIndex(socket_path(str(tmp_path / "db")))
        await index.put(b"/k", LIVE)
        await local.put(b"/own", LIVE)
        assert journal(tmp_path / "db") > 0
        while journal(tmp_path / "db") > 0:
            await asyncio.sleep(0.05)
        assert any((tmp_path / "db").glob("*.ldb"))
        for closing in (index, owner, local):
            await closing.close()
    run(check)
