"""The PostgreSQL engine of the index: key bytes → SPEC §3 record bytes in one table, shared by
any number of masters (`-db postgresql://…`, a libpq URL; several hosts with
`target_session_attrs=read-write` follow a promoted standby).

`bytea` compares bytewise, as LevelDB's comparator does, so `ORDER BY k` is LevelDB's order and
listings and pages are the same on either engine. The lookups of one event-loop turn go as one
query (`k = ANY($1)`); while the pool's connections are all busy, the next turn's lookups join
the waiting batch. The database down answers `IndexUnavailable` (the masters' 503) at once, and
the pool connects again by itself on the next call; a database that does not answer (stalled,
or a connection lost without a word) fails each lookup and record write ANSWER_SECONDS after
it was asked. A waiter's callback that raises is logged and keeps no other waiter waiting.
The per-key lock across masters is mkv/index/pglock.py's, and the record of a key whose lock
this process holds is written on the lock's own session (so that it cannot outlive the lock);
other writes go through the pool.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from mkv.index.base import ANSWER_SECONDS, Answer, Failure, IndexUnavailable
from mkv.index.pglock import AdvisoryLocks
from mkv.record import Record, State, successor
from mkv.tasks import Tasks, settle

log = logging.getLogger("mkv")

TABLE = "mkv_index"
MASTER = "mkv master"  # application_name of a serving master's sessions (tools see them)
LOCKS = " locks"  # ... appended for its lock session (pglock.py): "mkv master locks"
POOL_SIZE = 8  # connections per process: batches in flight at once
CONNECT_TIMEOUT = 2.0  # seconds: a database that cannot be reached is a 503, not a hang
CLOSE_TIMEOUT = 2.0  # seconds a close waits for the server's goodbye; then the sockets are cut
COMMAND_TIMEOUT = 10.0
ITEMS_PAGE = 1000  # rows per keyset query of `items`

T = TypeVar("T")

# what a lost or refusing server raises; anything else is a bug and stays a 500
# (asyncpg's InternalClientError: a connection cut during a query, seen on restarts)
_DOWN = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
         asyncpg.exceptions.InternalClientError,
         asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
         asyncpg.exceptions.ReadOnlySQLTransactionError)
UNAVAILABLE = _DOWN  # what S3's shared state (mkv/s3/pgstate.py) answers 503 for too
_LATE = "the PostgreSQL index is unavailable: no answer within {:g} seconds"
_CLOSED = "the PostgreSQL index is closed"

Waiters = dict[bytes, list[tuple[Answer, Failure | None]]]  # a batch's lookups, by key


async def _keep_session(connection: asyncpg.Connection) -> None:
    """A pool connection's release: nothing to undo (it takes no session lock, LISTEN or SET;
    the key locks are the lock session's), so asyncpg's reset query would be a wasted round
    trip after every statement. asyncpg still rolls back a transaction left open."""


_SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (k bytea PRIMARY KEY, r bytea NOT NULL)"
# the two-key form: a lock space apart from the keys' (pglock.py's one-bigint form)
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7105398, 0)"
_LOOKUP = f"SELECT k, r FROM {TABLE} WHERE k = ANY($1::bytea[])"
_GET = f"SELECT r FROM {TABLE} WHERE k = $1"
_PUT_MANY = (f"INSERT INTO {TABLE} (k, r) SELECT * FROM unnest($1::bytea[], $2::bytea[]) "
             "ON CONFLICT (k) DO UPDATE SET r = EXCLUDED.r")
_DELETE = f"DELETE FROM {TABLE} WHERE k = $1"
_FROM = f"SELECT k, r FROM {TABLE} WHERE k >= $1 ORDER BY k LIMIT $2"
_FROM_BELOW = f"SELECT k, r FROM {TABLE} WHERE k >= $1 AND k < $3 ORDER BY k LIMIT $2"

# SPEC §3: a state is the record's prefix (`DELETED`, `INIT`, or neither: live)
_UNLINKED, _WRITING = "substring(r for 7) = 'DELETED'::bytea", "substring(r for 4) = 'INIT'::bytea"
_IN_STATE = {State.UNLINKED: _UNLINKED, State.WRITING: _WRITING,
             State.LIVE: f"NOT ({_UNLINKED}) AND NOT ({_WRITING})"}


class PostgresIndex:
    """A connection pool and the batch of lookups waiting for the next query."""

    def __init__(self, pool: asyncpg.Pool, locks: AdvisoryLocks) -> None:
        self.pool = pool
        self.locks = locks
        self.waiting: Waiters = {}
        self.waiting_since = 0.0  # when the first of `waiting` was asked: its deadline's start
        self.in_flight = 0
        self.batches = 0  # lookup queries sent, and the keys they carried: the batching figure
        self.batched_keys = 0
        self.puts: dict[bytes, bytes] = {}  # this turn's puts, written together
        self.put_waiters: list[asyncio.Future[None]] = []
        self.tasks = Tasks()  # the lookup and put statements in flight

    @classmethod
    async def connect(cls, url: str, serving: bool = False) -> "PostgresIndex":
        """The pool; `serving` names a master's sessions so that tools can see them."""
        settings = {"application_name": MASTER if serving else "mkv"}
        try:
            # no floor of idle connections: asyncpg would log a traceback for each retry to
            # keep it while the database is down
            pool = await asyncpg.create_pool(url, min_size=0, max_size=POOL_SIZE,
                                             timeout=CONNECT_TIMEOUT,
                                             command_timeout=COMMAND_TIMEOUT,
                                             server_settings=settings,
                                             max_inactive_connection_lifetime=0,
                                             reset=_keep_session)
            async with pool.acquire() as connection, connection.transaction():
                # masters starting together: concurrent CREATE TABLE IF NOT EXISTS may collide
                await connection.execute(_SCHEMA_LOCK)
                await connection.execute(_SCHEMA)
            locks = AdvisoryLocks(url, TABLE, CONNECT_TIMEOUT, COMMAND_TIMEOUT,
                                  {"application_name": settings["application_name"] + LOCKS})
            await locks.connected()  # open from the start: tools see an idle master too
        except _DOWN as e:
            raise IndexUnavailable(f"the PostgreSQL index cannot be reached: {e}") from None
        return cls(pool, locks)

    async def _call(self, query: Callable[..., Awaitable[T]], *args: object) -> T:
        try:
            return await query(*args)
        except _DOWN as e:
            raise IndexUnavailable(f"the PostgreSQL index is unavailable: {e}") from None

    # --- lookups, batched per loop turn ---
    def lookup(self, key: bytes, answer: Answer, failed: Failure | None = None) -> None:
        if not self.waiting:
            loop = asyncio.get_running_loop()
            self.waiting_since = loop.time()
            if self.in_flight < POOL_SIZE:
                loop.call_soon(self._send_batch)
        self.waiting.setdefault(key, []).append((answer, failed))

    def _send_batch(self) -> None:
        if not self.waiting or self.in_flight >= POOL_SIZE:
            return  # a batch settling sends what waits
        batch, self.waiting = self.waiting, {}
        if self.tasks.closed:
            _tell(batch, {}, IndexUnavailable(_CLOSED))
            return
        self.in_flight += 1
        self.batches += 1
        self.batched_keys += len(batch)
        late = IndexUnavailable(_LATE.format(ANSWER_SECONDS))
        self.tasks.start(self._answer_batch(batch), deadline=self.waiting_since + ANSWER_SECONDS,
                         late=lambda: self._settle(batch, {}, late))

    async def _answer_batch(self, batch: Waiters) -> None:
        try:
            rows = await self._call(self.pool.fetch, _LOOKUP, list(batch))
        except asyncio.CancelledError:  # closing, or past the deadline (then settled already)
            self._settle(batch, {}, IndexUnavailable(_CLOSED))
            raise
        except Exception as e:  # IndexUnavailable, or a bug: every waiter is told
            if not isinstance(e, IndexUnavailable):
                log.exception("looking up %d keys failed", len(batch))
            self._settle(batch, {}, e)
            return
        self._settle(batch, dict(rows), None)

    def _settle(self, batch: Waiters, found: dict[bytes, bytes], error: Exception | None) -> None:
        """Tell the batch's waiters, once (the query's end or its deadline, whichever comes
        first), and let the next batch go."""
        if not batch:
            return
        waiters = dict(batch)
        batch.clear()
        self.in_flight -= 1
        _tell(waiters, found, error)
        self._send_batch()

    async def get(self, key: bytes) -> Record | None:
        answered: asyncio.Future[Record | None] = asyncio.get_running_loop().create_future()
        self.lookup(key, lambda record: settle([answered], record),
                    lambda error: settle([answered], error=error))
        return await answered

    # --- writes: each acknowledged once PostgreSQL has committed it ---
    async def put(self, key: bytes, record: Record) -> None:
        """Written with the other puts of this loop turn: one statement, one commit (on the
        lock session when this process holds the key's lock)."""
        if self.locks.holds(key):
            await self.locks.write(key, record.encode())
            return
        written = asyncio.get_running_loop().create_future()
        if not self.puts:
            asyncio.get_running_loop().call_soon(self._send_puts)
        self.puts[key] = record.encode()  # a key once a turn: its lock holder awaits each put
        self.put_waiters.append(written)
        await written

    def _send_puts(self) -> None:
        batch, waiters = self.puts, self.put_waiters
        self.puts, self.put_waiters = {}, []
        if self.tasks.closed:
            settle(waiters, error=IndexUnavailable(_CLOSED))
            return
        # asked in the turn before this one: the deadline is counted from now
        late = IndexUnavailable(_LATE.format(ANSWER_SECONDS))
        self.tasks.start(self._write_puts(batch, waiters),
                         deadline=asyncio.get_running_loop().time() + ANSWER_SECONDS,
                         late=lambda: settle(waiters, error=late))

    async def _write_puts(self, batch: dict[bytes, bytes],
                          waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self._call(self.pool.execute, _PUT_MANY, list(batch), list(batch.values()))
        except asyncio.CancelledError:
            settle(waiters, error=IndexUnavailable(_CLOSED))
            raise
        except Exception as e:  # IndexUnavailable, or a bug: every waiter is told
            settle(waiters, error=e)
            return
        settle(waiters)

    async def put_many(self, records: list[tuple[bytes, Record]]) -> None:
        # one row per key: ON CONFLICT may not touch a row twice in one statement
        last = {key: record.encode() for key, record in records}
        await self._call(self.pool.execute, _PUT_MANY, list(last), list(last.values()))

    async def delete(self, key: bytes) -> None:
        if self.locks.holds(key):
            await self.locks.write(key, None)
            return
        await self._call(self.pool.execute, _DELETE, key)

    # --- ordered reads, a page of rows per query (keyset: no huge result in memory) ---
    async def _rows(self, prefix: bytes, start: bytes) -> AsyncIterator[list[asyncpg.Record]]:
        lowest, below = max(prefix, start), successor(prefix)
        while True:
            if below is None:
                rows = await self._call(self.pool.fetch, _FROM, lowest, ITEMS_PAGE)
            else:
                rows = await self._call(self.pool.fetch, _FROM_BELOW, lowest, ITEMS_PAGE, below)
            if rows:
                yield rows
            if len(rows) < ITEMS_PAGE:
                return
            lowest = rows[-1][0] + b"\x00"  # the least key after the last one read

    async def items(self, prefix: bytes = b"",
                    start: bytes = b"") -> AsyncIterator[tuple[bytes, Record]]:
        """Records whose key starts with `prefix`, from `start` on, in byte order."""
        async for rows in self._rows(prefix, start):
            for key, raw in rows:
                yield key, Record.decode(raw)

    async def page(self, prefix: bytes, state: State, start: bytes,
                   limit: int) -> tuple[list[bytes], bytes | None]:
        """Up to `limit` keys in `state`, and the first key in `state` after them, if any:
        one query, the state told apart by the server (a record's leading bytes)."""
        below = successor(prefix)
        bound = "" if below is None else " AND k < $3"
        query = (f"SELECT k FROM {TABLE} WHERE k >= $1{bound} AND {_IN_STATE[state]} "
                 "ORDER BY k LIMIT $2")
        args = (max(prefix, start), limit + 1) + (() if below is None else (below,))
        keys = [row[0] for row in await self._call(self.pool.fetch, query, *args)]
        return (keys[:limit], keys[limit]) if len(keys) > limit else (keys, None)

    def stats(self) -> dict[str, str | float]:
        return {"engine": "postgresql"}  # its size would be a query: not for every scrape

    async def count(self) -> int:
        return await self._call(self.pool.fetchval, f"SELECT count(*) FROM {TABLE}")

    async def clear(self) -> None:
        await self._call(self.pool.execute, f"TRUNCATE {TABLE}")

    async def close(self) -> None:
        """Fail what waits, end the statements in flight, close the connections (cut, if the
        database does not answer within CLOSE_TIMEOUT)."""
        self.tasks.cancel()  # lookups still waiting for a connection are refused then too
        await asyncio.gather(self.locks.close(CLOSE_TIMEOUT), self._close_pool())
        await self.tasks.close()  # their cleanup, which a cut connection does not hold up

    async def _close_pool(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.pool.close()
        except TimeoutError:  # asyncpg has cut the connections: nothing is left running
            log.warning("the PostgreSQL index did not answer its close: connections cut")


def _tell(waiters: Waiters, found: dict[bytes, bytes], error: Exception | None) -> None:
    """Each waiter its key's record (None: absent) or the error. A callback that raises is
    logged and its own waiter failed (the native GET answers 500); the others are told."""
    for key, callbacks in waiters.items():
        failure, record = error, None
        if failure is None and key in found:
            try:
                record = Record.decode(found[key])
            except ValueError as e:  # not a SPEC §3 record: this key's waiters fail
                log.exception("the record of %r cannot be read", key)
                failure = e
        for answer, failed in callbacks:
            raised = failure if failure is not None else _called(answer, record, key)
            if raised is not None and failed is not None:
                _called(failed, raised, key)


def _called(callback: Callable[[T], object], value: T, key: bytes) -> Exception | None:
    """`callback(value)`; what it raised, logged: one waiter's bug, not its batch's."""
    try:
        callback(value)
    except Exception as e:
        log.exception("a callback of the lookup of %r failed", key)
        return e
    return None
