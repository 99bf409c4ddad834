"""Flow control shared by both ends of HTTP: a streamed `Body`, and a protocol base class
that pauses reading while a body waits unread and lets writers await a drained transport.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator

BODY_HIGH_WATER = 512 * 1024  # buffered body bytes that pause reading from the peer
BODY_LOW_WATER = 128 * 1024


class FlowControlled(asyncio.Protocol):
    """Reading paused for any number of reasons resumes when the last one lifts;
    `drain()` waits while the transport's write buffer is over its high-water mark."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None = None

    def __init__(self) -> None:
        self.closed = False
        self._paused_for: set[object] = set()
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    def _wake_drain(self, error: Exception | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    @property
    def write_blocked(self) -> bool:
        return self._write_paused and not self.closed

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def pause_reading(self, reason: object) -> None:
        if not self._paused_for and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._paused_for.add(reason)

    def resume_reading(self, reason: object) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and not self.closed:
                self.transport.resume_reading()  # type: ignore[union-attr]

    def resume_all(self) -> None:
        """Lift every reason reading was paused for."""
        if self._paused_for:
            self._paused_for.clear()
            if not self.closed:
                self.transport.resume_reading()  # type: ignore[union-attr]

    @property
    def reading_paused(self) -> bool:
        return bool(self._paused_for)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]


class ClientGone(Exception):
    """The client closed the connection or sent a broken body."""


class BrokenBody(ClientGone):
    """The body broke the protocol mid-way: the client is still there to be told why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Body:
    """A message body as it arrives; `read()` returns b"" at its end.

    `conn` is the connection it arrives on (server or client side); reading from it
    pauses while more than BODY_HIGH_WATER bytes wait here.
    """

    __slots__ = ("_conn", "_chunks", "_buffered", "arrived", "_error", "_waiter",
                 "continue_pending", "_discarded", "length", "consumed")

    def __init__(self, conn: FlowControlled, length: int | None, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self.arrived = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future | None = None
        self.continue_pending = expect_continue
        self._discarded = False
        self.length = length  # None: chunked
        self.consumed = 0

    @property
    def complete(self) -> bool:
        return self.arrived and not self._chunks

    def feed(self, data: bytes) -> None:
        if self._discarded:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self._conn.pause_reading(self)
        self._wake()

    def finish(self) -> None:
        self.arrived = True
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        if self.continue_pending:
            self.continue_pending = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.arrived:
                return b""
            self._waiter = self._conn.loop.create_future()
            await self._waiter
            self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        self.consumed += len(data)
        if self._buffered < BODY_LOW_WATER:
            self._conn.resume_reading(self)
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while data := await self.read():
            yield data

    def discard(self) -> None:
        """Drop what arrives from now on: the application answered without reading it all."""
        self._discarded = True
        self._chunks.clear()
        self._buffered = 0
        self.continue_pending = False
        self._conn.resume_reading(self)

    def abort(self) -> None:
        """Close the connection this body arrives on: its reader will not finish it. A body
        already whole has let its connection go back to the pool, maybe to another exchange
        by now: that one is not touched."""
        if not self.arrived:
            self._conn.close()




EMPTY = Body(None, 0, False)  # type: ignore[arg-type]
EMPTY.arrived = True  # the body of every request that has none: nothing to read, nothing to feed
