"""The master's HTTP/1.1 server (mkv/http/server.py) over raw loopback sockets.

Each test runs a real `HTTPServer` on its own uvloop event loop in a background thread, with
the small application below, and speaks bytes to it the way curl, wrk or a broken client would.
"""

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, quote

import pytest
import uvloop
from cluster import free_port

from mkv.http.messages import Pending, Request, Response
from mkv.http.server import HTTPServer


class App:
    """Routes by path. Echo answers `METHOD PATH LENGTH MD5` after reading the whole body."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.seen: list[bytes] = []
        self.errors: list[BaseException] = []
        self.finished = 0

    def __call__(self, req: Request):
        self.seen.append(req.path)
        if req.path == b"/sync404":
            return Response(404, body=b"not found\n")
        if req.path == b"/reject":  # answers at once, never reads the body
            return Response(403, body=b"no\n")
        if req.path == b"/crash":
            raise RuntimeError("handler bug")
        if req.path == b"/stream":
            return self.stream()
        if req.path == b"/endless":
            return self.endless()
        if req.path.startswith(b"/future"):
            return self.future(req)
        if req.path.startswith(b"/pending"):
            return self.pending(req)
        if req.path == b"/injected":
            return self.injected(req)
        if req.path == b"/unframed":
            return self.future_of(Response(200, [("Content-Type", "text/plain")],
                                           self._chunks()))
        return self.echo(req)

    def injected(self, req: Request):
        """An answer with a header that holds `text` in its `where` (name or value), given
        `how`: at once, through Pending, or streamed."""
        params = parse_qs(req.query.decode(), keep_blank_values=True)
        text, where, how = (params[name][0] for name in ("text", "where", "how"))
        header = (f"X-A{text}", "1") if where == "name" else ("X-A", f"a{text}b")
        if how == "stream":
            return self.future_of(Response(200, [header, ("Content-Length", "20")],
                                           self._chunks()))
        response = Response(200, [header], b"sent")
        if how == "pending":
            answer = Pending()
            asyncio.get_running_loop().call_later(0.01, answer.resolve, response)
            return answer
        return response

    @staticmethod
    async def future_of(response: Response) -> Response:
        return response

    def pending(self, req: Request) -> Pending:
        """An answer through `Pending`, resolved from a callback (as the master's GET does)."""
        answer = Pending()
        if req.path == b"/pending-stream":
            response = Response(200, [("Content-Length", "20")], self._chunks())
        else:
            response = Response(200, body=b"pending answer")
        if req.path == b"/pending-now":  # the callback ran before the handler returned
            answer.resolve(response)
        else:
            asyncio.get_running_loop().call_later(0.01, answer.resolve, response)
        return answer

    def future(self, req: Request) -> asyncio.Future:
        """An answer as any awaitable: here an asyncio future resolved later."""
        future = asyncio.get_running_loop().create_future()

        def resolve() -> None:
            if req.path == b"/future-error":
                future.set_exception(RuntimeError("handler bug"))
            elif req.path == b"/future-stream":
                future.set_result(Response(200, [("Content-Length", "20")], self._chunks()))
            else:
                future.set_result(Response(200, body=b"from a future"))

        asyncio.get_running_loop().call_later(0.01, resolve)
        return future

    async def echo(self, req: Request) -> Response:
        params = parse_qs(req.query.decode())
        if "sleep" in params:
            await asyncio.sleep(float(params["sleep"][0]))
        if req.path == b"/gated":
            await self.gate.wait()  # type: ignore[union-attr]
        if req.path == b"/reject-async":
            return Response(403, body=b"no\n")
        digest, length = hashlib.md5(), 0
        try:
            while chunk := await req.body.read():
                digest.update(chunk)
                length += len(chunk)
                if "pace" in params:
                    await asyncio.sleep(float(params["pace"][0]))
        except BaseException as e:
            self.errors.append(e)
            raise
        self.finished += 1
        text = f"{req.method.decode()} {req.path.decode()} {length} {digest.hexdigest()}"
        return Response(200, [("Content-Type", "text/plain")], text.encode())

    @staticmethod
    async def _chunks():
        for part in (b"hello ", b"streamed ", b"world"):
            await asyncio.sleep(0)
            yield part

    async def endless(self) -> Response:
        async def chunks():
            while True:
                await asyncio.sleep(0.001)
                yield b"z" * 65536
        return Response(200, [("Content-Length", str(1 << 40))], chunks())

    async def stream(self) -> Response:
        return Response(200, [("Content-Length", "20")], self._chunks())


class Served:
    """An HTTPServer with its own uvloop loop in a thread."""

    def __init__(self, app: App, **options: float) -> None:
        self.app = app
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = free_port()

        async def start() -> HTTPServer:
            server = HTTPServer(app, **options)
            await server.start("127.0.0.1", self.port)
            app.gate = asyncio.Event()
            return server

        self.server = self.call(start())

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.app.gate.set)  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.server.closing:
            self.call(self.server.shutdown(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator:
    started: list[Served] = []

    def start(**options: float) -> Served:
        served = Served(App(), **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


@pytest.fixture
def server(serve) -> Served:
    return serve()


class Raw:
    """A client socket that reads HTTP/1.1 answers one at a time."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), status_line
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def read_response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.read_head()
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_within(self, seconds: float) -> bool:
        """True if the server closes (or resets) within `seconds`; unread data stays in buf."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
                self.buf += data
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()


def echo_line(method: str, path: str, body: bytes) -> bytes:
    return f"{method} {path} {len(body)} {hashlib.md5(body).hexdigest()}".encode()


def put(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


# --- keep-alive, pipelining, framing ---


def test_keep_alive(server: Served) -> None:
    c = Raw(server.port)
    for i in range(5):
        body = bytes([i]) * (i * 1000)
        c.send(put(f"/k{i}", body))
        status, headers, answer = c.read_response()
        assert (status, answer) == (200, echo_line("PUT", f"/k{i}", body))
        assert "close" not in headers.get("connection", "")
        assert "date" in headers
    c.send(get("/sync404"))
    assert c.read_response()[:3:2] == (404, b"not found\n")
    assert not c.closed_within(0.2)
    c.close()


def test_pipelining_answers_in_order(server: Served) -> None:
    requests, expected = b"", []
    for i in range(10):
        if i % 3 == 0:
            requests += get("/sync404")
            expected.append((404, b"not found\n"))
        else:
            body = b"x" * (i * 100)
            # earlier requests sleep longer: a wrong order would show
            path = f"/p{i}?sleep={0.01 * (10 - i)}"
            requests += put(path, body)
            expected.append((200, echo_line("PUT", f"/p{i}", body)))
    c = Raw(server.port)
    c.send(requests)
    answers = [c.read_response() for _ in range(10)]
    assert [(status, body) for status, _, body in answers] == expected
    assert not c.closed_within(0.2)
    c.close()


def test_chunked_request_body(server: Served) -> None:
    parts = [b"a" * 10, b"b" * 70000, b"c"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    c = Raw(server.port)
    c.send(b"PUT /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    time.sleep(0.05)  # the body arrives after the handler started
    c.send(chunked)
    assert c.read_response()[2] == echo_line("PUT", "/chunked", b"".join(parts))
    c.send(get("/after"))  # the connection is still in step
    assert c.read_response()[2] == echo_line("GET", "/after", b"")
    c.close()


def test_expect_100_continue(server: Served) -> None:
    body = b"z" * 5000
    c = Raw(server.port)
    c.send(f"PUT /exp HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
           "Expect: 100-continue\r\n\r\n".encode())
    status, _ = c.read_head()
    assert status == 100
    c.send(body)
    status, _, answer = c.read_response()
    assert (status, answer) == (200, echo_line("PUT", "/exp", body))
    c.send(get("/again"))
    assert c.read_response()[0] == 200
    c.close()


def test_no_100_continue_when_answered_without_reading(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"PUT /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
           b"Expect: 100-continue\r\n\r\n")
    status, _, body = c.read_response()
    assert (status, body) == (403, b"no\n")
    c.closed_within(0.3)
    assert b"100 Continue" not in c.buf
    c.close()


def test_nothing_pipelined_runs_after_the_answer_that_closed(server: Served) -> None:
    # found by fuzz/httphead.py: a request behind one answered before its body was read (so
    # the connection closes) came in the same read, and was still handed to the application
    c = Raw(server.port)
    c.send(b"PUT /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
           b"\r\nhelloDELETE /after-close HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = c.read_response()
    assert (status, body, headers["connection"]) == (403, b"no\n", "close")
    assert c.closed_within(1)
    assert b"/after-close" not in server.app.seen
    c.close()


def test_head_answers_carry_no_body(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers = c.read_head()
    assert status == 200
    assert headers["content-length"] == str(len(echo_line("HEAD", "/h", b"")))
    c.send(get("/next"))  # any body bytes of the HEAD answer would show up here
    status, _, body = c.read_response()
    assert (status, body) == (200, echo_line("GET", "/next", b""))
    c.close()


def test_head_of_streamed_answer_carries_no_body(server: Served) -> None:
    c = Raw(server.port)
    c.send(get("/stream"))
    assert c.read_response() [2] == b"hello streamed world"
    c.send(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers = c.read_head()
    assert (status, headers["content-length"]) == (200, "20")
    c.send(get("/next"))
    status, _, body = c.read_response()
    assert (status, body) == (200, echo_line("GET", "/next", b""))
    c.close()


def test_future_answers(server: Served) -> None:
    c = Raw(server.port)
    c.send(get("/future"))
    assert c.read_response()[0::2] == (200, b"from a future")
    c.send(get("/future-error"))
    assert c.read_response()[0] == 500
    c.send(get("/next"))
    assert c.read_response()[2] == echo_line("GET", "/next", b"")
    c.close()


def test_future_with_streamed_answer(server: Served) -> None:
    c = Raw(server.port)
    c.send(get("/future-stream"))
    assert c.read_response()[0::2] == (200, b"hello streamed world")
    c.close()


def test_pending_answers(server: Served) -> None:
    c = Raw(server.port)
    requests = get("/pending") + get("/sync404") + get("/pending")  # pipelined
    c.send(requests)
    assert [c.read_response()[0::2] for _ in range(3)] == [
        (200, b"pending answer"), (404, b"not found\n"), (200, b"pending answer")]
    c.close()


def test_pending_with_streamed_answer(server: Served) -> None:
    c = Raw(server.port, timeout=2)
    c.send(get("/pending-stream"))
    assert c.read_response()[0::2] == (200, b"hello streamed world")
    c.send(get("/next"))
    assert c.read_response()[2] == echo_line("GET", "/next", b"")
    c.close()


def test_pending_resolved_before_the_handler_returns(server: Served) -> None:
    c = Raw(server.port, timeout=2)
    c.send(get("/pending-now"))
    assert c.read_response()[0::2] == (200, b"pending answer")
    c.close()


@pytest.mark.parametrize("text", ["\r\nSet-Cookie: evil=1", "\nSet-Cookie: evil=1", "\r",
                                  "\x00", "\x01", "\x0b", "\x1b", "\x7f"])
@pytest.mark.parametrize("how", ["now", "pending", "stream"])
@pytest.mark.parametrize("where", ["name", "value"])
def test_a_header_holding_a_control_is_never_sent(server: Served, text: str, how: str,
                                                  where: str) -> None:
    """Defence in depth: whatever a handler answers, such a head becomes a 500."""
    c = Raw(server.port)
    c.send(get(f"/injected?text={quote(text)}&where={where}&how={how}"))
    status, headers, _ = c.read_response()
    assert (status, "set-cookie" in headers) == (500, False)
    assert not any(name.startswith("x-a") for name in headers)
    c.send(get("/next"))  # the connection lives on
    assert c.read_response()[2] == echo_line("GET", "/next", b"")
    c.close()


def test_a_tab_inside_a_header_value_is_sent(server: Served) -> None:
    c = Raw(server.port)
    c.send(get(f"/injected?text={quote(chr(9))}&where=value&how=now"))
    status, headers, body = c.read_response()
    assert (status, headers["x-a"], body) == (200, "a\tb", b"sent")
    c.close()


def test_a_stream_without_length_is_chunked(server: Served) -> None:
    c = Raw(server.port)
    for _ in range(2):  # and the connection is kept
        c.send(get("/unframed"))
        status, headers = c.read_head()
        assert (status, headers["transfer-encoding"], "content-length" in headers) == \
            (200, "chunked", False)
        while not c.buf.endswith(b"0\r\n\r\n"):
            c._more()
        assert c.buf == b"6\r\nhello \r\n9\r\nstreamed \r\n5\r\nworld\r\n0\r\n\r\n"
        c.buf = b""
    c.close()


def test_a_stream_without_length_ends_with_the_connection_for_http10(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"GET /unframed HTTP/1.0\r\n\r\n")
    status, headers = c.read_head()
    assert (status, headers["connection"], "transfer-encoding" in headers) == \
        (200, "close", False)
    assert c.closed_within(2)
    assert c.buf == b"hello streamed world"
    c.close()


def test_handler_exception_is_500_and_connection_lives(server: Served) -> None:
    c = Raw(server.port)
    c.send(get("/crash"))
    assert c.read_response()[0] == 500
    c.send(get("/fine"))
    assert c.read_response()[0] == 200
    c.close()


# --- refusals ---


def assert_refused(c: Raw, status: int) -> None:
    got, headers, _ = c.read_response()
    assert got == status
    assert headers.get("connection") == "close"
    assert c.closed_within(2)


def test_header_over_64k_is_431(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"\r\n")
    assert_refused(c, 431)
    assert server.app.seen == []


def test_more_than_256_headers_is_431(server: Served) -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(255))
    c = Raw(server.port)
    c.send(b"GET /fine HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")  # 256: served
    assert c.read_response()[0] == 200
    c.send(b"GET /more HTTP/1.1\r\nHost: x\r\nX-Last: v\r\n" + many + b"\r\n")
    assert_refused(c, 431)
    assert server.app.seen == [b"/fine"]


def test_one_huge_header_is_431(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n")
    assert_refused(c, 431)


def test_huge_url_is_431(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"GET /" + b"u" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_refused(c, 431)


def test_endless_header_line_is_cut_off(server: Served) -> None:
    """A header line that never ends must not be buffered without limit."""
    c = Raw(server.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    try:
        for _ in range(16):  # 2 MiB, never a CRLF
            c.send(b"v" * 128 * 1024)
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off while sending: what we want
    assert c.closed_within(2)
    assert c.buf.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: no-name\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
])
def test_malformed_request_is_400_then_close(server: Served, request_bytes: bytes) -> None:
    c = Raw(server.port)
    c.send(request_bytes)
    assert_refused(c, 400)


@pytest.mark.parametrize("framing", [
    "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nContent-Length: 5",
    "Content-Length: 5\r\nContent-Length: 6",
])
def test_ambiguous_framing_is_400(server: Served, framing: str) -> None:
    c = Raw(server.port)
    c.send(f"PUT /smuggle HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode()
           + b"5\r\nhello\r\n0\r\n\r\n")
    assert_refused(c, 400)
    assert server.app.seen == []


def test_broken_chunked_body_while_handler_reads_is_400(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    time.sleep(0.1)  # the handler is reading the body
    c.send(b"zz\r\n")
    assert_refused(c, 400)


@pytest.mark.parametrize("request_bytes", [
    b"HEAD / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
    b"HEAD /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HEAD /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
], ids=["bad_header", "bad_url", "header_too_large", "ambiguous_framing", "broken_body"])
def test_a_refused_head_is_answered_without_a_body(server: Served, request_bytes: bytes) -> None:
    """test_adversary's finding: the parser's refusal of a HEAD carried its reason as a body,
    which a client reads as the start of another answer."""
    c = Raw(server.port)
    c.send(request_bytes)
    status, headers = c.read_head()
    assert status in (400, 431) and headers.get("connection") == "close"
    assert c.closed_within(2)
    assert c.buf == b"", f"a body after the answer to a HEAD: {c.buf!r}"


def test_bytes_after_a_whole_request_get_it_answered_then_close(server: Served) -> None:
    """test_adversary's finding: garbage after a complete request closed the connection at
    once, losing the answer to a request that was carried out."""
    c = Raw(server.port)
    c.send(put("/after", b"abc") + b"\x01 not a request\r\n\r\n")
    status, headers, body = c.read_response()
    assert (status, body) == (200, echo_line("PUT", "/after", b"abc"))
    assert headers.get("connection") == "close"
    assert c.closed_within(2)


def test_unknown_method_is_405(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"FROB /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_refused(c, 405)
    assert server.app.seen == []


def test_extra_methods_reach_the_handler(serve) -> None:
    served = serve(extra_methods=(b"REPLACE", b"RELINK"))
    c = Raw(served.port)
    c.send(put("/r", b"value").replace(b"PUT", b"REPLACE", 1))
    assert c.read_response()[2] == echo_line("REPLACE", "/r", b"value")
    c.send(b"REL")  # the method split across reads
    time.sleep(0.05)
    c.send(b"INK /r HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_response()[2] == echo_line("RELINK", "/r", b"")
    c.send(get("/g"))
    assert c.read_response()[2] == echo_line("GET", "/g", b"")
    c.close()


# --- connection lifetime ---


def test_http10_closes_after_the_answer(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, body = c.read_response()
    assert (status, body) == (200, echo_line("GET", "/old", b""))
    assert headers.get("connection") == "close"
    assert c.closed_within(2)


def test_http10_keep_alive_is_acknowledged(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = c.read_response()
    assert status == 200
    assert headers.get("connection", "").lower() == "keep-alive"
    c.send(b"GET /old2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.read_response()[2] == echo_line("GET", "/old2", b"")
    c.close()


def test_connection_close_request(server: Served) -> None:
    c = Raw(server.port)
    c.send(get("/bye", "Connection: close\r\n"))
    assert c.read_response()[1].get("connection") == "close"
    assert c.closed_within(2)


def test_idle_connection_closed_after_idle_timeout(serve) -> None:
    served = serve(idle_timeout=1.0)
    c = Raw(served.port)
    c.send(get("/one"))
    assert c.read_response()[0] == 200
    started = time.monotonic()
    assert c.closed_within(5)
    assert 0.9 < time.monotonic() - started < 3.5  # the sweep runs once a second
    assert c.buf == b""  # no answer to a request never made


def test_client_stalled_mid_headers_closed_after_read_timeout(serve) -> None:
    served = serve(idle_timeout=30.0, read_timeout=1.0)
    c = Raw(served.port)
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Half")
    started = time.monotonic()
    assert c.closed_within(5)
    assert time.monotonic() - started < 3.5


def test_client_stalled_mid_body_closed_after_read_timeout(serve) -> None:
    """A handler waiting on a body that stopped arriving is released: the key it locks,
    the memory and the socket are not held forever."""
    served = serve(idle_timeout=30.0, read_timeout=1.0)
    c = Raw(served.port)
    c.send(b"PUT /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    assert c.closed_within(5)
    assert time.monotonic() - started < 4


def test_client_gone_mid_body_fails_the_read(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"PUT /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    time.sleep(0.1)
    c.close()
    deadline = time.monotonic() + 2
    while not server.app.errors and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.app.errors and server.app.finished == 0
    c2 = Raw(server.port)  # the server carries on
    c2.send(get("/alive"))
    assert c2.read_response()[0] == 200
    c2.close()


def test_client_gone_mid_answer_logs_one_line(server: Served, caplog) -> None:
    c = Raw(server.port)
    c.send(get("/endless"))
    assert c.sock.recv(65536)
    c.close()
    deadline = time.monotonic() + 5
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [
        ("GET b'/endless': client closed the connection", None)]


# --- bodies the application does not (yet) read ---


def test_large_body_to_a_stalled_handler_is_not_buffered(server: Served) -> None:
    """Reading from the client pauses while the handler has not taken what arrived."""
    total = 64 * 1024 * 1024
    block = b"\xab" * (1 << 20)
    c = Raw(server.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    c.send(f"PUT /gated HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n".encode())
    c.sock.setblocking(False)
    sent, last_progress = 0, time.monotonic()
    while sent < total and time.monotonic() - last_progress < 0.5:
        try:
            n = c.sock.send(block[: min(len(block), total - sent)])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        last_progress = time.monotonic()
    # the server holds at most ~BODY_HIGH_WATER, the kernel's socket buffers the rest
    assert sent < 16 * 1024 * 1024, f"the server took {sent} bytes from a stalled handler"
    server.open_gate()
    c.sock.setblocking(True)
    c.sock.settimeout(10)
    while sent < total:
        sent += c.sock.send(block[: min(len(block), total - sent)])
    status, _, body = c.read_response()
    assert (status, body) == (200, echo_line("PUT", "/gated", block * 64))
    c.close()


@pytest.mark.parametrize("path", ["/reject", "/reject-async"])
def test_answer_without_reading_small_body_keeps_connection(server: Served, path: str) -> None:
    c = Raw(server.port)
    c.send(put(path, b"q" * 20000))
    assert c.read_response()[:3:2] == (403, b"no\n")
    c.send(get("/next"))
    assert c.read_response()[2] == echo_line("GET", "/next", b"")
    c.close()


def test_body_arriving_after_the_answer_is_skipped(server: Served) -> None:
    c = Raw(server.port)
    c.send(b"PUT /reject HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n")
    assert c.read_response()[0] == 403
    c.send(b"r" * 30000 + get("/next"))
    assert c.read_response()[2] == echo_line("GET", "/next", b"")
    c.close()


def test_answer_without_reading_large_body_reaches_the_client(server: Served) -> None:
    """curl -T big, or requests.put(big), to a key that exists: the client must see the 403,
    not a connection reset, though the server will not read 8 MiB to keep the connection."""
    body = b"L" * (8 << 20)
    c = Raw(server.port)
    c.send(f"PUT /reject HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    sender_error: list[BaseException] = []

    def send_body() -> None:
        try:
            c.sock.sendall(body)
        except OSError as e:
            sender_error.append(e)

    sender = threading.Thread(target=send_body)
    sender.start()
    time.sleep(0.3)  # as a client sending its body without watching for an early answer
    try:
        answer = c.read_response()
    except (OSError, EOFError) as e:
        answer = (0, {}, repr(e).encode())
    c.sock.close()
    sender.join(10)
    assert answer[0::2] == (403, b"no\n")


# --- shutdown ---


def test_graceful_shutdown_lets_a_request_finish(server: Served) -> None:
    busy, idle = Raw(server.port), Raw(server.port)
    idle.send(get("/warm"))
    assert idle.read_response()[0] == 200
    busy.send(put("/busy?sleep=0.5", b"payload"))
    time.sleep(0.1)  # the request is in flight
    done = asyncio.run_coroutine_threadsafe(server.server.shutdown(5.0), server.loop)
    assert idle.closed_within(1)  # idle connections go at once
    with pytest.raises(OSError):
        Raw(server.port, timeout=1).send(get("/late"))  # no new connections
    status, headers, body = busy.read_response()
    assert (status, body) == (200, echo_line("PUT", "/busy", b"payload"))
    assert headers.get("connection") == "close"
    assert busy.closed_within(2)
    done.result(5)


def test_shutdown_grace_is_bounded(server: Served) -> None:
    c = Raw(server.port)
    c.send(put("/forever?sleep=30", b"p"))
    time.sleep(0.1)
    started = time.monotonic()
    server.call(server.server.shutdown(0.5))
    assert time.monotonic() - started < 2
    assert c.closed_within(1)


def test_shutdown_waits_for_a_handler_whose_client_hung_up(server: Served) -> None:
    """A client that sent a whole request and left: its handler still runs (a PUT's write goes
    on), and the shutdown waits for it, as the master closes the index right after."""
    c = Raw(server.port)
    c.send(put("/left?sleep=0.5", b"payload"))
    deadline = time.monotonic() + 5
    while b"/left" not in server.app.seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    c.close()
    server.call(server.server.shutdown(5.0))
    assert server.app.finished == 1


# --- protocol upgrades ---


@pytest.mark.parametrize("path, answer", [
    ("/up", (200, echo_line("GET", "/up", b""))),
    ("/sync404", (404, b"not found\n")),
])
def test_h2c_upgrade_request_is_answered_as_http11(server: Served, path: str,
                                                   answer: tuple[int, bytes]) -> None:
    """`curl --http2 http://…` asks for an h2c upgrade; an HTTP/1.1 server just answers."""
    c = Raw(server.port)
    c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".encode())
    assert c.read_response()[0::2] == answer
    c.closed_within(0.3)
    assert c.buf == b""  # the one answer and nothing after it
    c.close()
