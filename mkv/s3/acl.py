"""S3 ACL operations: Get/PutBucketAcl and Get/PutObjectAcl, in canned, header-grant and
AccessControlPolicy forms. A bucket's ACL is kept with its settings, an object's with its
metadata (mkv/s3/state.py); who may call these is checked by the face (mkv/s3/access.py)."""

from mkv.http.messages import Request, Response
from mkv.s3.access import Access
from mkv.s3.buckets import Buckets
from mkv.s3.grants import Grant, acl_of_headers, parse_policy, policy_document, private
from mkv.s3.objects import Objects
from mkv.s3.payload import read_xml
from mkv.s3.sigv4 import Signed
from mkv.s3.state import METADATA, S3State
from mkv.s3.xml import XML


class Acls:
    """ACLs of buckets (their settings) and objects (their metadata), for the live value."""

    def __init__(self, state: S3State, access: Access, buckets: Buckets,
                 objects: Objects) -> None:
        self.state = state
        self.access = access
        self.buckets = buckets
        self.objects = objects

    async def _asked(self, req: Request, signed: Signed | None, owner: str) -> list[Grant]:
        """The ACL a Put*Acl asks for: its headers' (canned or grants), else its body's."""
        grants = acl_of_headers(req.headers, self.access.keys or None)
        if grants is not None:
            return grants
        return parse_policy(await read_xml(req, signed), owner, self.access.keys or None)

    async def bucket_acl(self, method: bytes, bucket: str, req: Request,
                         signed: Signed | None) -> Response:
        settings = await self.buckets.settings(bucket)
        owner = self.access.owner(settings)
        if method == b"GET":
            return Response(200, [XML], policy_document(owner, (settings or {}).get("acl",
                                                                                    private())))
        await self.buckets.set_setting(bucket, "acl", await self._asked(req, signed, owner))
        return Response(200, [("Content-Length", "0")])

    async def object_acl(self, method: bytes, bucket: str, key: bytes, req: Request,
                         signed: Signed | None) -> Response:
        record = await self.objects.live(key)
        settings = await self.access.settings(bucket)
        owner = self.access.owner(settings)
        if method == b"GET":
            _, grants, _ = await self.access.object_grants(bucket, key)
            return Response(200, [XML], policy_document(owner, grants))
        grants = await self._asked(req, signed, owner)
        saved = (await self.state.kept(key, record.md5)).metadata or {"headers": [],
                                                                      "tags": []}
        saved["acl"] = grants
        await self.state.keep(METADATA, key, record.md5, saved)
        return Response(200, [("Content-Length", "0")])
