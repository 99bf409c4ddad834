"""The S3 face: path-style S3 requests, recognised, authenticated and answered as S3 answers.

Bucket `b` and object `k` are mkv key `/b/k` (SPEC §5), so S3 and the native API see the same
data. Objects are read through the master (boto3 does not follow redirects), streamed from one
replica with backpressure; writes go through `Store.write` like a native REPLACE. A bucket is a
key prefix: it exists while it holds a live key, or after CreateBucket until DeleteBucket.
Multipart uploads, bucket markers and multipart ETags live in the spool (mkv/s3/spool.py).
"""

import asyncio
import base64
import binascii
import email.utils
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

from mkv.http.client import ClientResponse, VolumeError
from mkv.http.flow import Body, ClientGone
from mkv.http.server import Request, Response
from mkv.http.target import parse_key
from mkv.placement import storable
from mkv.record import Record, State
from mkv.s3 import xml as s3xml
from mkv.s3.awschunked import AwsChunked, BadPayload
from mkv.s3.checksums import ALGORITHMS, Checksum, algorithm_of
from mkv.s3.sigv4 import AuthError, Signed, is_v2, verify, verify_v2
from mkv.s3.spool import Part, Spool, UploadGone
from mkv.s3.xml import MalformedXML, Node
from mkv.store import Store

log = logging.getLogger("mkv")

MIN_PART_SIZE = 5 * 1024 * 1024  # every part but the last, as S3 requires
MAX_PART_NUMBER = 10_000
MAX_KEYS = 1000  # the most keys, parts or uploads one listing page holds
STAT_CONCURRENCY = 32  # replicas asked at once for the sizes and dates of a listing
DELETE_CONCURRENCY = 16
OWNER: list[Node] = [("ID", "mkv"), ("DisplayName", "mkv")]
XML = ("Content-Type", "application/xml")

# Query parameters that only S3 sends; any of them makes a request an S3 request.
S3_QUERY = frozenset(
    b"list-type uploads uploadId partNumber delete x-id location versioning prefix delimiter "
    b"marker max-keys encoding-type continuation-token start-after fetch-owner max-uploads "
    b"key-marker upload-id-marker max-parts part-number-marker versionId acl tagging policy "
    b"cors lifecycle website logging notification replication encryption object-lock "
    b"retention legal-hold restore select attributes versions response-content-type "
    b"response-content-disposition response-content-encoding response-content-language "
    b"response-cache-control response-expires X-Amz-Signature X-Amz-Algorithm "
    b"X-Amz-Credential X-Amz-Date AWSAccessKeyId".split())
_NOT_IMPLEMENTED = frozenset(
    "acl tagging policy cors lifecycle website logging notification replication encryption "
    "object-lock retention legal-hold restore select attributes versions torrent analytics "
    "inventory metrics accelerate requestPayment ownershipControls publicAccessBlock "
    "intelligent-tiering".split())
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type", "response-content-disposition":
    "Content-Disposition", "response-content-encoding": "Content-Encoding",
    "response-content-language": "Content-Language", "response-cache-control": "Cache-Control",
    "response-expires": "Expires"}
_READS = (b"GET", b"HEAD")
_READ_METHODS = frozenset(_READS)
_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def is_s3(req: Request) -> bool:
    """Whether a request is S3's: an AWS Authorization header, an S3 query parameter, or (for
    writes) an `x-amz-*` header. Cheap on the native GET path: a dict lookup, a set lookup."""
    headers = req.headers
    if b"authorization" in headers:
        return headers[b"authorization"].startswith(b"AWS")
    if req.query:
        for item in req.query.split(b"&"):
            if item.partition(b"=")[0] in S3_QUERY:
                return True
    if req.method in _READ_METHODS:
        return False
    return any(name.startswith(b"x-amz-") for name in headers)


class S3Error(Exception):
    """An S3 error answer: status, S3's code and message, and elements to add to <Error>."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def _no_such_key(key: bytes) -> S3Error:
    return S3Error(404, "NoSuchKey", "The specified key does not exist.",
                   Key=_object_name(key))


def _no_such_upload(upload_id: str) -> S3Error:
    return S3Error(404, "NoSuchUpload", "The specified multipart upload does not exist. The "
                   "upload ID might be invalid, or it might have been aborted or completed.",
                   UploadId=upload_id)


def _busy(key: bytes) -> S3Error:
    return S3Error(409, "OperationAborted", "A conflicting operation is in progress on this "
                   "key; try again.", Key=_object_name(key))


def _object_name(key: bytes) -> str:
    """The S3 key of mkv key `/bucket/name`: `name`."""
    return key.split(b"/", 2)[2].decode("utf-8", "replace") if key.count(b"/") >= 2 else ""


def _http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def _parse_http_date(value: bytes | str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(
            value.decode("latin-1") if isinstance(value, bytes) else value).timestamp()
    except (TypeError, ValueError):
        return None


def _params(query: bytes) -> dict[str, str]:
    params = {}
    for item in query.split(b"&") if query else ():
        if item:
            name, _, value = item.partition(b"=")
            params[unquote(name.decode("latin-1"))] = \
                unquote_to_bytes(value).decode("utf-8", "replace")
    return params


def _int_param(params: dict[str, str], name: str, default: int, low: int = 0,
               high: int | None = None) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise S3Error(400, "InvalidArgument", f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise S3Error(400, "InvalidArgument", f"{name} is out of range")
    return value


def _successor(prefix: bytes) -> bytes | None:
    """The first byte string after every string that starts with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _single_range(header: bytes | None) -> re.Match | None:
    """A `Range: bytes=a-b` header of one range; other forms are ignored, as S3 does."""
    if not header:
        return None
    m = _RANGE.match(header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    return m


def _resolve_range(m: re.Match, size: int) -> tuple[int, int] | None:
    """First and last byte of a range over `size` bytes; None if it cannot be satisfied."""
    first, last = m.group(1), m.group(2)
    if not first:
        length = int(last)
        return (max(size - length, 0), size - 1) if length and size else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return None
    return start, end


class ObjectInfo(NamedTuple):
    size: int
    modified: float
    volume_etag: str


class Payload:
    """A request body as it will be stored, checked on the way through.

    Checks: the length announced, Content-MD5, a hex x-amz-content-sha256, and an
    x-amz-checksum-* value from a header or the aws-chunked trailer. The last block is held
    back until every check has passed, so a replica never receives a whole value that
    fails one: nginx keeps a PUT's temp file until its last byte arrives.
    """

    def __init__(self, source: AsyncIterator[bytes] | Body, length: int | None,
                 content_md5: bytes | None, sha256: str | None, algorithm: str | None,
                 expected: str | None, chunked: AwsChunked | None) -> None:
        self.source = source
        self.length = length
        self.content_md5 = content_md5
        self.sha256 = sha256
        self.algorithm = algorithm
        self.expected = expected
        self.chunked = chunked
        self.checksum: tuple[str, str] | None = None  # (header, value) once verified

    async def __aiter__(self) -> AsyncIterator[bytes]:
        md5 = hashlib.md5() if self.content_md5 is not None else None
        sha = hashlib.sha256() if self.sha256 else None
        crc = Checksum(self.algorithm) if self.algorithm else None
        hashers = [h for h in (md5, sha, crc) if h is not None]
        held = None
        total = 0
        async for chunk in self.source:
            if not chunk:
                continue
            total += len(chunk)
            if self.length is not None and total > self.length:
                raise BadPayload("IncompleteBody", "the body is longer than announced")
            for hasher in hashers:
                hasher.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if self.length is not None and total != self.length:
            raise BadPayload("IncompleteBody", "You did not provide the number of bytes "
                             "specified by the Content-Length HTTP header.")
        if md5 is not None and md5.digest() != self.content_md5:
            raise BadPayload("BadDigest",
                             "The Content-MD5 you specified did not match what we received.")
        if sha is not None and sha.hexdigest() != self.sha256:
            raise BadPayload("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                             "header does not match what was computed.")
        if crc is not None:
            header = f"x-amz-checksum-{self.algorithm}"
            expected = self.expected
            if expected is None and self.chunked is not None:
                expected = self.chunked.trailers.get(header)
            if expected is None:
                raise BadPayload("InvalidRequest", f"the {header} trailer is missing")
            if crc.b64digest() != expected:
                raise BadPayload("BadDigest", f"The {self.algorithm.upper()} you specified "
                                 "did not match the calculated checksum.")
            self.checksum = (header, expected)
        if held is not None:
            yield held


class S3:
    """Answers S3 requests over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = store.config
        self.index = store.index
        self.volumes = store.volumes
        self.secrets = dict(store.config.s3_keys)
        spool = store.config.s3_spool or f"{store.config.db.rstrip('/')}.s3"
        self.spool = Spool(Path(spool))
        self.completing: set[str] = set()  # upload ids whose Complete is running
        # one writer at a time per (upload, part number), with a count of who wants it
        self._part_locks: dict[tuple[str, int], tuple[asyncio.Lock, list[int]]] = {}
        self._schedule_sweep(first=True)

    # --- entry ---
    def handle(self, req: Request) -> Awaitable[Response]:
        return self._answer(req)

    async def _answer(self, req: Request) -> Response:
        request_id = secrets.token_hex(8).upper()
        try:
            response = await self._dispatch(req)
        except S3Error as e:
            response = self._error(e.status, e.code, e.message, req, request_id, e.extra)
        except BadPayload as e:
            response = self._error(e.status, e.code, e.message, req, request_id, {})
        except MalformedXML as e:
            response = self._error(400, "MalformedXML", str(e), req, request_id, {})
        except VolumeError as e:
            log.warning("S3 %s %s: %s", req.method.decode(), req.path.decode(errors="replace"), e)
            response = self._error(500, "InternalError", f"a volume failed: {e}", req,
                                   request_id, {})
        response.headers.append(("x-amz-request-id", request_id))
        return response

    @staticmethod
    def _error(status: int, code: str, message: str, req: Request, request_id: str,
               extra: dict[str, str]) -> Response:
        nodes: list[Node] = [(name, value) for name, value in extra.items()]
        nodes += [("Resource", req.path.decode("latin-1")), ("RequestId", request_id)]
        return Response(status, [XML], s3xml.error_document(code, message, nodes))

    def _authenticate(self, req: Request) -> Signed | None:
        """With -s3_keys, check the signature; what signed chunks are checked with (V4)."""
        if not self.secrets:
            return None
        query, headers = req.query, req.headers
        if b"authorization" not in headers and b"X-Amz-Signature" not in query \
                and b"AWSAccessKeyId" not in query:
            raise S3Error(403, "AccessDenied", "Access Denied: this endpoint needs signed "
                          "requests (AWS Signature Version 4 or 2)")
        try:
            if is_v2(query, headers):
                verify_v2(req.method, req.path, query, headers, self.secrets)
                return None
            return verify(req.method, req.path, query, headers, self.secrets)
        except AuthError as e:
            raise S3Error(e.status, e.code, e.message) from None

    async def _dispatch(self, req: Request) -> Response:
        signed = self._authenticate(req)
        key = parse_key(req.path)
        if isinstance(key, str):
            raise S3Error(400, "InvalidArgument", key)
        params = _params(req.query)
        unsupported = _NOT_IMPLEMENTED.intersection(params)
        if unsupported:
            raise S3Error(501, "NotImplemented", f"mkv does not implement the "
                          f"{sorted(unsupported)[0]} subresource")
        method = req.method
        if key == b"/" or key == b"":
            if method == b"GET":
                return self.list_buckets()
            raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed "
                          "against this resource.")
        slash = key.find(b"/", 1)
        bucket = (key[1:] if slash < 0 else key[1:slash]).decode("utf-8", "replace")
        if slash < 0 or slash == len(key) - 1:
            return await self._bucket_request(method, bucket, params, req, signed)
        return await self._object_request(method, key, params, req, signed)

    async def _bucket_request(self, method: bytes, bucket: str, params: dict[str, str],
                              req: Request, signed: Signed | None) -> Response:
        if method == b"GET":
            if "uploads" in params:
                return self.list_uploads(bucket, params)
            if "location" in params:
                return Response(200, [XML], s3xml.document("LocationConstraint", []))
            if "versioning" in params:
                return Response(200, [XML], s3xml.document("VersioningConfiguration", []))
            return await self.list_objects(bucket, params)
        if method == b"HEAD":
            if not self._bucket_exists(bucket):
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist",
                              BucketName=bucket)
            return Response(200, [("Content-Length", "0")])
        if method == b"PUT":
            if set(params) - {"x-id"}:
                raise S3Error(501, "NotImplemented", "mkv does not implement this bucket "
                              "configuration")
            return self.create_bucket(bucket)
        if method == b"DELETE":
            return self.delete_bucket(bucket)
        if method == b"POST" and "delete" in params:
            return await self.delete_objects(bucket, req, signed)
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against "
                      "this resource.")

    async def _object_request(self, method: bytes, key: bytes, params: dict[str, str],
                              req: Request, signed: Signed | None) -> Response:
        upload_id = params.get("uploadId")
        if method in _READS:
            if upload_id is not None and method == b"GET":
                return self.list_parts(key, upload_id, params)
            return await self.get_object(key, req, params, head=method == b"HEAD")
        if method == b"PUT":
            if upload_id is not None or "partNumber" in params:
                return await self.upload_part(key, upload_id or "", params, req, signed)
            if b"x-amz-copy-source" in req.headers:
                return await self.copy_object(key, req)
            return await self.put_object(key, req, signed)
        if method == b"POST":
            if "uploads" in params:
                return self.create_upload(key)
            if upload_id is not None:
                return await self.complete_upload(key, upload_id, req, signed)
        if method == b"DELETE":
            if upload_id is not None:
                return self.abort_upload(key, upload_id)
            return await self.delete_object(key)
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against "
                      "this resource.")

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
        return ObjectInfo(size, _parse_http_date(h.get(b"last-modified")) or 0.0,
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

    def etag(self, key: bytes, record: Record, info: ObjectInfo | None) -> str:
        if record.md5:
            return f'"{self.spool.etag(key, record.md5) or record.md5}"'
        return info.volume_etag if info is not None else '""'

    def _live(self, key: bytes) -> Record:
        record = self.index.get(key)
        if record is None or record.state is not State.LIVE:
            raise _no_such_key(key)
        return record

    @staticmethod
    def _preconditions(req: Request, etag: str, modified: float, read: bool) -> None:
        """If-Match, If-None-Match, If-(Un)Modified-Since, in RFC 7232's order."""
        h = req.headers

        def matches(header: bytes) -> bool:
            tags = [t.strip().removeprefix("W/") for t in header.decode("latin-1").split(",")]
            return "*" in tags or etag in tags or etag.strip('"') in tags

        if b"if-match" in h:
            if not matches(h[b"if-match"]):
                raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions "
                              "you specified did not hold", Condition="If-Match")
        elif (since := _parse_http_date(h.get(b"if-unmodified-since"))) is not None:
            if int(modified) > since:
                raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions "
                              "you specified did not hold", Condition="If-Unmodified-Since")
        if b"if-none-match" in h:
            if matches(h[b"if-none-match"]):
                if read:
                    raise _NotModified(etag, modified)
                raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions "
                              "you specified did not hold", Condition="If-None-Match")
        elif read and (since := _parse_http_date(h.get(b"if-modified-since"))) is not None:
            if int(modified) <= since:
                raise _NotModified(etag, modified)

    async def get_object(self, key: bytes, req: Request, params: dict[str, str],
                         head: bool) -> Response:
        record = self._live(key)
        try:
            if head:
                return await self._head_object(key, record, req, params)
            return await self._get_object(key, record, req, params)
        except _NotModified as e:
            return Response(304, [("ETag", e.etag), ("Last-Modified", _http_date(e.modified))])

    def _object_headers(self, key: bytes, record: Record, info: ObjectInfo,
                        params: dict[str, str]) -> list[tuple[str, str]]:
        headers = [("ETag", self.etag(key, record, info)),
                   ("Last-Modified", _http_date(info.modified)),
                   ("Accept-Ranges", "bytes"), ("Content-Type", "application/octet-stream")]
        for param, header in _RESPONSE_OVERRIDES.items():
            if param in params:
                headers = [(n, v) for n, v in headers if n != header] + [(header, params[param])]
        return headers

    async def _head_object(self, key: bytes, record: Record, req: Request,
                           params: dict[str, str]) -> Response:
        info = await self.stat(key, record)
        if info is None:
            raise S3Error(500, "InternalError", "no replica has the value of this key")
        headers = self._object_headers(key, record, info, params)
        self._preconditions(req, headers[0][1], info.modified, read=True)
        wanted = _single_range(req.headers.get(b"range"))
        if wanted is None or info.size == 0:
            return Response(200, headers + [("Content-Length", str(info.size))])
        span = _resolve_range(wanted, info.size)
        if span is None:
            raise S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                          ActualObjectSize=str(info.size))
        first, last = span
        headers += [("Content-Range", f"bytes {first}-{last}/{info.size}"),
                    ("Content-Length", str(last - first + 1))]
        return Response(206, headers)

    async def _get_object(self, key: bytes, record: Record, req: Request,
                          params: dict[str, str]) -> Response:
        wanted = _single_range(req.headers.get(b"range"))
        ask = b"Range: %s\r\n" % req.headers[b"range"].strip() if wanted else b""
        response = await self._open(key, record, ask)
        h = response.headers
        info = ObjectInfo(0, _parse_http_date(h.get(b"last-modified")) or 0.0,
                          h.get(b"etag", b'""').decode("latin-1"))
        headers = self._object_headers(key, record, info, params)
        try:
            self._preconditions(req, headers[0][1], info.modified, read=True)
        except (S3Error, _NotModified):
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
    def _payload(self, req: Request, signed: Signed | None) -> Payload:
        """How to read and check a request body, from its headers; errors before reading."""
        h = req.headers
        sha = h.get(b"x-amz-content-sha256", b"").decode("latin-1")
        encoding = h.get(b"content-encoding", b"").lower()
        if "ECDSA" in sha:
            raise S3Error(501, "NotImplemented", "SigV4a (ECDSA) signed payloads are not "
                          "supported")
        chunked = None
        if sha.startswith("STREAMING-") or b"aws-chunked" in encoding:
            signed_chunks = sha.startswith("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
            chunked = AwsChunked(req.body, signed if signed_chunks else None,
                                 expect_signatures=signed_chunks)
            source: AsyncIterator[bytes] | Body = chunked
            decoded = h.get(b"x-amz-decoded-content-length")
            try:
                length = int(decoded) if decoded is not None else None
            except ValueError:
                raise S3Error(400, "InvalidArgument",
                              "x-amz-decoded-content-length is not a number") from None
        else:
            source, length = req.body, req.body.length
        content_md5 = None
        if b"content-md5" in h:
            try:
                content_md5 = base64.b64decode(h[b"content-md5"], validate=True)
            except (binascii.Error, ValueError):
                content_md5 = b""
            if len(content_md5) != 16:
                raise S3Error(400, "InvalidDigest",
                              "The Content-MD5 you specified was invalid.")
        algorithm = expected = None
        for name, value in h.items():
            found = algorithm_of(name.decode("latin-1"))
            if found is not None:
                algorithm, expected = found, value.decode("latin-1").strip()
                break
        trailer = h.get(b"x-amz-trailer")
        if algorithm is None and trailer is not None:
            algorithm = algorithm_of(trailer.decode("latin-1").strip())
            if algorithm is None:
                raise S3Error(400, "InvalidRequest", f"unsupported trailer {trailer!r}: "
                              f"checksums supported are {', '.join(ALGORITHMS)}")
            if chunked is None:
                raise S3Error(400, "InvalidRequest", "x-amz-trailer needs an aws-chunked body")
        payload_sha = sha if re.fullmatch(r"[0-9a-f]{64}", sha) else None
        return Payload(source, length, content_md5, payload_sha, algorithm, expected, chunked)

    def _check_storable(self, key: bytes) -> None:
        problem = storable(key)
        if problem:
            code = "KeyTooLongError" if "too long" in problem else "InvalidArgument"
            raise S3Error(400, code, f"this key cannot be stored: {problem}",
                          Key=_object_name(key))

    async def _store(self, key: bytes, chunks: AsyncIterator[bytes],
                     length: int | None) -> str | None:
        """Write a value under the key's lock, replacing a live one as S3 does; its md5.

        A body that broke or failed a check never completed on any replica (see Payload), so
        a live value it was to replace is put back as it was."""
        old = self.index.get(key)
        try:
            md5 = await self.store.write(key, chunks, length, old)
        except ClientGone:
            if old is not None and old.state is State.LIVE:
                self.index.put(key, old)
            raise
        self.spool.forget_etag(key)
        return md5

    async def _locked_store(self, key: bytes, chunks: AsyncIterator[bytes],
                            length: int | None) -> str | None:
        if key in self.store.busy:
            raise _busy(key)
        return await self.store.locked(key, self._store(key, chunks, length))

    async def put_object(self, key: bytes, req: Request, signed: Signed | None) -> Response:
        self._check_storable(key)
        payload = self._payload(req, signed)
        md5 = await self._locked_store(key, payload, payload.length)
        headers = [("ETag", f'"{md5}"' if md5 else '""'), ("Content-Length", "0")]
        if payload.checksum:
            headers.append(payload.checksum)
        return Response(200, headers)

    def _copy_source(self, req: Request) -> bytes:
        source = req.headers[b"x-amz-copy-source"].split(b"?", 1)[0]
        key = b"/" + unquote_to_bytes(source).lstrip(b"/")
        if key.count(b"/") < 2 or key.endswith(b"/") and key.count(b"/") == 2:
            raise S3Error(400, "InvalidArgument", "x-amz-copy-source must be bucket/key")
        return key

    async def _open_source(self, key: bytes, range_header: bytes = b"") -> ClientResponse:
        """A streamed GET of a copy source from a replica that has it."""
        return await self._open(key, self._live(key), range_header)

    async def copy_object(self, key: bytes, req: Request) -> Response:
        self._check_storable(key)
        source = self._copy_source(req)
        if source == key:
            record = self._live(key)
            directive = req.headers.get(b"x-amz-metadata-directive", b"").upper()
            if directive != b"REPLACE":
                raise S3Error(400, "InvalidRequest", "This copy request is illegal because it "
                              "is trying to copy an object to itself without changing the "
                              "object's metadata.")
            md5 = record.md5
        else:
            if key in self.store.busy:
                raise _busy(key)
            response = await self._open_source(source)
            length = int(response.headers.get(b"content-length", b"0"))
            try:
                md5 = await self._locked_store(key, self.volumes.chunks(response), length)
            finally:
                if not response.body.complete:  # type: ignore[union-attr]
                    response.body.abort()  # type: ignore[union-attr]
        etag = self.etag(key, self._live(key), None) if md5 else '""'
        body = s3xml.document("CopyObjectResult", [("LastModified", s3xml.now_timestamp()),
                                                   ("ETag", etag)])
        return Response(200, [XML], body)

    async def delete_object(self, key: bytes) -> Response:
        await self._delete(key)
        return Response(204)

    async def _delete(self, key: bytes) -> None:
        """S3 DELETE: done when the key is gone (or never was). Under -protect it unlinks."""
        record = self.index.get(key)
        if record is None:
            return
        if key in self.store.busy:
            raise _busy(key)
        if self.config.protect:
            if record.state is State.LIVE:
                self.index.put(key, record.with_state(State.UNLINKED))
            return
        failed = await self.store.locked(key, self.store.remove(key, record))
        if failed:
            raise S3Error(500, "InternalError", "deleting a replica failed; the key stays "
                          "unlinked", Key=_object_name(key))
        self.spool.forget_etag(key)

    async def delete_objects(self, bucket: str, req: Request,
                             signed: Signed | None) -> Response:
        quiet, names = s3xml.parse_delete(await self._read_xml(req, signed))
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(name: str) -> Node | None:
            key = f"/{bucket}/{name}".encode()
            async with limit:
                try:
                    # the rules a request path meets, applied to the key it would be sent as
                    if isinstance(parse_key(quote(key, safe="/").encode()), str):
                        raise S3Error(400, "InvalidArgument", "this key cannot be named")
                    await self._delete(key)
                except S3Error as e:
                    return ("Error", [("Key", name), ("Code", e.code), ("Message", e.message)])
            return None if quiet else ("Deleted", [("Key", name)])

        results = await asyncio.gather(*(one(name) for name in names))
        body = s3xml.document("DeleteResult", [r for r in results if r is not None])
        return Response(200, [XML], body)

    async def _read_xml(self, req: Request, signed: Signed | None) -> bytes:
        """A request's (small) XML body, checked as any payload is."""
        if req.body.length is not None and req.body.length > s3xml.MAX_XML_BODY:
            raise MalformedXML("the XML body is too large")
        data = bytearray()
        async for chunk in self._payload(req, signed):
            data += chunk
            if len(data) > s3xml.MAX_XML_BODY:
                raise MalformedXML("the XML body is too large")
        return bytes(data)

    # --- buckets ---
    def _bucket_has_keys(self, bucket: str) -> bool:
        for _, record in self.index.items(f"/{bucket}/".encode()):
            if record.state is State.LIVE:
                return True
        return False

    def _bucket_exists(self, bucket: str) -> bool:
        return self.spool.bucket_created(bucket) is not None or self._bucket_has_keys(bucket)

    def create_bucket(self, bucket: str) -> Response:
        if not _BUCKET_NAME.match(bucket) or bucket in (".", ".."):
            raise S3Error(400, "InvalidBucketName", "The specified bucket is not valid.",
                          BucketName=bucket)
        self.spool.make_bucket(bucket)
        return Response(200, [("Location", f"/{bucket}"), ("Content-Length", "0")])

    def delete_bucket(self, bucket: str) -> Response:
        if self._bucket_has_keys(bucket):
            raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty",
                          BucketName=bucket)
        # a bucket that existed only through its keys is gone once they are: deleting it
        # succeeds too, so `aws s3 rb --force` works on one
        self.spool.remove_bucket(bucket)
        return Response(204)

    def list_buckets(self) -> Response:
        buckets = self.spool.buckets()
        start: bytes | None = b"/"
        while start is not None:
            following = None
            for key, record in self.index.items(b"/", start):
                slash = key.find(b"/", 1)
                if slash < 0 or record.state is not State.LIVE:
                    continue
                name = key[1:slash].decode("utf-8", "replace")
                buckets.setdefault(name, 0.0)
                following = _successor(key[:slash + 1])
                break
            start = following
        nodes: list[Node] = [("Bucket", [("Name", name), ("CreationDate",
                                                          s3xml.timestamp(created))])
                             for name, created in sorted(buckets.items())]
        body = s3xml.document("ListAllMyBucketsResult",
                              [("Owner", OWNER), ("Buckets", nodes)])
        return Response(200, [XML], body)

    # --- listing objects ---
    def _scan(self, bucket: str, prefix: bytes, delimiter: bytes, start: bytes,
              after: bytes | None, limit: int
              ) -> tuple[list[tuple[bytes, Record | None]], bytes | None]:
        """Up to `limit` keys (with records) and common prefixes (record None) in order, and
        where the next page starts (None: no more). `start` is inclusive, `after` exclusive."""
        base = f"/{bucket}/".encode()
        full = base + prefix
        begin = max(full, base + start, base + (after or b""))
        entries: list[tuple[bytes, Record | None]] = []
        items = self.index.items(full, begin)
        while True:
            reseek = None
            for key, record in items:
                if record.state is not State.LIVE:
                    continue
                name = key[len(base):]
                common = None
                if delimiter:
                    cut = name.find(delimiter, len(prefix))
                    if cut >= 0:
                        common = name[:cut + len(delimiter)]
                if common is not None:
                    if after is not None and common <= after and not (
                            after.startswith(common) and after != common):
                        reseek = _successor(base + common)
                        break
                    if len(entries) == limit:
                        return entries, common
                    entries.append((common, None))
                    reseek = _successor(base + common)
                    break
                if after is not None and name <= after:
                    continue
                if len(entries) == limit:
                    return entries, name
                entries.append((name, record))
            if reseek is None:
                return entries, None
            items = self.index.items(full, reseek)

    async def _contents(self, bucket: str, entries: list[tuple[bytes, Record | None]],
                        encode: Callable[[bytes], str], owner: bool) -> list[Node]:
        """<Contents> for each key listed (sizes and dates asked of replicas, a few at once)."""
        limit = asyncio.Semaphore(STAT_CONCURRENCY)

        async def one(name: bytes, record: Record) -> Node | None:
            key = f"/{bucket}/".encode() + name
            async with limit:
                info = await self.stat(key, record)
            if info is None:
                return None  # no replica has it: unreadable, so not listed
            nodes: list[Node] = [("Key", encode(name)),
                                 ("LastModified", s3xml.timestamp(info.modified)),
                                 ("ETag", self.etag(key, record, info)),
                                 ("Size", str(info.size)), ("StorageClass", "STANDARD")]
            if owner:
                nodes.append(("Owner", OWNER))
            return ("Contents", nodes)

        found = await asyncio.gather(*(one(name, record) for name, record in entries
                                       if record is not None))
        return [node for node in found if node is not None]

    async def list_objects(self, bucket: str, params: dict[str, str]) -> Response:
        v2 = params.get("list-type") == "2"
        if not self._bucket_exists(bucket):
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist",
                          BucketName=bucket)
        url = params.get("encoding-type") == "url"
        if "encoding-type" in params and not url:
            raise S3Error(400, "InvalidArgument", "Invalid Encoding Method specified in Request")

        def encode(value: bytes) -> str:
            text = value.decode("utf-8", "replace")
            return quote(text, safe="/") if url else text

        prefix = params.get("prefix", "").encode()
        delimiter = params.get("delimiter", "").encode()
        max_keys = _int_param(params, "max-keys", MAX_KEYS)
        limit = min(max_keys, MAX_KEYS)
        start, after = b"", None
        if v2:
            token = params.get("continuation-token")
            if token is not None:
                try:
                    start = base64.urlsafe_b64decode(token.encode())
                except (binascii.Error, ValueError):
                    raise S3Error(400, "InvalidArgument",
                                  "The continuation token provided is incorrect") from None
            elif params.get("start-after"):
                after = params["start-after"].encode()
        elif params.get("marker"):
            after = params["marker"].encode()
        entries, following = self._scan(bucket, prefix, delimiter, start, after, limit) \
            if limit else ([], None)
        contents = await self._contents(bucket, entries, encode,
                                        owner=not v2 or params.get("fetch-owner") == "true")
        prefixes: list[Node] = [("CommonPrefixes", [("Prefix", encode(name))])
                                for name, record in entries if record is None]
        nodes: list[Node] = [("Name", bucket), ("Prefix", encode(prefix)),
                             ("Delimiter", encode(delimiter) if delimiter else None),
                             ("MaxKeys", str(max_keys)),
                             ("EncodingType", "url" if url else None),
                             ("IsTruncated", "true" if following is not None else "false")]
        if v2:
            nodes += [("KeyCount", str(len(contents) + len(prefixes))),
                      ("ContinuationToken", params.get("continuation-token")),
                      ("StartAfter", encode(after) if after is not None else None)]
            if following is not None:
                token = base64.urlsafe_b64encode(following).decode()
                nodes.append(("NextContinuationToken", token))
        else:
            nodes.append(("Marker", encode(after or b"")))
            if following is not None and entries:
                nodes.append(("NextMarker", encode(entries[-1][0])))
        body = s3xml.document("ListBucketResult", nodes + contents + prefixes)
        return Response(200, [XML], body)

    # --- multipart uploads ---
    def create_upload(self, key: bytes) -> Response:
        self._check_storable(key)
        upload = self.spool.create(key)
        bucket = key.split(b"/")[1].decode("utf-8", "replace")
        body = s3xml.document("InitiateMultipartUploadResult", [
            ("Bucket", bucket), ("Key", _object_name(key)), ("UploadId", upload.id)])
        return Response(200, [XML], body)

    def _upload_of(self, key: bytes, upload_id: str) -> None:
        upload = self.spool.get(upload_id)
        if upload is None or upload.key != key:
            raise _no_such_upload(upload_id)

    async def upload_part(self, key: bytes, upload_id: str, params: dict[str, str],
                          req: Request, signed: Signed | None) -> Response:
        number = _int_param(params, "partNumber", 0, 1, MAX_PART_NUMBER) \
            if params.get("partNumber") else 0
        if not number:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 "
                          "and 10000, inclusive")
        self._upload_of(key, upload_id)
        if upload_id in self.completing:
            raise _no_such_upload(upload_id)
        lock, users = self._part_locks.setdefault((upload_id, number), (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                if b"x-amz-copy-source" in req.headers:
                    return await self._upload_part_copy(upload_id, number, req)
                payload = self._payload(req, signed)
                try:
                    part = await self.spool.write_part(upload_id, number, payload)
                except UploadGone:
                    raise _no_such_upload(upload_id) from None
        finally:
            users[0] -= 1
            if not users[0]:
                del self._part_locks[(upload_id, number)]
        headers = [("ETag", f'"{part.md5}"'), ("Content-Length", "0")]
        if payload.checksum:
            headers.append(payload.checksum)
        return Response(200, headers)

    async def _upload_part_copy(self, upload_id: str, number: int, req: Request) -> Response:
        source = self._copy_source(req)
        wanted = req.headers.get(b"x-amz-copy-source-range")
        header = b""
        if wanted is not None:
            if _single_range(wanted) is None:
                raise S3Error(400, "InvalidArgument", "The x-amz-copy-source-range value "
                              "must be of the form bytes=first-last")
            header = b"Range: %s\r\n" % wanted.strip()
        response = await self._open_source(source, header)
        try:
            part = await self.spool.write_part(upload_id, number,
                                               self.volumes.chunks(response))
        except UploadGone:
            raise _no_such_upload(upload_id) from None
        finally:
            if not response.body.complete:  # type: ignore[union-attr]
                response.body.abort()  # type: ignore[union-attr]
        body = s3xml.document("CopyPartResult", [
            ("LastModified", s3xml.timestamp(part.modified)), ("ETag", f'"{part.md5}"')])
        return Response(200, [XML], body)

    async def complete_upload(self, key: bytes, upload_id: str, req: Request,
                              signed: Signed | None) -> Response:
        self._upload_of(key, upload_id)
        wanted = s3xml.parse_complete(await self._read_xml(req, signed))
        numbers = [number for number, _ in wanted]
        if any(a >= b for a, b in zip(numbers, numbers[1:], strict=False)):
            raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending "
                          "order. The parts list must be specified in order by part number.",
                          UploadId=upload_id)
        if upload_id in self.completing:
            raise _busy(key)
        have = self.spool.parts(upload_id)
        parts: list[Part] = []
        for number, etag in wanted:
            part = have.get(number)
            if part is None or part.md5 != etag.lower():
                raise S3Error(400, "InvalidPart", "One or more of the specified parts could "
                              "not be found. The part may not have been uploaded, or the "
                              "specified entity tag may not match the part's entity tag.",
                              UploadId=upload_id, PartNumber=str(number), ETag=etag)
            parts.append(part)
        for part in parts[:-1]:
            if part.size < MIN_PART_SIZE:
                raise S3Error(400, "EntityTooSmall", "Your proposed upload is smaller than "
                              "the minimum allowed object size.", UploadId=upload_id,
                              PartNumber=str(part.number))
        self.completing.add(upload_id)
        try:
            md5 = await self._locked_store(key, self.spool.read(parts),
                                           sum(p.size for p in parts))
        finally:
            self.completing.discard(upload_id)
        combined = hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in parts)).hexdigest()
        etag = f"{combined}-{len(parts)}"
        if md5:
            self.spool.save_etag(key, md5, etag)
        self.spool.remove(upload_id)
        bucket = key.split(b"/")[1].decode("utf-8", "replace")
        host = req.headers.get(b"host", b"").decode("latin-1")
        body = s3xml.document("CompleteMultipartUploadResult", [
            ("Location", f"http://{host}{quote(key)}"), ("Bucket", bucket),
            ("Key", _object_name(key)), ("ETag", f'"{etag}"')])
        return Response(200, [XML], body)

    def abort_upload(self, key: bytes, upload_id: str) -> Response:
        self._upload_of(key, upload_id)
        if upload_id in self.completing:
            raise _busy(key)
        self.spool.remove(upload_id)
        return Response(204)

    def list_parts(self, key: bytes, upload_id: str, params: dict[str, str]) -> Response:
        self._upload_of(key, upload_id)
        max_parts = _int_param(params, "max-parts", MAX_KEYS)
        marker = _int_param(params, "part-number-marker", 0)
        parts = sorted((p for p in self.spool.parts(upload_id).values() if p.number > marker),
                       key=lambda p: p.number)
        page = parts[:min(max_parts, MAX_KEYS)]
        truncated = len(parts) > len(page)
        bucket = key.split(b"/")[1].decode("utf-8", "replace")
        nodes: list[Node] = [
            ("Bucket", bucket), ("Key", _object_name(key)), ("UploadId", upload_id),
            ("Initiator", OWNER), ("Owner", OWNER), ("StorageClass", "STANDARD"),
            ("PartNumberMarker", str(marker)),
            ("NextPartNumberMarker", str(page[-1].number) if page else None),
            ("MaxParts", str(max_parts)), ("IsTruncated", "true" if truncated else "false")]
        nodes += [("Part", [("PartNumber", str(p.number)),
                            ("LastModified", s3xml.timestamp(p.modified)),
                            ("ETag", f'"{p.md5}"'), ("Size", str(p.size))]) for p in page]
        return Response(200, [XML], s3xml.document("ListPartsResult", nodes))

    def list_uploads(self, bucket: str, params: dict[str, str]) -> Response:
        prefix = f"/{bucket}/{params.get('prefix', '')}".encode()
        key_marker = params.get("key-marker", "")
        id_marker = params.get("upload-id-marker", "")
        max_uploads = _int_param(params, "max-uploads", MAX_KEYS)
        uploads = sorted((u for u in self.spool.uploads() if u.key.startswith(prefix)),
                         key=lambda u: (u.key, u.initiated, u.id))
        if key_marker:
            mark = f"/{bucket}/{key_marker}".encode()
            uploads = [u for u in uploads if u.key > mark or (
                u.key == mark and id_marker and u.id > id_marker)]
        page = uploads[:min(max_uploads, MAX_KEYS)]
        truncated = len(uploads) > len(page)
        nodes: list[Node] = [
            ("Bucket", bucket), ("KeyMarker", key_marker), ("UploadIdMarker", id_marker),
            ("NextKeyMarker", _object_name(page[-1].key) if truncated else None),
            ("NextUploadIdMarker", page[-1].id if truncated else None),
            ("Prefix", params.get("prefix", "")), ("MaxUploads", str(max_uploads)),
            ("IsTruncated", "true" if truncated else "false")]
        nodes += [("Upload", [("Key", _object_name(u.key)), ("UploadId", u.id),
                              ("Initiator", OWNER), ("Owner", OWNER),
                              ("StorageClass", "STANDARD"),
                              ("Initiated", s3xml.timestamp(u.initiated))]) for u in page]
        return Response(200, [XML], s3xml.document("ListMultipartUploadsResult", nodes))

    # --- housekeeping ---
    def _schedule_sweep(self, first: bool = False) -> None:
        ttl = self.config.s3_upload_ttl
        if ttl <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(0 if first else min(max(ttl / 4, 0.5), 3600.0), self._sweep)

    def _sweep(self) -> None:
        """Remove multipart uploads idle for longer than -s3_upload_ttl."""
        try:
            for upload_id in self.spool.sweep(self.config.s3_upload_ttl, time.time()):
                log.warning("S3: removed multipart upload %s, idle past -s3_upload_ttl",
                            upload_id)
        except OSError as e:
            log.warning("S3: cleaning the spool %s failed: %s", self.spool.root, e)
        self._schedule_sweep()


class _NotModified(Exception):
    def __init__(self, etag: str, modified: float) -> None:
        super().__init__(etag)
        self.etag = etag
        self.modified = modified
