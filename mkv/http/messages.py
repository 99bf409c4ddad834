"""What an application of the master's HTTP server sees and gives back: a `Request` (its body
streamed), a `Response` (bytes, or an async iterator of bytes), a `Pending` answer resolved
later by callbacks, and `refusal`, the short plain answer to an error of a layer below
(which error gets which status is the wiring's to say: `Refusals`)."""

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from mkv.http.flow import Body
from mkv.http.headers import encode_head


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


INTERNAL_ERROR = Response(500, body=b"internal error\n")  # a bug's answer (its traceback logged)


# error types a handler may let out, and the status each answers (isinstance: subclasses too)
Refusals = Mapping[type[Exception], int]


def refusal(error: Exception, refusals: Refusals) -> Response | None:
    """The short plain answer to `error` if `refusals` names its type (a 503 says when to try
    again), else None: a bug, answered 500 with a traceback logged."""
    for kind, status in refusals.items():
        if isinstance(error, kind):
            headers = [("Content-Type", "text/plain")]
            if status == 503:
                headers.append(("Retry-After", "1"))
            return Response(status, headers, f"{error}\n".encode())
    return None
