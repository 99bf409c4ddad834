"""S3 deletes: DeleteObject and DeleteObjects through the store, with S3's conditions on the
object deleted (If-Match, x-amz-if-match-last-modified-time, x-amz-if-match-size; in
DeleteObjects each Object's ETag, LastModifiedTime and Size), checked under the key's lock."""

import asyncio
from datetime import datetime
from typing import NamedTuple
from urllib.parse import quote

from mkv.http.messages import Request, Response
from mkv.http.target import parse_key
from mkv.index.base import KeyBusy
from mkv.record import Record, State
from mkv.s3 import xml as s3xml
from mkv.s3.errors import S3Error, busy, no_such_key, object_name, precondition_failed
from mkv.s3.objects import Objects
from mkv.s3.payload import read_xml
from mkv.s3.request import etag_matches, parse_http_date
from mkv.s3.sigv4 import Signed
from mkv.s3.xml import XML, MalformedXML, Node
from mkv.store import Store

DELETE_CONCURRENCY = 16


class Conditions(NamedTuple):
    """What a conditional delete asks of the object there: its ETag (or `*`), its
    Last-Modified time (to the second), its size. None: not asked."""

    etag: str | None = None
    modified: float | None = None
    size: int | None = None

    @property
    def asked(self) -> bool:
        return any(value is not None for value in self)


def _timestamp(text: str, name: str) -> float:
    """An HTTP date (what the SDKs send) or an ISO 8601 time."""
    seconds = parse_http_date(text)
    if seconds is None:
        try:
            seconds = datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            raise S3Error(400, "InvalidArgument", f"{name} is not a valid time",
                          ArgumentName=name, ArgumentValue=text) from None
    return seconds


def _size(text: str, name: str) -> int:
    digits = text.strip()
    # isdigit alone takes "²" (int() refuses it) and "٣"; int() refuses 4,301 digits
    if not (digits.isascii() and digits.isdigit()) or len(digits.lstrip("0")) > 19:
        raise S3Error(400, "InvalidArgument", f"{name} must be a non-negative integer",
                      ArgumentName=name, ArgumentValue=text)
    return int(digits)


def conditions_of(req: Request) -> Conditions:
    """DeleteObject's conditional headers."""
    h = req.headers
    etag, modified, size = (h.get(b"if-match"), h.get(b"x-amz-if-match-last-modified-time"),
                            h.get(b"x-amz-if-match-size"))
    return Conditions(
        etag.decode("latin-1") if etag is not None else None,
        _timestamp(modified.decode("latin-1"), "x-amz-if-match-last-modified-time")
        if modified is not None else None,
        _size(size.decode("latin-1"), "x-amz-if-match-size") if size is not None else None)


def _conditions_in_xml(found: dict[str, str]) -> Conditions:
    """An Object's conditions in a DeleteObjects body."""
    try:
        return Conditions(
            found.get("ETag"),
            _timestamp(found["LastModifiedTime"], "LastModifiedTime")
            if "LastModifiedTime" in found else None,
            _size(found["Size"], "Size") if "Size" in found else None)
    except S3Error as e:
        raise MalformedXML(e.message) from None


class Deletes:
    """Deletes through the store (under its key lock; unlinks under -protect), the conditions
    checked against what the objects service reads of the value there."""

    def __init__(self, store: Store, objects: Objects) -> None:
        self.store = store
        self.objects = objects

    async def delete_object(self, key: bytes, req: Request) -> Response:
        await self._delete(key, conditions_of(req))
        return Response(204)

    async def _delete(self, key: bytes, conditions: Conditions) -> None:
        """S3 DELETE: done when the key is gone (or never was). Under -protect it unlinks."""
        try:
            async with self.store.locks.hold(key):
                await self._delete_locked(key, conditions)
        except KeyBusy:  # a DeleteObjects answers it for this key alone
            raise busy(key) from None

    async def _delete_locked(self, key: bytes, conditions: Conditions) -> None:
        record = await self.store.index.get(key)
        if conditions.asked:
            if record is None or record.state is not State.LIVE:
                if conditions.etag is not None:  # If-Match of nothing, as S3 answers it
                    raise no_such_key(key)
                return
            await self._check(key, record, conditions)
        if record is not None and await self.remove_value(key, record):
            raise S3Error(500, "InternalError", "deleting a replica failed; the key stays "
                          "unlinked", Key=object_name(key))

    async def remove_value(self, key: bytes, record: Record) -> list[str]:
        """Delete the key, whose lock the caller holds, as S3 does (unlinked under
        -protect); the replicas that failed to delete (the key stays unlinked)."""
        if self.store.config.protect:
            if record.state is State.LIVE:
                await self.store.unlink(key, record)
            return []
        return await self.store.remove(key, record)

    async def _check(self, key: bytes, record: Record, conditions: Conditions) -> None:
        info = None
        if conditions.modified is not None or conditions.size is not None or not record.md5:
            info = await self.objects.stat(key, record)
        if conditions.etag is not None and not etag_matches(
                conditions.etag.encode("latin-1"), await self.objects.etag(key, record, info)):
            raise precondition_failed("If-Match")
        if conditions.modified is not None and (
                info is None or int(info.modified) != int(conditions.modified)):
            raise precondition_failed("x-amz-if-match-last-modified-time")
        if conditions.size is not None and (info is None or info.size != conditions.size):
            raise precondition_failed("x-amz-if-match-size")

    async def delete_objects(self, bucket: str, req: Request,
                             signed: Signed | None) -> Response:
        quiet, objects = s3xml.parse_delete(await read_xml(req, signed))
        asked = [(name, _conditions_in_xml(found)) for name, found in objects]
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(name: str, conditions: Conditions) -> Node | None:
            key = f"/{bucket}/{name}".encode()
            async with limit:
                try:
                    # the rules a request path meets, applied to the key it would be sent as
                    if isinstance(parse_key(quote(key, safe="/").encode()), str):
                        raise S3Error(400, "InvalidArgument", "this key cannot be named")
                    await self._delete(key, conditions)
                except S3Error as e:
                    return ("Error", [("Key", name), ("Code", e.code), ("Message", e.message)])
            return None if quiet else ("Deleted", [("Key", name)])

        results = await asyncio.gather(*(one(name, conditions) for name, conditions in asked))
        body = s3xml.document("DeleteResult", [r for r in results if r is not None])
        return Response(200, [XML], body)
