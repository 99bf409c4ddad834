"""`mkv rebuild`: the index rebuilt from what the volumes hold, for a lost or suspect index.

The index is emptied, then every file in the layout of every volume becomes a replica of its
key's live record, the replicas ordered as today's placement orders them and unknown ones
last (in -volumes order). A file whose name is not a key at its path is reported and skipped.
Records carry no md5, as Go mkv's rebuild writes them; with -checksum each value is read once
more, from its first replica, to restore it.
"""

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


async def rebuild(config: Config, index: Index, volumes: Volumes, progress: Progress) -> None:
    await index.clear()
    walk = Walk(volumes, config.volumes, config.concurrency, progress)
    progress.phase("rebuild: walking volumes", "files", fraction=walk.fraction)
    # replicas found of keys whose record is being written: walkers of other volumes find
    # the same key, and each must add to the record the other wrote, not overwrite it
    arriving: dict[bytes, list[str]] = {}

    async def found(file: VolumeFile) -> None:
        progress.advance()
        key = file.key
        if key is None:
            progress.count("skipped")
            progress.note(f"skipped: {file.url}: {file.problem}")
            return
        if key in arriving:
            arriving[key].append(file.replica)
            return
        arriving[key] = waiting = [file.replica]
        try:
            while waiting:
                record = await index.get(key)
                if record is None:
                    progress.count("keys")
                replicas = (list(record.replicas) if record else []) + waiting
                waiting.clear()
                replicas = ordered(replicas, config.placement(key), config.volumes)
                await index.put(key, Record(tuple(replicas)))
        finally:
            del arriving[key]

    await walk.run(found)
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
