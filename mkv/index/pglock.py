"""The per-key lock across masters over one PostgreSQL index: a session advisory lock on a
64-bit hash of the key, held on one connection of this process's own.

A lock dies with its session, so a master that dies releases its keys once PostgreSQL sees the
connection go: at once for a killed process (its kernel closes the socket), within the TCP
keepalive below for a machine that vanished. The acquisitions of one loop turn go as one query,
and releases are sent after, unawaited. Advisory locks count per session, so a key released and
taken again before the release is sent stays held once, as it should.
"""

import asyncio
import hashlib

import asyncpg

from mkv.index.base import IndexUnavailable

# the server notices a vanished master after idle + interval × count seconds
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
             "tcp_keepalives_count": "3"}
_TRY = "SELECT pg_try_advisory_lock(h) FROM unnest($1::bigint[]) AS h"
_UNLOCK = "SELECT pg_advisory_unlock(h) FROM unnest($1::bigint[]) AS h"


def lock_id(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)


class AdvisoryLocks:
    """Try-locks of keys for this process, one connection, one query in flight at a time."""

    def __init__(self, url: str, connect_timeout: float, command_timeout: float,
                 settings: dict[str, str]) -> None:
        self.url = url
        self.settings = KEEPALIVE | settings
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.connection: asyncpg.Connection | None = None
        self.wanted: list[tuple[int, asyncio.Future[bool]]] = []
        self.unlocks: list[int] = []
        self.held: dict[int, int] = {}  # lock id → acquisitions on this connection not released
        self.pumping = False

    async def acquire(self, key: bytes) -> bool:
        """Whether the key is now ours (False: another master holds it)."""
        taken = asyncio.get_running_loop().create_future()
        self.wanted.append((lock_id(key), taken))
        self._pump()
        return await taken

    def release(self, key: bytes) -> None:
        self._let_go(lock_id(key))

    def _let_go(self, ident: int) -> None:
        count = self.held.get(ident, 0)
        if count == 0:
            return  # taken on a connection since lost: the server released it then
        if count == 1:
            del self.held[ident]
        else:
            self.held[ident] = count - 1
        self.unlocks.append(ident)
        self._pump()

    def _pump(self) -> None:
        if not self.pumping:
            self.pumping = True
            asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self.wanted or self.unlocks:
                wanted, self.wanted = self.wanted, []
                unlocks, self.unlocks = self.unlocks, []
                try:
                    connection = await self.connected()
                    if unlocks:
                        await connection.fetch(_UNLOCK, unlocks)
                    got = [row[0] for row in await connection.fetch(
                        _TRY, [ident for ident, _ in wanted])] if wanted else []
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                        asyncpg.exceptions.InternalClientError) as e:
                    self._lost(wanted, e)
                    continue
                for (ident, taken), ours in zip(wanted, got, strict=True):
                    if ours:
                        self.held[ident] = self.held.get(ident, 0) + 1
                    if not taken.done():
                        taken.set_result(ours)
                    elif ours:  # its requester gave up: let go
                        self._let_go(ident)
        finally:
            self.pumping = False

    async def connected(self) -> asyncpg.Connection:
        if self.connection is None or self.connection.is_closed():
            self.connection = await asyncpg.connect(
                self.url, timeout=self.connect_timeout, command_timeout=self.command_timeout,
                server_settings=self.settings)
        return self.connection

    def _lost(self, wanted: list[tuple[int, asyncio.Future[bool]]], error: Exception) -> None:
        """The connection failed: every lock it held is gone with it, so none is released."""
        if self.connection is not None:
            self.connection.terminate()
            self.connection = None
        self.held.clear()
        self.unlocks.clear()
        refusal = IndexUnavailable(f"the PostgreSQL index is unavailable: {error}")
        for _, taken in wanted:
            if not taken.done():
                taken.set_exception(refusal)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
