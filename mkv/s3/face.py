"""The S3 face: path-style S3 requests, recognised, authenticated and answered as S3 answers.

Bucket `b` and object `k` are mkv key `/b/k` (SPEC §5), so S3 and the native API see the same
data. Objects are read through the master (boto3 does not follow redirects), streamed from one
replica with backpressure; writes go through `Store.write` like a native REPLACE. A bucket is a
key prefix: it exists while it holds a live key, or after CreateBucket until DeleteBucket.
Multipart uploads, bucket markers, multipart ETags and metadata are the S3 state
(mkv/s3/state.py): in the spool beside a LevelDB index, in the database beside a PostgreSQL
one (shared by every master), as `open_state` picks.
Each concern has its module (objects, deletes, forms, buckets, listings, multipart); this one
routes to them.
"""

import asyncio
import hashlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path

from mkv.http.client import VolumeError
from mkv.http.messages import Request, Response
from mkv.http.target import parse_key
from mkv.index import IndexUnavailable, is_postgres_url
from mkv.index.base import KeyBusy
from mkv.s3 import xml as s3xml
from mkv.s3.awschunked import BadPayload
from mkv.s3.buckets import Buckets
from mkv.s3.deletes import Deletes
from mkv.s3.errors import S3Error, no_such_bucket
from mkv.s3.forms import PostObject
from mkv.s3.listings import Listings
from mkv.s3.metadata import Tagging
from mkv.s3.multipart import Uploads
from mkv.s3.objects import Objects
from mkv.s3.operations import operation
from mkv.s3.request import is_form, is_s3, params_of
from mkv.s3.sigv4 import SHA256_HEX, AuthError, Signed, is_v2, verify, verify_v2
from mkv.s3.spool import Spool
from mkv.s3.state import S3State
from mkv.s3.xml import XML, MalformedXML, Node
from mkv.store import REFUSED, Store, TooFewVolumesUp
from mkv.tasks import Tasks

log = logging.getLogger("mkv")

__all__ = ["S3", "is_s3"]

_NOT_IMPLEMENTED = frozenset(
    "acl policy cors lifecycle website logging notification replication encryption "
    "object-lock retention legal-hold restore select attributes versions torrent analytics "
    "inventory metrics accelerate requestPayment ownershipControls publicAccessBlock "
    "intelligent-tiering".split())
_READS = (b"GET", b"HEAD")
_WRITES = (b"PUT", b"POST")


def _checks_its_body(method: bytes, on_object: bool, params: dict[str, str],
                     req: Request) -> bool:
    """Whether the operation reads its body through `Payload` (objects.py), which checks it
    against the signed payload hash: object and part uploads, and the XML bodies of Complete,
    DeleteObjects and PutObjectTagging."""
    if method == b"PUT":
        return on_object and b"x-amz-copy-source" not in req.headers
    return method == b"POST" and ("uploadId" in params if on_object else "delete" in params)


async def _check_unread_body(req: Request, payload_hash: str) -> None:
    """A signed hash binds a body the operation does not read too: it must match, so that a
    presigned URL is used only with the body it was made for. Read up to MAX_XML_BODY."""
    if not SHA256_HEX.fullmatch(payload_hash):  # UNSIGNED-PAYLOAD, STREAMING-…
        return
    digest, size = hashlib.sha256(), 0
    async for chunk in req.body:
        size += len(chunk)
        if size > s3xml.MAX_XML_BODY:
            raise S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.")
        digest.update(chunk)
    if digest.hexdigest() != payload_hash:
        raise S3Error(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                      "header does not match what was computed.")


def open_state(store: Store) -> S3State:
    """The S3 state for the store's index: shared tables beside a PostgreSQL index (their
    connections opened on first use), else the spool directory (`-s3_spool`, by default
    `<db>.s3`)."""
    if is_postgres_url(store.config.db):
        from mkv.s3.pgstate import PostgresState  # asyncpg only loaded when used

        return PostgresState(store)
    return Spool(Path(store.config.s3_spool or f"{store.config.db.rstrip('/')}.s3"))


class S3(Objects, Deletes, PostObject, Buckets, Listings, Uploads, Tagging):
    """Answers S3 requests over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = store.config
        self.index = store.index
        self.volumes = store.volumes
        self.secrets = dict(store.config.s3_keys)
        self.state = open_state(store)
        store.on_change.append(self.state.forget)
        # requests answered, by operation and error code ("" for success): for the metrics
        self.answered: defaultdict[tuple[str, str], int] = defaultdict(int)
        # one writer at a time per (upload, part number), with a count of who wants it
        self._part_locks: dict[tuple[str, int], tuple[asyncio.Lock, list[int]]] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._tasks = Tasks()  # the sweep of stale uploads, while it runs
        self._schedule_sweep(first=True)

    async def close(self) -> None:
        """Stop sweeping; close the S3 state's connections (which ends what a sweep under way
        still waits on), then await the sweep."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._tasks.cancel()
        await self.state.close()
        await self._tasks.close()

    # --- entry ---
    def handle(self, req: Request) -> Awaitable[Response]:
        """An S3 request on the main port: buckets are implicit, as in Go mkv (a write into
        one that does not exist makes it)."""
        return self._answer(req, strict_buckets=False)

    def handle_own_port(self, req: Request) -> Awaitable[Response]:
        """A request on -s3_port: S3's bucket rules (NoSuchBucket for writes into a bucket
        never created)."""
        return self._answer(req, strict_buckets=True)

    async def _answer(self, req: Request, strict_buckets: bool) -> Response:
        request_id = secrets.token_hex(8).upper()
        code = ""
        key, params = parse_key(req.path), params_of(req.query)  # the metrics' label too
        try:
            response = await self._dispatch(req, key, params, strict_buckets)
        except S3Error as e:
            code, response = e.code, self._error(e.status, e.code, e.message, req, request_id,
                                                 e.extra)
        except BadPayload as e:
            code, response = e.code, self._error(e.status, e.code, e.message, req, request_id,
                                                 {})
        except MalformedXML as e:
            code = "MalformedXML"
            response = self._error(400, code, str(e), req, request_id, {})
        except TooFewVolumesUp as e:
            code = "ServiceUnavailable"
            response = self._error(503, code, str(e), req, request_id, {})
        except (IndexUnavailable, KeyBusy) as e:  # the index down, the key another master's
            status = REFUSED[KeyBusy if isinstance(e, KeyBusy) else IndexUnavailable]
            code = "OperationAborted" if status == 409 else "ServiceUnavailable"
            response = self._error(status, code, str(e), req, request_id, {})
        except VolumeError as e:
            log.warning("S3 %s %s: %s", req.method.decode(), req.path.decode(errors="replace"), e)
            code = "InternalError"
            response = self._error(500, code, f"a volume failed: {e}", req, request_id, {})
        self.answered[operation(req.method, key if isinstance(key, bytes) else b"/", params,
                                req.headers), code] += 1
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
            raise S3Error(e.status, e.code, e.message, **e.extra) from None

    async def _dispatch(self, req: Request, key: bytes | str, params: dict[str, str],
                        strict_buckets: bool) -> Response:
        # POST Object's form carries its signature in its fields (forms.check_signature)
        form = req.method == b"POST" and is_form(req) and not req.query
        signed = None if form else self._authenticate(req)
        if isinstance(key, str):
            raise S3Error(400, "InvalidArgument", key)
        unsupported = _NOT_IMPLEMENTED.intersection(params)
        if unsupported:
            raise S3Error(501, "NotImplemented", f"mkv does not implement the "
                          f"{sorted(unsupported)[0]} subresource")
        method = req.method
        if key == b"/" or key == b"":
            if method == b"GET":
                return await self.list_buckets(params)
            raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed "
                          "against this resource.")
        slash = key.find(b"/", 1)
        bucket = (key[1:] if slash < 0 else key[1:slash]).decode("utf-8", "replace")
        on_object = 0 < slash < len(key) - 1
        if signed is not None and not _checks_its_body(method, on_object, params, req):
            await _check_unread_body(req, signed.payload_hash)
        if slash < 0 or slash == len(key) - 1:
            if strict_buckets and (method == b"DELETE" or form) \
                    and not await self._bucket_exists(bucket):
                raise no_such_bucket(bucket)
            if form:
                return await self.post_object(bucket, req)
            return await self._bucket_request(method, bucket, params, req, signed)
        if form:
            raise S3Error(405, "MethodNotAllowed", "POST Object goes to the bucket's URL")
        if strict_buckets and method in _WRITES and not await self._bucket_exists(bucket):
            raise no_such_bucket(bucket)
        return await self._object_request(method, key, params, req, signed)

    async def _bucket_request(self, method: bytes, bucket: str, params: dict[str, str],
                              req: Request, signed: Signed | None) -> Response:
        if method == b"GET":
            if "uploads" in params:
                return await self.list_uploads(bucket, params)
            if "location" in params:
                return Response(200, [XML], s3xml.document("LocationConstraint", []))
            if "versioning" in params:
                return Response(200, [XML], s3xml.document("VersioningConfiguration", []))
            return await self.list_objects(bucket, params)
        if method == b"HEAD":
            if not await self._bucket_exists(bucket):
                raise no_such_bucket(bucket)
            return Response(200, [("Content-Length", "0")])
        if "tagging" in params:
            raise S3Error(501, "NotImplemented", "mkv does not implement bucket tagging")
        if method == b"PUT":
            if set(params) - {"x-id"}:
                raise S3Error(501, "NotImplemented", "mkv does not implement this bucket "
                              "configuration")
            return await self.create_bucket(bucket)
        if method == b"DELETE":
            return await self.delete_bucket(bucket)
        if method == b"POST" and "delete" in params:
            return await self.delete_objects(bucket, req, signed)
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against "
                      "this resource.")

    async def _object_request(self, method: bytes, key: bytes, params: dict[str, str],
                              req: Request, signed: Signed | None) -> Response:
        upload_id = params.get("uploadId")
        if "tagging" in params:
            return await self.object_tagging(method, key, req, signed)
        if method in _READS:
            if upload_id is not None and method == b"GET":
                return await self.list_parts(key, upload_id, params)
            return await self.get_object(key, req, params, head=method == b"HEAD")
        if method == b"PUT":
            if upload_id is not None or "partNumber" in params:
                return await self.upload_part(key, upload_id or "", params, req, signed)
            if b"x-amz-copy-source" in req.headers:
                return await self.copy_object(key, req)
            return await self.put_object(key, req, signed)
        if method == b"POST":
            if "uploads" in params:
                return await self.create_upload(key, req)
            if upload_id is not None:
                return await self.complete_upload(key, upload_id, req, signed)
        if method == b"DELETE":
            if upload_id is not None:
                return await self.abort_upload(key, upload_id)
            return await self.delete_object(key, req)
        raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed against "
                      "this resource.")
