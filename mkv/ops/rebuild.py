"""`mkv rebuild`: the index rebuilt from what the volumes hold, for a lost or suspect index.

The index is emptied, then every file in the layout of every volume becomes a replica of its
key's live record, the replicas ordered as today's placement orders them and unknown ones
last (in -volumes order). A file whose name is not a key at its path is reported and skipped.
Records carry no md5, as Go mkv's rebuild writes them; with -checksum each value is read once
more, from its first replica, to restore it.
"""

import asyncio

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.index import Index
from mkv.ops.progress import Progress, for_each, run_offline, shown
from mkv.ops.walk import VolumeFile, Walk
from mkv.record import Record
from mkv.transfer import read_md5
from mkv.volumes import Volumes


def ordered(replicas: list[str], placement: list[str], volumes: tuple[str, ...]) -> list[str]:
    """`replicas` in `placement`'s order, then the others by their volume's place in -volumes."""
    rank = {v: i for i, v in enumerate(volumes)}
    known = [r for r in placement if r in replicas]
    others = sorted((r for r in replicas if r not in placement),
                    key=lambda r: (rank.get(r.partition("/")[0], len(rank)), r))
    return known + others


WRITE_BATCH = 10_000  # keys whose records go to the index together: one journal write, not 10,000


class FoundReplicas:
    """The replicas found of each key, written to the index in batches.

    Walkers of different volumes find one key's files at different times, so each record
    written is what the index had plus what was found since. With a networked engine, reads
    and writes wait: one read per key at a time, and a key of the batch being written is taken
    from that batch, as the index may not have it yet.
    """

    def __init__(self, config: Config, index: Index, progress: Progress) -> None:
        self.config = config
        self.index = index
        self.progress = progress
        self.pending: dict[bytes, list[str]] = {}
        self.writing: dict[bytes, list[str]] = {}
        self.reading: dict[bytes, asyncio.Future] = {}

    async def add(self, key: bytes, replica: str) -> None:
        while key not in self.pending:
            if key in self.writing:
                self.pending[key] = list(self.writing[key])
            elif key in self.reading:
                await self.reading[key]  # another walker's read: then look again
            else:
                self.reading[key] = read = asyncio.get_running_loop().create_future()
                try:
                    record = await self.index.get(key)
                finally:
                    del self.reading[key]
                    read.set_result(None)
                if record is None:
                    self.progress.count("keys")
                self.pending[key] = list(record.replicas) if record else []
        self.pending[key].append(replica)
        if len(self.pending) >= WRITE_BATCH and not self.writing:
            await self.flush()

    async def flush(self) -> None:
        self.writing, self.pending = self.pending, {}
        config = self.config
        await self.index.put_many([
            (key, Record(tuple(replicas if len(replicas) == 1 else
                               ordered(replicas, config.placement(key), config.volumes))))
            for key, replicas in self.writing.items()])
        self.writing = {}


async def rebuild(config: Config, index: Index, volumes: Volumes, progress: Progress) -> None:
    await index.clear()
    walk = Walk(volumes, config.volumes, config.concurrency, progress)
    progress.phase("rebuild: walking volumes", "files", fraction=walk.fraction)
    replicas = FoundReplicas(config, index, progress)

    async def found(file: VolumeFile) -> None:
        progress.advance()
        if file.key is None:
            progress.count("skipped")
            progress.note(f"skipped: {file.url}: {file.problem}")
            return
        await replicas.add(file.key, file.replica)

    await walk.run(found)
    await replicas.flush()
    if config.checksum:
        await restore_md5(config, index, volumes, progress)


async def restore_md5(config: Config, index: Index, volumes: Volumes,
                      progress: Progress) -> None:
    """Read each value once, from the first replica that gives it, and record its md5."""
    progress.phase("rebuild: reading values", "keys", total=await index.count())

    async def one(item: tuple[bytes, Record]) -> None:
        key, record = item
        progress.advance()
        errors = []
        for replica in record.replicas:
            try:
                md5 = await read_md5(volumes, replica, key)
            except VolumeError as e:
                errors.append(str(e))
                continue
            await index.put(key, Record(record.replicas, record.state, md5))
            return
        progress.problem("unread", f"{shown(key)}: no replica gave the value: "
                         + "; ".join(errors))

    await for_each(index.items(), one, config.concurrency)


def main(config: Config) -> int:
    return run_offline(config, rebuild, "rebuild")
