"""`AsyncClient`: `Client` (mkv/client/sync.py) for asyncio programs, with the same names and
behaviour; each call is awaited, `stream` and `iter_keys` are async iterators."""

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import BinaryIO

import httpx

import mkv.client.core as core
from mkv.client.core import KeyInfo, Page
from mkv.client.errors import NotFound, Unavailable, raise_for

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
    """A cluster's masters (several for failover), over keep-alive connections."""

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

    async def _master(self, method: str, key: bytes, path: str = "", content: Value | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        """The answer of the first master that gives one; a master that answered is asked
        first next time. A body that cannot be sent twice is not sent to a second master."""
        errors = []
        start = content.tell() if hasattr(content, "seek") else None  # type: ignore[union-attr]
        for i, master in enumerate(self.masters):
            if start is not None:
                content.seek(start)  # type: ignore[union-attr]
            try:
                response = await self.http.request(method, master + (path or core.target(key)),
                                                   content=_sendable(content, self.chunk_size),
                                                   headers=headers)
            except httpx.TransportError as e:
                errors.append(f"{master}: {e!r}")
                if isinstance(content, (bytes, type(None))) or start is not None:
                    continue
                break
            if response.status_code in core.RETRY_STATUSES and i + 1 < len(self.masters):
                errors.append(f"{master}: {response.status_code}")
                continue
            self.masters = self.masters[i:] + self.masters[:i]
            raise_for(response.status_code, response.text.strip(), key, method)
            return response
        raise Unavailable(f"{method} {key.decode(errors='replace')}: no master answered: "
                          + "; ".join(errors))

    # --- writes ---
    async def put(self, key: str | bytes, value: Value, replace: bool = False) -> None:
        """Store `value` (bytes, a binary file or an iterable of chunks, streamed). Raises
        KeyExists when the key holds a value and `replace` is False."""
        key = core.key_bytes(key)
        await self._master("REPLACE" if replace else "PUT", key, content=value)

    async def delete(self, key: str | bytes) -> None:
        await self._master("DELETE", core.key_bytes(key))

    async def unlink(self, key: str | bytes) -> None:
        """The virtual delete: the value stays on the volumes until DELETE."""
        await self._master("UNLINK", core.key_bytes(key))

    async def relink(self, key: str | bytes) -> None:
        """Undo an unlink."""
        await self._master("RELINK", core.key_bytes(key))

    # --- reads ---
    async def head(self, key: str | bytes) -> KeyInfo:
        """The key's replicas and md5; NotFound when it has no live value."""
        key = core.key_bytes(key)
        return core.key_info((await self._master("HEAD", key)).headers)

    async def exists(self, key: str | bytes) -> bool:
        try:
            await self.head(key)
        except NotFound:
            return False
        return True

    async def get(self, key: str | bytes, start: int = 0, end: int | None = None) -> bytes:
        """The value, or its bytes `start`..`end` (inclusive)."""
        return b"".join([chunk async for chunk in self.stream(key, start, end)])

    async def stream(self, key: str | bytes, start: int = 0,
                     end: int | None = None) -> AsyncIterator[bytes]:
        """The value in chunks, read from a replica; when that replica fails, the read goes
        on where it stopped from the next replica `Key-Volumes` names."""
        key = core.key_bytes(key)
        redirect = await self._master("GET", key)
        if redirect.status_code != 302:
            raise Unavailable(f"GET {key.decode(errors='replace')}: {redirect.status_code}")
        errors = []
        for url in core.replica_urls(redirect.headers["location"],
                                     redirect.headers.get("key-volumes", ""), key):
            ranged = start > 0 or end is not None
            headers = {"Range": core.range_header(start, end)} if ranged else {}
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    if response.status_code not in ((206,) if ranged else (200,)):
                        errors.append(f"{url}: {response.status_code}")
                        continue
                    async for chunk in response.aiter_bytes(self.chunk_size):
                        start += len(chunk)
                        yield chunk
                    return
            except httpx.TransportError as e:
                errors.append(f"{url}: {e!r}")
        raise Unavailable(f"GET {key.decode(errors='replace')}: no replica gave the value: "
                          + "; ".join(errors))

    # --- listings ---
    async def list(self, prefix: str | bytes = "/", start: str | bytes = b"", limit: int = 1000,
             kind: str = "list") -> Page:
        """One page of the keys under `prefix` (`kind`: list, unlinked or writing)."""
        prefix = core.key_bytes(prefix)
        path = core.listing_target(prefix, kind, core.key_bytes(start) if start else b"", limit)
        return core.page_of((await self._master("GET", prefix, path)).json())

    async def iter_keys(self, prefix: str | bytes = "/", kind: str = "list",
                        page_size: int = 1000) -> AsyncIterator[bytes]:
        """Every key under `prefix`, in order, a page at a time."""
        start: bytes | None = b""
        while start is not None:
            page = await self.list(prefix, start, page_size, kind)
            for key in page.keys:
                yield key
            start = page.next
