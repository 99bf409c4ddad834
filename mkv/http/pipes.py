"""Pipelined connections to volumes: the pool `headcheck.py` (HEADs) and `pipeline.py` (GETs)
share.

The requests asked during one event-loop pass go out in one write on a few long-lived
connections per `host:port`, and nginx answers them in order. A connection takes requests until
`depth` wait on it, then another opens, up to `max_connections`. A connection that closes after
answering some (nginx's `keepalive_requests`) has the rest asked again on another; one that
answered nothing fails what it was given. A sweep notices a first answer late past its deadline,
which holds up every answer behind it. A pool says how its answers are framed (its `Pipe`) and
what a request that fails, is late or comes after `close` is told.
"""

import asyncio
import socket
from abc import ABC, abstractmethod
from collections import deque
from typing import Generic, Protocol, TypeVar

from mkv.http.client import Resolver, VolumeError
from mkv.tasks import Tasks


class Asked(Protocol):
    """A request on a pipe: its bytes, its deadline (loop time), whether it is answered."""

    request: bytes
    deadline: float

    @property
    def done(self) -> bool: ...


T = TypeVar("T", bound=Asked)


class Pipe(asyncio.Protocol, Generic[T]):
    """One connection carrying requests back to back. `inflight` holds what awaits an answer,
    in order; a subclass frames the answers, takes each one's request off the front and
    counts it in `answered`."""

    def __init__(self, pool: "PipePool[T]", hostport: str) -> None:
        self.pool = pool
        self.hostport = hostport
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.inflight: deque[T] = deque()
        self.outgoing: list[bytes] = []
        self.closing = False
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closing:  # given up on while connecting
            transport.close()
            return
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.flush()

    def send(self, item: T) -> None:
        self.inflight.append(item)
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(item.request)

    def flush(self) -> None:
        if self.outgoing and self.transport is not None and not self.closing:
            self.transport.write(b"".join(self.outgoing))
            self.outgoing.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.abandon(VolumeError(f"{self.hostport}: connection lost"))

    def abandon(self, error: VolumeError | None = None) -> None:
        """Stop using this connection, because of `error` or because the volume closes it. What
        it left unanswered is asked again elsewhere when it had answered something (nginx closes
        after `keepalive_requests`), until each one's deadline; else the volume is not well,
        and the pool fails those."""
        if not self.closing:
            self.closing = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()
        unanswered, self.inflight = self.inflight, deque()
        self.outgoing.clear()
        if self.answered:
            for item in unanswered:
                if not item.done:
                    self.pool.send(self.hostport, item)
        elif unanswered:
            self.pool.failed(self.hostport, unanswered,
                             error or VolumeError(f"{self.hostport}: closed"))


class PipePool(ABC, Generic[T]):
    """A few pipelined connections per `host:port`; `send` puts a request on one."""

    depth: int  # requests waiting on one connection before the next one opens
    max_connections: int  # per `host:port`
    sweep_seconds: float  # how late past its deadline a stuck request may be noticed

    def __init__(self, headers: bytes = b"") -> None:
        self.loop = asyncio.get_running_loop()
        self.headers = headers  # sent with every request
        self._pipes: dict[str, list[Pipe[T]]] = {}
        self._resolver = Resolver()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks = Tasks()  # the connections being opened

    @abstractmethod
    def new_pipe(self, hostport: str) -> Pipe[T]:
        """A connection of this pool's kind, not yet open."""

    @abstractmethod
    def failed(self, hostport: str, items: deque[T], error: VolumeError) -> None:
        """Tell `items` (some maybe answered already) that their connection answered none."""

    @abstractmethod
    def expired(self, late: list[tuple[str, deque[T]]]) -> None:
        """Tell the requests on each `host:port` that a first answer came too late."""

    @abstractmethod
    def refused(self, hostport: str, item: T) -> None:
        """Tell a request asked after `close`."""

    def send(self, hostport: str, item: T) -> None:
        if self._tasks.closed:
            self.refused(hostport, item)
            return
        pipes = self._pipes.get(hostport)
        if pipes is None:
            pipes = self._pipes[hostport] = []
        for pipe in pipes:
            if len(pipe.inflight) < self.depth:
                break
        else:
            if len(pipes) < self.max_connections:
                pipe = self.new_pipe(hostport)
                pipes.append(pipe)
                self._tasks.start(self._connect(pipe))
            else:
                pipe = min(pipes, key=lambda p: len(p.inflight))
        pipe.send(item)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_seconds, self._sweep)

    async def _connect(self, pipe: Pipe[T]) -> None:
        try:
            host, port = await self._resolver.address(pipe.hostport)
            await self.loop.create_connection(lambda: pipe, host, port)
        except (OSError, ValueError) as e:
            pipe.abandon(VolumeError(f"cannot connect to {pipe.hostport}: {e}"))

    def forget(self, pipe: Pipe[T]) -> None:
        pipes = self._pipes.get(pipe.hostport)
        if pipes and pipe in pipes:
            pipes.remove(pipe)

    def _sweep(self) -> None:
        now = self.loop.time()
        late = []
        for pipe in [p for pipes in self._pipes.values() for p in pipes]:
            if pipe.inflight and pipe.inflight[0].deadline <= now:
                # answers come in order: a late first answer holds up all behind it
                late.append((pipe.hostport, pipe.inflight))
                pipe.inflight = deque()
                pipe.abandon()
        busy = any(pipe.inflight for pipes in self._pipes.values() for pipe in pipes)
        self._sweeper = self.loop.call_later(self.sweep_seconds, self._sweep) if busy else None
        # told last: an answer may ask again, which changes the pipes above
        if late:
            self.expired(late)

    async def close(self) -> None:
        """Close the connections; requests in flight fail, the connections being opened are
        cancelled and awaited."""
        await self._tasks.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pipes in list(self._pipes.values()):
            for pipe in list(pipes):
                pipe.abandon(VolumeError("closed"))
