"""What an application of the master's HTTP server sees and gives back: a `Request` (its body
streamed), a `Response` (bytes, or an async iterator of bytes), a `Pending` answer resolved
later by callbacks, and `Refusal`, raised to answer a short error without a traceback."""

from collections.abc import AsyncIterator, Awaitable, Callable

from mkv.http.flow import Body
from mkv.http.headers import encode_head


class Refusal(Exception):
    """Raised by a handler to answer `status` with the message as a short plain body, without a
    traceback: e.g. 503 when a service it depends on is down."""

    status = 503
    headers: tuple[tuple[str, str], ...] = (("Retry-After", "1"),)

    def response(self) -> "Response":
        return Response(self.status, [("Content-Type", "text/plain"), *self.headers],
                        f"{self}\n".encode())


class Request:
    """One request: method and path as bytes, headers with lower-case names, a streamed body."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "http10")

    def __init__(self, method: bytes, path: bytes, query: bytes, headers: dict[bytes, bytes],
                 body: "Body") -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = True
        self.http10 = False


class Response:
    """Status, headers, and a body: bytes, or an async iterator of bytes (sent chunked when
    no Content-Length is set).

    The encoded header block is kept, so a constant response is encoded once.
    """

    __slots__ = ("status", "headers", "body", "unframed", "_encoded")

    def __init__(self, status: int, headers: list[tuple[str, str]] | None = None,
                 body: bytes | AsyncIterator[bytes] = b"") -> None:
        self.status = status
        self.headers = headers or []
        self.body = body
        self.unframed = False  # an iterator body without Content-Length
        self._encoded: bytes | None = None

    def encoded_head(self) -> bytes:
        """Status line and headers (`headers.encode_head`); BadHeader if one holds a control."""
        if self._encoded is None:
            self._encoded, self.unframed = encode_head(self.status, self.headers, self.body)
        return self._encoded


class Pending:
    """An answer the application gives later with `resolve`: for callback-driven handlers.

    Cheaper than an asyncio.Future, whose create/add_done_callback/set_result cycle
    measured 3 µs, a fifth of an existing-key GET.
    """

    __slots__ = ("_deliver", "_response")

    def __init__(self) -> None:
        self._deliver: Callable[[Response], None] | None = None
        self._response: Response | None = None  # resolved before anyone waited

    def resolve(self, response: Response) -> None:
        deliver, self._deliver = self._deliver, None
        if deliver is None:
            self._response = response
        else:
            deliver(response)

    def then(self, deliver: Callable[[Response], None]) -> None:
        if self._response is not None:
            deliver(self._response)
        else:
            self._deliver = deliver


Handler = Callable[[Request], "Response | Pending | Awaitable[Response]"]
