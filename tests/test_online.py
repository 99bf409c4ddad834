"""`repair` and `rebuild` online, run while masters take 16 writers' PUTs and a churn of
PUT+DELETE pairs, on volumes of the test's own: over a PostgreSQL index with two masters, and
over a LevelDB index with its master serving it to the commands (mkv/index/owner.py), of one
process or of `-workers 2`. Afterwards every acknowledged key reads back its value and
`verify -checksum` exits 0. The tests reach the records as the commands do: `open_index`.

The figures each test measures are printed (`pytest -s` shows them).
"""

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvloop
from cluster import mkv_command
from conftest import Master, replica_file
from test_postgres_faults import Writers, assert_readable

from mkv.index import Index, open_index
from mkv.record import Record, State

FLAGS = ("-replicas", "2", "-subvolumes", "3")
OLD = 100  # keys written before the command runs


def on_index(db: str, work) -> object:
    """`await work(index)` on the index at `db`, as a command opens it."""
    async def run() -> object:
        index: Index = await open_index(db)
        try:
            return await work(index)
        finally:
            await index.close()

    return uvloop.run(run())


def record_of(db: str, key: bytes) -> Record | None:
    return on_index(db, lambda index: index.get(key))


def set_record(db: str, key: bytes, record: Record | None) -> None:
    on_index(db, lambda index: index.put(key, record) if record else index.delete(key))


@dataclass
class Churn:
    """A thread PUTting a key and DELETEing it again, over and over: files that come and go
    while the command walks."""

    master: Master
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"/churn/{i}".encode()
            self.statuses[self.master.put(key, b"churn").status] += 1
            self.statuses[self.master.call("DELETE", key).status] += 1
            i += 1

    def finish(self) -> Counter:
        self.stop.set()
        self.thread.join(60)
        return self.statuses


@dataclass
class Online:
    url: str
    vols: list
    masters: list[Master]
    old: dict[bytes, bytes]

    @property
    def addrs(self) -> str:
        return ",".join(v.addr for v in self.vols)

    def command(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(mkv_command("-db", self.url, "-volumes", self.addrs, *FLAGS, *args),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def run_while_writing(self, *args: str) -> tuple[subprocess.CompletedProcess, list, Counter]:
        """The command, run once 16 writers and a churn write through both masters; what
        the writers and the churn were answered."""
        writers = Writers([m.port for m in self.masters], count=16)
        churn = Churn(self.masters[1])
        try:
            writers.wait_for(201, after=0)
            began = time.monotonic()
            result = self.command(*args)
            seconds = time.monotonic() - began
            time.sleep(0.3)  # writes after the command too
        finally:
            outcomes = writers.finish()
            churned = churn.finish()
        print(f"\n{args[-1]} online in {seconds:.2f}s while {len(outcomes)} PUTs were answered "
              f"({Counter(o.status for o in outcomes)}), churn {dict(churned)}; "
              f"{result.stdout.strip().splitlines()[-1]}")
        return result, outcomes, churned

    def assert_healthy(self, outcomes: list) -> None:
        assert {o.status for o in outcomes} == {201}, Counter(o.status for o in outcomes)
        assert_readable(self.masters[0], [o.key for o in outcomes])
        for key, value in self.old.items():
            assert self.masters[1].read(key) == value, key
        verify = self.command("-checksum", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        print(verify.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["postgres", "leveldb", "leveldb -workers 2"])
def online(request, make_volumes, make_master) -> Iterator[Online]:
    vols = make_volumes(3)  # of this test alone: verify finds no other test's files
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        masters = [make_master(*FLAGS, db=url, volumes=vols) for _ in range(2)]
    else:
        workers = ("-workers", "2") if "workers" in request.param else ()
        master = make_master(*FLAGS, *workers, volumes=vols)
        url, masters = str(master.db), [master, master]  # LevelDB admits one master
    old = {f"/old/{i}".encode(): b"old value %d" % i for i in range(OLD)}
    for key, value in old.items():
        assert masters[0].put(key, value).status == 201
    yield Online(url, vols, masters, old)


def files(online: Online, key: bytes) -> list:
    record = record_of(online.url, key)
    assert record is not None
    return [replica_file(online.vols, r, key) for r in record.replicas]


def plant_orphans(online: Online, count: int) -> list:
    """Files of keys no record names, at their placement, an hour old."""
    planted = []
    for i in range(count):
        key = f"/orphan/{i}".encode()
        assert online.masters[0].put(key, b"x").status == 201  # placed as any key is
        paths = files(online, key)
        set_record(online.url, key, None)
        hour_ago = time.time() - 3600
        for path in paths:
            os.utime(path, (hour_ago, hour_ago))
        planted += paths
    return planted


def test_repair_online_while_masters_write(online: Online) -> None:
    keys = list(online.old)
    for key in keys[:10]:  # a replica missing
        files(online, key)[1].unlink()
    for key in keys[10:15]:  # a replica corrupt, its size kept: only the md5 tells
        path = files(online, key)[0]
        path.write_bytes(b"X" * path.stat().st_size)
    cut_off = keys[15]  # a write cut off after its files: INIT, every replica complete
    record = record_of(online.url, cut_off)
    set_record(online.url, cut_off, Record(record.replicas, State.WRITING))
    orphans = plant_orphans(online, 5)  # 10 files: 2 replicas each

    result, outcomes, _ = online.run_while_writing("-checksum", "-orphans", "delete",
                                                   "-grace", "0", "repair")
    assert result.returncode == 0, result.stdout + result.stderr
    fixed = [line for line in result.stdout.splitlines() if line.startswith("fixed:")]
    assert len(fixed) == 15, result.stdout
    assert f"finished: {cut_off.decode()}: every replica complete, now live" in result.stdout
    deleted = [line for line in result.stdout.splitlines() if line.startswith("deleted orphan")]
    assert len(deleted) == 10 and all("/orphan/" in line for line in deleted), result.stdout
    assert not any(path.exists() for path in orphans)
    assert record_of(online.url, cut_off) == Record(record.replicas, State.LIVE, record.md5)
    online.assert_healthy(outcomes)


def test_rebuild_online_while_masters_write(online: Online) -> None:
    """Records lost, pointing at the wrong replicas, or pointing at files that are gone; the
    index mended while the masters write, their keys left as they wrote them."""
    keys = list(online.old)
    before = {key: record_of(online.url, key) for key in keys}
    for key in keys[:10]:  # lost
        set_record(online.url, key, None)
    addrs = [v.addr for v in online.vols]
    for key in keys[10:15]:  # naming a replica that never had the file
        wrong = next(f"{v}/sv00" for v in addrs
                     if not any(r.startswith(v) for r in before[key].replicas))
        set_record(online.url, key, Record((wrong,), State.LIVE, before[key].md5))
    unlinked = keys[20]
    assert online.masters[0].call("UNLINK", unlinked).status == 204
    ghosts = [f"/ghost/{i}".encode() for i in range(5)]  # records whose files are gone
    for ghost in ghosts:
        assert online.masters[0].put(ghost, b"soon gone").status == 201
        for path in files(online, ghost):
            path.unlink()

    result, outcomes, _ = online.run_while_writing("rebuild")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    restored = sorted(line.split()[1] for line in out if line.startswith("restored:"))
    assert restored == sorted(key.decode() for key in keys[:10]), result.stdout
    mended = sorted(line.split()[1] for line in out if line.startswith("mended:"))
    assert mended == sorted(key.decode() for key in keys[10:15]), result.stdout
    dropped = sorted(line.split()[1] for line in out if line.startswith("dropped:"))
    assert dropped == sorted(ghost.decode() + ":" for ghost in ghosts), result.stdout
    for key in keys[:10]:  # as Go mkv's rebuild writes a record: live, no md5
        assert record_of(online.url, key) == Record(before[key].replicas), key
    for key in keys[10:15]:  # the state kept, the md5 not: these are not the record's files
        assert record_of(online.url, key) == Record(before[key].replicas, State.LIVE), key
    assert record_of(online.url, unlinked) == before[unlinked].with_state(State.UNLINKED)
    for key in keys[21:]:
        assert record_of(online.url, key) == before[key], key
    assert all(record_of(online.url, ghost) is None for ghost in ghosts)
    del online.old[unlinked]
    online.assert_healthy(outcomes)
