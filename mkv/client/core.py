"""What the client asks and how it reads the answers, written once for `Client` (sync.py) and
`AsyncClient` (aio.py), which differ only in how they wait.

Sans I/O: `Failover` (a call to the masters) and `ReplicaRead` (a value read from replicas)
hand out the requests to make and are told what became of each; they decide what to try
next, what to raise and when to give up, and each client drives them with its own httpx
client. Not the blocking client run on the asyncio one: that needs an event loop per call (or
a thread hosting one), which `asyncio.run` refuses inside a running loop and which threads
sharing a `Client` would contend for; here the blocking client is plain blocking httpx.
"""

from collections.abc import AsyncIterable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from mkv.client.errors import Unavailable, raise_for
from mkv.placement import key2path

RETRY_STATUSES = (502, 503, 504)  # the master is going or gone: another may answer
Body = bytes | BinaryIO | Iterable[bytes] | AsyncIterable[bytes]


@dataclass(frozen=True)
class KeyInfo:
    """What the master knows of a live key (its HEAD answer)."""

    volumes: tuple[str, ...]
    md5: str | None
    balanced: bool


@dataclass(frozen=True)
class Page:
    """One page of a listing, and the key the next one starts at (None: the last page)."""

    keys: list[bytes]
    next: bytes | None


@dataclass(frozen=True)
class Request:
    """One HTTP request for a client to send."""

    method: str
    url: str
    content: Body | None = None
    headers: dict[str, str] | None = None


class Failover:
    """One call to the masters: each in turn until one answers (a 502, 503 or 504 is no
    answer while another master is left); the one that answered goes first next time. A
    body that cannot be sent twice is not sent to a second master."""

    def __init__(self, masters: list[str], method: str, key: str | bytes, path: str = "",
                 content: Body | None = None) -> None:
        self.masters = masters  # rotated in place when one answers
        self.order = list(masters)  # the order this call asks them in
        self.tried = 0  # the master asked last
        self.method = method
        self.key = key_bytes(key)
        self.path = path or target(self.key)
        self.content = content
        seekable = hasattr(content, "seek")  # a file: sent again from here to the next master
        self.rewind_to = content.tell() if seekable else None  # type: ignore[union-attr]
        self.errors: list[str] = []

    def requests(self) -> Iterator[Request]:
        for i, master in enumerate(self.order):
            if self.rewind_to is not None:
                self.content.seek(self.rewind_to)  # type: ignore[union-attr]
            self.tried = i
            yield Request(self.method, master + self.path, self.content)

    def failed(self, error: Exception) -> None:
        """The request got no answer (connection refused or cut, a timeout). Raises
        Unavailable when the body cannot be sent again."""
        self.errors.append(f"{self.order[self.tried]}: {error!r}")
        if not isinstance(self.content, (bytes, type(None))) and self.rewind_to is None:
            raise self.unavailable()

    def answered(self, response: httpx.Response) -> bool:
        """True: `response` is the call's answer. Raises the MkvError an unsuccessful status
        stands for; False: ask the next master."""
        status, i = response.status_code, self.tried
        if status in RETRY_STATUSES and i + 1 < len(self.order):
            self.errors.append(f"{self.order[i]}: {status}")
            return False
        self.masters[:] = self.order[i:] + self.order[:i]
        raise_for(status, response.text.strip(), self.key, self.method)
        return True

    def unavailable(self) -> Unavailable:
        return Unavailable(f"{self.method} {self.key.decode(errors='replace')}: "
                           "no master answered: " + "; ".join(self.errors))


class ReplicaRead:
    """A value read from its replicas: the master's redirect first, then each other replica
    `Key-Volumes` names, each asked from the byte where the one before stopped (a replica
    down mid-read is then not the end of the read)."""

    def __init__(self, key: bytes, start: int, end: int | None,
                 redirect: httpx.Response) -> None:
        if redirect.status_code != 302:
            raise Unavailable(f"GET {key.decode(errors='replace')}: {redirect.status_code}")
        self.key, self.start, self.end = key, start, end  # start: where the next replica starts
        self.urls = replica_urls(redirect.headers["location"],
                                 redirect.headers.get("key-volumes", ""), key)
        self.errors: list[str] = []
        self.url, self.wanted = "", 200  # the replica asked last, and the status that gives it
        self.past_the_end = 0  # replicas that answered 416: the range starts past the value

    def requests(self) -> Iterator[Request]:
        for url in self.urls:
            ranged = self.start > 0 or self.end is not None
            self.url, self.wanted = url, 206 if ranged else 200
            headers = {"Range": range_header(self.start, self.end)} if ranged else {}
            yield Request("GET", url, headers=headers)

    def answered(self, status: int) -> bool:
        """True: read the body; False: try the next replica."""
        if status != self.wanted:
            self.errors.append(f"{self.url}: {status}")
            self.past_the_end += status == 416
        return status == self.wanted

    def got(self, chunk: bytes) -> bytes:
        self.start += len(chunk)
        return chunk

    def failed(self, error: Exception) -> None:
        self.errors.append(f"{self.url}: {error!r}")

    def unavailable(self) -> Unavailable:
        return Unavailable(f"GET {self.key.decode(errors='replace')}: "
                           "no replica gave the value: " + "; ".join(self.errors),
                           416 if self.past_the_end == len(self.urls) else 0)


def key_bytes(key: str | bytes) -> bytes:
    """The key as the index stores it: bytes, starting with `/`."""
    raw = key.encode() if isinstance(key, str) else key
    return raw if raw.startswith(b"/") else b"/" + raw


def target(key: bytes) -> str:
    """The request path naming `key`, percent-encoded where it must be."""
    return quote(key, safe="/-_.~")


def masters_of(masters: str | Sequence[str]) -> list[str]:
    """Base URLs of the masters, from `host:port` or URLs, comma-separated or a list."""
    items = masters.split(",") if isinstance(masters, str) else list(masters)
    urls = [m.strip().rstrip("/") for m in items if m.strip()]
    if not urls:
        raise ValueError("no master given")
    return [u if "://" in u else f"http://{u}" for u in urls]


def replica_urls(location: str, key_volumes: str, key: bytes) -> list[str]:
    """Where to read the value: the master's redirect first, then each other replica that
    `Key-Volumes` names."""
    urls = [location]
    first = urlsplit(location).netloc
    path = key2path(key)
    for replica in key_volumes.split(","):
        hostport = replica.partition("/")[0]
        if replica and hostport != first:
            urls.append(f"http://{replica}{path}")
    return urls


def key_info(headers: httpx.Headers) -> KeyInfo:
    return KeyInfo(tuple(v for v in headers.get("key-volumes", "").split(",") if v),
                   headers.get("content-md5") or None,
                   headers.get("key-balance") == "balanced")


def range_header(start: int, end: int | None) -> str:
    """`Range` for bytes `start`..`end` (inclusive; None: to the end)."""
    return f"bytes={start}-{'' if end is None else end}"


def page_of(body: dict) -> Page:
    following = body.get("next") or None
    return Page([k.encode() for k in body.get("keys", [])],
                following.encode() if following else None)


def listing(prefix: str | bytes, start: str | bytes, limit: int,
            kind: str) -> tuple[bytes, str]:
    """The prefix as a key and the listing's path, `/prefix?list&start=…&limit=…` (the
    operation must come first in the query)."""
    key = key_bytes(prefix)
    query = kind
    if start:
        query += "&start=" + quote(key_bytes(start), safe="")
    if limit:
        query += f"&limit={limit}"
    return key, f"{target(key)}?{query}"
