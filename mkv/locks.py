"""The per-key lock: one way in, `async with locks.hold(key)`, around every write, delete or
move of a key — in this process, and across the masters when the index is shared
(`Index.locks`, taken after the in-process lock).

`hold(key)` refuses at once with KeyBusy (a 409) when the key is held, here or by another
master: the native face's answer. `hold(key, wait=True)` waits its turn instead: S3's writes of
one key all succeed, the last to finish winning, and the offline commands settle each key after
a master's write of it. The in-process part is taken before the first await, so of the requests
parsed in one event-loop turn only the first to run passes.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mkv.index.base import KeyBusy, KeyLocks

SHARED_RETRY = 0.02  # seconds between tries at a key another master holds (when waiting)
BUSY = "another write or delete of this key is in progress"


class Locks:
    """The keys held by this process, and the lock across masters when there is one."""

    def __init__(self, shared: KeyLocks | None) -> None:
        self.shared = shared
        self.busy: set[bytes] = set()
        self.conflicts = 0  # requests refused because their key was held: for the metrics
        self._freed: dict[bytes, asyncio.Event] = {}  # set when a held key is let go

    @asynccontextmanager
    async def hold(self, key: bytes, wait: bool = False) -> AsyncIterator[None]:
        """The key's lock for an `async with`: KeyBusy at once when held, or, with `wait`,
        once whoever holds it lets go."""
        await self._take(key, wait)
        try:
            yield
        finally:
            self._release(key)

    async def _take(self, key: bytes, wait: bool) -> None:
        while True:
            if key in self.busy:
                if not wait:
                    self.conflicts += 1
                    raise KeyBusy(BUSY)
                while key in self.busy:
                    await self._freed.setdefault(key, asyncio.Event()).wait()
                continue  # another waiter may have taken it first
            self.busy.add(key)
            if self.shared is None:
                return
            try:
                ours = await self.shared.acquire(key)
            except BaseException:  # the database is down (a 503), or the request cancelled
                self._free(key)
                raise
            if ours:
                return
            self._free(key)
            if not wait:
                self.conflicts += 1
                raise KeyBusy(BUSY)
            await asyncio.sleep(SHARED_RETRY)  # another master holds it

    def _release(self, key: bytes) -> None:
        if self.shared is not None:
            self.shared.release(key)
        self._free(key)

    def _free(self, key: bytes) -> None:
        self.busy.discard(key)
        freed = self._freed.pop(key, None)
        if freed is not None:
            freed.set()
