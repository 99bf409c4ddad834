"""A keep-alive HTTP/1.1 client on asyncio + httptools: cheap enough not to be what we measure.

One `Connection` carries one request at a time and reconnects by itself when the server closed
it. A request body is bytes or an iterator of chunks (sent with Content-Length, under TCP
backpressure, so a generator of gigabytes never sits in memory); a response body is kept, or
handed chunk by chunk to a `sink` and only counted. `Pool` keeps one connection per host:port,
for following redirects to volumes.

On uvloop a single client process does ~4x the master's missing-key rate (the yardstick runs
against nginx in `thrasher.py` show what the client alone manages).
"""

import asyncio
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httptools


class HTTPFailure(Exception):
    """The exchange itself failed: connection refused or lost, bad response, timeout."""


class Reply:
    __slots__ = ("status", "headers", "body", "received")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, received: int) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body
        self.received = received  # body bytes, also when they went to a sink


class Connection(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"Host: {host}:{port}\r\n".encode()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.waiter: asyncio.Future | None = None
        self.drained: asyncio.Future | None = None
        self.paused = False
        self.sink: Callable[[bytes], None] | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.received = 0
        self._name = b""

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(HTTPFailure(f"connection to {self.host}:{self.port} lost: {exc or 'closed'}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HTTPFailure(f"bad response from {self.host}:{self.port}: {e}"))
            self.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        if self.sink is not None:
            self.sink(body)
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        reply = Reply(self.parser.get_status_code(), self.headers, b"".join(self.chunks),
                      self.received)
        keep = self.parser.should_keep_alive()
        self._reset_message()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)
        if not keep:
            self.close()

    # --- use ---
    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)  # the sender then finds the connection gone

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, self.host, self.port)
        except OSError as e:
            raise HTTPFailure(f"cannot connect to {self.host}:{self.port}: {e}") from None
        self.parser = httptools.HttpResponseParser(self)
        self.paused = False

    async def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                      *, length: int | None = None, sink: Callable[[bytes], None] | None = None,
                      timeout: float = 60.0) -> Reply:
        """Send one request and wait for its response (not for HEAD: every reply is read whole).

        `body` as an iterator needs `length`, sent as Content-Length.
        """
        if self.transport is None or self.transport.is_closing():
            await self._connect()
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.sink = sink
        self._reset_message()
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self.host_header
        if isinstance(body, bytes | bytearray | memoryview):
            self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        elif body is None:
            self.transport.write(head + b"\r\n")
        else:
            if length is None:
                raise ValueError("a streamed body needs its length")
            self.transport.write(head + b"Content-Length: %d\r\n\r\n" % length)
        timer = loop.call_later(timeout, self._timed_out, waiter, method, path, timeout)
        try:
            if body is not None and not isinstance(body, bytes | bytearray | memoryview):
                await self._send(body, waiter)
            return await waiter
        finally:
            timer.cancel()
            self.sink = None

    async def _send(self, chunks: Iterable[bytes], waiter: asyncio.Future) -> None:
        loop = asyncio.get_running_loop()
        for chunk in chunks:
            if waiter.done():  # answered (or failed) before the whole body went out
                self.close()
                return
            if self.transport is None:
                raise HTTPFailure(f"connection to {self.host}:{self.port} lost while sending")
            self.transport.write(chunk)
            if self.paused:
                self.drained = loop.create_future()
                await asyncio.wait([self.drained, waiter], return_when=asyncio.FIRST_COMPLETED)
                self.drained = None

    def _timed_out(self, waiter: asyncio.Future, method: str, path: str, timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(HTTPFailure(
                f"{method} {self.host}:{self.port}{path}: no answer within {timeout:g}s"))
        self.close()

    def close(self) -> None:
        """Close the connection; a request still waiting ends by its timeout, quietly."""
        self.waiter = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Pool:
    """One keep-alive connection per host:port (a worker uses it for one request at a time)."""

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}

    def get(self, hostport: str) -> Connection:
        conn = self.connections.get(hostport)
        if conn is None:
            host, _, port = hostport.rpartition(":")
            conn = self.connections[hostport] = Connection(host, int(port))
        return conn

    async def fetch(self, url: str, method: str = "GET", **kw) -> Reply:
        """A request to an absolute http:// URL (a redirect's Location)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.netloc:
            raise HTTPFailure(f"not an http URL: {url!r}")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return await self.get(parts.netloc).request(method, path, **kw)

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()
