"""`mkv rebalance`: every key moved to today's placement (`Store.move`), with progress.

A key that fails stays as it was, is reported, and the run goes on. Each key is moved holding
its lock, its record read again under it: over a PostgreSQL index the masters may serve
meanwhile (a key being written is moved once its write is done).
"""

from mkv.config import Config
from mkv.index import Index
from mkv.ops.progress import Progress, for_each, run_offline, shown
from mkv.record import Record, State
from mkv.store import MoveError, Store
from mkv.volumes.replicas import Volumes


async def rebalance(config: Config, index: Index, volumes: Volumes,
                    progress: Progress) -> None:
    """Move every key whose replicas differ from today's placement; a key that fails stays
    as it was, is reported, and the run goes on. A second run finds nothing to move."""
    progress.phase("rebalance", "keys", total=await index.count())
    store = Store(config, index, volumes)

    async def move(key: bytes) -> list[str] | None | str:
        """What became of the key: the replicas left as orphans, None when in place, or
        why it was left alone."""
        record = await index.get(key)  # as it is now that the key is ours
        if record is None:
            return "skipped (deleted)"
        if record.state is State.WRITING:
            # a write in progress or cut off: its files may not exist; repair settles it
            return "skipped (writing)"
        return await store.move(key, record)

    async def one(item: tuple[bytes, Record]) -> None:
        key, _ = item
        progress.advance()
        progress.count("keys")
        try:
            async with store.locks.hold(key, wait=True):
                left = await move(key)
        except MoveError as e:
            progress.problem("failed", f"{shown(key)}: {e}")
            return
        if isinstance(left, str):
            progress.count(left)
            return
        if left is None:
            progress.count("in place")
            return
        progress.count("moved")
        for replica in left:
            progress.note(f"orphan: {shown(key)} on {replica}: moved, but deleting it failed")

    await for_each(index.items(), one, config.concurrency)


def main(config: Config) -> int:
    return run_offline(config, rebalance, "rebalance")
