"""The index interface (mkv/index/base.py): the LevelDB engine against it, and the shape a
networked engine needs — the lookups of one event-loop turn answered by one batch — with the
real master's faces over real nginx volumes."""

import asyncio
import io
import random
from pathlib import Path

import uvloop
from cluster import exchange, free_port

from mkv.config import Config
from mkv.http.server import HTTPServer
from mkv.index import Index, LevelDBIndex
from mkv.index.base import Answer, Failure
from mkv.master import faces
from mkv.native import NativeAPI
from mkv.ops import rebuild
from mkv.ops.progress import Progress
from mkv.ops.walk import VolumeFile
from mkv.placement import key2path
from mkv.record import Record, State
from mkv.s3.face import S3
from mkv.store import REFUSED, Store
from mkv.volumes.replicas import Volumes

LIVE = Record(("127.0.0.1:1",), State.LIVE, "0" * 32)


async def check_engine(index: Index) -> None:
    """What every engine must do, on an empty index; it holds 4 records afterwards."""
    for key in (b"/a/1", b"/a/2", b"/a/3", b"/b/1", b"/ab"):
        await index.put(key, LIVE)
    await index.put(b"/a/2", LIVE.with_state(State.UNLINKED))
    assert await index.get(b"/a/2") == LIVE.with_state(State.UNLINKED)
    assert await index.get(b"/none") is None
    answers: list[Record | None] = []
    index.lookup(b"/a/1", answers.append)
    index.lookup(b"/none", answers.append)
    await index.get(b"/a/1")  # a batching engine answers with its turn's batch
    assert answers == [LIVE, None]
    assert [k async for k, _ in index.items(b"/a/")] == [b"/a/1", b"/a/2", b"/a/3"]
    assert [k async for k, _ in index.items(b"/a/", b"/a/2")] == [b"/a/2", b"/a/3"]
    assert [k async for k, _ in index.items(b"/a")] == [b"/a/1", b"/a/2", b"/a/3", b"/ab"]
    assert await index.page(b"/a/", State.LIVE, b"", 1) == ([b"/a/1"], b"/a/3")
    assert await index.page(b"/a/", State.LIVE, b"/a/2", 5) == ([b"/a/3"], None)
    await index.put_many([(b"/m/1", LIVE), (b"/m/2", LIVE.with_state(State.WRITING))])
    assert [r.state async for _, r in index.items(b"/m/")] == [State.LIVE, State.WRITING]
    for key in (b"/m/1", b"/m/2", b"/b/1", b"/never"):
        await index.delete(key)
    assert await index.count() == 4


def test_leveldb_engine(tmp_path: Path) -> None:
    async def check() -> None:
        index = LevelDBIndex(str(tmp_path / "db"))
        await check_engine(index)
        answers: list[Record | None] = []
        index.lookup(b"/a/1", answers.append)
        assert answers == [LIVE]  # an embedded engine answers at once
        await index.close()
        reopened = LevelDBIndex(str(tmp_path / "db"))
        assert await reopened.count() == 4
        await reopened.clear()
        assert await reopened.count() == 0
        await reopened.close()

    asyncio.run(check())


class BatchingIndex(LevelDBIndex):
    """LevelDB behind the interface as a networked engine would use it: lookups and gets are
    held until the end of the loop turn and answered together, one "query" each turn."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.waiting: list[tuple[bytes, Answer]] = []
        self.batches: list[int] = []

    def lookup(self, key: bytes, answer: Answer, failed: Failure | None = None) -> None:
        if not self.waiting:
            asyncio.get_running_loop().call_soon(self._answer_batch)
        self.waiting.append((key, answer))

    def _answer_batch(self) -> None:
        batch, self.waiting = self.waiting, []
        self.batches.append(len(batch))
        for key, answer in batch:
            super().lookup(key, answer)

    async def get(self, key: bytes) -> Record | None:
        answered = asyncio.get_running_loop().create_future()
        self.lookup(key, answered.set_result)
        return await answered


def test_rebuild_writes_each_key_once_its_directory_is_walked(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Three walkers find each key's files in any order; a first-level directory's records are
    written when the walk says it is done, in batches, and the index is never read."""
    monkeypatch.setattr(rebuild, "WRITE_BATCH", 7)
    volumes = ("10.0.0.1:3001", "10.0.0.2:3001", "10.0.0.3:3001")
    config = Config(volumes=volumes, replicas=3, subvolumes=1)
    keys = [f"/merge/{i}".encode() for i in range(300)]
    finds = [VolumeFile(volume, key2path(key), key, "", "") for key in keys for volume in volumes]
    random.Random(7).shuffle(finds)
    groups = sorted({file.path[:4] for file in finds})

    async def check() -> None:
        index = BatchingIndex(str(tmp_path / "db"))
        progress = Progress("rebuild", out=io.StringIO(), err=io.StringIO())
        found = rebuild.FoundReplicas(config, index, progress)
        await asyncio.gather(*(found.add(file.key, file) for file in finds))
        assert [key async for key, _ in index.items(b"/merge/")] == []
        for group in groups:
            await found.write(group)
        records = {key: record async for key, record in index.items(b"/merge/")}
        assert records == {key: Record(tuple(config.placement(key))) for key in keys}
        assert progress.counts["keys"] == len(keys)
        assert index.batches == []  # no lookup: the index was emptied before the walk
        await index.close()

    uvloop.run(check())


def test_one_batch_answers_the_lookups_of_a_loop_turn(tmp_path: Path, make_volumes) -> None:
    vols = make_volumes(2)
    config = Config(db=str(tmp_path / "db"), volumes=tuple(v.addr for v in vols), replicas=2,
                    subvolumes=1)
    stored = [f"/batch/{i}".encode() for i in range(20)]

    async def check() -> None:
        index = BatchingIndex(config.db)
        volumes = Volumes.for_config(config)
        store = Store(config, index, volumes)
        server = HTTPServer(faces(NativeAPI(store), S3(store)), refusals=REFUSED)
        port = free_port()
        await server.start("127.0.0.1", port)
        puts = [b"PUT %s HTTP/1.1\r\nContent-Length: 5\r\n\r\nvalue" % k for k in stored]
        assert await exchange(port, puts) == [b"201"] * len(stored)

        index.batches.clear()
        keys = [k for key in stored for k in (key, key + b"-missing")]
        statuses = await exchange(port, [b"GET %s HTTP/1.1\r\n\r\n" % k for k in keys])
        assert statuses == [b"302", b"404"] * len(stored)
        assert index.batches == [len(keys)]  # parsed in one turn: one batch of 40

        deletes = [b"DELETE %s HTTP/1.1\r\n\r\n" % k for k in keys]
        assert await exchange(port, deletes) == [b"204", b"404"] * len(stored)
        assert [k async for k, _ in index.items(b"/batch/")] == []
        await server.shutdown(grace=1.0)
        await volumes.close()
        await index.close()

    uvloop.run(check())
