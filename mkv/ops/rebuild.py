"""`mkv rebuild`: the index rebuilt from what the volumes hold, for a lost or suspect index.

Over LevelDB (Go mkv's rebuild) the index is emptied, then every file in the layout of every
volume becomes a replica of its key's live record, the replicas ordered as today's placement
orders them and unknown ones last (in -volumes order). A file whose name is not a key at its
path is reported and skipped. Records carry no md5, as Go mkv's rebuild writes them; with
-checksum each value is read once more, from its first replica, to restore it.

Over a shared index (PostgreSQL) masters may be serving, so emptying it would make every key
vanish meanwhile: the index is mended instead (`mend`). The volumes are walked; then each key
found, holding its lock and its files checked again (HEAD), gets a record naming the replicas
that have its file; a record whose replicas all still have their file stays as it is (state
and md5 kept), and one that loses or gains replicas keeps its state (and its md5 when it only
lost some); INIT records are left to `repair`. Last, each record no walked file supports is
dropped, under its lock, once every one of its replicas answers that the file is gone (a key
written since the walk has its files, so it stays) — and not at all when a listing failed.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.index import Index
from mkv.ops.progress import Progress, for_each, run_offline, shown
from mkv.ops.walk import OnGroup, VolumeFile, Walk
from mkv.record import Record, State
from mkv.store import Store
from mkv.volumes.replicas import Volumes
from mkv.volumes.transfer import read_md5


def ordered(replicas: list[str], placement: list[str], volumes: tuple[str, ...]) -> list[str]:
    """`replicas` in `placement`'s order, then the others by their volume's place in -volumes."""
    rank = {v: i for i, v in enumerate(volumes)}
    known = [r for r in placement if r in replicas]
    others = sorted((r for r in replicas if r not in placement),
                    key=lambda r: (rank.get(r.partition("/")[0], len(rank)), r))
    return known + others


WRITE_BATCH = 10_000  # records written together: one journal write, not 10,000


class FoundReplicas:
    """The replicas found of each key, kept by the key's first-level directory (`/ab/`) until
    the walk is done with it on every volume (mkv/ops/walk.py goes in step), then written in
    one batch: each key's record is written once, and the index, emptied first, never read."""

    def __init__(self, config: Config, index: Index, progress: Progress) -> None:
        self.config = config
        self.index = index
        self.progress = progress
        self.groups: dict[str, dict[bytes, list[str]]] = {}

    async def add(self, key: bytes, file: VolumeFile) -> None:
        found = self.groups.setdefault(file.path[:4], {})
        replicas = found.get(key)
        if replicas is None:
            found[key] = replicas = []
            self.progress.count("keys")
        replicas.append(file.replica)

    async def write(self, group: str) -> None:
        """The records of the keys in `group`, whose files have all been found."""
        found = list(self.groups.pop(group, {}).items())
        config = self.config
        for start in range(0, len(found), WRITE_BATCH):
            await self.index.put_many([
                (key, Record(tuple(replicas if len(replicas) == 1 else
                                   ordered(replicas, config.placement(key), config.volumes))))
                for key, replicas in found[start:start + WRITE_BATCH]])


async def rebuild(config: Config, index: Index, volumes: Volumes, progress: Progress) -> None:
    if index.locks is not None:
        await mend(config, index, volumes, progress)
    else:
        await index.clear()
        replicas = FoundReplicas(config, index, progress)
        await walk_volumes(config, volumes, progress, replicas.add, replicas.write)
    if config.checksum:
        await restore_md5(config, index, volumes, progress)


async def walk_volumes(config: Config, volumes: Volumes, progress: Progress,
                       add: Callable[[bytes, VolumeFile], Awaitable[None]],
                       on_group: OnGroup | None = None) -> None:
    """`await add(key, file)` for every key's file on the volumes (other files reported), and
    `on_group` as walk.Walk.run's."""
    walk = Walk(volumes, config.volumes, config.concurrency, progress)
    progress.phase("rebuild: walking volumes", "files", fraction=walk.fraction)

    async def found(file: VolumeFile) -> None:
        progress.advance()
        if file.key is None:
            progress.count("skipped")
            progress.note(f"skipped: {file.url}: {file.problem}")
            return
        await add(file.key, file)

    await walk.run(found, on_group)


async def restore_md5(config: Config, index: Index, volumes: Volumes,
                      progress: Progress) -> None:
    """Read each value without an md5 once, from the first replica that gives it, and record
    its md5 (holding the key's lock, its record read again: masters may be serving)."""
    progress.phase("rebuild: reading values", "keys", total=await index.count())
    store = Store(config, index, volumes)

    async def restore(key: bytes) -> None:
        record = await index.get(key)
        if record is None or record.md5 is not None or record.state is State.WRITING:
            return
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

    async def one(item: tuple[bytes, Record]) -> None:
        progress.advance()
        if item[1].md5 is None:
            async with store.locks.hold(item[0], wait=True):
                await restore(item[0])

    await for_each(index.items(), one, config.concurrency)


async def _each(items: Iterable) -> AsyncIterator:
    for item in items:
        yield item


async def has_files(volumes: Volumes, key: bytes,
                    replicas: Iterable[str]) -> dict[str, bool] | str:
    """Whether each replica has the key's file now (a HEAD); why not known, when a volume
    did not answer."""
    replicas = list(replicas)
    try:
        found = await asyncio.gather(*(volumes.modified(r, key) for r in replicas))
    except VolumeError as e:
        return str(e)
    return {r: m is not None for r, m in zip(replicas, found, strict=True)}


async def mend(config: Config, index: Index, volumes: Volumes, progress: Progress) -> None:
    """The online rebuild (see the module's docstring): every change made under the key's
    lock, on what its record and its files are then."""
    store = Store(config, index, volumes)
    found: dict[bytes, list[str]] = {}

    async def add(key: bytes, file: VolumeFile) -> None:
        found.setdefault(key, []).append(file.replica)

    await walk_volumes(config, volumes, progress, add)
    unlisted = progress.counts["unlisted"]

    async def merge(key: bytes, seen: list[str]) -> None:
        record = await index.get(key)  # as it is now that the key is ours
        if record is not None and record.state is State.WRITING:
            progress.count("writing (left to repair)")
            return
        claimed = list(record.replicas) if record is not None else []
        present = await has_files(volumes, key, claimed + [r for r in seen if r not in claimed])
        if isinstance(present, str):
            progress.problem("unchecked", f"{shown(key)}: {present}")
            return
        if record is not None and all(present[r] for r in claimed):
            progress.count("kept")
            return
        have = [r for r, there in present.items() if there]
        if not have:
            await drop(key, record)
            return
        replicas = tuple(ordered(have, config.placement(key), config.volumes))
        if record is None:
            mended, what = Record(replicas), "restored"
        else:  # the md5 holds while the files are the record's own
            md5 = record.md5 if set(have) <= set(claimed) else None
            mended, what = Record(replicas, record.state, md5), "mended"
        await index.put(key, mended)
        progress.count(what)
        progress.note(f"{what}: {shown(key)} on {','.join(replicas)}")

    async def drop(key: bytes, record: Record | None) -> None:
        if record is not None:
            await index.delete(key)
            progress.count("dropped")
            progress.note(f"dropped: {shown(key)}: no replica has its file")

    async def merge_one(item: tuple[bytes, list[str]]) -> None:
        progress.advance()
        async with store.locks.hold(item[0], wait=True):
            await merge(*item)

    progress.phase("rebuild: mending records", "keys", total=len(found))
    await for_each(_each(found.items()), merge_one, config.concurrency)
    if unlisted:
        progress.note(f"records no file supports are kept: {unlisted} listings failed")
        return

    async def unsupported(key: bytes) -> None:
        record = await index.get(key)
        if record is None or record.state is State.WRITING:
            return
        present = await has_files(volumes, key, record.replicas)
        if isinstance(present, str):
            progress.problem("unchecked", f"{shown(key)}: {present}")
        elif any(present.values()):
            progress.count("kept (written since the walk)")
        else:
            await drop(key, record)

    async def check_one(item: tuple[bytes, Record]) -> None:
        progress.advance()
        if item[0] not in found:
            async with store.locks.hold(item[0], wait=True):
                await unsupported(item[0])

    progress.phase("rebuild: records without files", "keys", total=await index.count())
    await for_each(index.items(), check_one, config.concurrency)


def main(config: Config) -> int:
    return run_offline(config, rebuild, "rebuild")
