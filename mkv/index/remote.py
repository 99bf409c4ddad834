"""A LevelDB index that another process owns (mkv/index/owner.py), used through its socket: the
engine of a master's `-workers` and of the offline commands while a master serves.

The requests of one event-loop turn — lookups, record writes, lock takes and releases — go as
one frame and come back as one (mkv/index/wire.py); the next turns' frames follow on the same
connection without waiting, and are answered in order. What the owner has not answered within
ANSWER_SECONDS fails (IndexUnavailable, a 503) and the connection is given up, as a lost one is:
its requests fail at once, and the next request connects again.

A key's lock dies with the connection it was taken on (the owner frees it). So a key locked on
a connection since lost is never written under again: its record writes fail, as the
PostgreSQL engine's do (mkv/index/pglock.py). Taking a lock brings the key's record along:
whoever changes a key reads its record right after taking its lock (mkv/store.py), and while
the lock is held no other process can change it, so that read costs no second round trip.
"""

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import mkv.index.wire as wire
from mkv.index.base import ANSWER_SECONDS, Answer, Failure, IndexUnavailable
from mkv.index.owner import SOCKET_NAME, socket_path
from mkv.index.wire import FrameError, Frames, frame
from mkv.record import Record, State
from mkv.tasks import settle

log = logging.getLogger("mkv")

CONNECT_TIMEOUT = 2.0  # seconds: the owner is on this machine, or it is not there
ITEMS_PAGE = 1000  # records per ITEMS request
_GONE = "the index's owner went away"
_LOST_LOCK = "the key's lock was lost with the connection to the index's owner"
_CLOSED = "the index is closed"

Callback = Callable[[object, Exception | None], object]  # an answer, or why there is none


class RemoteIndex:
    """The index at an owner's socket; connects on first use, and again after a loss."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.locks = RemoteLocks(self)
        self.queue: list[tuple[tuple, Callback]] = []  # this turn's requests
        self.connection: _Connection | None = None
        self.generation = 0  # of the connection: +1 each time one is made
        self.held: dict[bytes, int] = {}  # keys this process holds, by generation
        self.read_with_lock: dict[bytes, bytes | None] = {}  # held keys' records, unread yet
        self.frames = 0  # frames sent, and the requests they carried: the batching figure
        self.requests = 0
        self.closed = False
        self._connecting: asyncio.Task | None = None
        self._stats: dict[str, str | float] = {"engine": "leveldb"}

    @classmethod
    async def reach(cls, db: str) -> "RemoteIndex | None":
        """The index of a master serving the LevelDB directory `db`, or None when none is."""
        if not os.path.exists(os.path.join(db, SOCKET_NAME)):
            return None
        index = cls(socket_path(db))
        try:
            await index.connect()
        except IndexUnavailable:
            return None  # a socket left by a master that died
        return index

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _Connection(self), self.path),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise IndexUnavailable(f"the index's owner cannot be reached at {self.path}: "
                                   f"{e}") from None
        self.generation += 1
        self.connection = connection

    # --- requests, one frame per loop turn ---
    def send(self, request: tuple, callback: Callback) -> None:
        """Ask with this turn's frame; `callback` gets the answer or an IndexUnavailable."""
        if self.closed:
            callback(None, IndexUnavailable(_CLOSED))
            return
        if not self.queue:
            asyncio.get_running_loop().call_soon(self._flush)
        self.queue.append((request, callback))

    def ask(self, request: tuple) -> Awaitable:
        """The answer to `request`, sent with this turn's frame."""
        future = asyncio.get_running_loop().create_future()
        self.send(request, lambda answer, error: settle((future,), answer, error))
        return future

    def _flush(self) -> None:
        connection = self.connection
        if connection is None or connection.lost:
            if self._connecting is None and self.queue:
                self._connecting = asyncio.get_running_loop().create_task(self._reconnect())
            return  # the reconnect sends the queue, or fails it
        batch, self.queue = self.queue, []
        requests, callbacks = [], []
        for request, callback in batch:
            if request[0] in wire.WRITES and self.held.get(request[1],
                                                      self.generation) != self.generation:
                callback(None, IndexUnavailable(_LOST_LOCK))
                continue
            requests.append(request)
            callbacks.append(callback)
        if requests:
            self.frames += 1
            self.requests += len(requests)
            connection.send(requests, callbacks)

    async def _reconnect(self) -> None:
        try:
            await self.connect()
        except IndexUnavailable as e:
            batch, self.queue = self.queue, []
            for _, callback in batch:
                _call(callback, None, e)
        finally:
            self._connecting = None
        if self.queue:
            self._flush()

    # --- the Index interface ---
    def lookup(self, key: bytes, answer: Answer, failed: Failure | None = None) -> None:
        def got(raw: object, error: Exception | None) -> None:
            if error is None:
                answer(None if raw is None else Record.decode(raw))  # type: ignore[arg-type]
            elif failed is not None:
                failed(error)
        self.send((wire.GET, key), got)

    async def get(self, key: bytes) -> Record | None:
        if key in self.read_with_lock:
            raw = self.read_with_lock.pop(key)
        else:
            raw = await self.ask((wire.GET, key))
        return None if raw is None else Record.decode(raw)

    async def put(self, key: bytes, record: Record) -> None:
        self.read_with_lock.pop(key, None)
        await self.ask((wire.PUT, key, record.encode()))

    async def put_many(self, records: list[tuple[bytes, Record]]) -> None:
        for key, _ in records:
            self.read_with_lock.pop(key, None)
        await self.ask((wire.PUT_MANY, [(key, record.encode()) for key, record in records]))

    async def delete(self, key: bytes) -> None:
        self.read_with_lock.pop(key, None)
        await self.ask((wire.DELETE, key))

    async def items(self, prefix: bytes = b"",
                    start: bytes = b"") -> AsyncIterator[tuple[bytes, Record]]:
        start = max(prefix, start)
        while True:
            rows = await self.ask((wire.ITEMS, prefix, start, ITEMS_PAGE))
            for key, raw in rows:
                yield key, Record.decode(raw)
            if len(rows) < ITEMS_PAGE:
                return
            start = rows[-1][0] + b"\x00"  # the least key after the last

    async def page(self, prefix: bytes, state: State, start: bytes,
                   limit: int) -> tuple[list[bytes], bytes | None]:
        keys, after = await self.ask((wire.PAGE, prefix, state.name, start, limit))
        return list(keys), after

    def stats(self) -> dict[str, str | float]:
        """The owner's figures as last heard (asking again for the next call)."""
        def got(stats: object, error: Exception | None) -> None:
            if error is None:
                self._stats = stats  # type: ignore[assignment]
        if not self.closed:
            self.send((wire.STATS,), got)
        return dict(self._stats)

    async def count(self) -> int:
        return await self.ask((wire.COUNT,))

    async def clear(self) -> None:
        await self.ask((wire.CLEAR,))

    async def close(self) -> None:
        """Fail what waits, and leave the owner (which frees this process's keys)."""
        self.closed = True
        batch, self.queue = self.queue, []
        for _, callback in batch:
            _call(callback, None, IndexUnavailable(_CLOSED))
        if self._connecting is not None:
            self._connecting.cancel()
        if self.connection is not None:
            self.connection.close()


class RemoteLocks:
    """The per-key lock across the processes using one owner (mkv/index/base.py KeyLocks)."""

    def __init__(self, index: RemoteIndex) -> None:
        self.index = index

    def acquire(self, key: bytes) -> Awaitable[bool]:
        index = self.index
        future = asyncio.get_running_loop().create_future()

        def got(answer: object, error: Exception | None) -> None:
            if error is not None:
                if not future.done():
                    future.set_exception(error)
                return
            ours, record = answer  # type: ignore[misc]
            if ours:
                index.held[key] = index.generation  # answered on the current connection
                if future.done():  # its taker gave up waiting: let it go again
                    self.release(key)
                    return
                index.read_with_lock[key] = record
            if not future.done():
                future.set_result(bool(ours))
        index.send((wire.LOCK, key), got)
        return future

    def release(self, key: bytes) -> None:
        index = self.index
        index.read_with_lock.pop(key, None)
        if index.held.pop(key, None) == index.generation and not index.closed:
            index.send((wire.UNLOCK, key), _ignore)


def _ignore(answer: object, error: Exception | None) -> None:
    """An UNLOCK's answer: a lost connection frees the key anyway."""


def _call(callback: Callback, answer: object, error: Exception | None) -> None:
    try:
        callback(answer, error)
    except Exception:  # one request's bug must not keep the others waiting
        log.exception("index: a callback raised")


class _Connection(asyncio.Protocol):
    """One connection to the owner: its frames in flight, answered in order."""

    def __init__(self, index: RemoteIndex) -> None:
        self.index = index
        self.frames = Frames()
        self.waiting: deque[tuple[float, list[Callback]]] = deque()  # (sent at, callbacks)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, requests: list, callbacks: list[Callback]) -> None:
        loop = asyncio.get_running_loop()
        self.transport.write(frame(requests))  # type: ignore[union-attr]
        self.waiting.append((loop.time(), callbacks))
        if self._timer is None:
            self._timer = loop.call_later(ANSWER_SECONDS, self._check_late)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.frames.feed(data)
        except FrameError as e:
            log.warning("index: the owner sent %s", e)
            self.give_up()
            return
        for answers in messages:
            if not self.waiting:
                log.warning("index: the owner sent an answer nobody asked for")
                self.give_up()
                return
            _, callbacks = self.waiting.popleft()
            for callback, answer in zip(callbacks, answers, strict=False):
                _call(callback, answer, None)

    def _check_late(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        age = loop.time() - self.waiting[0][0]
        if age < ANSWER_SECONDS:
            self._timer = loop.call_later(ANSWER_SECONDS - age, self._check_late)
            return
        log.warning("index: the owner did not answer within %g seconds", ANSWER_SECONDS)
        self.give_up(f"the index's owner did not answer within {ANSWER_SECONDS:g} seconds")

    def give_up(self, why: str = _GONE) -> None:
        """Fail what waits at once, and cut the connection."""
        self._fail(IndexUnavailable(why))
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._fail(IndexUnavailable(_CLOSED))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(IndexUnavailable(_GONE))

    def _fail(self, error: IndexUnavailable) -> None:
        self.lost = True
        if self.index.connection is self:  # the locks went with it, and what they read
            self.index.read_with_lock.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            _, callbacks = self.waiting.popleft()
            for callback in callbacks:
                _call(callback, None, error)
