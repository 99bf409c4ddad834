"""S3 tagging: Get/Put/DeleteObjectTagging, the tags kept with the value's metadata in the S3
state, and Get/Put/DeleteBucketTagging, kept with the bucket's settings."""

from mkv.http.messages import Request, Response
from mkv.s3 import xml as s3xml
from mkv.s3.errors import S3Error
from mkv.s3.metadata import check_tags
from mkv.s3.objects import Objects
from mkv.s3.payload import read_xml
from mkv.s3.sigv4 import Signed
from mkv.s3.state import METADATA, S3State
from mkv.s3.xml import XML


class Tagging:
    """Object tags in the S3 state's metadata, for the live value (read through the objects
    service) and its md5; bucket tags in the bucket's settings."""

    def __init__(self, state: S3State, objects: Objects) -> None:
        self.state = state
        self.objects = objects

    async def bucket_tagging(self, method: bytes, bucket: str, req: Request,
                             signed: Signed | None) -> Response:
        settings = await self.objects.buckets.settings(bucket)
        if method == b"GET":
            tags = (settings or {}).get("tags")
            if not tags:
                raise S3Error(404, "NoSuchTagSet", "The TagSet does not exist",
                              BucketName=bucket)
            return Response(200, [XML], s3xml.document("Tagging", [("TagSet", [
                ("Tag", [("Key", k), ("Value", v)]) for k, v in tags])]))
        tags = check_tags(s3xml.parse_tagging(await read_xml(req, signed))) \
            if method == b"PUT" else None
        await self.objects.buckets.set_setting(bucket, "tags", tags)
        return Response(200 if method == b"PUT" else 204)

    async def object_tagging(self, method: bytes, key: bytes, req: Request,
                             signed: Signed | None) -> Response:
        record = await self.objects.live(key)
        saved = (await self.state.kept(key, record.md5)).metadata or {"headers": [], "tags": []}
        if method == b"GET":
            tags = [("Tag", [("Key", k), ("Value", v)])  # by key, as RGW answers
                    for k, v in sorted(saved.get("tags", []))]
            return Response(200, [XML], s3xml.document("Tagging", [("TagSet", tags)]))
        if method == b"PUT":
            saved["tags"] = check_tags(s3xml.parse_tagging(await read_xml(req, signed)))
        elif method == b"DELETE":
            saved["tags"] = []
        else:
            raise S3Error(405, "MethodNotAllowed", "The specified method is not allowed "
                          "against this resource.")
        await self.state.keep(METADATA, key, record.md5, saved)
        return Response(200 if method == b"PUT" else 204)
