"""Pipelined GETs of small answers: nginx's JSON directory listings, for walking volumes.

Hand-written for the reason `headcheck.py` is: `rebuild` lists every directory of every volume,
about three listings a key, and with one GET per keep-alive exchange py-spy put 53% of the
master's CPU in loopback socket writes (bench/vs_go.py, 100,000 keys). Here the GETs asked in
one event-loop pass go out in one write on a few connections per volume, and nginx's answers,
which come in order, are parsed by httptools as they arrive (a GET's answer always has its
length, so one parser serves the whole connection).
"""

import asyncio
import socket
from collections import deque
from typing import Generic, TypeVar

import httptools

from mkv.http.client import Resolver, VolumeError, VolumeTimeout
from mkv.tasks import Tasks

PIPE_DEPTH = 64  # GETs waiting on one connection before the next one opens
MAX_CONNECTIONS = 4  # per volume
SWEEP_SECONDS = 0.5  # how late past its deadline a stuck GET may be noticed

T = TypeVar("T")


class _Get:
    __slots__ = ("request", "future", "deadline", "status", "parts")

    def __init__(self, request: bytes, future: asyncio.Future, deadline: float) -> None:
        self.request = request
        self.future = future
        self.deadline = deadline
        self.status = 0
        self.parts: list[bytes] = []


class Pipelined(asyncio.Protocol, Generic[T]):
    """One connection carrying requests back to back, answered in order: the requests made
    in one event-loop pass go out in one write. `inflight` holds what awaits an answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
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

    def send(self, item: T, request: bytes) -> None:
        self.inflight.append(item)
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(request)

    def flush(self) -> None:
        if self.outgoing and self.transport is not None and not self.closing:
            self.transport.write(b"".join(self.outgoing))
            self.outgoing.clear()


class _Pipe(Pipelined[_Get]):
    """GETs on one connection; httptools frames the answers."""

    def __init__(self, pipeline: "Pipeline", hostport: str) -> None:
        super().__init__(pipeline.loop)
        self.pipeline = pipeline
        self.hostport = hostport
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.abandon(VolumeError(f"{self.hostport}: bad answer: {e}"))

    def on_headers_complete(self) -> None:
        if self.inflight:
            self.inflight[0].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.inflight:
            self.inflight[0].parts.append(body)

    def on_message_complete(self) -> None:
        if not self.inflight:
            self.abandon(VolumeError(f"{self.hostport}: an answer nobody asked for"))
            return
        get = self.inflight.popleft()
        self.answered += 1
        if not get.future.done():
            get.future.set_result((get.status, b"".join(get.parts)))
        if not self.parser.should_keep_alive():
            self.abandon(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.abandon(VolumeError(f"{self.hostport}: connection lost"))

    def abandon(self, error: VolumeError | None) -> None:
        """Stop using this connection. What it left unanswered is asked again elsewhere when
        it had answered something (nginx closes after `keepalive_requests`), else fails."""
        if not self.closing:
            self.closing = True
            self.pipeline._forget(self)
            if self.transport is not None:
                self.transport.close()
        unanswered, self.inflight = self.inflight, deque()
        self.outgoing.clear()
        for get in unanswered:
            if get.future.done():
                continue
            if self.answered or error is None:
                get.status, get.parts = 0, []
                self.pipeline._send(self.hostport, get)
            else:
                get.future.set_exception(error)


class Pipeline:
    """GETs to volumes over a few pipelined connections per `host:port`."""

    def __init__(self, headers: bytes = b"") -> None:
        self.loop = asyncio.get_running_loop()
        self.headers = headers  # sent with every GET
        self._pipes: dict[str, list[_Pipe]] = {}
        self._resolver = Resolver()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks = Tasks()  # the connections being opened

    async def get(self, hostport: str, target: bytes, timeout: float) -> tuple[int, bytes]:
        """The status and body of GET `target`; VolumeError when the volume cannot be reached,
        VolumeTimeout when it does not answer within `timeout`."""
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            target, hostport.encode(), self.headers)
        get = _Get(request, self.loop.create_future(), self.loop.time() + timeout)
        self._send(hostport, get)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
        return await get.future

    def _send(self, hostport: str, get: _Get) -> None:
        if self._tasks.closed:
            get.future.set_exception(VolumeError(f"{hostport}: the pipeline is closed"))
            return
        pipes = self._pipes.setdefault(hostport, [])
        for pipe in pipes:
            if len(pipe.inflight) < PIPE_DEPTH:
                break
        else:
            if len(pipes) < MAX_CONNECTIONS:
                pipe = _Pipe(self, hostport)
                pipes.append(pipe)
                self._tasks.start(self._connect(pipe))
            else:
                pipe = min(pipes, key=lambda p: len(p.inflight))
        pipe.send(get, get.request)

    async def _connect(self, pipe: _Pipe) -> None:
        try:
            host, port = await self._resolver.address(pipe.hostport)
            await self.loop.create_connection(lambda: pipe, host, port)
        except (OSError, ValueError) as e:
            pipe.abandon(VolumeError(f"cannot connect to {pipe.hostport}: {e}"))

    def _forget(self, pipe: _Pipe) -> None:
        pipes = self._pipes.get(pipe.hostport)
        if pipes and pipe in pipes:
            pipes.remove(pipe)

    def _sweep(self) -> None:
        now = self.loop.time()
        for pipe in [p for pipes in self._pipes.values() for p in pipes]:
            if pipe.inflight and pipe.inflight[0].deadline <= now:
                # answers come in order: a late first answer holds up all behind it
                late = VolumeTimeout(f"{pipe.hostport} did not answer in time")
                for get in pipe.inflight:
                    if not get.future.done():
                        get.future.set_exception(late)
                pipe.inflight = deque()
                pipe.abandon(late)
        busy = any(pipe.inflight for pipes in self._pipes.values() for pipe in pipes)
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep) if busy else None

    async def close(self) -> None:
        """Close the connections; GETs in flight fail, the connections being opened are
        cancelled and awaited."""
        await self._tasks.close()
        for pipes in list(self._pipes.values()):
            for pipe in list(pipes):
                pipe.abandon(VolumeError("closed"))
        if self._sweeper is not None:
            self._sweeper.cancel()
