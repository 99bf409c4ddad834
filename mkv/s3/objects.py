"""S3 objects: Get/Head (streamed from a replica, ranges, parts, conditions), Put and Copy,
through the store. The other services read values (`stat`, `etag`, `live`, `open_source`) and
write them (`write`, `keep_metadata`) through this one."""

import random
import time
from collections.abc import AsyncIterator
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from mkv.http.client import ClientResponse, VolumeError
from mkv.http.messages import Request, Response
from mkv.placement import storable
from mkv.record import Record, State
from mkv.s3 import xml as s3xml
from mkv.s3.buckets import Buckets
from mkv.s3.checksums import FULL_OBJECT, element_of, header_of
from mkv.s3.errors import (
    NotModified,
    S3Error,
    no_such_bucket,
    no_such_key,
    object_name,
    precondition_failed,
)
from mkv.s3.lifecycle import expiration_header, size_and_time
from mkv.s3.metadata import (
    acl_of_request,
    answer_headers,
    header_value,
    headers_of,
    of_request,
    tags_of,
)
from mkv.s3.parts import PartFiles
from mkv.s3.payload import payload_of
from mkv.s3.request import (
    MAX_KEYS,
    MAX_PART_NUMBER,
    etag_matches,
    http_date,
    int_param,
    parse_http_date,
    resolve_range,
    single_range,
)
from mkv.s3.sigv4 import Signed
from mkv.s3.state import METADATA, Kept, S3State
from mkv.s3.xml import XML, Node
from mkv.store import Store
from mkv.volumes.health import volume_of

# a value up to this size is read whole before its key is taken: less work than staging
# (a MOVE a replica), ~64 MiB held at 1,000 such writes at once
HELD_WHOLE = 64 * 1024
_ATTRIBUTES = frozenset(("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"))

_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type", "response-content-disposition":
    "Content-Disposition", "response-content-encoding": "Content-Encoding",
    "response-content-language": "Content-Language", "response-cache-control": "Cache-Control",
    "response-expires": "Expires"}


class ObjectInfo(NamedTuple):
    size: int
    modified: float
    volume_etag: str


def etag_of(record: Record, multipart: str | None, info: ObjectInfo | None) -> str:
    """An object's ETag: a multipart upload's `<md5s>-N`, else the md5 of its value, else (no
    md5 recorded) what nginx says."""
    if record.md5:
        return f'"{multipart or record.md5}"'
    return info.volume_etag if info is not None else '""'


def check_storable(key: bytes) -> None:
    """S3's error for a key the store cannot hold (placement.storable)."""
    problem = storable(key)
    if problem:
        code = "KeyTooLongError" if "too long" in problem else "InvalidArgument"
        raise S3Error(400, code, f"this key cannot be stored: {problem}", Key=object_name(key))


class Objects:
    """Objects over the store (its index, volumes and key locks), what S3 keeps beside a value
    in the S3 state, and the buckets (whether one exists, for NoSuchBucket)."""

    def __init__(self, store: Store, state: S3State, buckets: Buckets) -> None:
        self.store = store
        self.index = store.index
        self.volumes = store.volumes
        self.state = state
        self.buckets = buckets
        self.files = PartFiles(store)  # where a value is staged before its commit

    # --- reading values from replicas ---
    async def _stat_replica(self, replica: str, key: bytes) -> ObjectInfo | None:
        """Size, date and nginx's ETag of the key's file on one replica; None if absent."""
        response = await self.volumes.get(replica, key, b"Range: bytes=0-0\r\n",
                                                 stream=False)
        h = response.headers
        if response.status == 206:
            size = int(h.get(b"content-range", b"/0").rpartition(b"/")[2])
        elif response.status == 200:
            size = int(h.get(b"content-length", b"0"))
        else:
            return None
        return ObjectInfo(size, parse_http_date(h.get(b"last-modified")) or 0.0,
                          h.get(b"etag", b'""').decode("latin-1"))

    async def stat(self, key: bytes, record: Record) -> ObjectInfo | None:
        """What a replica that has the file says about it, trying replicas in random order."""
        order = list(record.replicas)
        random.shuffle(order)
        for replica in order:
            try:
                info = await self._stat_replica(replica, key)
            except VolumeError:
                continue
            if info is not None:
                return info
        return None

    async def etag(self, key: bytes, record: Record, info: ObjectInfo | None) -> str:
        multipart = (await self.state.kept(key, record.md5)).multipart if record.md5 else None
        return etag_of(record, multipart["etag"] if multipart else None, info)

    async def live(self, key: bytes) -> Record:
        record = await self.index.get(key)
        if record is None or record.state is not State.LIVE:
            bucket = key.split(b"/")[1].decode("utf-8", "replace")
            if not await self.buckets.exists(bucket):
                raise no_such_bucket(bucket)
            raise no_such_key(key)
        return record

    @staticmethod
    def _preconditions(req: Request, etag: str, modified: float, read: bool,
                       prefix: bytes = b"") -> None:
        """If-Match, If-None-Match, If-(Un)Modified-Since, in RFC 7232's order; with `prefix`
        `x-amz-copy-source-`, CopyObject's conditions on its source."""
        h = req.headers
        if (if_match := h.get(prefix + b"if-match")) is not None:
            if not etag_matches(if_match, etag):
                raise precondition_failed("If-Match")
        elif (since := parse_http_date(h.get(prefix + b"if-unmodified-since"))) is not None:
            if int(modified) > since:
                raise precondition_failed("If-Unmodified-Since")
        if (if_none_match := h.get(prefix + b"if-none-match")) is not None:
            if etag_matches(if_none_match, etag):
                if read:
                    raise NotModified(etag, modified)
                raise precondition_failed("If-None-Match")
        elif read and (since := parse_http_date(h.get(prefix + b"if-modified-since"))) \
                is not None:
            if int(modified) <= since:
                raise NotModified(etag, modified)

    async def get_object(self, key: bytes, req: Request, params: dict[str, str],
                         head: bool) -> Response:
        for param in _RESPONSE_OVERRIDES.keys() & params.keys():
            header_value(param, params[param])
        record = await self.live(key)
        kept = await self.state.kept(key, record.md5)
        wanted, part_headers = self._part_range(kept, req, params)
        try:
            if head:
                response = await self._head_object(key, record, kept, req, params, wanted)
            else:
                response = await self._get_object(key, record, kept, req, params, wanted)
        except NotModified as e:
            return Response(304, [("ETag", e.etag), ("Last-Modified", http_date(e.modified))])
        response.headers += part_headers
        size, modified = size_and_time(response.headers)
        if modified is not None:
            response.headers += await self.expiration(
                key, size, (kept.metadata or {}).get("tags", []), modified)
        checksum = (kept.metadata or {}).get("checksum")
        if checksum and wanted is None and \
                req.headers.get(b"x-amz-checksum-mode", b"").strip().upper() == b"ENABLED":
            response.headers += [(header_of(checksum["algorithm"]), checksum["value"]),
                                 ("x-amz-checksum-type", checksum["type"])]
        return response

    async def object_attributes(self, key: bytes, req: Request) -> Response:
        """GetObjectAttributes: those of ETag, Checksum, ObjectParts, StorageClass and
        ObjectSize that `x-amz-object-attributes` names (ObjectParts paged by x-amz-max-parts
        and x-amz-part-number-marker; only a multipart object has parts)."""
        asked = {a.strip() for a in req.headers.get(b"x-amz-object-attributes", b"")
                 .decode("latin-1").split(",") if a.strip()}
        if not asked or asked - _ATTRIBUTES:
            raise S3Error(400, "InvalidArgument", "Invalid attribute name specified.")
        paging = {name: req.headers[f"x-amz-{name}".encode()].decode("latin-1")
                  for name in ("max-parts", "part-number-marker")
                  if f"x-amz-{name}".encode() in req.headers}
        max_parts = int_param(paging, "max-parts", MAX_KEYS, 0, MAX_KEYS)
        marker = int_param(paging, "part-number-marker", 0, 0, MAX_PART_NUMBER)
        record = await self.live(key)
        kept = await self.state.kept(key, record.md5)
        info = await self.stat(key, record)
        if info is None:
            raise S3Error(500, "InternalError", "no replica has the value of this key")
        checksum = (kept.metadata or {}).get("checksum")
        sizes: list[int] = (kept.multipart or {}).get("parts") or []
        nodes: list[Node] = []
        if "ETag" in asked:
            multipart = kept.multipart["etag"] if kept.multipart else None
            nodes.append(("ETag", etag_of(record, multipart, info).strip('"')))
        if "Checksum" in asked and checksum:
            nodes.append(("Checksum", [(element_of(checksum["algorithm"]), checksum["value"]),
                                       ("ChecksumType", checksum["type"])]))
        if "ObjectParts" in asked and sizes:
            page = list(range(marker + 1, len(sizes) + 1))[:max_parts]
            sums = (checksum or {}).get("parts") or []
            nodes.append(("ObjectParts", [
                ("PartsCount", str(len(sizes))), ("PartNumberMarker", str(marker)),
                ("NextPartNumberMarker", str(page[-1] if page else marker)),
                ("MaxParts", str(max_parts)),
                ("IsTruncated", "true" if page and page[-1] < len(sizes) else "false"),
                *[("Part", [("PartNumber", str(n)), ("Size", str(sizes[n - 1])),
                            *([(element_of(checksum["algorithm"]), sums[n - 1])]  # type: ignore[index]
                              if len(sums) == len(sizes) else [])]) for n in page]]))
        if "StorageClass" in asked:
            nodes.append(("StorageClass", "STANDARD"))
        if "ObjectSize" in asked:
            nodes.append(("ObjectSize", str(info.size)))
        return Response(200, [XML, ("Last-Modified", http_date(info.modified))],
                        s3xml.document("GetObjectAttributesResponse", nodes))

    @staticmethod
    def _part_range(kept: Kept, req: Request,
                    params: dict[str, str]) -> tuple[bytes | None, list[tuple[str, str]]]:
        """The Range to read (the request's, or the bytes of part `partNumber`) and, for a
        part of a multipart object, its x-amz-mp-parts-count. Any other object is one part,
        as on S3."""
        if "partNumber" not in params:
            return req.headers.get(b"range"), []
        try:
            number = int(params["partNumber"])
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 "
                          "and 10000, inclusive", ArgumentName="partNumber",
                          ArgumentValue=params["partNumber"])
        if single_range(req.headers.get(b"range")) is not None:
            raise S3Error(400, "InvalidRequest", "Cannot specify both Range header and "
                          "partNumber query parameter")
        sizes: list[int] = (kept.multipart or {}).get("parts") or []
        if number > max(len(sizes), 1):
            raise S3Error(400, "InvalidPartNumber", "The requested partnumber is not "
                          "satisfiable", PartNumberRequested=str(number),
                          ActualPartCount=str(max(len(sizes), 1)))
        if not sizes:
            return b"bytes=0-", []
        first = sum(sizes[:number - 1])
        return (b"bytes=%d-%d" % (first, first + sizes[number - 1] - 1),
                [("x-amz-mp-parts-count", str(len(sizes)))])

    @staticmethod
    def _object_headers(record: Record, kept: Kept, info: ObjectInfo,
                        params: dict[str, str]) -> list[tuple[str, str]]:
        multipart = kept.multipart["etag"] if kept.multipart else None
        headers = [("ETag", etag_of(record, multipart, info)),
                   ("Last-Modified", http_date(info.modified)), ("Accept-Ranges", "bytes"),
                   *answer_headers(kept.metadata)]
        for param, header in _RESPONSE_OVERRIDES.items():
            if param in params:
                headers = [(n, v) for n, v in headers if n != header] + [(header, params[param])]
        return headers

    async def _head_object(self, key: bytes, record: Record, kept: Kept, req: Request,
                           params: dict[str, str], range_value: bytes | None) -> Response:
        info = await self.stat(key, record)
        if info is None:
            raise S3Error(500, "InternalError", "no replica has the value of this key")
        headers = self._object_headers(record, kept, info, params)
        self._preconditions(req, headers[0][1], info.modified, read=True)
        wanted = single_range(range_value)
        if wanted is None or info.size == 0:
            return Response(200, headers + [("Content-Length", str(info.size))])
        span = resolve_range(wanted, info.size)
        if span is None:
            raise S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                          ActualObjectSize=str(info.size))
        first, last = span
        headers += [("Content-Range", f"bytes {first}-{last}/{info.size}"),
                    ("Content-Length", str(last - first + 1))]
        return Response(206, headers)

    async def _get_object(self, key: bytes, record: Record, kept: Kept, req: Request,
                          params: dict[str, str], range_value: bytes | None) -> Response:
        wanted = single_range(range_value)
        ask = b"Range: %s\r\n" % range_value.strip() if wanted else b""
        response = await self._open(key, record, ask)
        h = response.headers
        info = ObjectInfo(0, parse_http_date(h.get(b"last-modified")) or 0.0,
                          h.get(b"etag", b'""').decode("latin-1"))
        headers = self._object_headers(record, kept, info, params)
        try:
            self._preconditions(req, headers[0][1], info.modified, read=True)
        except (S3Error, NotModified):
            response.body.abort()  # type: ignore[union-attr]
            raise
        headers.append(("Content-Length", h.get(b"content-length", b"0").decode()))
        if response.status == 206:
            headers.append(("Content-Range", h[b"content-range"].decode("latin-1")))
        return Response(response.status, headers, self.volumes.chunks(response))

    async def _open(self, key: bytes, record: Record, range_header: bytes = b"") -> ClientResponse:
        """A streamed GET of the key's value from a replica that has it, in random order."""
        order = list(record.replicas)
        random.shuffle(order)
        for replica in order:
            try:
                response = await self.volumes.get(replica, key, range_header, stream=True)
            except VolumeError:
                continue
            if response.status in (200, 206):
                return response
            response.body.abort()  # type: ignore[union-attr]  # an error page we will not read
            if response.status == 416:
                size = response.headers.get(b"content-range", b"*/0").rpartition(b"/")[2]
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                              ActualObjectSize=size.decode())
        raise S3Error(500, "InternalError", "no replica has the value of this key")

    # --- writing values ---
    async def _store(self, key: bytes, chunks: AsyncIterator[bytes], length: int | None,
                     req: Request | None) -> str | None:
        """Write a value under the key's lock, replacing a live one as S3 does; its md5.
        With `req`, its If-Match / If-None-Match hold against the value there now. A write
        that does not finish leaves the key as it was (`Store.write`)."""
        old = await self.index.get(key)
        if req is not None:
            await self._write_conditions(req, key, old)
        return await self.store.write(key, chunks, length, old)

    async def keep_metadata(self, key: bytes, md5: str | None, metadata: dict) -> None:
        """Remember a value's metadata, tags and checksum (the store forgot the old
        value's)."""
        if metadata.get("headers") or metadata.get("tags") or metadata.get("checksum") \
                or "acl" in metadata:
            await self.state.keep(METADATA, key, md5, metadata)
        else:
            await self.state.drop(METADATA, key)

    async def write(self, key: bytes, chunks: AsyncIterator[bytes], length: int | None,
                    req: Request | None = None) -> str | None:
        """Every S3 write of a value; its md5. S3 lets writers of one key all succeed, the
        last to finish winning, and a client that writes a key again in the middle of a
        write must not wait on itself, so no write holds the key's lock while its client
        still sends: a small value is read whole first; a larger one, where the key's
        replicas rename files, streams to them staged, the key free, and only its commit
        (`Store.commit`) holds the lock. Elsewhere (Go mkv's volume launcher) a larger write
        holds the lock while it streams, in turn."""
        if length is not None and length <= HELD_WHOLE:  # read first, then written in turn
            held = b"".join([chunk async for chunk in chunks])
            async with self.store.locks.hold(key, wait=True):
                return await self._store(key, _once(held), len(held), req)
        replicas = await self.store.write_placement(key)
        if not await self._renames(replicas):
            async with self.store.locks.hold(key, wait=True):
                return await self._store(key, chunks, length, req)
        if req is not None:  # refused before a byte is stored if it can be told now
            await self._write_conditions(req, key, await self.index.get(key))
        staged = await self.files.stage(replicas, chunks, length)
        try:
            async with self.store.locks.hold(key, wait=True):
                old = await self.index.get(key)
                if req is not None:
                    await self._write_conditions(req, key, old)
                return await self.store.commit(key, staged.replicas, staged.path, staged.md5,
                                               old)
        except BaseException:
            await self.files.delete(staged.replicas, staged.path)  # what was not renamed
            raise

    async def _renames(self, replicas: list[str]) -> bool:
        """Whether every one of the replicas' volumes renames files (`Volumes.can_move`)."""
        try:
            for replica in replicas:
                if not await self.volumes.can_move(volume_of(replica)):
                    return False
        except VolumeError:
            return False  # the write will meet the volume itself
        return True

    async def _write_conditions(self, req: Request, key: bytes, old: Record | None) -> None:
        """PutObject's and CompleteMultipartUpload's If-Match / If-None-Match: `*` (a key
        there) or ETags (a value with one of them there), as S3 and Ceph's RGW take them."""
        if_match, if_none_match = req.headers.get(b"if-match"), req.headers.get(b"if-none-match")
        if if_match is None and if_none_match is None:
            return
        live = old is not None and old.state is State.LIVE
        if if_none_match is not None and live and etag_matches(
                if_none_match, await self.etag(key, old, None)):
            raise precondition_failed("If-None-Match")
        if if_match is not None:
            if not live:
                raise no_such_key(key)
            if not etag_matches(if_match, await self.etag(key, old, None)):
                raise precondition_failed("If-Match")

    async def expiration(self, key: bytes, size: int | None, tags: list, modified: float
                         ) -> list[tuple[str, str]]:
        """`x-amz-expiration`, if a lifecycle rule of the bucket will expire the object."""
        slash = key.find(b"/", 1)
        settings = await self.buckets.access.settings(key[1:slash].decode("utf-8", "replace"))
        return expiration_header((settings or {}).get("lifecycle") or [],
                                 key[slash + 1:].decode("utf-8", "surrogateescape"), size, tags,
                                 modified, self.store.config.s3_lifecycle_day)

    async def put_object(self, key: bytes, req: Request, signed: Signed | None) -> Response:
        check_storable(key)
        payload = payload_of(req, signed)
        metadata = of_request(req)
        md5 = await self.write(key, payload, payload.length, req)
        if payload.computed:  # kept for ChecksumMode reads and GetObjectAttributes
            algorithm, value = payload.computed
            metadata["checksum"] = {"algorithm": algorithm, "type": FULL_OBJECT,
                                    "value": value}
        await self.keep_metadata(key, md5, metadata)
        headers = [("ETag", f'"{md5}"' if md5 else '""'), ("Content-Length", "0")]
        if payload.checksum:
            headers.append(payload.checksum)
        headers += await self.expiration(key, payload.length, metadata["tags"], time.time())
        return Response(200, headers)

    def copy_source(self, req: Request) -> bytes:
        source = req.headers[b"x-amz-copy-source"].split(b"?", 1)[0]
        key = b"/" + unquote_to_bytes(source).lstrip(b"/")
        if key.count(b"/") < 2 or key.endswith(b"/") and key.count(b"/") == 2:
            raise S3Error(400, "InvalidArgument", "x-amz-copy-source must be bucket/key")
        return key

    async def open_source(self, key: bytes, range_header: bytes = b"") -> ClientResponse:
        """A streamed GET of a copy source from a replica that has it."""
        return await self._open(key, await self.live(key), range_header)

    async def _copy_metadata(self, req: Request, source: bytes, record: Record) -> dict:
        """The copy's metadata: the source's, or the request's under MetadataDirective
        REPLACE; tags likewise under TaggingDirective."""
        directives = []
        for name in (b"x-amz-metadata-directive", b"x-amz-tagging-directive"):
            directive = req.headers.get(name, b"COPY").strip().upper()
            if directive not in (b"COPY", b"REPLACE"):
                raise S3Error(400, "InvalidArgument", f"Unknown {name.decode()} value")
            directives.append(directive == b"REPLACE")
        kept = (await self.state.kept(source, record.md5)).metadata or {}
        copied = {"headers": headers_of(req) if directives[0] else kept.get("headers", []),
                  "tags": tags_of(req) if directives[1] else kept.get("tags", []),
                  "acl": acl_of_request(req)}  # as S3: a copy's ACL is the request's
        if kept.get("checksum"):  # the same bytes: the same checksum, whatever the directive
            copied["checksum"] = kept["checksum"]
        return copied

    async def _copy(self, source: bytes, record: Record, key: bytes,
                    req: Request) -> str | None:
        """Stream the source's value into the key, whose lock the caller holds; its md5.
        The source is opened only now, so it does not wait idle for the key's turn."""
        response = await self._open(source, record)
        try:
            modified = parse_http_date(response.headers.get(b"last-modified")) or 0.0
            try:
                self._preconditions(req, await self.etag(source, record, None), modified,
                                    read=True, prefix=b"x-amz-copy-source-")
            except NotModified:  # a copy's source conditions all fail as 412
                raise precondition_failed("x-amz-copy-source-If-None-Match") from None
            length = int(response.headers.get(b"content-length", b"0"))
            return await self._store(key, self.volumes.chunks(response), length, None)
        finally:
            if not response.body.complete:  # type: ignore[union-attr]
                response.body.abort()  # type: ignore[union-attr]

    async def copy_object(self, key: bytes, req: Request) -> Response:
        check_storable(key)
        source = self.copy_source(req)
        record = await self.live(source)
        metadata = await self._copy_metadata(req, source, record)
        if source == key:
            if req.headers.get(b"x-amz-metadata-directive", b"").upper() != b"REPLACE":
                raise S3Error(400, "InvalidRequest", "This copy request is illegal because it "
                              "is trying to copy an object to itself without changing the "
                              "object's metadata.")
            info = await self.stat(key, record)
            self._preconditions(req, await self.etag(key, record, info),
                                info.modified if info else 0, read=False,
                                prefix=b"x-amz-copy-source-")
            md5 = record.md5
        else:
            # a write of the key in flight goes first, then the copy, as on S3
            async with self.store.locks.hold(key, wait=True):
                md5 = await self._copy(source, record, key, req)
        await self.keep_metadata(key, md5, metadata)
        etag = await self.etag(key, await self.live(key), None) if md5 else '""'
        body = s3xml.document("CopyObjectResult", [("LastModified", s3xml.now_timestamp()),
                                                   ("ETag", etag)])
        return Response(200, [XML], body)


async def _once(value: bytes) -> AsyncIterator[bytes]:
    yield value
