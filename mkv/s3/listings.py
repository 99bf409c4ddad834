"""S3 listings: ListObjects V1 and V2 (prefix, delimiter, pages), and ListObjectVersions (a
bucket is never versioned: each object is its one version, `null`), with sizes and dates from
the replicas."""

import asyncio
from collections.abc import Callable
from urllib.parse import quote

from mkv.http.messages import Response
from mkv.record import Record, State, successor
from mkv.s3 import xml as s3xml
from mkv.s3.buckets import Buckets
from mkv.s3.errors import S3Error, no_such_bucket
from mkv.s3.objects import Objects, etag_of
from mkv.s3.request import MAX_KEYS, decode_token, encode_token, int_param
from mkv.s3.state import S3State
from mkv.s3.xml import XML, Node
from mkv.store import Store

STAT_CONCURRENCY = 32  # replicas asked at once for the sizes and dates of a listing


class Listings:
    """Listings over the store's index, with multipart ETags from the S3 state, sizes and
    dates asked of replicas through the objects service, NoSuchBucket from the buckets'."""

    def __init__(self, store: Store, state: S3State, buckets: Buckets, objects: Objects
                 ) -> None:
        self.index = store.index
        self.state = state
        self.buckets = buckets
        self.objects = objects

    async def _scan(self, bucket: str, prefix: bytes, delimiter: bytes, start: bytes,
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
            async for key, record in items:
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
                        reseek = successor(base + common)
                        break
                    if len(entries) == limit:
                        return entries, common
                    entries.append((common, None))
                    reseek = successor(base + common)
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
                        encode: Callable[[bytes], str], owner: bool,
                        element: str = "Contents") -> list[Node]:
        """<Contents> (or <Version>) for each key listed (sizes and dates asked of replicas, a
        few at once)."""
        limit = asyncio.Semaphore(STAT_CONCURRENCY)
        shown = self.buckets.access.owner(await self.buckets.access.settings(bucket))
        version: list[Node] = [("VersionId", "null"), ("IsLatest", "true")]

        async def one(name: bytes, record: Record) -> Node | None:
            key = f"/{bucket}/".encode() + name
            async with limit:
                info = await self.objects.stat(key, record)
            if info is None:
                return None  # no replica has it: unreadable, so not listed
            nodes: list[Node] = [("Key", encode(name)),
                                 *(version if element == "Version" else ()),
                                 ("LastModified", s3xml.timestamp(info.modified)),
                                 ("ETag", etag_of(record, etags.get(key), info)),
                                 ("Size", str(info.size)), ("StorageClass", "STANDARD")]
            if owner:
                nodes.append(("Owner", [("ID", shown), ("DisplayName", shown)]))
            return (element, nodes)

        etags = await self.state.multipart_etags({f"/{bucket}/".encode() + name: record.md5
                                                  for name, record in entries
                                                  if record is not None})
        found = await asyncio.gather(*(one(name, record) for name, record in entries
                                       if record is not None))
        return [node for node in found if node is not None]

    async def _encoder(self, bucket: str, params: dict[str, str]
                       ) -> tuple[bool, Callable[[bytes], str]]:
        """Whether the listing is URL-encoded, and how a name is written in it; NoSuchBucket
        first."""
        if not await self.buckets.exists(bucket):
            raise no_such_bucket(bucket)
        url = params.get("encoding-type") == "url"
        if "encoding-type" in params and not url:
            raise S3Error(400, "InvalidArgument", "Invalid Encoding Method specified in Request")
        if "allow-unordered" in params and params.get("delimiter"):  # Ceph's, as RGW answers
            raise S3Error(400, "InvalidArgument", "allow-unordered cannot be used with a "
                          "delimiter")

        def encode(value: bytes) -> str:
            text = value.decode("utf-8", "replace")
            return quote(text, safe="/") if url else text  # as S3: a space is %20, + is %2B

        return url, encode

    async def list_objects(self, bucket: str, params: dict[str, str]) -> Response:
        v2 = params.get("list-type") == "2"
        url, encode = await self._encoder(bucket, params)
        prefix = params.get("prefix", "").encode()
        delimiter = params.get("delimiter", "").encode()
        max_keys = int_param(params, "max-keys", MAX_KEYS)
        limit = min(max_keys, MAX_KEYS)
        # V2 resumes where its token says (StartAfter is only echoed then), V1 after Marker
        start, after = b"", params.get("start-after" if v2 else "marker", "").encode() or None
        token = params.get("continuation-token") if v2 else None
        if token is not None:
            start = decode_token(token)
        entries, following = (await self._scan(bucket, prefix, delimiter, start,
                                               None if token is not None else after, limit)
                              if limit else ([], None))
        contents = await self._contents(bucket, entries, encode,
                                        owner=not v2 or params.get("fetch-owner") == "true")
        prefixes: list[Node] = [("CommonPrefixes", [("Prefix", encode(name))])
                                for name, record in entries if record is None]
        # V1's Prefix comes back as sent, encoded or not (the SDKs decode only V2's)
        nodes: list[Node] = [("Name", bucket),
                             ("Prefix", encode(prefix) if v2 else prefix.decode("utf-8",
                                                                               "replace")),
                             ("Delimiter", encode(delimiter) if delimiter else None),
                             ("MaxKeys", str(max_keys)),
                             ("EncodingType", "url" if url else None),
                             ("IsTruncated", "true" if following is not None else "false")]
        if v2:
            nodes += [("KeyCount", str(len(contents) + len(prefixes))),
                      ("ContinuationToken", params.get("continuation-token")),
                      ("StartAfter", encode(after) if after is not None else None)]
            if following is not None:
                nodes.append(("NextContinuationToken", encode_token(following)))
        else:
            nodes.append(("Marker", encode(after or b"")))
            if following is not None and entries:
                nodes.append(("NextMarker", encode(entries[-1][0])))
        body = s3xml.document("ListBucketResult", nodes + contents + prefixes)
        return Response(200, [XML], body)

    async def list_versions(self, bucket: str, params: dict[str, str]) -> Response:
        """ListObjectVersions: no bucket is versioned, so each object is listed once, as
        version `null`, the latest (what S3 answers for a bucket never versioned)."""
        url, encode = await self._encoder(bucket, params)
        prefix = params.get("prefix", "").encode()
        delimiter = params.get("delimiter", "").encode()
        max_keys = int_param(params, "max-keys", MAX_KEYS)
        after = params.get("key-marker", "").encode() or None
        entries, following = (await self._scan(bucket, prefix, delimiter, b"", after,
                                               min(max_keys, MAX_KEYS))
                              if max_keys else ([], None))
        versions = await self._contents(bucket, entries, encode, owner=True, element="Version")
        prefixes: list[Node] = [("CommonPrefixes", [("Prefix", encode(name))])
                                for name, record in entries if record is None]
        nodes: list[Node] = [
            ("Name", bucket), ("Prefix", encode(prefix)),
            ("KeyMarker", encode(after or b"")), ("VersionIdMarker", ""),
            ("Delimiter", encode(delimiter) if delimiter else None),
            ("MaxKeys", str(max_keys)), ("EncodingType", "url" if url else None),
            ("IsTruncated", "true" if following is not None else "false")]
        if following is not None and entries:
            nodes += [("NextKeyMarker", encode(entries[-1][0])), ("NextVersionIdMarker", "null")]
        body = s3xml.document("ListVersionsResult", nodes + versions + prefixes)
        return Response(200, [XML], body)
