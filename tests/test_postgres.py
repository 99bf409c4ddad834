"""The PostgreSQL engine (mkv/index/postgres.py) on the session's throwaway server: the same
order, pages and records as LevelDB, the lookups of a loop turn in one query, and the native
API's checks (tests/test_api.py) run again against a master over PostgreSQL."""

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import test_api
import uvloop
from cluster import children, exchange, free_port, mkv_command
from conftest import Master, MasterFactory, read_records, unique_key, write_records
from golang import assert_same_through_both, memtable_flushed

from mkv.config import Config
from mkv.http.server import HTTPServer
from mkv.index import LevelDBIndex, open_index
from mkv.index import postgres as engine
from mkv.master import faces
from mkv.native import NativeAPI
from mkv.ops import copy
from mkv.record import Record, State
from mkv.s3.face import S3
from mkv.store import REFUSED, Store
from mkv.volumes.replicas import Volumes


def _records(count: int, seed: int) -> list[tuple[bytes, Record]]:
    """Keys with the bytes SQL text would mis-order (0x00, 0x7f-0xff, prefixes of each
    other), each with a record in one of the three states."""
    rng = random.Random(seed)
    alphabet = b"\x00\x01/a\x7f\x80\xfe\xff"
    states = list(State)
    records = []
    for i in range(count):
        key = b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        md5 = f"{i:032x}" if i % 3 else None
        records.append((key, Record((f"10.0.0.{i % 7}:3001/sv0{i % 4}",), rng.choice(states),
                                    md5)))
    return records


def test_engine_orders_pages_and_keeps_records_as_leveldb(
        pg_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine, "ITEMS_PAGE", 3)  # keyset pages end inside every listing
    records = _records(400, seed=13)
    prefixes = [b"", b"/", b"/a", b"/\xff", b"/\xff\xff", b"/\x00", b"/a\x80", b"/\x7f/"]

    async def check() -> None:
        pg = await open_index(pg_url)
        ldb = LevelDBIndex(str(tmp_path / "db"))
        assert isinstance(pg, engine.PostgresIndex)
        for index in (pg, ldb):
            await index.put_many(records[:200])  # duplicate keys: the last one wins
            for key, record in records[200:]:
                await index.put(key, record)
            for key, _ in records[::17]:
                await index.delete(key)
            await index.delete(b"/never")
        assert await pg.count() == await ldb.count()
        for prefix in prefixes:
            for start in (b"", b"/a", b"/\x80"):
                assert ([kr async for kr in pg.items(prefix, start)]
                        == [kr async for kr in ldb.items(prefix, start)]), (prefix, start)
            for state in State:
                for limit in (1, 2, 5, 1000):
                    assert (await pg.page(prefix, state, b"/\x01", limit)
                            == await ldb.page(prefix, state, b"/\x01", limit))
        for key, _ in records[:50]:
            assert await pg.get(key) == await ldb.get(key)
        assert await pg.get(b"/none") is None
        await pg.clear()
        assert await pg.count() == 0
        await pg.close()
        await ldb.close()

    uvloop.run(check())


def test_successor_bounds_a_prefix() -> None:
    assert engine.successor(b"/a") == b"/b"
    assert engine.successor(b"/a\xff\xff") == b"/b"
    assert engine.successor(b"\xff") is None
    assert engine.successor(b"") is None


def test_the_gets_of_one_loop_turn_are_one_query(pg_url: str, make_volumes) -> None:
    vols = make_volumes(2)
    config = Config(db=pg_url, volumes=tuple(v.addr for v in vols), replicas=2, subvolumes=1,
                    s3_spool=str(vols[0].dir) + ".s3")
    stored = [f"/batch/{i}".encode() for i in range(20)]

    async def check() -> None:
        index = await open_index(pg_url)
        volumes = Volumes.for_config(config)
        store = Store(config, index, volumes)
        server = HTTPServer(faces(NativeAPI(store), S3(store)), refusals=REFUSED)
        port = free_port()
        await server.start("127.0.0.1", port)
        puts = [b"PUT %s HTTP/1.1\r\nContent-Length: 5\r\n\r\nvalue" % k for k in stored]
        assert await exchange(port, puts) == [b"201"] * len(stored)

        batches, keys_sent = index.batches, index.batched_keys
        keys = [k for key in stored for k in (key, key + b"-missing")]
        statuses = await exchange(port, [b"GET %s HTTP/1.1\r\n\r\n" % k for k in keys])
        assert statuses == [b"302", b"404"] * len(stored)
        assert (index.batches - batches, index.batched_keys - keys_sent) == (1, len(keys))
        await server.shutdown(grace=1.0)
        await volumes.close()
        await index.close()

    uvloop.run(check())


@pytest.fixture(scope="module")
def pg_master(postgres, volumes, tmp_path_factory) -> Iterator[Master]:
    """A master over a PostgreSQL index on the session's volumes (the `cluster` flags)."""
    factory = MasterFactory(tmp_path_factory.mktemp("pg"), volumes)
    try:
        yield factory(db=postgres.new_database())
    finally:
        factory.stop_all()


NATIVE_CHECKS = [
    test_api.test_get_and_head_of_live_key_redirect_to_a_replica,
    test_api.test_live_key_whose_files_are_all_gone_is_410,
    test_api.test_put_201_then_403_when_live,
    test_api.test_put_empty_body_is_411_and_leaves_nothing,
    test_api.test_chunked_put_is_accepted,
    test_api.test_other_changes_during_a_write_are_409,
    test_api.test_replace_overwrites_a_live_key,
    test_api.test_put_after_unlink_is_allowed,
    test_api.test_delete,
    test_api.test_delete_of_an_unlinked_key,
    test_api.test_unlink,
    test_api.test_relink,
    test_api.test_list_unlinked_start_limit,
    test_api.test_writing_lists_a_put_in_progress,
    test_api.test_longest_storable_key_is_stored,
    test_api.test_utf8_key,
]


@pytest.mark.parametrize("check", NATIVE_CHECKS, ids=[c.__name__[5:] for c in NATIVE_CHECKS])
def test_native_api_over_postgres(pg_master: Master, check) -> None:
    check(pg_master)


def test_missing_key_404_and_get_method_variants(pg_master: Master) -> None:
    for method in ("GET", "HEAD"):
        test_api.test_get_missing_or_unlinked_is_404(pg_master, method)


def test_unreachable_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    url = f"postgresql://mkv@127.0.0.1:{free_port()}/none"
    result = subprocess.run(mkv_command("-db", url, "-volumes", "127.0.0.1:1", "-replicas", "1",
                                        "-s3_spool", str(tmp_path / "s3"), "server"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "PostgreSQL index cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr


def _pg_rows(url: str) -> dict[bytes, bytes]:
    async def rows() -> dict[bytes, bytes]:
        connection = await asyncpg.connect(url)
        try:
            return dict(await connection.fetch(f"SELECT k, r FROM {engine.TABLE} ORDER BY k"))
        finally:
            await connection.close()
    return uvloop.run(rows())


def test_copy_leveldb_to_postgres_and_back_is_byte_exact(pg_url: str, tmp_path: Path,
                                                         monkeypatch, ldbdump: Path) -> None:
    """Back in LevelDB, Go mkv's goleveldb reads every record: the copy is many memtables
    long, so it only does if the copy leaves no journal behind (mkv/index/leveldb.py)."""
    md5 = "0123456789abcdef0123456789abcdef"
    records = {key: record.encode() for key, record in _records(300, seed=5)}
    records |= {b"/bulk/%07d" % i: f"HASH{md5}127.0.0.1:3001/sv{i % 10:02d},127.0.0.1:3002/sv0"
                f"{i % 7},127.0.0.1:3003/sv0{i % 3}".encode() for i in range(60_000)}
    records |= {  # records as Go mkv writes them
        b"/go/live": f"HASH{md5}127.0.0.1:3001/sv01,127.0.0.1:3002/sv07".encode(),
        b"/go/unlinked": f"DELETEDHASH{md5}127.0.0.1:3001".encode(),
        b"/go/init": b"INIT127.0.0.1:3001/sv00,127.0.0.1:3003/sv09",
        b"/go/nomd5": b"127.0.0.1:3002",
    }
    first, back = tmp_path / "first", tmp_path / "back"
    write_records(first, records)
    monkeypatch.setattr(copy, "BATCH", 64)  # several batches each way, in process below

    copied = subprocess.run(mkv_command("-db", str(first), "copy", pg_url),
                            capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    assert f"{len(records):,} records copied" in copied.stderr
    assert _pg_rows(pg_url) == records

    async def copy_back() -> int:
        source, dest = await open_index(pg_url), LevelDBIndex(str(back))
        count = await copy.copy_index(source, dest)
        await source.close()
        await dest.close()
        return count
    assert uvloop.run(copy_back()) == len(records)
    assert memtable_flushed(back), "no memtable flushed: goleveldb's read proves little"
    assert dict(assert_same_through_both(ldbdump, back)) == records == read_records(first)

    again = subprocess.run(mkv_command("-db", str(back), "copy", pg_url),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already holds" in again.stderr
    assert _pg_rows(pg_url) == records


def test_workers_serve_one_port_over_postgres(pg_url: str, make_master) -> None:
    master = make_master("-workers", "2", db=pg_url)
    workers = children(master.process.proc.pid)
    assert len(workers) == 2
    keys = [unique_key("w") for _ in range(40)]
    for key in keys:  # a connection each: the kernel spreads them over the workers
        assert master.put(key, key * 3).status == 201
    for key in keys:
        assert master.read(key) == key * 3
    assert master.listing(b"/w-", limit="100")["keys"] == sorted(k.decode() for k in keys)
    assert master.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
