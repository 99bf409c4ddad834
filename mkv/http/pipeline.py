"""Pipelined GETs of small answers: nginx's JSON directory listings, for walking volumes.

Hand-written for the reason `headcheck.py` is: `rebuild` lists every directory of every volume,
about three listings a key, and with one GET per keep-alive exchange py-spy put 53% of the
master's CPU in loopback socket writes (bench/vs_go.py, 100,000 keys). Here the GETs asked in
one event-loop pass go out in one write on a few connections per volume (the pool of
`pipes.py`), and nginx's answers, which come in order, are parsed by httptools as they arrive
(a GET's answer always has its length, so one parser serves the whole connection).
"""

import asyncio
from collections import deque

import httptools

from mkv.http.client import VolumeError, VolumeTimeout
from mkv.http.pipes import Pipe, PipePool

PIPE_DEPTH = 64  # GETs waiting on one connection before the next one opens
MAX_CONNECTIONS = 4  # per volume
SWEEP_SECONDS = 0.5  # how late past its deadline a stuck GET may be noticed


class _Get:
    __slots__ = ("request", "future", "deadline")

    def __init__(self, request: bytes, future: asyncio.Future, deadline: float) -> None:
        self.request = request
        self.future = future
        self.deadline = deadline

    @property
    def done(self) -> bool:
        return self.future.done()


class _Pipe(Pipe[_Get]):
    """GETs on one connection; httptools frames the answers. The answer being read is the
    first in flight's: its status and body are kept here, so a GET asked again elsewhere
    starts afresh."""

    def __init__(self, pipeline: "Pipeline", hostport: str) -> None:
        super().__init__(pipeline, hostport)
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.parts: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.abandon(VolumeError(f"{self.hostport}: bad answer: {e}"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        status, body, self.parts = self.status, b"".join(self.parts), []
        if not self.inflight:
            self.abandon(VolumeError(f"{self.hostport}: an answer nobody asked for"))
            return
        get = self.inflight.popleft()
        self.answered += 1
        if not get.future.done():
            get.future.set_result((status, body))
        if not self.parser.should_keep_alive():
            self.abandon()


class Pipeline(PipePool[_Get]):
    """GETs to volumes over a few pipelined connections per `host:port`."""

    depth = PIPE_DEPTH
    max_connections = MAX_CONNECTIONS
    sweep_seconds = SWEEP_SECONDS

    async def get(self, hostport: str, target: bytes, timeout: float) -> tuple[int, bytes]:
        """The status and body of GET `target`; VolumeError when the volume cannot be reached,
        VolumeTimeout when it does not answer within `timeout`."""
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            target, hostport.encode(), self.headers)
        get = _Get(request, self.loop.create_future(), self.loop.time() + timeout)
        self.send(hostport, get)
        return await get.future

    def new_pipe(self, hostport: str) -> _Pipe:
        return _Pipe(self, hostport)

    def failed(self, hostport: str, items: deque[_Get], error: VolumeError) -> None:
        for get in items:
            if not get.done:
                get.future.set_exception(error)

    def expired(self, late: list[tuple[str, deque[_Get]]]) -> None:
        for hostport, gets in late:
            error = VolumeTimeout(f"{hostport} did not answer in time")
            for get in gets:
                if not get.done:
                    get.future.set_exception(error)

    def refused(self, hostport: str, item: _Get) -> None:
        item.future.set_exception(VolumeError(f"{hostport}: the pipeline is closed"))
