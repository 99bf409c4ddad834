"""The S3 face: path-style S3 requests, recognised, authenticated and answered as S3 answers.

Bucket `b` and object `k` are mkv key `/b/k` (SPEC §5), so S3 and the native API see the same
data. Objects are read through the master (boto3 does not follow redirects), streamed from one
replica with backpressure; writes go through `Store.write` like a native REPLACE. A bucket is a
key prefix: it exists while it holds a live key, or after CreateBucket until DeleteBucket.
Multipart uploads, bucket markers, multipart ETags and metadata are the S3 state
(mkv/s3/state.py): in the spool beside a LevelDB index, in the database beside a PostgreSQL
one (shared by every master), as `open_state` (mkv/s3/engine.py) picks.
Each concern is a service with its own module, built with what it needs: objects, uploads
(multipart), buckets, listings, forms (POST Object), tagging, deletes. This module
authenticates a request and routes it by the tables below (SPEC §5's operations), each row
naming the service that answers.
"""

import hashlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from mkv.http.client import VolumeError
from mkv.http.messages import Request, Response
from mkv.http.target import parse_key
from mkv.index import IndexUnavailable
from mkv.index.base import KeyBusy
from mkv.s3 import xml as s3xml
from mkv.s3.access import OWNER, Access, access_denied
from mkv.s3.acl import Acls
from mkv.s3.awschunked import BadPayload
from mkv.s3.buckets import Buckets
from mkv.s3.deletes import Deletes
from mkv.s3.engine import open_state
from mkv.s3.errors import S3Error, no_such_bucket
from mkv.s3.expiry import Lifecycle
from mkv.s3.forms import Forms
from mkv.s3.grants import READ, READ_ACP, WRITE, WRITE_ACP, acl_of_headers
from mkv.s3.listings import Listings
from mkv.s3.multipart import Uploads
from mkv.s3.objects import Objects
from mkv.s3.operations import operation
from mkv.s3.request import is_form, is_s3, params_of
from mkv.s3.sigv4 import SHA256_HEX, AuthError, Signed, is_v2, verify, verify_v2
from mkv.s3.tagging import Tagging
from mkv.s3.xml import XML, MalformedXML, Node
from mkv.store import REFUSED, Store, TooFewVolumesUp

log = logging.getLogger("mkv")

__all__ = ["S3", "is_s3"]

_NOT_IMPLEMENTED = frozenset(
    "policy cors website logging notification replication encryption "
    "object-lock retention legal-hold restore select torrent analytics "
    "inventory metrics accelerate requestPayment ownershipControls publicAccessBlock "
    "intelligent-tiering".split())
_WRITES = (b"PUT", b"POST")


def _checks_its_body(method: bytes, on_object: bool, params: dict[str, str],
                     req: Request) -> bool:
    """Whether the operation reads its body through `payload_of` (payload.py), which checks it
    against the signed payload hash: object and part uploads, and the XML bodies of Complete,
    DeleteObjects, PutObjectTagging, Put*Acl and PutBucketLifecycle."""
    if method == b"PUT":
        if "acl" in params or "lifecycle" in params or "tagging" in params:
            return True
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


class Call(NamedTuple):
    """One S3 request on a bucket or an object, as the routes pass it to a service."""

    method: bytes
    key: bytes  # /bucket/object, or /bucket
    bucket: str
    params: dict[str, str]
    req: Request
    signed: Signed | None  # what signed chunks are checked with (SigV4 with -s3_keys)
    caller: str | None  # the access key that signed it; None: anonymous, or no -s3_keys


class Route(NamedTuple):
    """AWS's name for an operation; the methods (None: any) and the test (None: always) a
    request meets to be it; what the caller must be allowed (mkv/s3/access.py); who answers
    it."""

    name: str
    methods: tuple[bytes, ...] | None
    when: Callable[[Call], bool] | None
    needs: tuple[tuple[str, str], ...]  # (of what: bucket, object or copy source; permission)
    answer: Callable[["S3", Call], Awaitable[Response]]


def has(*params: str) -> Callable[[Call], bool]:
    return lambda c: any(param in c.params for param in params)


def copying(c: Call) -> bool:
    return b"x-amz-copy-source" in c.req.headers


def refuse(status: int, code: str, message: str) -> Callable[["S3", Call], Awaitable[Response]]:
    async def answer(s3: "S3", c: Call) -> Response:
        raise S3Error(status, code, message)
    return answer


GET, HEAD, PUT, POST, DELETE = (b"GET",), (b"HEAD",), (b"PUT",), (b"POST",), (b"DELETE",)
BUCKET_READ, BUCKET_WRITE, BUCKET_OWNER = ("bucket", READ), ("bucket", WRITE), ("bucket", OWNER)
OBJECT_READ, SOURCE_READ = ("object", READ), ("source", READ)
ANYONE = ()  # checked by the operation itself

# SPEC §5 on /bucket: the first row that fits the request answers it; none, 405. (ListBuckets
# is on /, POST Object is a form POSTed to /bucket: both before these tables, in _dispatch.)
BUCKET_ROUTES = (
    Route("ListMultipartUploads", GET, has("uploads"), (BUCKET_READ,),
          lambda s3, c: s3.uploads.list_uploads(c.bucket, c.params)),
    Route("GetBucketLocation", GET, has("location"), (BUCKET_READ,),
          lambda s3, c: s3.buckets.location()),
    Route("GetBucketVersioning", GET, has("versioning"), (BUCKET_READ,),
          lambda s3, c: s3.buckets.versioning()),
    Route("ListObjectVersions", GET, has("versions"), (BUCKET_READ,),
          lambda s3, c: s3.listings.list_versions(c.bucket, c.params)),
    Route("GetBucketAcl", GET, has("acl"), (("bucket", READ_ACP),),
          lambda s3, c: s3.acls.bucket_acl(c.method, c.bucket, c.req, c.signed)),
    Route("PutBucketAcl", PUT, has("acl"), (("bucket", WRITE_ACP),),
          lambda s3, c: s3.acls.bucket_acl(c.method, c.bucket, c.req, c.signed)),
    Route("Get/Put/DeleteBucketLifecycle", GET + PUT + DELETE, has("lifecycle"),
          (BUCKET_OWNER,),
          lambda s3, c: s3.lifecycle.configuration(c.method, c.bucket, c.req, c.signed)),
    Route("Get/Put/DeleteBucketTagging", GET + PUT + DELETE, has("tagging"), (BUCKET_OWNER,),
          lambda s3, c: s3.tagging.bucket_tagging(c.method, c.bucket, c.req, c.signed)),
    Route("ListObjects(V2)", GET, None, (BUCKET_READ,),
          lambda s3, c: s3.listings.list_objects(c.bucket, c.params)),
    Route("HeadBucket", HEAD, None, (BUCKET_READ,), lambda s3, c: s3.buckets.head_bucket(c.bucket)),
    Route("bucket configuration", PUT, lambda c: bool(set(c.params) - {"x-id"}), ANYONE,
          refuse(501, "NotImplemented", "mkv does not implement this bucket configuration")),
    Route("CreateBucket", PUT, None, ANYONE,
          lambda s3, c: s3.buckets.create_bucket(c.bucket, c.caller, c.req)),
    Route("DeleteBucket", DELETE, None, (BUCKET_OWNER,),
          lambda s3, c: s3.buckets.delete_bucket(c.bucket)),
    Route("DeleteObjects", POST, has("delete"), (BUCKET_WRITE,),
          lambda s3, c: s3.deletes.delete_objects(c.bucket, c.req, c.signed)),
)

# SPEC §5 on /bucket/object, likewise
OBJECT_ROUTES = (
    Route("GetObjectTagging", GET, has("tagging"), (OBJECT_READ,),
          lambda s3, c: s3.tagging.object_tagging(c.method, c.key, c.req, c.signed)),
    Route("Put/DeleteObjectTagging", None, has("tagging"), (BUCKET_WRITE,),
          lambda s3, c: s3.tagging.object_tagging(c.method, c.key, c.req, c.signed)),
    Route("GetObjectAcl", GET, has("acl"), (("object", READ_ACP),),
          lambda s3, c: s3.acls.object_acl(c.method, c.bucket, c.key, c.req, c.signed)),
    Route("PutObjectAcl", PUT, has("acl"), (("object", WRITE_ACP),),
          lambda s3, c: s3.acls.object_acl(c.method, c.bucket, c.key, c.req, c.signed)),
    Route("ListParts", GET, has("uploadId"), (BUCKET_WRITE,),
          lambda s3, c: s3.uploads.list_parts(c.key, c.params["uploadId"], c.params)),
    Route("GetObjectAttributes", GET, has("attributes"), (OBJECT_READ,),
          lambda s3, c: s3.objects.object_attributes(c.key, c.req)),
    Route("GetObject", GET, None, (OBJECT_READ,),
          lambda s3, c: s3.objects.get_object(c.key, c.req, c.params, head=False)),
    Route("HeadObject", HEAD, None, (OBJECT_READ,),
          lambda s3, c: s3.objects.get_object(c.key, c.req, c.params, head=True)),
    Route("UploadPartCopy", PUT, lambda c: has("uploadId", "partNumber")(c) and copying(c),
          (BUCKET_WRITE, SOURCE_READ),
          lambda s3, c: s3.uploads.upload_part(c.key, c.params.get("uploadId") or "", c.params,
                                               c.req, c.signed)),
    Route("UploadPart", PUT, has("uploadId", "partNumber"), (BUCKET_WRITE,),
          lambda s3, c: s3.uploads.upload_part(c.key, c.params.get("uploadId") or "", c.params,
                                               c.req, c.signed)),
    Route("CopyObject", PUT, copying, (BUCKET_WRITE, SOURCE_READ),
          lambda s3, c: s3.objects.copy_object(c.key, c.req)),
    Route("PutObject", PUT, None, (BUCKET_WRITE,),
          lambda s3, c: s3.objects.put_object(c.key, c.req, c.signed)),
    Route("CreateMultipartUpload", POST, has("uploads"), (BUCKET_WRITE,),
          lambda s3, c: s3.uploads.create_upload(c.key, c.req, c.caller)),
    Route("CompleteMultipartUpload", POST, has("uploadId"), (BUCKET_WRITE,),
          lambda s3, c: s3.uploads.complete_upload(c.key, c.params["uploadId"], c.req,
                                                   c.signed)),
    Route("AbortMultipartUpload", DELETE, has("uploadId"), (BUCKET_WRITE,),
          lambda s3, c: s3.uploads.abort_upload(c.key, c.params["uploadId"])),
    Route("DeleteObject", DELETE, None, (BUCKET_WRITE,),
          lambda s3, c: s3.deletes.delete_object(c.key, c.req)),
)


def _not_allowed() -> S3Error:
    return S3Error(405, "MethodNotAllowed", "The specified method is not allowed against "
                   "this resource.")


class S3:
    """Answers S3 requests over one store, through one service per concern."""

    def __init__(self, store: Store) -> None:
        self.secrets = dict(store.config.s3_keys)
        self.state = open_state(store)
        store.on_change.append(self.state.forget)
        # requests answered, by operation and error code ("" for success): for the metrics
        self.answered: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.access = Access(store.index, self.state, set(self.secrets))
        self.buckets = Buckets(store, self.state, self.access)
        self.objects = Objects(store, self.state, self.buckets)
        self.uploads = Uploads(store, self.state, self.objects)  # starts its sweep
        self.listings = Listings(store, self.state, self.buckets, self.objects)
        self.forms = Forms(self.objects, self.secrets, self.access)
        self.tagging = Tagging(self.state, self.objects)
        self.deletes = Deletes(store, self.objects)
        self.acls = Acls(self.state, self.access, self.buckets, self.objects)
        self.lifecycle = Lifecycle(store, self.state, self.buckets, self.deletes,
                                   self.objects)  # starts its passes

    async def close(self) -> None:
        """Stop sweeping and expiring; close the S3 state's connections (which ends what a
        sweep under way still waits on), then await the sweep and the pass."""
        self.uploads.stop_sweeping()
        self.lifecycle.stop()
        await self.state.close()
        await self.uploads.closed()
        await self.lifecycle.closed()

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

    def _authenticate(self, req: Request) -> tuple[Signed | None, str | None]:
        """With -s3_keys, check the signature: what signed chunks are checked with (V4), and
        the caller's access key (None: anonymous, allowed what the ACLs allow)."""
        if not self.secrets:
            return None, None
        query, headers = req.query, req.headers
        if b"authorization" not in headers and b"X-Amz-Signature" not in query \
                and b"AWSAccessKeyId" not in query:
            return None, None
        try:
            if is_v2(query, headers):
                return None, verify_v2(req.method, req.path, query, headers, self.secrets)
            signed = verify(req.method, req.path, query, headers, self.secrets)
            return signed, signed.access_key
        except AuthError as e:
            raise S3Error(e.status, e.code, e.message, **e.extra) from None

    async def _check_access(self, call: Call, needs: tuple[tuple[str, str], ...]) -> None:
        expected = call.req.headers.get(b"x-amz-expected-bucket-owner")
        if expected is not None and expected.decode("latin-1").strip() != \
                self.access.owner(await self.access.settings(call.bucket)):
            raise access_denied()  # the bucket is not whose the caller thinks, as on S3
        for what, permission in needs:
            if what == "bucket":
                await self.access.check_bucket(call.caller, call.bucket, permission)
            elif what == "object":
                await self.access.check_object(call.caller, call.bucket, call.key, permission)
            else:  # the copy source, an object of its own bucket
                source = self.objects.copy_source(call.req)
                bucket = source[1:source.find(b"/", 1)].decode("utf-8", "replace")
                await self.access.check_object(call.caller, bucket, source, permission)

    async def _dispatch(self, req: Request, key: bytes | str, params: dict[str, str],
                        strict_buckets: bool) -> Response:
        if req.method == b"OPTIONS":  # a CORS preflight: no bucket has CORS rules here
            if b"origin" not in req.headers:
                raise S3Error(400, "BadRequest", "Insufficient information. Origin request "
                              "header needed.")
            raise S3Error(403, "AccessForbidden", "CORSResponse: CORS is not enabled for "
                          "this bucket.")
        # POST Object's form carries its signature in its fields (forms.check_signature)
        form = req.method == b"POST" and is_form(req) and not req.query
        signed, caller = (None, None) if form else self._authenticate(req)
        if isinstance(key, str):
            raise S3Error(400, "InvalidArgument", key)
        if self.secrets:  # a grant must name an access key there is
            acl_of_headers(req.headers, self.access.keys)
        unsupported = _NOT_IMPLEMENTED.intersection(params)
        if unsupported:
            raise S3Error(501, "NotImplemented", f"mkv does not implement the "
                          f"{sorted(unsupported)[0]} subresource")
        method = req.method
        if key == b"/" or key == b"":
            if method == b"GET":  # ListBuckets
                return await self.buckets.list_buckets(params, caller)
            raise _not_allowed()
        slash = key.find(b"/", 1)
        bucket = (key[1:] if slash < 0 else key[1:slash]).decode("utf-8", "replace")
        on_object = 0 < slash < len(key) - 1
        if signed is not None and not _checks_its_body(method, on_object, params, req):
            await _check_unread_body(req, signed.payload_hash)
        if not on_object:
            if strict_buckets and (method == b"DELETE" or form) \
                    and not await self.buckets.exists(bucket):
                raise no_such_bucket(bucket)
            if form:  # PostObject
                return await self.forms.post_object(bucket, req)
            routes = BUCKET_ROUTES
        else:
            if form:
                raise S3Error(405, "MethodNotAllowed", "POST Object goes to the bucket's URL")
            if strict_buckets and method in _WRITES and not await self.buckets.exists(bucket):
                raise no_such_bucket(bucket)
            routes = OBJECT_ROUTES
        call = Call(method, key, bucket, params, req, signed, caller)
        for route in routes:
            if (route.methods is None or method in route.methods) \
                    and (route.when is None or route.when(call)):
                await self._check_access(call, route.needs)
                return await route.answer(self, call)
        raise _not_allowed()
