"""What the client asks and how it reads the answers, as pure functions: the sync and the
asyncio client share them and differ only in how they wait."""

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from mkv.placement import key2path

METHODS = {"put": "PUT", "replace": "REPLACE"}
RETRY_STATUSES = (502, 503, 504)  # the master is going or gone: another may answer


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
    `Key-Volumes` names (a replica down mid-read is then not the end of the read)."""
    urls = [location]
    first = urlsplit(location).netloc
    path = key2path(key)
    for replica in key_volumes.split(","):
        hostport = replica.partition("/")[0]
        if replica and hostport != first:
            urls.append(f"http://{replica}{path}")
    return urls


def key_info(headers: dict[str, str]) -> KeyInfo:
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


def listing_target(prefix: bytes, kind: str, start: bytes, limit: int) -> str:
    """`/prefix?list&start=…&limit=…`: the operation must come first in the query."""
    query = kind
    if start:
        query += "&start=" + quote(start, safe="")
    if limit:
        query += f"&limit={limit}"
    return f"{target(prefix)}?{query}"
