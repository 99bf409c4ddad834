"""The master's HTTP/1.1 server: httptools parser callbacks in, one `Request` per cycle out.

Hand-written because the stack decides the master's speed: on the project's 2-core
machine a raw `asyncio.Protocol` with httptools on uvloop answers ~140,000 req/s,
uvicorn ~59,000 and aiohttp ~42,000, while the target for a missing key is
1.5 × Go mkv's ~77,000 (see bench/). The shape follows uvicorn's httptools
protocol: the application sees `Request`s and returns `Response`s, never sockets.

An application is a callable `handle(request)` returning a `Response`, a
`Pending` it resolves later, or a coroutine of a Response. Answering at once
(a 404, a listing) or through `Pending` skips the task that a coroutine costs. Request
bodies stream through `Body`; reading from the client pauses while the
application has not taken what arrived.
"""

import asyncio
import email.utils
import logging
import time
from collections import deque
from collections.abc import Awaitable, Coroutine

import httptools

from mkv.http.flow import EMPTY, Body, BrokenBody, ClientGone, FlowControlled
from mkv.http.headers import STATUS_LINES, BadHeader
from mkv.http.messages import (
    INTERNAL_ERROR,
    Handler,
    Pending,
    Refusals,
    Request,
    Response,
    refusal,
)
from mkv.metrics import RequestMetrics

log = logging.getLogger("mkv")

MAX_HEADER_BYTES = 64 * 1024  # the request line's and headers' bytes: more is 431
MAX_HEADERS = 256  # header lines in one request: more is 431


async def _ready(response: Response) -> Response:
    return response


class HTTPConnection(FlowControlled):
    """One client connection: parses requests, runs one cycle at a time, writes responses."""

    def __init__(self, server: "HTTPServer") -> None:
        super().__init__()
        self.server = server
        self.loop = server.loop
        self.handler = server.handler
        self.parser = httptools.HttpRequestParser(self)
        self.heard = True  # data arrived since the server's last sweep
        self.last_heard = 0.0
        # the request being parsed, and the cycles waiting to run (pipelining)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0  # the request line's and headers' own bytes
        self._header_count = 0
        self._head_read = 0  # bytes read while the head is incomplete
        self._parsing: Request | None = None
        self._pending: deque[Request] = deque()
        self._active: Request | None = None
        self._started = 0.0
        self._in_message = False
        self._close_after_answer = False
        self._held = b""
        self._extra_method = b""
        # a Content-Length body's bytes still to come once its head is parsed: they go to the
        # body as they arrive, without httptools, whose on_body copies each chunk once more
        self._raw_left = 0

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_heard = self.loop.time()
        if self.server.closing:  # accepted just before the listener closed: too late to serve
            transport.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        gone = ClientGone("client closed the connection")
        for request in (self._parsing, self._active, *self._pending):
            if request is not None and request.body is not EMPTY and not request.body.arrived:
                request.body.fail(gone)
        self._wake_drain(gone)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        if self._raw_left:
            data = self._raw_body(data)
            if not data:
                return
        if not self._in_message and self.server.extra_methods:
            data = self._stand_in_for_extra_method(data)
            if not data:
                return
        if self._parsing is None:  # a head still arriving: a line that never ends counts too
            self._head_read += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # the request itself was read and dispatched: answer it, then close, as the
            # bytes after it belong to a protocol we do not speak
            self._close_after_answer = True
            if self._active is None:
                self.close()
            return
        except httptools.HttpParserInvalidMethodError:
            self._reject(405, "method not allowed")
            return
        except httptools.HttpParserError as e:
            if self._header_bytes > MAX_HEADER_BYTES or self._header_count > MAX_HEADERS:
                self._reject(431, "request header too large")
            else:
                self._reject(400, f"malformed request: {e}")
            return
        if self._parsing is None and self._head_read > MAX_HEADER_BYTES:
            self._reject(431, "request header too large")
        elif self._raw_left and self._parsing is not None:  # its body's rest comes raw
            self.parser = httptools.HttpRequestParser(self)  # for the request after it

    def _raw_body(self, data: bytes) -> bytes:
        """Feed a body arriving raw; the bytes after its end, if any (the next request)."""
        left, request = self._raw_left, self._parsing
        if len(data) < left:
            self._raw_left = left - len(data)
            request.body.feed(data)  # type: ignore[union-attr]
            return b""
        self._raw_left = 0
        request.body.feed(data[:left] if len(data) > left else data)  # type: ignore[union-attr]
        self.on_message_complete()
        return data[left:]

    def _stand_in_for_extra_method(self, data: bytes) -> bytes:
        """Hide a method llhttp does not know (mkv's REPLACE, RELINK, REBALANCE) behind PUT.

        llhttp rejects methods outside its fixed list, so a request that starts with one of
        the server's extra methods is fed to it as PUT and the real name is kept aside. This
        sees only requests that begin a read: one pipelined behind another in the same read
        meets llhttp as it is and is answered 405, which closes the connection.
        """
        data = self._held + data
        self._held = b""
        space = data.find(b" ", 0, 16)
        if space < 0:
            if len(data) < 16 and any(m.startswith(data) for m in self.server.extra_methods):
                self._held = data  # the method is not all here yet
                return b""
            return data
        method = data[:space]
        if method in self.server.extra_methods:
            self._extra_method = method
            return b"PUT" + data[space:]
        return data

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        if self.closed:  # answered and closed (an unread body, Connection: close): a request
            # pipelined behind in the same read must not run (RFC 9112 §9.6)
            raise httptools.HttpParserError("a request after the connection closed")
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise httptools.HttpParserError("too many headers")
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("header too large")
        headers = self._headers
        path, _, query = self._url.partition(b"?")
        length = headers.get(b"content-length")
        chunked = b"transfer-encoding" in headers
        if chunked and length is not None:
            raise httptools.HttpParserError("both Content-Length and Transfer-Encoding")
        if chunked or length not in (None, b"0"):
            expect = headers.get(b"expect", b"").lower() == b"100-continue"
            body = Body(self, None if chunked else int(length), expect)  # type: ignore[arg-type]
        else:
            body = EMPTY
        method = self._extra_method or self.parser.get_method()
        self._extra_method = b""
        request = Request(method, path, query, headers, body)
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":  # HTTP/0.9 has no headers, no status line
            raise httptools.HttpParserError(f"HTTP/{version} is not supported")
        request.keep_alive = self.parser.should_keep_alive()
        request.http10 = version == "1.0"
        self._url = b""
        self._headers = {}
        self._header_bytes = self._head_read = self._header_count = 0
        self._parsing = request
        if body is not EMPTY and body.length and b"upgrade" not in headers:
            self._raw_left = body.length  # less what this read holds (on_body)
        if self._active is None and not self._pending:
            self._start(request)
        else:
            self._pending.append(request)
            self.pause_reading("pipeline")

    def on_body(self, data: bytes) -> None:
        if self._raw_left:
            self._raw_left -= len(data)
        self._parsing.body.feed(data)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self._in_message = False
        request = self._parsing
        self._parsing = None
        if request is not None and request.body is not EMPTY:
            request.body.finish()

    # --- cycles ---
    def _start(self, request: Request) -> None:
        if self.server.timed:
            self._started = time.perf_counter()
        try:
            result = self.handler(request)
        except Exception as e:
            result = self.server.answer_to(request, e)
        if isinstance(result, Response):
            self._respond(request, result)
        elif isinstance(result, Pending):  # the cheap way to wait: no task, no future
            self._active = request
            result.then(self._deliver)
        else:
            self._active = request
            self.server.run(self._run(request, result))

    async def _run(self, request: Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except ClientGone as gone:
            self._active = None
            if isinstance(gone, BrokenBody):
                self._refuse(gone.status, gone.reason)
            else:
                self.close()
            return
        except Exception as e:
            response = self.server.answer_to(request, e)
        sendable = self._sendable(request, response)
        if isinstance(sendable.body, bytes):
            if sendable is not response and hasattr(response.body, "aclose"):
                await response.body.aclose()  # a stream refused: let go what it holds
            self._respond(request, sendable)
            return
        try:
            await self._stream(request, response)
        except ClientGone as gone:  # a client hanging up is ordinary: no traceback
            log.warning("%s %r: %s", request.method.decode(), request.path, gone)
            self._active = None
            self.close()
        except Exception:
            log.exception("streaming the answer to %s %r failed", request.method, request.path)
            self._active = None
            self.close()

    def _deliver(self, response: Response) -> None:
        request = self._active
        if request is None or self.closed:
            return
        if isinstance(response.body, bytes):
            self._respond(request, response)
        else:
            self.server.run(self._run(request, _ready(response)))

    def _head(self, request: Request, response: Response, keep_alive: bool) -> bytes:
        date = self.server.date
        if not keep_alive:
            return response.encoded_head() + date + b"Connection: close\r\n"
        if request.http10:  # HTTP/1.0 closes by default: say it stays open
            return response.encoded_head() + date + b"Connection: keep-alive\r\n"
        return response.encoded_head() + date

    def _keep_alive(self, request: Request) -> bool:
        if not request.keep_alive or self.server.closing or self._close_after_answer:
            return False
        body = request.body
        if body is EMPTY:
            return True
        if body.arrived:
            body.discard()
            return True
        # an unread body still on the wire: close rather than read up to gigabytes to discard
        too_much = body.length is None or body.length - body.consumed > 1 << 20
        close = body.continue_pending or too_much
        body.discard()
        return not close

    @staticmethod
    def _sendable(request: Request, response: Response) -> Response:
        """The response, or a 500 if its head must not be sent (the faces refuse first)."""
        try:
            response.encoded_head()
        except BadHeader as e:
            log.error("%s %r: answered 500, as %s", request.method.decode(), request.path, e)
            return INTERNAL_ERROR
        return response

    def _respond(self, request: Request, response: Response) -> None:
        response = self._sendable(request, response)
        keep_alive = self._keep_alive(request)
        body = response.body
        head = self._head(request, response, keep_alive)
        data = (head + b"\r\n" if request.method == b"HEAD" or not body
                else head + b"\r\n" + body)  # type: ignore[operator]
        self.write(data)
        self._finish(request, response.status, keep_alive, len(data))

    async def _stream(self, request: Request, response: Response) -> None:
        # without a length, HTTP/1.1 gets chunks and HTTP/1.0 the end of the connection
        chunked = response.unframed and not request.http10
        keep_alive = self._keep_alive(request) and (chunked or not response.unframed)
        head = self._head(request, response, keep_alive)
        head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n"
        self.write(head)
        sent = len(head)
        body = response.body
        try:
            if request.method != b"HEAD":
                async for chunk in body:  # type: ignore[union-attr]
                    if self.closed:
                        raise ClientGone("client closed the connection")
                    if chunked and chunk:  # an empty chunk would end the body
                        chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    self.write(chunk)
                    sent += len(chunk)
                    await self.drain()
                if chunked:
                    self.write(b"0\r\n\r\n")
                    sent += 5
        finally:
            if hasattr(body, "aclose"):  # a generator left early still releases what it holds
                await body.aclose()
        self._finish(request, response.status, keep_alive, sent)

    def _finish(self, request: Request, status: int, keep_alive: bool, sent: int) -> None:
        server = self.server
        if server.timed:
            seconds = time.perf_counter() - self._started
            if server.metrics is not None:
                body = request.body
                server.metrics.observe(request.method, status, seconds,
                                       0 if body is EMPTY else body.consumed, sent)
            if server.access_log:
                log.info("%s %s %d %.2fms", request.method.decode(), request.path.decode(
                    "utf-8", "replace"), status, seconds * 1000)
        self._active = None
        if not keep_alive:
            self.close()
            return
        if self._pending:
            self.resume_reading("pipeline")
            self._start(self._pending.popleft())

    def _reject(self, status: int, reason: str) -> None:
        """Refuse what the parser could not take, then close."""
        if self.closed:
            return
        if self._active is None:
            self._refuse(status, reason)
            return
        body = self._parsing.body if self._parsing is not None else None
        self.pause_reading("rejected")
        if body is not None and body is not EMPTY and not body.arrived:
            # the handler is reading this body: it stops, and _run answers for it
            body.fail(BrokenBody(status, reason))
        else:  # bytes after a whole request: that one is answered (its write may land), then
            self._close_after_answer = True  # the connection closes

    def _refuse(self, status: int, reason: str) -> None:
        message = reason.encode() + b"\n"
        # a HEAD's answer has no body (RFC 9110 9.3.2). llhttp reads the method first, so it is
        # known whatever broke later; not after a 405 (the method itself was not understood)
        request = self._parsing
        head = request.method == b"HEAD" if request is not None else (
            self._in_message and status != 405 and self.parser.get_method() == b"HEAD")
        self.write(STATUS_LINES[status] + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                   % len(message) + (b"" if head else message))
        self.close()

    def quiet_for(self, seconds: float) -> None:
        """Nothing heard for `seconds` (the server's sweep): close an idle connection after
        idle_timeout, one stalled mid-request after read_timeout."""
        server = self.server
        if self._active is not None:
            # the application owns it, but a body that stopped arriving is the client's
            if self._in_message and seconds > server.read_timeout:
                self.abandon("request body stalled")
        elif self._in_message and seconds > server.read_timeout:
            self._reject(408, "request timeout")
        elif not self._in_message and seconds > server.idle_timeout:
            self.close()

    def abandon(self, reason: str) -> None:
        """Give up on a client mid-request: the handler reading its body sees ClientGone."""
        body = self._parsing.body if self._parsing is not None else None
        if body is not None and body is not EMPTY and not body.arrived:
            body.fail(ClientGone(reason))
        self.close()

    @property
    def busy(self) -> bool:
        return self._active is not None or self._parsing is not None


class HTTPServer:
    """Accepts connections for one handler; closes idle and stalled ones; shuts down gently."""

    def __init__(self, handler: Handler, *, extra_methods: tuple[bytes, ...] = (),
                 access_log: bool = False, idle_timeout: float = 60.0,
                 read_timeout: float = 60.0, metrics: RequestMetrics | None = None,
                 refusals: Refusals | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.refusals = refusals or {}  # errors of the layers below, answered without traceback
        self.extra_methods = extra_methods  # methods beyond llhttp's list the handler takes
        self.access_log = access_log
        self.metrics = metrics
        self.timed = access_log or metrics is not None
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.connections: set[HTTPConnection] = set()
        # every handler running, its client there or gone: held here (the loop keeps a weak
        # reference), and shutdown waits for them all, so none outlives the store it uses
        self.handlers: set[asyncio.Task] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.date = b""  # the Date header line, renewed every second by the sweeper

    def answer_to(self, request: Request, error: Exception) -> Response:
        """What a handler that raised `error` answers: its refusal, else 500 (a bug, logged)."""
        answer = refusal(error, self.refusals)
        if answer is None:
            log.exception("handler failed for %s %r", request.method, request.path,
                          exc_info=error)
            answer = INTERNAL_ERROR
        return answer

    def run(self, handling: Coroutine[None, None, None]) -> None:
        """Run a connection's handler as a task the shutdown knows of."""
        task = self.loop.create_task(handling)
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)

    async def start(self, host: str | None, port: int, reuse_port: bool = False) -> None:
        """Listen; `reuse_port` lets several processes listen on the port (SO_REUSEPORT), the
        kernel spreading the connections among them."""
        self._server = await self.loop.create_server(
            lambda: HTTPConnection(self), host, port, backlog=4096, reuse_address=True,
            reuse_port=reuse_port)
        self._sweep()

    def _sweep(self) -> None:
        """Renew the Date; close connections idle past idle_timeout, or stalled mid-request
        past read_timeout. Runs every second, so connections only raise a flag when heard."""
        self.date = f"Date: {email.utils.formatdate(usegmt=True)}\r\n".encode()
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.heard:
                conn.heard = False
                conn.last_heard = now
                continue
            conn.quiet_for(now - conn.last_heard)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to `grace` seconds, close all."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        deadline = self.loop.time() + grace
        while (self.handlers or any(c.busy for c in self.connections)) \
                and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        # handlers still running are cancelled (a write in flight is undone by the store) and
        # awaited, so none outlives the store they use
        running = list(self.handlers)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for conn in list(self.connections):
            conn.close()
