"""A keep-alive HTTP/1.1 client pool for talking to nginx volumes, parsing with httptools.

Hand-written because the existing-key GET needs a HEAD check per request: measured on
the project's machine, aiohttp's client makes ~20,000 HEADs/s on one core, a pooled
httptools client ~80,000/s (see bench/). It handles what nginx does: a HEAD answer has
no body (httptools cannot know that, so each request gets a fresh parser), and nginx
closes a keep-alive connection after `keepalive_requests` answers or when idle.
"""

import asyncio
import socket
from collections import defaultdict

import httptools

from mkv.http.flow import Body, FlowControlled

IDLE_REUSE_SECONDS = 10.0  # well under nginx's keepalive_timeout, so a reused socket is open
SWEEP_SECONDS = 0.02  # how late past its deadline a timed-out exchange may be noticed


class VolumeError(Exception):
    """A volume could not be reached or broke off the exchange.

    `unreachable` names the volume (`host:port`) when the fault was getting an answer from
    it at all, which puts its health in doubt; a volume that answered with an error is not.
    """

    def __init__(self, message: str, unreachable: str = "") -> None:
        super().__init__(message)
        self.unreachable = unreachable


class VolumeTimeout(VolumeError):
    """A volume did not answer in time."""


class ClientResponse:
    __slots__ = ("status", "headers", "body")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body: bytes | Body = b""


class Connection(FlowControlled):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, pool: "Pool", hostport: str) -> None:
        super().__init__()
        self.pool = pool
        self.loop = pool.loop
        self.hostport = hostport
        self.reused = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._response = ClientResponse()
        self._future: asyncio.Future | None = None
        self._stream = False
        self._uploading = False
        self._unsent_head = b""  # an upload's request head, sent with its first body bytes
        self._parts: list[bytes] = []  # an answer's body read whole (not streamed)
        self.received = False  # bytes came back for this exchange
        self._head = False
        # a streamed body's bytes still to come once its head is parsed: they go to the body
        # as they arrive, without httptools, whose on_body copies each chunk once more
        self._raw_left = 0
        self._raw_keep_alive = False
        self.timeout = 0.0  # the exchange's: its answer due within, its body's pauses too
        self.deadline = 0.0

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        error = VolumeError(f"{self.hostport} closed the connection", self.hostport)
        self._fail(error)
        self._wake_drain(error)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._raw_left:
            self._raw_body(data)
            return
        if self._parser is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(VolumeError(f"{self.hostport} sent a malformed response: {e}"))
            self.close()
            return
        if self._raw_left and self._parser is not None:  # the rest of the body comes raw
            self._raw_keep_alive = self._parser.should_keep_alive()
            self._parser = None

    def _raw_body(self, data: bytes) -> None:
        left = self._raw_left
        if len(data) > left:  # bytes past the body's end: the connection is out of step
            self._raw_left = 0
            self._fail(VolumeError(f"{self.hostport} sent more than its Content-Length"))
            self.close()
            return
        if self.timeout:  # a streamed body must keep coming
            self.deadline = self.loop.time() + self.timeout
        self._raw_left = left - len(data)
        body = self._response.body
        body.feed(data)  # type: ignore[union-attr]
        if not self._raw_left:
            body.finish()  # type: ignore[union-attr]
            self._done(self._response, self._raw_keep_alive)

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self._response.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        response = self._response
        response.status = self._parser.get_status_code()  # type: ignore[union-attr]
        if self._head:  # the answer ends here, whatever Content-Length announces
            self._done(response, self._parser.should_keep_alive())  # type: ignore[union-attr]
        elif self._stream:
            length = response.headers.get(b"content-length")
            response.body = Body(self, int(length) if length is not None else None, False)
            if length is not None and b"transfer-encoding" not in response.headers:
                self._raw_left = int(length)  # less what this data holds (on_body)
            self._resolve(response, done=False)

    def on_body(self, data: bytes) -> None:
        if self._stream:
            if self.timeout:  # a streamed body must keep coming
                self.deadline = self.loop.time() + self.timeout
            if self._raw_left:
                self._raw_left -= len(data)
            self._response.body.feed(data)  # type: ignore[union-attr]
        else:
            self._parts.append(data)

    def on_message_complete(self) -> None:
        response = self._response
        if self._stream:
            response.body.finish()  # type: ignore[union-attr]
        else:
            response.body = b"".join(self._parts)
        self._done(response, self._parser.should_keep_alive())  # type: ignore[union-attr]

    # --- exchanges ---
    def send(self, method: bytes, target: bytes, headers: bytes, body: bytes = b"",
             stream: bool = False, upload: bool = False,
             timeout: float | None = None) -> asyncio.Future:
        """Write a request; the future gives the response (at its headers when `stream`).

        With `upload`, the caller then writes the body and calls `upload_done()`.
        """
        # a fresh parser each time: after a HEAD, httptools would wait for the body it announced
        self._parser = httptools.HttpResponseParser(self)
        self._head = method == b"HEAD"
        self.timeout = timeout or 0.0
        self._response = ClientResponse()
        self._parts = []
        self._future = self.loop.create_future()
        self._stream = stream
        self._uploading = upload
        self.received = False
        if timeout:
            self.pool.watch(self, timeout)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n" % (
            method, target, self.hostport.encode(), self.pool.headers, headers)
        if upload:  # one system call for head and first chunk: a small PUT is one write
            self._unsent_head = head
        else:
            self.write(head + body)
        return self._future

    def write(self, data: bytes) -> None:
        if self._unsent_head:
            data, self._unsent_head = self._unsent_head + data, b""
        super().write(data)

    def upload_done(self, timeout: float) -> None:
        """The body is all written; the answer is due within `timeout` seconds."""
        if self._unsent_head:
            self.write(b"")
        self._uploading = False
        self.pool.watch(self, timeout)
        if self._parser is None:  # the answer came before the body was all sent
            self.close()

    def timed_out(self) -> None:
        """Its deadline passed (the pool's sweep): fail the exchange, close."""
        self._fail(VolumeTimeout(f"{self.hostport} did not answer in time", self.hostport))
        self.close()

    def _resolve(self, response: ClientResponse, done: bool = True) -> None:
        if done:
            self.pool.unwatch(self)
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(response)

    def _fail(self, error: Exception) -> None:
        self.pool.unwatch(self)
        future, self._future = self._future, None
        failed = future is not None and not future.done()
        if failed:
            future.set_exception(error)  # type: ignore[union-attr]
        body = self._response.body
        if isinstance(body, Body) and not body.arrived:
            body.fail(error)
            failed = True
        if failed:
            self.pool.errors[self.hostport] += 1

    def _done(self, response: ClientResponse, keep_alive: bool) -> None:
        self._parser = None
        self._raw_left = 0
        self.resume_all()  # a body's reader paused us; the next exchange must be read
        self._resolve(response)
        if keep_alive and not self._uploading and not self.closed:
            self.pool.release(self)
        elif not self._uploading:
            self.close()


class Resolver:
    """`host:port` → a socket address, looked up once. IPv4 first: nginx volumes listen on
    it everywhere, on IPv6 not always."""

    def __init__(self) -> None:
        self._addresses: dict[str, tuple[str, int]] = {}

    async def address(self, hostport: str) -> tuple[str, int]:
        address = self._addresses.get(hostport)
        if address is None:
            host, _, port = hostport.rpartition(":")
            infos = await asyncio.get_running_loop().getaddrinfo(
                host or "localhost", int(port), type=socket.SOCK_STREAM)
            infos.sort(key=lambda info: info[0] != socket.AF_INET)
            address = self._addresses[hostport] = infos[0][4][:2]
        return address


class Pool:
    """Idle connections per `host:port`, reused for at most IDLE_REUSE_SECONDS of idleness."""

    def __init__(self, headers: bytes = b"", connect_timeout: float = 5.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.headers = headers  # sent with every request
        self.connect_timeout = connect_timeout
        self._idle: defaultdict[str, list[Connection]] = defaultdict(list)
        self._resolver = Resolver()
        self._timed: set[Connection] = set()  # exchanges with a deadline
        self._sweeper: asyncio.TimerHandle | None = None
        self.errors: defaultdict[str, int] = defaultdict(int)  # failed exchanges per volume

    def watch(self, conn: Connection, timeout: float) -> None:
        """Fail the connection's exchange if not answered within `timeout` seconds: one coarse
        timer for all exchanges, cheaper than a timer each at 10,000s per second."""
        conn.deadline = self.loop.time() + timeout
        self._timed.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self._timed if c.deadline <= now]:
            if conn.reading_paused:  # waiting on our reader, not on the volume
                conn.deadline = now + conn.timeout
            else:
                conn.timed_out()
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep) if self._timed else None

    async def connection(self, hostport: str) -> Connection:
        """An idle connection to `hostport`, or a new one."""
        return self.idle(hostport) or await self._connect(hostport)

    def idle(self, hostport: str) -> Connection | None:
        """An idle connection to `hostport` that is still fresh, if there is one."""
        idle = self._idle.get(hostport)
        if idle:
            now = self.loop.time()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < IDLE_REUSE_SECONDS:
                    conn.reused = True
                    return conn
                conn.close()
        return None

    async def _connect(self, hostport: str) -> Connection:
        try:
            address = await self._resolver.address(hostport)
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Connection(self, hostport),
                                            address[0], address[1]),
                self.connect_timeout)
        except (TimeoutError, OSError, ValueError) as e:
            self.errors[hostport] += 1
            raise VolumeError(f"cannot connect to {hostport}: {e}", hostport) from None
        return conn

    def unwatch(self, conn: Connection) -> None:
        """The connection's exchange is answered or failed: no deadline."""
        self._timed.discard(conn)

    def release(self, conn: Connection) -> None:
        """Keep an answered connection for reuse."""
        conn.idle_since = self.loop.time()
        self._idle[conn.hostport].append(conn)

    def forget(self, conn: Connection) -> None:
        """A closed connection is no longer idle."""
        idle = self._idle.get(conn.hostport)
        if idle and conn in idle:
            idle.remove(conn)

    async def request(self, hostport: str, method: bytes, target: bytes, headers: bytes = b"",
                      body: bytes = b"", timeout: float | None = None,
                      stream: bool = False) -> ClientResponse:
        """One exchange. A reused connection that turns out closed is retried once, fresh."""
        conn = self.idle(hostport) or await self._connect(hostport)
        try:
            return await conn.send(method, target, headers, body, stream=stream, timeout=timeout)
        except VolumeTimeout:
            raise
        except VolumeError:
            if not conn.reused or conn.received:
                raise
        conn = await self._connect(hostport)
        return await conn.send(method, target, headers, body, stream=stream, timeout=timeout)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
