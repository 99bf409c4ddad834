"""`mkv repair`: put right what `verify` finds; over a PostgreSQL index with masters serving.

Each key is settled holding its lock (as rebalance moves it), its record read again under
it: a master's write of the key is then never in flight (it holds the lock from its INIT
record to its live one), and one that comes later waits for the lock or answers 409.

- A live key's missing replica (with -checksum also a corrupt one) is copied anew from a
  good replica; a copy is checked against the record's md5 when there is one. Replicas
  holding different whole values under a record without md5 (a REPLACE cut off) all get
  the first replica's value.
- An INIT record (a write cut off) older than -grace is finished: live, with its md5, when
  every replica holds the same value, else unlinked, so a later DELETE cleans up. Such a
  record has no timestamp, so its age is that of its newest replica file (Last-Modified);
  one with no file at all counts as old: under the key's lock no write of it is in flight,
  and nginx moves an upload into place only once it is complete.
- With -orphans delete, files that no record claims and that are older than -grace are
  deleted (the listing's mtime). Never when the index is empty (a wrong -db would make
  every file an orphan), nor for a key whose record names volumes outside -volumes (the
  same volume under another name, e.g. localhost vs 127.0.0.1, would look unclaimed).
  Before a key's file is deleted its lock is taken and, under it, the record read again
  (a PUT writes its INIT record before its files, so a file being written is claimed) and
  the file's mtime asked again; over a shared index a file modified since the walk began
  is kept whatever -grace says (it is a master's, newer than anything the walk judged).
"""

import asyncio
import time

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.index import Index
from mkv.ops.progress import Progress, for_each, run_offline, shown
from mkv.ops.verify import check_replicas, claimed, describe, problem_line
from mkv.ops.walk import VolumeFile, Walk, http_time
from mkv.record import Record, State
from mkv.store import Store
from mkv.volumes.replicas import Volumes
from mkv.volumes.transfer import CopyError, copy_value, md5_of


async def repair_live(config: Config, volumes: Volumes, key: bytes, record: Record,
                      progress: Progress) -> None:
    checked = await check_replicas(config, volumes, key, record)
    bad = [c for c in checked if c.fault]
    if not bad:
        progress.count("healthy")
        return
    good = [c.replica for c in checked if not c.fault]
    lines = "; ".join(problem_line(key, c) for c in bad)
    if not good and record.md5 is None and all(c.fault == "corrupt" for c in checked):
        # whole values that differ and no md5 to choose: a REPLACE cut off. The first
        # replica's value, old or new, becomes every replica's.
        good, bad = [checked[0].replica], checked[1:]
    if not good:
        progress.problem("failed", f"{lines}: no good replica to copy from")
        return
    try:
        source = await copy_value(volumes, key, good, [c.replica for c in bad], record.md5)
    except CopyError as e:
        progress.problem("failed", f"{lines}: {e}")
        return
    progress.count("fixed")
    progress.note(f"fixed: {lines}: copied from {source}")


async def _age_and_md5(volumes: Volumes, replica: str,
                       key: bytes) -> tuple[float, str] | None:
    """When the replica's file was last modified, and its md5; None when it is unreadable."""
    try:
        response = await volumes.open(replica, key)
        md5 = await md5_of(volumes, response)
    except VolumeError:
        return None
    return http_time(response.headers.get(b"last-modified", b"").decode("latin-1")), md5


async def finish_writing(config: Config, volumes: Volumes, index: Index, key: bytes,
                         record: Record, progress: Progress) -> None:
    """Settle an INIT record older than -grace: live when complete, else unlinked."""
    found = await asyncio.gather(*(_age_and_md5(volumes, r, key) for r in record.replicas))
    present = [f for f in found if f is not None]
    newest = max((mtime for mtime, _ in present), default=None)
    if newest is not None and time.time() - newest < config.grace:
        progress.count("writing (recent)")
        return
    md5s = {md5 for _, md5 in present}
    if record.replicas and len(present) == len(record.replicas) and len(md5s) == 1:
        md5 = md5s.pop() if config.md5sum else None
        await index.put(key, Record(record.replicas, State.LIVE, md5))
        progress.count("finished (live)")
        progress.note(f"finished: {shown(key)}: every replica complete, now live")
    else:
        await index.put(key, record.with_state(State.UNLINKED))
        progress.count("finished (unlinked)")
        progress.note(f"finished: {shown(key)}: {len(present)} of {len(record.replicas)} "
                      f"replicas complete{'' if len(md5s) < 2 else ' and differing'}, "
                      "now unlinked")


async def repair(config: Config, index: Index, volumes: Volumes, progress: Progress) -> None:
    total = await index.count()
    progress.phase("repair: keys", "keys", total=total)
    store = Store(config, index, volumes)

    async def settle(key: bytes) -> None:
        record = await index.get(key)  # as it is now that the key is ours
        if record is None:
            progress.count("deleted meanwhile")
        elif record.state is State.LIVE:
            await repair_live(config, volumes, key, record, progress)
        elif record.state is State.WRITING:
            await finish_writing(config, volumes, index, key, record, progress)
        else:
            progress.count("unlinked")

    async def one(item: tuple[bytes, Record]) -> None:
        progress.advance()
        progress.count("keys")
        async with store.locks.hold(item[0], wait=True):
            await settle(item[0])

    await for_each(index.items(), one, config.concurrency)
    delete = config.orphans == "delete"
    if delete and total == 0:
        progress.problem("refused", "-orphans delete with an empty index would delete every "
                         "file; rebuild the index first")
        delete = False
    orphans = Orphans(config, index, volumes, progress)
    walk = Walk(volumes, config.volumes, config.concurrency, progress)
    progress.phase("repair: looking for orphans", "files", fraction=walk.fraction)

    async def found(file: VolumeFile) -> None:
        progress.advance()
        if await claimed(index, file):
            return
        if not delete or not orphans.old(file.mtime):
            orphans.keep(file)
        elif file.key is None:  # not a key's file: no master writes it
            await orphans.delete(file)
        else:
            async with store.locks.hold(file.key, wait=True):
                await orphans.delete_unclaimed(file)

    await walk.run(found)


class Orphans:
    """Files no record claims: kept, or deleted once past -grace and, for a key's file, once
    its lock shows it unclaimed still."""

    def __init__(self, config: Config, index: Index, volumes: Volumes,
                 progress: Progress) -> None:
        self.config = config
        self.index = index
        self.volumes = volumes
        self.progress = progress
        self.named = set(config.volumes)
        # over a shared index masters may write during the walk: nothing newer is an orphan
        # (mtimes are whole seconds, so one that began the same second is newer too)
        self.walk_began = time.time() - 1 if index.locks is not None else None

    def old(self, mtime: float) -> bool:
        """Past the grace period, and (with masters serving) older than the walk."""
        if self.walk_began is not None and mtime >= self.walk_began:
            return False
        return time.time() - mtime >= self.config.grace

    def keep(self, file: VolumeFile) -> None:
        self.progress.count("orphans kept")
        self.progress.note(f"orphan: {describe(file)}")

    async def delete_unclaimed(self, file: VolumeFile) -> None:
        """Under the key's lock: delete the file if still no record claims it, no record
        names the key's volumes otherwise, and it was not modified meanwhile."""
        assert file.key is not None
        record = await self.index.get(file.key)
        if record is not None and file.replica in record.replicas:
            return  # claimed now: a master wrote the key since the walk listed it
        if record is not None and not all(
                r.partition("/")[0] in self.named for r in record.replicas):
            self.keep(file)
            return
        try:
            modified = await self.volumes.modified(file.replica, file.key)
        except VolumeError as e:
            self.progress.problem("failed", f"deleting orphan {describe(file)}: {e}")
            return
        if modified is None:
            return  # gone meanwhile (a master's DELETE)
        if not self.old(http_time(modified)):
            self.keep(file)
            return
        await self.delete(file)

    async def delete(self, file: VolumeFile) -> None:
        try:
            await self.volumes.delete_path(file.replica, file.target)
        except VolumeError as e:
            self.progress.problem("failed", f"deleting orphan {describe(file)}: {e}")
            return
        self.progress.count("orphans deleted")
        self.progress.note(f"deleted orphan: {describe(file)}")


def main(config: Config) -> int:
    return run_offline(config, repair, "repair")
