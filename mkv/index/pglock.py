"""The per-key lock across masters over one PostgreSQL index: a session advisory lock on a
64-bit hash of the key, held on one connection of this process's own, the lock session.

A lock dies with its session, so a master that dies releases its keys once PostgreSQL sees the
connection go: at once for a killed process (its kernel closes the socket), within the TCP
keepalive below for a machine that vanished. The same holds when only the session ends (the
connection cut, the backend terminated) while the master lives on: so the records of a key
whose lock is held are written on the lock session itself, never on the pool. A record write
then either commits while the session, and so the lock, exists, or fails with it (a 503, the key
left as SPEC's write order leaves a cut-off write: INIT or unlinked). Locks taken on a session
since lost are never written under again; their release is a no-op.

What waits goes as one statement, one round trip: this turn's record writes (under locks held),
releases (each after its holder's writes committed, in an earlier statement) and acquisitions;
while it is in flight the next ones gather. Advisory locks count per session, so a key released
and taken again in one statement stays held once, as it should, whichever is evaluated first.
A round not answered within ANSWER_SECONDS of its oldest request (a stalled server) fails its
requests and gives the session up, as a lost one is.
"""

import asyncio
import hashlib
import logging
from typing import NamedTuple

import asyncpg

from mkv.index.base import ANSWER_SECONDS, IndexUnavailable
from mkv.tasks import Tasks, settle

log = logging.getLogger("mkv")

# the server notices a vanished master after idle + interval × count seconds
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
             "tcp_keepalives_count": "3"}
# $1/$2 rows to upsert, $3 keys to delete, $4 locks to release, $5 locks to try; the
# data-modifying CTEs run whether referenced or not, the release is referenced to run
_ROUND = """WITH gone AS (DELETE FROM {table} WHERE k = ANY($3::bytea[])),
put AS (INSERT INTO {table} (k, r) SELECT * FROM unnest($1::bytea[], $2::bytea[])
        ON CONFLICT (k) DO UPDATE SET r = EXCLUDED.r),
freed AS (SELECT pg_advisory_unlock(h) FROM unnest($4::bigint[]) AS h)
SELECT (SELECT count(*) FROM freed),
       ARRAY(SELECT pg_try_advisory_lock(h) FROM unnest($5::bigint[]) AS h)"""


# what a lost or refusing server raises (postgres.py's list, which imports this module)
_DOWN = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
         asyncpg.exceptions.InternalClientError)


def lock_id(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)


class _Write(NamedTuple):
    generation: int  # of the lock session it must run on
    key: bytes
    record: bytes | None  # None: delete the key's record
    done: asyncio.Future[None]


class LockLost(IndexUnavailable):
    """The session that held the key's lock ended: what it guarded is another master's now."""


class AdvisoryLocks:
    """Try-locks of keys for this process and the record writes under them: one connection,
    one statement in flight at a time."""

    def __init__(self, url: str, table: str, connect_timeout: float, command_timeout: float,
                 settings: dict[str, str]) -> None:
        self.url = url
        self.round = _ROUND.format(table=table)
        self.settings = KEEPALIVE | settings
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.connection: asyncpg.Connection | None = None
        self.wanted: list[tuple[int, asyncio.Future[bool]]] = []
        self.unlocks: list[int] = []
        self.held: dict[int, int] = {}  # lock id → acquisitions on this connection not released
        self.lost: dict[int, int] = {}  # the same, of sessions since lost: not released yet
        self.writes: list[_Write] = []
        self.generation = 0  # sessions opened so far: the current one's number
        self.pumping = False  # a round is in flight, or starts next turn
        self.since: float | None = None  # when the oldest of what waits for a round was asked
        self.tasks = Tasks()  # the round in flight

    async def acquire(self, key: bytes) -> bool:
        """Whether the key is now ours (False: another master holds it)."""
        taken = asyncio.get_running_loop().create_future()
        self.wanted.append((lock_id(key), taken))
        self._pump()
        return await taken

    def release(self, key: bytes) -> None:
        self._let_go(lock_id(key))

    def holds(self, key: bytes) -> bool:
        """Whether this process took the key's lock and has not released it (its session may
        since have been lost: then `write` refuses)."""
        ident = lock_id(key)
        return ident in self.held or ident in self.lost

    def write(self, key: bytes, record: bytes | None) -> asyncio.Future[None]:
        """Put the key's record (None: delete it) on the lock session, which holds the key:
        done once committed; LockLost if that session was lost since the lock was taken."""
        done = asyncio.get_running_loop().create_future()
        if lock_id(key) not in self.held:
            done.set_exception(LockLost("the PostgreSQL index is unavailable: the session "
                                        "holding this key's lock was lost"))
            return done
        self.writes.append(_Write(self.generation, key, record, done))
        self._pump()
        return done

    def _let_go(self, ident: int) -> None:
        count = self.held.get(ident, 0)
        if count == 0:  # taken on a connection since lost: the server released it then
            lost = self.lost.get(ident, 0)
            if lost == 1:
                del self.lost[ident]
            elif lost:
                self.lost[ident] = lost - 1
            return
        if count == 1:
            del self.held[ident]
        else:
            self.held[ident] = count - 1
        self.unlocks.append(ident)
        self._pump()

    def _pump(self) -> None:
        """Something waits for a round: the next turn's, or the one after the round in flight."""
        loop = asyncio.get_running_loop()
        if self.since is None:
            self.since = loop.time()
        if not self.pumping:
            self.pumping = True
            loop.call_soon(self._start_round)

    def _start_round(self) -> None:
        wanted, self.wanted = self.wanted, []
        unlocks, self.unlocks = self.unlocks, []
        writes, self.writes = self.writes, []
        since, self.since = self.since, None
        if self.tasks.closed:
            self.pumping = False
            self._refuse(wanted, writes, "the PostgreSQL index is closed")
            return
        if not (wanted or unlocks or writes) or since is None:
            self.pumping = False  # what waited went with a lost session
            return
        late = f"the PostgreSQL index is unavailable: no answer within {ANSWER_SECONDS:g} seconds"
        self.tasks.start(self._round(wanted, unlocks, writes), deadline=since + ANSWER_SECONDS,
                         late=lambda: self._lost(wanted, writes, late))

    async def _round(self, wanted: list[tuple[int, asyncio.Future[bool]]], unlocks: list[int],
                     writes: list[_Write]) -> None:
        try:
            try:
                connection = await self.connected()
                writes = self._still_held(writes)
                puts = [w for w in writes if w.record is not None]
                _, got = await connection.fetchrow(
                    self.round, [w.key for w in puts], [w.record for w in puts],
                    [w.key for w in writes if w.record is None], unlocks,
                    [ident for ident, _ in wanted])
            except asyncio.CancelledError:  # closing, or late (then refused already)
                self._lost(wanted, writes, "the PostgreSQL index is closed")
                raise
            except Exception as e:  # the server lost or refusing, or a bug: all are told
                if not isinstance(e, _DOWN):
                    log.exception("a round of the key locks failed")
                self._lost(wanted, writes, f"the PostgreSQL index is unavailable: {e}")
                return
            settle(w.done for w in writes)
            for (ident, taken), ours in zip(wanted, got, strict=True):
                if ours:
                    self.held[ident] = self.held.get(ident, 0) + 1
                if not taken.done():
                    taken.set_result(ours)
                elif ours:  # its requester gave up: let go
                    self._let_go(ident)
        finally:
            self.pumping = False
            if self.since is not None:
                self._pump()

    async def connected(self) -> asyncpg.Connection:
        if self.connection is not None and self.connection.is_closed():
            self._forget()  # the session ended between two statements (e.g. terminated)
        if self.connection is None:
            self.connection = await asyncpg.connect(
                self.url, timeout=self.connect_timeout, command_timeout=self.command_timeout,
                server_settings=self.settings)
            self.generation += 1
        return self.connection

    def _still_held(self, writes: list[_Write]) -> list[_Write]:
        """The writes whose lock is on the current session; the others fail (LockLost)."""
        if all(w.generation == self.generation for w in writes):
            return writes
        for write in writes:
            if write.generation != self.generation and not write.done.done():
                write.done.set_exception(LockLost("the PostgreSQL index is unavailable: the "
                                                  "session holding this key's lock was lost"))
        return [w for w in writes if w.generation == self.generation]

    def _forget(self) -> None:
        """The session is gone, and every lock it held with it: none is released, and no
        write is made under them any more."""
        if self.connection is not None:
            self.connection.terminate()
            self.connection = None
        for ident, count in self.held.items():
            self.lost[ident] = self.lost.get(ident, 0) + count
        self.held.clear()
        self.unlocks.clear()

    def _lost(self, wanted: list[tuple[int, asyncio.Future[bool]]], writes: list[_Write],
              why: str) -> None:
        """The statement failed or is late: the session is given up (a write may or may not
        have committed; either way its requester is refused, as a failed commit is)."""
        self._forget()
        self._refuse(wanted, writes, why)

    @staticmethod
    def _refuse(wanted: list[tuple[int, asyncio.Future[bool]]], writes: list[_Write],
                why: str) -> None:
        refusal = IndexUnavailable(why)
        settle((taken for _, taken in wanted), error=refusal)
        settle((w.done for w in writes), error=refusal)

    async def close(self, timeout: float) -> None:
        """Refuse what waits, end the round in flight, close the session (cut, if the server
        does not answer within `timeout` seconds)."""
        await self.tasks.close()
        if self.connection is not None:
            try:
                await self.connection.close(timeout=timeout)
            except _DOWN:  # asyncpg has cut the connection
                log.warning("the PostgreSQL lock session did not answer its close: cut")
