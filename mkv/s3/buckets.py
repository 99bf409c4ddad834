"""S3 buckets: a bucket is a key prefix, there while it holds a live key or from CreateBucket
to DeleteBucket (a marker in the S3 state, mkv/s3/state.py, which keeps its settings: owner,
ACL, lifecycle rules)."""

import re

from mkv.http.messages import Request, Response
from mkv.record import State, successor
from mkv.s3 import xml as s3xml
from mkv.s3.access import Access, access_denied
from mkv.s3.errors import S3Error, no_such_bucket
from mkv.s3.grants import ANONYMOUS_OWNER, acl_of_headers, private
from mkv.s3.request import decode_token, encode_token, int_param
from mkv.s3.state import S3State
from mkv.s3.xml import XML, Node
from mkv.store import Store

# S3's rules for a new bucket: 3-63 lower-case letters, digits, dots and hyphens, a letter or
# digit at each end, no "..", ".-" or "-." (DNS labels), not an IP address
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
MAX_BUCKETS = 10_000  # the most one ListBuckets page holds, as on S3


def valid_bucket_name(name: str) -> bool:
    return bool(_BUCKET_NAME.match(name)) and not _IP_ADDRESS.match(name) \
        and not any(pair in name for pair in ("..", ".-", "-."))


class Buckets:
    """Buckets over the store's index (a bucket's live keys) and the S3 state (its marker),
    owned as the access rules say."""

    def __init__(self, store: Store, state: S3State, access: Access) -> None:
        self.index = store.index
        self.state = state
        self.access = access

    async def _has_keys(self, bucket: str) -> bool:
        async for _, record in self.index.items(f"/{bucket}/".encode()):
            if record.state is State.LIVE:
                return True
        return False

    async def exists(self, bucket: str) -> bool:
        return (await self.state.bucket_created(bucket) is not None
                or await self._has_keys(bucket))

    async def settings(self, bucket: str) -> dict | None:
        """A bucket's settings (None: it has no marker, only keys); NoSuchBucket if it is
        not there at all."""
        settings = await self.access.settings(bucket)
        if settings is None and not await self.exists(bucket):
            raise no_such_bucket(bucket)
        return settings

    async def set_setting(self, bucket: str, field: str, value: object) -> None:
        """Set one field of a bucket's settings (None removes it); a bucket there by its keys
        alone gets a marker to keep them."""
        if not await self.state.set_bucket_setting(bucket, field, value):
            await self.state.make_bucket(bucket, {})
            await self.state.set_bucket_setting(bucket, field, value)
        self.access.changed(bucket)

    async def head_bucket(self, bucket: str) -> Response:
        if not await self.exists(bucket):
            raise no_such_bucket(bucket)
        return Response(200, [("Content-Length", "0")])

    async def location(self) -> Response:
        """GetBucketLocation: the default region, for every bucket."""
        return Response(200, [XML], s3xml.document("LocationConstraint", []))

    async def versioning(self) -> Response:
        """GetBucketVersioning: never enabled."""
        return Response(200, [XML], s3xml.document("VersioningConfiguration", []))

    async def create_bucket(self, bucket: str, caller: str | None, req: Request) -> Response:
        """CreateBucket: the caller owns the bucket made. Made again by its owner with the
        same ACL it is left as it is (200, as S3 answers in us-east-1); by anyone else, or
        with another ACL, 409."""
        if not valid_bucket_name(bucket):
            raise S3Error(400, "InvalidBucketName", "The specified bucket is not valid.",
                          BucketName=bucket)
        settings: dict = {"acl": acl_of_headers(req.headers, self.access.keys or None)
                          or private()}
        if self.access.enforced:
            if caller is None:
                raise access_denied()
            # a bucket that held keys before it had a marker stays every key's, as it was
            if not await self._has_keys(bucket):
                settings["owner"] = caller
        made = await self.state.make_bucket(bucket, settings)
        self.access.changed(bucket)
        existing = None if made else await self.access.settings(bucket) or {}
        # its owner may make it again, as long as it asks for the ACL it has (as RGW has it)
        if existing is not None and (not self.access.owns(caller, existing)
                                     or existing.get("acl", private()) != settings["acl"]):
            raise S3Error(409, "BucketAlreadyExists", "The requested bucket name is not "
                          "available. The bucket namespace is shared by all users of the "
                          "system. Please select a different name and try again.",
                          BucketName=bucket)
        return Response(200, [("Location", f"/{bucket}"), ("Content-Length", "0")])

    async def delete_bucket(self, bucket: str) -> Response:
        if await self._has_keys(bucket):
            raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty",
                          BucketName=bucket)
        # a bucket that existed only through its keys is gone once they are: deleting it
        # succeeds too, so `aws s3 rb --force` works on one
        await self.state.remove_bucket(bucket)
        self.access.changed(bucket)
        return Response(204)

    async def list_buckets(self, params: dict[str, str], caller: str | None) -> Response:
        """ListBuckets, by name, those the caller owns; with `max-buckets`, pages that
        `continuation-token` goes on from, and only the names starting with `prefix`."""
        if self.access.enforced and caller is None:  # anonymous owns nothing, as RGW answers
            return Response(200, [XML], s3xml.document("ListAllMyBucketsResult", [
                ("Owner", [("ID", ANONYMOUS_OWNER), ("DisplayName", ANONYMOUS_OWNER)]),
                ("Buckets", [])]))
        prefix = params.get("prefix", "")
        limit = int_param(params, "max-buckets", MAX_BUCKETS, 1, MAX_BUCKETS)
        token = params.get("continuation-token")
        after = decode_token(token).decode("utf-8", "replace") if token else ""
        buckets = {name: created for name, created in (await self.state.buckets()).items()
                   if name.startswith(prefix)}
        start: bytes | None = f"/{prefix}".encode()
        while start is not None:
            following = None
            async for key, record in self.index.items(f"/{prefix}".encode(), start):
                slash = key.find(b"/", 1)
                if slash < 0 or record.state is not State.LIVE:
                    continue
                name = key[1:slash].decode("utf-8", "replace")
                buckets.setdefault(name, 0.0)
                following = successor(key[:slash + 1])
                break
            start = following
        names = await self.access.visible_buckets(
            caller, sorted(name for name in buckets if name > after))
        page = names[:limit]
        owner = caller or ANONYMOUS_OWNER
        nodes: list[Node] = [("Bucket", [("Name", name), ("CreationDate",
                                                          s3xml.timestamp(buckets[name]))])
                             for name in page]
        body = s3xml.document("ListAllMyBucketsResult", [
            ("Owner", [("ID", owner), ("DisplayName", owner)]),
            ("Buckets", nodes),
            ("ContinuationToken", encode_token(page[-1].encode())
             if len(names) > len(page) else None),
            ("Prefix", prefix if "prefix" in params else None)])
        return Response(200, [XML], body)
