"""`mkv rebalance`: every key moved to today's placement (`Store.move`), with progress.

A key that fails stays as it was, is reported, and the run goes on.
"""

from mkv.config import Config
from mkv.index import Index
from mkv.ops.progress import Progress, for_each, run_offline, shown
from mkv.record import Record, State
from mkv.store import MoveError, Store
from mkv.volumes import Volumes


async def rebalance(config: Config, index: Index, volumes: Volumes,
                    progress: Progress) -> None:
    """Move every key whose replicas differ from today's placement; a key that fails stays
    as it was, is reported, and the run goes on. A second run finds nothing to move."""
    progress.phase("rebalance", "keys", total=await index.count())
    store = Store(config, index, volumes)

    async def one(item: tuple[bytes, Record]) -> None:
        key, record = item
        progress.advance()
        progress.count("keys")
        if record.state is State.WRITING:
            # a write in progress or cut off: its files may not exist; repair settles it
            progress.count("skipped (writing)")
            return
        try:
            left = await store.move(key, record)
        except MoveError as e:
            progress.problem("failed", f"{shown(key)}: {e}")
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
