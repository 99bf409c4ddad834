"""`mkv -db SRC copy DEST`: every record of one index into another, LevelDB → PostgreSQL and
back, so a cluster (Go mkv's included) moves its index over and back.

Run with the masters stopped: a record changed during the copy may be copied as it was. The
destination must be empty, so a copy never mixes two clusters' records. Records are read and
written in key order, a batch of `BATCH` at a time (one write batch or one statement each).
"""

import asyncio
import sys

from mkv.config import Config
from mkv.index import Index, open_index
from mkv.record import Record

BATCH = 10_000


async def copy_index(source: Index, dest: Index) -> int:
    """Copy every record of `source` into the empty `dest`; how many were copied."""
    copied = 0
    batch: list[tuple[bytes, Record]] = []
    async for item in source.items():
        batch.append(item)
        if len(batch) == BATCH:
            await dest.put_many(batch)
            copied, batch = copied + len(batch), []
    if batch:
        await dest.put_many(batch)
        copied += len(batch)
    return copied


def main(config: Config, dest: str) -> int:
    async def run() -> int:
        source = await open_index(config.db)
        try:
            target = await open_index(dest)
            try:
                held = await target.count()
                if held:
                    print(f"mkv copy: the destination already holds {held:,} records; copy "
                          "only into an empty index", file=sys.stderr)
                    return 1
                copied = await copy_index(source, target)
            finally:
                await target.close()
        finally:
            await source.close()
        print(f"mkv copy: {copied:,} records copied", file=sys.stderr)
        return 0

    return asyncio.run(run())
