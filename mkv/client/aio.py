"""`AsyncClient`: `Client` (mkv/client/sync.py) for asyncio programs, with the same names and
behaviour; each call is awaited, `stream` and `iter_keys` are async iterators. What to ask and
what the answers mean is core.py's; this module only sends and awaits."""

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import BinaryIO

import httpx

import mkv.client.core as core
from mkv.client.core import KeyInfo, Page
from mkv.client.errors import NotFound

Value = bytes | BinaryIO | Iterable[bytes] | AsyncIterable[bytes]


def _sendable(content: Value | None,
              chunk_size: int) -> bytes | AsyncIterable[bytes] | None:
    """A body httpx's asyncio client sends: files and plain iterables as async chunks."""
    if content is None or isinstance(content, bytes) or hasattr(content, "__aiter__"):
        return content  # type: ignore[return-value]

    async def chunks() -> AsyncIterator[bytes]:
        if hasattr(content, "read"):
            while chunk := content.read(chunk_size):  # type: ignore[union-attr]
                yield chunk
        else:
            for chunk in content:  # type: ignore[union-attr]
                yield chunk
    return chunks()


class AsyncClient:
    """A cluster's masters (several for failover), over keep-alive connections. Each call
    is `Client`'s (see its docstrings), awaited."""

    def __init__(self, masters: str | Sequence[str] = "localhost:3000", timeout: float = 30.0,
                 chunk_size: int = 1 << 20) -> None:
        self.masters = core.masters_of(masters)
        self.chunk_size = chunk_size
        self.http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _ask(self, method: str, key: str | bytes, path: str = "",
                   content: Value | None = None) -> httpx.Response:
        call = core.Failover(self.masters, method, key, path, content)
        for request in call.requests():
            try:
                response = await self.http.request(
                    request.method, request.url,
                    content=_sendable(request.content, self.chunk_size))  # type: ignore[arg-type]
            except httpx.TransportError as e:
                call.failed(e)
                continue
            if call.answered(response):
                return response
        raise call.unavailable()

    # --- writes ---
    async def put(self, key: str | bytes, value: Value, replace: bool = False) -> None:
        await self._ask("REPLACE" if replace else "PUT", key, content=value)

    async def delete(self, key: str | bytes) -> None:
        await self._ask("DELETE", key)

    async def unlink(self, key: str | bytes) -> None:
        await self._ask("UNLINK", key)

    async def relink(self, key: str | bytes) -> None:
        await self._ask("RELINK", key)

    # --- reads ---
    async def head(self, key: str | bytes) -> KeyInfo:
        return core.key_info((await self._ask("HEAD", key)).headers)

    async def exists(self, key: str | bytes) -> bool:
        try:
            await self.head(key)
        except NotFound:
            return False
        return True

    async def get(self, key: str | bytes, start: int = 0, end: int | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.stream(key, start, end)])

    async def locate(self, key: str | bytes) -> httpx.Response:
        """The master's redirect for `key` (its 302, `Location` and `Key-Volumes`); NotFound
        when it has no such key."""
        return await self._ask("GET", key)

    async def stream(self, key: str | bytes, start: int = 0, end: int | None = None,
                     redirect: httpx.Response | None = None) -> AsyncIterator[bytes]:
        """The value's bytes `start`..`end` (inclusive) from its replicas, the master asked
        where they are unless `redirect` (an earlier `locate`'s answer) says."""
        key = core.key_bytes(key)
        read = core.ReplicaRead(key, start, end, redirect or await self.locate(key))
        for request in read.requests():
            try:
                async with self.http.stream(request.method, request.url,
                                            headers=request.headers) as response:
                    if read.answered(response.status_code):
                        async for chunk in response.aiter_bytes(self.chunk_size):
                            yield read.got(chunk)
                        return
            except httpx.TransportError as e:
                read.failed(e)
        raise read.unavailable()

    # --- listings ---
    async def list(self, prefix: str | bytes = "/", start: str | bytes = b"", limit: int = 1000,
                   kind: str = "list") -> Page:
        key, path = core.listing(prefix, start, limit, kind)
        return core.page_of((await self._ask("GET", key, path)).json())

    async def iter_keys(self, prefix: str | bytes = "/", kind: str = "list",
                        page_size: int = 1000) -> AsyncIterator[bytes]:
        start: bytes | None = b""
        while start is not None:
            page = await self.list(prefix, start, page_size, kind)
            for key in page.keys:
                yield key
            start = page.next
