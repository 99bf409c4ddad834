"""The owner of a LevelDB index: the one process that opens the directory, serving its records
and the per-key lock to the other processes that use it — a master's `-workers`, and the
offline commands run while a master serves (mkv/index/remote.py) — on a Unix socket in the
directory, `<db>/mkv.sock` (LevelDB and goleveldb leave a file of that name alone).

Each connection's frame (mkv/index/wire.py) is run whole, in order, between two event-loop
turns: what a batch reads and writes is never interleaved with another's. Consecutive record
writes of a frame go to LevelDB as one batch (one journal write). A write is answered once
LevelDB has it in its journal: durable against any process's crash, as the single-process
master's writes are.

A key's lock belongs to a connection, or to the owner's own master (`OwnerLocks`), and dies with
it: a worker or command that exits or is killed frees its keys when the kernel closes its
socket; a write it sent whole before it died is applied, one it did not is not.

Once writes stop for IDLE_FLUSH seconds the owner writes the memtable to a table, as `close`
does (mkv/index/leveldb.py): the journal left is empty, so goleveldb reading the directory
read-only meanwhile (Go mkv's tools/leveldb_compare.go) sees every record. A busy index is not
flushed: what goleveldb reads of a journal being written is not promised.
"""

import asyncio
import contextlib
import itertools
import logging
import os
import socket

import mkv.index.wire as wire
from mkv.index.leveldb import LevelDBIndex
from mkv.index.wire import FrameError, Frames, frame
from mkv.record import State
from mkv.tasks import Tasks

log = logging.getLogger("mkv")

SOCKET_NAME = "mkv.sock"
IDLE_FLUSH = 1.0  # seconds without a write before the memtable goes to a table
_PATH_MAX = 107  # a Unix socket address's longest path (sun_path, less its NUL)


def socket_path(db: str) -> str:
    """The owner's socket for the LevelDB directory `db`, as bind and connect take it: a path
    too long for a socket address goes through a descriptor of the directory (Linux's
    /proc/self/fd), kept open for the life of the process."""
    path = os.path.join(db, SOCKET_NAME)
    if len(path.encode()) <= _PATH_MAX:
        return path
    directory = os.open(db, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{directory}/{SOCKET_NAME}"


class LockTable:
    """Which keys are held, and by whom (a connection, or the owner's own master)."""

    def __init__(self) -> None:
        self.holders: dict[bytes, object] = {}

    def take(self, key: bytes, holder: object) -> bool:
        if self.holders.setdefault(key, holder) is holder:
            return True
        return False

    def give_back(self, key: bytes, holder: object) -> None:
        if self.holders.get(key) is holder:
            del self.holders[key]

    def release_all(self, holder: object) -> None:
        for key in [k for k, h in self.holders.items() if h is holder]:
            del self.holders[key]


class OwnerLocks:
    """The KeyLocks (mkv/index/base.py) of the master that owns the index itself."""

    def __init__(self, table: LockTable) -> None:
        self.table = table

    async def acquire(self, key: bytes) -> bool:
        return self.table.take(key, self)

    def release(self, key: bytes) -> None:
        self.table.give_back(key, self)


class IndexOwner:
    """Serves `index` on its directory's socket; `index.locks` becomes the lock table's."""

    def __init__(self, index: LevelDBIndex, db: str) -> None:
        self.index = index
        self.db = db
        self.locks = LockTable()
        index.locks = OwnerLocks(self.locks)
        self.connections: set[OwnerConnection] = set()
        self.frames = 0  # frames answered, and the requests they carried: the batching figure
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._path = ""
        self._tasks = Tasks()

    async def start(self) -> None:
        """Listen on the socket. A socket left by an owner that died is replaced: holding the
        directory's LevelDB lock, this process is the only owner there can be."""
        self._path = socket_path(self.db)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self._path)
            os.chmod(self._path, 0o600)  # before listening: nobody can connect before this
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: OwnerConnection(self), sock=sock, backlog=128)
        self._tasks.start(self._flush_when_idle())

    async def _flush_when_idle(self) -> None:
        flushed = seen = self.index.changes
        while True:
            await asyncio.sleep(IDLE_FLUSH)
            changes = self.index.changes
            if changes == seen and changes != flushed:
                self.index.flush()
                flushed = changes
            seen = changes

    async def close(self) -> None:
        """Stop listening and drop every connection (their locks go with them)."""
        if self._server is None:
            return
        await self._tasks.close()
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        for connection in list(self.connections):
            connection.drop()
        await self._server.wait_closed()
        self._server = None

    def run(self, requests: list, holder: object) -> list:
        """The answers to one frame's requests, run in order."""
        db = self.index.db
        get = db.get
        answers: list = []
        batch = None  # consecutive record writes, written together
        for request in requests:
            op = request[0]
            if op == wire.GET:  # the most frequent, first: a worker's GETs are lookups
                if batch is not None:
                    batch.write()
                    batch = None
                answers.append(get(request[1]))
                continue
            if op == wire.PUT or op == wire.DELETE:
                if batch is None:
                    batch = db.write_batch()
                    self.index.changes += 1
                if op == wire.PUT:
                    batch.put(request[1], request[2])
                else:
                    batch.delete(request[1])
                answers.append(None)
                continue
            if batch is not None:
                batch.write()
                batch = None
            answers.append(self._answer(op, request, holder))
        if batch is not None:
            batch.write()
        self.frames += 1
        self.requests += len(requests)
        return answers

    def _answer(self, op: int, request: tuple, holder: object) -> object:
        db = self.index.db
        if op == wire.LOCK:  # with the record: its taker reads it next, and nobody else can
            ours = self.locks.take(request[1], holder)
            return ours, db.get(request[1]) if ours else None
        if op == wire.UNLOCK:
            self.locks.give_back(request[1], holder)
            return None
        if op == wire.PUT_MANY:
            self.index.put_many_now(request[1])
            return None
        if op == wire.ITEMS:
            _, prefix, start, limit = request
            return list(itertools.islice(self.index.raw_items(prefix, start), limit))
        if op == wire.PAGE:
            _, prefix, state, start, limit = request
            return self.index.page_now(prefix, State[state], start, limit)
        if op == wire.COUNT:
            return self.index.count_now()
        if op == wire.CLEAR:
            self.index.clear_now()
            return None
        if op == wire.STATS:
            return self.index.stats()
        raise FrameError(f"unknown request {op!r}")


class OwnerConnection(asyncio.Protocol):
    """One process using the index: its frames answered in turn; its locks, while it lives."""

    def __init__(self, owner: IndexOwner) -> None:
        self.owner = owner
        self.frames = Frames()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            for requests in self.frames.feed(data):
                self.transport.write(frame(self.owner.run(requests, self)))  # type: ignore[union-attr]
        except (FrameError, ValueError, TypeError, IndexError, KeyError) as e:
            log.warning("index owner: dropping a connection that sent %s", e)
            self.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connections.discard(self)
        self.owner.locks.release_all(self)

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()

