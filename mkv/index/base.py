"""The index interface every engine implements, and the errors it raises.

Awaitable throughout, so a networked engine fits: it may gather the lookups that arrive in one
event-loop turn into one query (`lookup` is the callback form the native GET uses, so it needs
no task). An embedded engine such as LevelDB answers at once and never suspends.
"""

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from mkv.record import Record, State

# A networked engine answers each lookup and record write, or fails it with IndexUnavailable (a
# 503), within this many seconds of the call, whatever its database does (stalled, a connection
# lost without a word) and whatever another request's callback does. Long enough for a statement
# PostgreSQL is merely slow at (a checkpoint; asyncpg's own statement timeout is as long), short
# enough that a client or load balancer (often 30-60 s) gets the 503 and retries elsewhere
# rather than giving up on its own.
ANSWER_SECONDS = 10.0

Answer = Callable[[Record | None], object]
Failure = Callable[[Exception], object]


class IndexLocked(Exception):
    """Another process holds the index (LevelDB is single-process)."""


class IndexUnavailable(Exception):
    """The engine cannot answer now (its database is down or restarting): the request is
    refused at once (a 503: `store.REFUSED`) and not acknowledged; the engine reconnects by
    itself."""


class KeyBusy(Exception):
    """Another master holds the key's lock (a 409: `store.REFUSED`)."""


class KeyLocks(Protocol):
    """The per-key lock across the processes that share an index."""

    async def acquire(self, key: bytes) -> bool:
        """Whether the key is now this process's (False: another one holds it)."""

    def release(self, key: bytes) -> None:
        """Let the key go (sent later: no need to wait)."""


class Index(Protocol):
    # None: this process is the only writer (LevelDB), and the store's in-process lock is enough
    locks: KeyLocks | None

    def lookup(self, key: bytes, answer: Answer, failed: Failure | None = None) -> None:
        """Call `answer` with the key's record, or None when the key is absent: at once, or
        once this loop turn's batch of lookups comes back; or `failed` with IndexUnavailable
        (an embedded engine never fails): either within ANSWER_SECONDS."""

    async def get(self, key: bytes) -> Record | None:
        """The key's record, or None when the key is absent (hard deleted)."""

    async def put(self, key: bytes, record: Record) -> None:
        """Write the record, durable against a process crash once this returns."""

    async def put_many(self, records: list[tuple[bytes, Record]]) -> None:
        """Write the records together (one batch, one round trip), as `put` would each."""

    async def delete(self, key: bytes) -> None:
        """Remove the key's record (absent keys are fine)."""

    def items(self, prefix: bytes = b"", start: bytes = b"") -> AsyncIterator[
            tuple[bytes, Record]]:
        """Records whose key starts with `prefix`, from `start` on, in byte order."""

    async def page(self, prefix: bytes, state: State, start: bytes,
                   limit: int) -> tuple[list[bytes], bytes | None]:
        """Up to `limit` keys in `state`, and the first key in `state` after them, if any."""

    def stats(self) -> dict[str, str | float]:
        """What the engine knows without a scan, for the metrics: `engine`, and e.g. `bytes`."""

    async def count(self) -> int:
        """How many records the index holds (one pass over the keys)."""

    async def clear(self) -> None:
        """Delete every record."""

    async def close(self) -> None:
        """Leave the index so that another process, Go mkv's included, reads every record;
        what is in flight is failed (IndexUnavailable), and nothing runs on after it."""
