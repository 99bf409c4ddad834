"""Harness `httphead`: bytes from a client as the master's HTTP server reads them
(`HTTPConnection` over httptools), cut into pieces as a socket might deliver them, to a fake
transport, with a trivial handler.

The last bytes pick the handler (an answer at once; one through `Pending`; a coroutine that
reads the whole body; one that streams its answer, with or without Content-Length; one that
echoes the path, percent-decoded, and an `x-reflect` header into its answer's headers),
whether the server takes mkv's extra methods (REPLACE, RELINK, REBALANCE), and how the bytes
are cut.
A crash is any exception out of `data_received` or `connection_lost` (or raised inside a
parser callback other than the parser's own error, which would be answered as a bare 400),
or a broken invariant:
- what the server writes is a sequence of well-formed responses: a status line `HTTP/1.1
  NNN reason`, header lines `token: value` without controls but TAB, a blank line, then the
  body its framing gives (none for HEAD, 204, 304; Content-Length; chunked); nothing after
  one that says `Connection: close`, and nothing once the transport is closed;
- no 5xx: the handler never fails (but a 500 in place of an echo that holds a control, which
  the server refuses to send), and no error is logged but that refusal;
- no more answers from the handler than requests it was given, and no request given to it
  once the server has closed the connection (RFC 9112 §9.6: nothing after is processed);
- once the client is gone, no handler task is left waiting.
"""

import asyncio
import logging
import re
from urllib.parse import unquote_to_bytes

import atheris

from fuzz.common import check, pieces, run, tail

with atheris.instrument_imports(include=["mkv"]):
    import httptools

    from mkv.http.messages import Pending, Response
    from mkv.http.server import HTTPConnection, HTTPServer

MAX_LEN = 8192
AT_ONCE, PENDING, READ_BODY, STREAM, STREAM_UNFRAMED, ECHO = range(6)
EXTRA_METHODS = (b"REPLACE", b"RELINK", b"REBALANCE")
MARK = ("X-Fuzz", "handler")  # on every answer of the handler's, none of the server's own
_STATUS = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\x00-\x08\x0a-\x1f\x7f]*")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ([^\x00-\x08\x0a-\x1f\x7f]*)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Transport(asyncio.Transport):
    """What the server writes, whether it closed, whether it paused reading."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = self.paused = False
        self.late: bytes = b""  # written after close: must stay empty

    def write(self, data: bytes) -> None:
        if self.closed:
            self.late += data
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Errors(logging.Handler):
    """Errors the server logs (a handler failure, a head refused)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Probe(HTTPConnection):
    """The connection, with what its parser callbacks raise recorded: httptools turns any of
    it into HttpParserCallbackError, which the server answers as a malformed request."""

    raised: list[BaseException]

    def _guard(self, callback, *args) -> None:
        try:
            callback(*args)
        except httptools.HttpParserError:
            raise
        except Exception as e:
            self.raised.append(e)
            raise

    def on_message_begin(self) -> None:
        self._guard(super().on_message_begin)

    def on_url(self, url: bytes) -> None:
        self._guard(super().on_url, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._guard(super().on_header, name, value)

    def on_headers_complete(self) -> None:
        self._guard(super().on_headers_complete)

    def on_body(self, body: bytes) -> None:
        self._guard(super().on_body, body)

    def on_message_complete(self) -> None:
        self._guard(super().on_message_complete)


class Handler:
    """The application: answers every request the same way, by `mode`."""

    def __init__(self, mode: int, transport: Transport) -> None:
        self.mode = mode
        self.transport = transport
        self.methods: list[bytes] = []  # of the requests it was given, in order
        self.echoed_controls = 0  # echoes the server must refuse to send
        self.after_close: list[bytes] = []  # requests given once the connection was closed

    def __call__(self, req):
        self.methods.append(req.method)
        if self.transport.closed:
            self.after_close.append(req.method + b" " + req.path)
        if self.mode == AT_ONCE:
            return Response(200, [MARK, ("Content-Type", "text/plain")], b"ok\n")
        if self.mode == PENDING:
            answer = Pending()
            LOOP.call_soon(answer.resolve, Response(204, [MARK]))
            return answer
        if self.mode == ECHO:
            path = unquote_to_bytes(req.path).decode("utf-8", "surrogateescape")
            value = req.headers.get(b"x-reflect", b"").decode("utf-8", "surrogateescape")
            self.echoed_controls += bool(_CONTROL.search(path + value))
            return Response(200, [MARK, ("X-Path", path), ("X-Reflect", value)], b"echo")
        return self.answer(req)

    async def answer(self, req) -> Response:
        if self.mode == READ_BODY:
            size = sum([len(chunk) async for chunk in req.body])
            return Response(200, [MARK], b"%d" % size)
        length = [("Content-Length", "5")] if self.mode == STREAM else []
        return Response(200, [MARK, *length], self.chunks())

    @staticmethod
    async def chunks():
        yield b"he"
        await asyncio.sleep(0)
        yield b"llo"


def check_output(out: bytes, handler: Handler) -> list[int]:
    """The responses written, checked one by one; their statuses."""
    statuses, pos = [], 0
    closing = False
    while pos < len(out):
        check(not closing, f"bytes after a Connection: close answer: {out[pos:pos + 80]!r}")
        end = out.find(b"\r\n\r\n", pos)
        check(end >= 0, f"a head that does not end: {out[pos:pos + 200]!r}")
        lines = out[pos:end].split(b"\r\n")
        status_line = _STATUS.fullmatch(lines[0])
        check(status_line is not None, f"status line {lines[0][:100]!r}")
        status = int(status_line[1])  # type: ignore[index]
        headers = {}
        for line in lines[1:]:
            header = _HEADER.fullmatch(line)
            check(header is not None, f"header line {line[:100]!r}")
            headers[header[1].lower()] = header[2]  # type: ignore[index]
        pos = end + 4
        if status == 100:
            check(len(lines) == 1, "a 100 Continue with headers")
            continue
        # the answers to the requests the handler was given, in order, then perhaps the
        # server's refusal of what followed them
        method = handler.methods[len(statuses)] if len(statuses) < len(handler.methods) \
            else b""
        check(b"x-fuzz" not in headers or method, "more answers than requests")
        statuses.append(status)
        closing = headers.get(b"connection", b"").lower() == b"close"
        if method == b"HEAD" or status in (204, 304):
            continue
        if b"content-length" in headers:
            check(headers[b"content-length"].isdigit(), "Content-Length not a number")
            length = int(headers[b"content-length"])
            if not method and closing and pos == len(out):
                continue  # the refusal of a request the handler never saw: a HEAD's has no body
            pos += length
            check(pos <= len(out), "a body shorter than its Content-Length")
        elif headers.get(b"transfer-encoding") == b"chunked":
            while True:
                line_end = out.find(b"\r\n", pos)
                check(line_end >= 0, "a chunk size line that does not end")
                size = int(out[pos:line_end], 16)
                pos = line_end + 2 + size + 2
                check(out[pos - 2:pos] == b"\r\n", "a chunk not followed by CRLF")
                if size == 0:
                    break
        else:
            check(closing, "an answer without framing on a connection kept open")
            pos = len(out)
    return statuses


def settle(loop: asyncio.AbstractEventLoop, rounds: int = 20) -> list[asyncio.Task]:
    """Let the callbacks and tasks that are ready run, until none is left waiting or after
    `rounds` turns of the loop; the tasks still waiting."""
    async def turns() -> list[asyncio.Task]:
        me = asyncio.current_task()
        for _ in range(rounds):
            waiting = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not waiting:
                break
            await asyncio.sleep(0)
        return waiting
    return loop.run_until_complete(turns())


async def _server() -> HTTPServer:
    server = HTTPServer(lambda req: None)  # never started: connections are made by hand
    server.date = b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
    return server


LOOP = asyncio.new_event_loop()
SERVER = LOOP.run_until_complete(_server())
ERRORS = Errors()
_log = logging.getLogger("mkv")
_log.addHandler(ERRORS)
_log.propagate = False  # kept here, not printed
_log.setLevel(logging.WARNING)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode, extra, cut = (fdp.ConsumeIntInRange(0, ECHO), fdp.ConsumeIntInRange(0, 1),
                        fdp.ConsumeIntInRange(0, 255))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    server = SERVER
    transport = Transport()
    handler = server.handler = Handler(mode, transport)
    server.extra_methods = EXTRA_METHODS if extra else ()
    conn = Probe(server)
    conn.raised = []
    conn.connection_made(transport)
    ERRORS.records.clear()
    for piece in [stream] if cut == 0 else pieces(stream, cut, 7, 29, 128):
        settle(LOOP)
        if transport.closed or transport.paused:
            break  # a transport delivers nothing once closed or paused
        conn.data_received(piece)
    settle(LOOP)
    if not transport.closed:
        conn.connection_lost(None)
    left = settle(LOOP, 1000)  # each pipelined request takes a few turns
    stuck = [repr(task) for task in left]
    for task in left:
        task.cancel()
    settle(LOOP)
    check(not conn.raised, f"a parser callback raised {conn.raised!r}")
    check(not handler.after_close, f"handled after the connection closed: {handler.after_close}")
    check(not stuck, f"tasks left waiting after the client left: {stuck}")
    check(not transport.late, f"written after close: {transport.late[:100]!r}")
    statuses = check_output(bytes(transport.out), handler)
    refused = statuses.count(500)
    check(all(s <= 500 for s in statuses) and refused <= handler.echoed_controls,
          f"statuses {statuses}, {handler.echoed_controls} echoes of a control")
    # (an echo refused on a connection already closed is logged and not written)
    check(len(ERRORS.records) <= handler.echoed_controls,
          f"logged: {[r.getMessage() for r in ERRORS.records]}")


def _seed(stream: bytes, mode: int = AT_ONCE, extra: int = 1, cut: int = 0) -> bytes:
    return stream + tail(mode, extra, cut)


SEEDS = [
    _seed(b"GET /key HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    _seed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n"
          b"DELETE /c?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n", PENDING, 0, 3),
    _seed(b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
          b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
          READ_BODY, 1, 5),
    _seed(b"REPLACE /k HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiRELINK /k HTTP/1.1\r\n\r\n",
          READ_BODY, 1, 1),
    _seed(b"GET /s HTTP/1.0\r\n\r\n", STREAM_UNFRAMED, 0, 0),
    _seed(b"GET /s HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
          STREAM, 0, 9),
    _seed(b"GET /s HTTP/1.1\r\n\r\nHEAD /s HTTP/1.1\r\n\r\n", STREAM_UNFRAMED, 0, 2),
    _seed(b"GET /caf%C3%A9/%0d%0aSet-Cookie:%20a=b HTTP/1.1\r\nX-Reflect: a\tb\xc3\xa9\r\n\r\n"
          b"GET /%01%7f%ff HTTP/1.1\r\n\r\nGET /fine HTTP/1.1\r\n\r\n", ECHO, 0, 0),
    _seed(b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
    _seed(b"GET /x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxyz"),
    _seed(b"BREW /pot HTTP/1.1\r\n\r\n"),
    _seed(b"GET / HTTP/2.0\r\n\r\nGET http://host/abs HTTP/1.1\r\n\r\n", AT_ONCE, 0, 4),
    _seed(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", READ_BODY, 0, 0),
    _seed(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n" + b"X: y\r\n" * 300 + b"\r\n"),
    _seed(b"REPL", AT_ONCE, 1, 0),
    _seed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 00\r\n\r\n", ECHO, 1, 0),
    # a finding fixed, kept: a request behind one whose answer closed, in the same read
    _seed(b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
          b"DELETE /after HTTP/1.1\r\n\r\n"),
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN)
