"""The LevelDB engine of the index (the default, and Go mkv's): key bytes → `Record` through
plyvel, in the files Go mkv reads and writes.

One process at a time may open it; `IndexLocked` says another one holds it.

Go mkv must read every record after any stop of ours. C++ LevelDB leaves journal records older
than the MANIFEST's last sequence after a background memtable flush, and goleveldb drops those on
open (google/leveldb#750), so `close` first writes the memtable to a table: the journal left
behind is empty. Opening replays a journal a crash left and does the same, so any clean stop
after a crash also hands over a goleveldb-clean index.
"""

from collections.abc import AsyncIterator, Iterator

import plyvel

from mkv.index.base import Answer, Failure, IndexLocked, KeyLocks
from mkv.record import Record, State

CLEAR_BATCH = 100_000
NO_KEY = b"\x00"


class LevelDBIndex:
    """Every call answers at once: a LevelDB read costs 0.1-0.4 µs, less than a suspension."""

    def __init__(self, path: str) -> None:
        # None: no other process uses the index, and the store's in-process lock is the whole
        # lock; the owner's lock table once it serves others (mkv/index/owner.py)
        self.locks: KeyLocks | None = None
        self.changes = 0  # writes so far: the owner flushes once they stop (owner.py)
        try:
            self.db = plyvel.DB(path, create_if_missing=True, bloom_filter_bits=10)
        except plyvel.IOError as e:
            if b"lock" in str(e).encode().lower():
                raise IndexLocked(f"the index {path} is in use by another process") from e
            raise

    def lookup(self, key: bytes, answer: Answer, failed: Failure | None = None) -> None:
        raw = self.db.get(key)
        answer(None if raw is None else Record.decode(raw))

    async def get(self, key: bytes) -> Record | None:
        raw = self.db.get(key)
        return None if raw is None else Record.decode(raw)

    async def put(self, key: bytes, record: Record) -> None:
        self.db.put(key, record.encode())
        self.changes += 1

    async def put_many(self, records: list[tuple[bytes, Record]]) -> None:
        self.put_many_now([(key, record.encode()) for key, record in records])

    def put_many_now(self, records: list[tuple[bytes, bytes]]) -> None:
        """Encoded records written as one batch (one journal write, not one per record)."""
        with self.db.write_batch() as batch:
            for key, raw in records:
                batch.put(key, raw)
        self.changes += 1

    async def delete(self, key: bytes) -> None:
        self.db.delete(key)
        self.changes += 1

    async def items(self, prefix: bytes = b"",
                    start: bytes = b"") -> AsyncIterator[tuple[bytes, Record]]:
        """Records whose key starts with `prefix`, from `start` on, in byte order."""
        for key, raw in self.raw_items(prefix, start):
            yield key, Record.decode(raw)

    def raw_items(self, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """`items`, the records encoded."""
        for key, raw in self.db.iterator(start=max(prefix, start)):
            if not key.startswith(prefix):
                return
            yield key, raw

    async def page(self, prefix: bytes, state: State, start: bytes,
                   limit: int) -> tuple[list[bytes], bytes | None]:
        return self.page_now(prefix, state, start, limit)

    def page_now(self, prefix: bytes, state: State, start: bytes,
                 limit: int) -> tuple[list[bytes], bytes | None]:
        """Up to `limit` keys in `state`, and the first key in `state` after them, if any."""
        keys: list[bytes] = []
        for key, raw in self.db.iterator(start=max(prefix, start)):
            if not key.startswith(prefix):
                break
            if Record.decode(raw).state is state:
                if len(keys) == limit:
                    return keys, key
                keys.append(key)
        return keys, None

    def stats(self) -> dict[str, str | float]:
        return {"engine": "leveldb", "bytes": self.db.approximate_size(NO_KEY, b"\xff")}

    async def count(self) -> int:
        return self.count_now()

    def count_now(self) -> int:
        return sum(1 for _ in self.db.iterator(include_value=False))

    async def clear(self) -> None:
        self.clear_now()

    def clear_now(self) -> None:
        """Delete every record, in batches: one batch for a billion keys would not fit memory."""
        self.changes += 1
        while True:
            with self.db.write_batch() as batch:
                count = 0
                for key in self.db.iterator(include_value=False):
                    batch.delete(key)
                    count += 1
                    if count == CLEAR_BATCH:
                        break
            if count < CLEAR_BATCH:
                return

    def flush(self) -> None:
        """Write the memtable to a table and start an empty journal.

        LevelDB's CompactRange always flushes the memtable first; a range no key can fall in
        (mkv keys start with `/`) keeps it from compacting any table as well.
        """
        self.db.compact_range(start=NO_KEY, stop=NO_KEY)

    async def close(self) -> None:
        self.flush()
        self.db.close()
