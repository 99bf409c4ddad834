"""`Client`: mkv from a program, blocking. Every call goes to the first master that answers;
reads follow the redirect themselves and go on from another replica when one fails mid-read.

httpx, because one library gives a blocking and an asyncio client with the same API and
streams both ways (the master keeps its own HTTP stack: see mkv/http/).
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import httpx

import mkv.client.core as core
from mkv.client.core import KeyInfo, Page
from mkv.client.errors import NotFound, Unavailable, raise_for

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

    def _master(self, method: str, key: bytes, path: str = "", content: Value | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        """The answer of the first master that gives one; a master that answered is asked
        first next time. A body that cannot be sent twice is not sent to a second master."""
        errors = []
        start = content.tell() if hasattr(content, "seek") else None  # type: ignore[union-attr]
        for i, master in enumerate(self.masters):
            if start is not None:
                content.seek(start)  # type: ignore[union-attr]
            try:
                response = self.http.request(method, master + (path or core.target(key)),
                                             content=content, headers=headers)
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
    def put(self, key: str | bytes, value: Value, replace: bool = False) -> None:
        """Store `value` (bytes, a binary file or an iterable of chunks, streamed). Raises
        KeyExists when the key holds a value and `replace` is False."""
        key = core.key_bytes(key)
        self._master("REPLACE" if replace else "PUT", key, content=value)

    def delete(self, key: str | bytes) -> None:
        self._master("DELETE", core.key_bytes(key))

    def unlink(self, key: str | bytes) -> None:
        """The virtual delete: the value stays on the volumes until DELETE."""
        self._master("UNLINK", core.key_bytes(key))

    def relink(self, key: str | bytes) -> None:
        """Undo an unlink."""
        self._master("RELINK", core.key_bytes(key))

    # --- reads ---
    def head(self, key: str | bytes) -> KeyInfo:
        """The key's replicas and md5; NotFound when it has no live value."""
        key = core.key_bytes(key)
        return core.key_info(self._master("HEAD", key).headers)

    def exists(self, key: str | bytes) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def get(self, key: str | bytes, start: int = 0, end: int | None = None) -> bytes:
        """The value, or its bytes `start`..`end` (inclusive)."""
        return b"".join(self.stream(key, start, end))

    def stream(self, key: str | bytes, start: int = 0,
               end: int | None = None) -> Iterator[bytes]:
        """The value in chunks, read from a replica; when that replica fails, the read goes
        on where it stopped from the next replica `Key-Volumes` names."""
        key = core.key_bytes(key)
        redirect = self._master("GET", key)
        if redirect.status_code != 302:
            raise Unavailable(f"GET {key.decode(errors='replace')}: {redirect.status_code}")
        errors = []
        for url in core.replica_urls(redirect.headers["location"],
                                     redirect.headers.get("key-volumes", ""), key):
            ranged = start > 0 or end is not None
            headers = {"Range": core.range_header(start, end)} if ranged else {}
            try:
                with self.http.stream("GET", url, headers=headers) as response:
                    if response.status_code not in ((206,) if ranged else (200,)):
                        errors.append(f"{url}: {response.status_code}")
                        continue
                    for chunk in response.iter_bytes(self.chunk_size):
                        start += len(chunk)
                        yield chunk
                    return
            except httpx.TransportError as e:
                errors.append(f"{url}: {e!r}")
        raise Unavailable(f"GET {key.decode(errors='replace')}: no replica gave the value: "
                          + "; ".join(errors))

    # --- listings ---
    def list(self, prefix: str | bytes = "/", start: str | bytes = b"", limit: int = 1000,
             kind: str = "list") -> Page:
        """One page of the keys under `prefix` (`kind`: list, unlinked or writing)."""
        prefix = core.key_bytes(prefix)
        path = core.listing_target(prefix, kind, core.key_bytes(start) if start else b"", limit)
        return core.page_of(self._master("GET", prefix, path).json())

    def iter_keys(self, prefix: str | bytes = "/", kind: str = "list",
                  page_size: int = 1000) -> Iterator[bytes]:
        """Every key under `prefix`, in order, a page at a time."""
        start: bytes | None = b""
        while start is not None:
            page = self.list(prefix, start, page_size, kind)
            yield from page.keys
            start = page.next
