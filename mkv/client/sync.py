"""`Client`: mkv from a program, blocking. Every call goes to the first master that answers;
reads follow the redirect themselves and go on from another replica when one fails mid-read.
What to ask and what the answers mean is core.py's; this module only sends and waits.

httpx, because one library gives a blocking and an asyncio client with the same API and
streams both ways (the master keeps its own HTTP stack: see mkv/http/).
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import httpx

import mkv.client.core as core
from mkv.client.core import KeyInfo, Page
from mkv.client.errors import NotFound

Value = bytes | BinaryIO | Iterable[bytes]


class Client:
    """A cluster's masters (several for failover), over keep-alive connections."""

    def __init__(self, masters: str | Sequence[str] = "localhost:3000", timeout: float = 30.0,
                 chunk_size: int = 1 << 20) -> None:
        self.masters = core.masters_of(masters)
        self.chunk_size = chunk_size
        self.http = httpx.Client(timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _ask(self, method: str, key: str | bytes, path: str = "",
             content: Value | None = None) -> httpx.Response:
        call = core.Failover(self.masters, method, key, path, content)
        for request in call.requests():
            try:
                response = self.http.request(request.method, request.url,
                                             content=request.content)
            except httpx.TransportError as e:
                call.failed(e)
                continue
            if call.answered(response):
                return response
        raise call.unavailable()

    # --- writes ---
    def put(self, key: str | bytes, value: Value, replace: bool = False) -> None:
        """Store `value` (bytes, a binary file or an iterable of chunks, streamed). Raises
        KeyExists when the key holds a value and `replace` is False."""
        self._ask("REPLACE" if replace else "PUT", key, content=value)

    def delete(self, key: str | bytes) -> None:
        self._ask("DELETE", key)

    def unlink(self, key: str | bytes) -> None:
        """The virtual delete: the value stays on the volumes until DELETE."""
        self._ask("UNLINK", key)

    def relink(self, key: str | bytes) -> None:
        """Undo an unlink."""
        self._ask("RELINK", key)

    # --- reads ---
    def head(self, key: str | bytes) -> KeyInfo:
        """The key's replicas and md5; NotFound when it has no live value."""
        return core.key_info(self._ask("HEAD", key).headers)

    def exists(self, key: str | bytes) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def get(self, key: str | bytes, start: int = 0, end: int | None = None) -> bytes:
        """The value, or its bytes `start`..`end` (inclusive)."""
        return b"".join(self.stream(key, start, end))

    def stream(self, key: str | bytes, start: int = 0, end: int | None = None,
               redirect: httpx.Response | None = None) -> Iterator[bytes]:
        """The value in chunks, read from a replica; when that replica fails, the read goes
        on where it stopped from the next replica `Key-Volumes` names. `redirect`: the
        master's answer already in hand (AsyncClient.locate's)."""
        key = core.key_bytes(key)
        read = core.ReplicaRead(key, start, end, redirect or self._ask("GET", key))
        for request in read.requests():
            try:
                with self.http.stream(request.method, request.url,
                                      headers=request.headers) as response:
                    if read.answered(response.status_code):
                        for chunk in response.iter_bytes(self.chunk_size):
                            yield read.got(chunk)
                        return
            except httpx.TransportError as e:
                read.failed(e)
        raise read.unavailable()

    # --- listings ---
    def list(self, prefix: str | bytes = "/", start: str | bytes = b"", limit: int = 1000,
             kind: str = "list") -> Page:
        """One page of the keys under `prefix` (`kind`: list, unlinked or writing)."""
        key, path = core.listing(prefix, start, limit, kind)
        return core.page_of(self._ask("GET", key, path).json())

    def iter_keys(self, prefix: str | bytes = "/", kind: str = "list",
                  page_size: int = 1000) -> Iterator[bytes]:
        """Every key under `prefix`, in order, a page at a time."""
        start: bytes | None = b""
        while start is not None:
            page = self.list(prefix, start, page_size, kind)
            yield from page.keys
            start = page.next
