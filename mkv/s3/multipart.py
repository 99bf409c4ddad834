"""S3 multipart uploads: create, upload parts (or copy them), complete into one value through
the objects service, abort, list, and the sweep of abandoned uploads."""

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import quote

from mkv.http.client import VolumeError
from mkv.http.messages import Request, Response
from mkv.index import IndexUnavailable
from mkv.s3 import xml as s3xml
from mkv.s3.awschunked import BadPayload
from mkv.s3.checksums import (
    DEFAULT_CHECKSUM,
    FULL_OBJECT,
    AssembledChecksum,
    element_of,
    wanted_for_upload,
)
from mkv.s3.errors import S3Error, busy, no_such_upload, object_name
from mkv.s3.metadata import of_request
from mkv.s3.objects import Objects, check_storable
from mkv.s3.payload import payload_of, read_xml
from mkv.s3.request import (
    MAX_KEYS,
    MAX_PART_NUMBER,
    int_param,
    range_bound,
    single_range,
)
from mkv.s3.sigv4 import Signed
from mkv.s3.state import ETAG, Part, S3State, Upload, UploadBusy, UploadGone
from mkv.s3.xml import XML, Node
from mkv.store import Store
from mkv.tasks import Periodic

log = logging.getLogger("mkv")


MIN_PART_SIZE = 5 * 1024 * 1024  # every part but the last, as S3 requires
INITIATOR = "initiator"  # in an upload's metadata: the access key that began it


class Uploads:
    """Uploads in the S3 state; a part copied from a value and a completed upload go through
    the objects service; the store's config gives -s3_upload_ttl and its volumes stream a
    copied part. Starts sweeping stale uploads at once (`stop_sweeping`, `closed`)."""

    def __init__(self, store: Store, state: S3State, objects: Objects) -> None:
        self.config = store.config
        self.volumes = store.volumes
        self.state = state
        self.objects = objects
        ttl = self.config.s3_upload_ttl
        self._sweeps = Periodic(self._sweep, min(max(ttl / 4, 0.5), 3600.0) if ttl > 0 else 0,
                                first=0)

    def stop_sweeping(self) -> None:
        """Cancel the next sweep and the one under way (`closed` awaits its end)."""
        self._sweeps.stop()

    async def closed(self) -> None:
        """Await the end of a sweep `stop_sweeping` cancelled."""
        await self._sweeps.closed()

    async def create_upload(self, key: bytes, req: Request, caller: str | None) -> Response:
        check_storable(key)
        metadata = of_request(req)
        if caller is not None:  # who began it: its listings' Initiator (not the object's)
            metadata[INITIATOR] = caller
        h = req.headers
        try:
            checksum = wanted_for_upload(
                *(h[n].decode("latin-1").strip() if n in h else None
                  for n in (b"x-amz-checksum-algorithm", b"x-amz-checksum-type")))
        except ValueError as e:
            raise S3Error(400, "InvalidRequest", str(e)) from None
        if checksum is not None:
            metadata["checksum"] = checksum
        upload = await self.state.create(key, metadata)
        bucket = key.split(b"/")[1].decode("utf-8", "replace")
        body = s3xml.document("InitiateMultipartUploadResult", [
            ("Bucket", bucket), ("Key", object_name(key)), ("UploadId", upload.id)])
        headers = [XML]
        if checksum is not None:
            headers += [("x-amz-checksum-algorithm", checksum["algorithm"].upper()),
                        ("x-amz-checksum-type", checksum["type"])]
        return Response(200, headers, body)

    async def _upload_of(self, key: bytes, upload_id: str) -> Upload:
        upload = await self.state.get(upload_id)
        if upload is None or upload.key != key:
            raise no_such_upload(upload_id)
        return upload

    async def upload_part(self, key: bytes, upload_id: str, params: dict[str, str],
                          req: Request, signed: Signed | None) -> Response:
        number = int_param(params, "partNumber", 0, 1, MAX_PART_NUMBER) \
            if params.get("partNumber") else 0
        if not number:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 "
                          "and 10000, inclusive")
        await self._upload_of(key, upload_id)
        # writes of one part number go on together, as on S3: the last to finish is the part
        if b"x-amz-copy-source" in req.headers:
            return await self._upload_part_copy(upload_id, number, req)
        payload = payload_of(req, signed)

        def checksum() -> tuple[str, str] | None:  # a part keeps only the one sent
            return payload.computed if payload.checksum else None
        try:
            part = await self.state.write_part(upload_id, number, payload, payload.length,
                                               checksum)
        except UploadGone:
            raise no_such_upload(upload_id) from None
        headers = [("ETag", f'"{part.md5}"'), ("Content-Length", "0")]
        if payload.checksum:
            headers.append(payload.checksum)
        return Response(200, headers)

    async def _upload_part_copy(self, upload_id: str, number: int, req: Request) -> Response:
        source = self.objects.copy_source(req)
        wanted = req.headers.get(b"x-amz-copy-source-range")
        header = b""
        if wanted is not None:
            if single_range(wanted) is None:
                raise S3Error(400, "InvalidArgument", "The x-amz-copy-source-range value "
                              "must be of the form bytes=first-last")
            header = b"Range: %s\r\n" % wanted.strip()
        response = await self.objects.open_source(source, header)
        if wanted is not None:
            # nginx serves what it has of a range that runs past the end; S3 refuses it
            _, _, size = response.headers.get(b"content-range", b"").rpartition(b"/")
            asked = single_range(wanted)
            if asked is not None and asked.group(2) \
                    and range_bound(asked.group(2)) >= int(size or 0):
                response.body.abort()  # type: ignore[union-attr]
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                              ActualObjectSize=size.decode())
        length = response.headers.get(b"content-length")
        try:
            part = await self.state.write_part(upload_id, number,
                                               self.volumes.chunks(response),
                                               int(length) if length is not None else None,
                                               lambda: None)
        except UploadGone:
            raise no_such_upload(upload_id) from None
        finally:
            if not response.body.complete:  # type: ignore[union-attr]
                response.body.abort()  # type: ignore[union-attr]
        body = s3xml.document("CopyPartResult", [
            ("LastModified", s3xml.timestamp(part.modified)), ("ETag", f'"{part.md5}"')])
        return Response(200, [XML], body)

    async def complete_upload(self, key: bytes, upload_id: str, req: Request,
                              signed: Signed | None) -> Response:
        done = await self.state.completed(upload_id)
        if done is not None and done[0] == key:
            return self._completed(req, key, done[1])  # S3 answers a repeat the same
        upload = await self.state.get(upload_id)
        if upload is None or upload.key != key:
            raise no_such_upload(upload_id)
        # an x-amz-checksum-* header here is the object's, checked once the parts are read
        wanted = s3xml.parse_complete(await read_xml(req, signed, its_checksum=False))
        numbers = [number for number, _ in wanted]
        if any(a > b for a, b in zip(numbers, numbers[1:], strict=False)):
            raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending "
                          "order. The parts list must be specified in order by part number.",
                          UploadId=upload_id)
        try:
            async with self.state.completing(upload_id) as completion:
                parts = await self._parts_to_complete(upload_id, wanted)
                # the one asked at create, else S3's own for every object
                asked = upload.metadata.get("checksum") or {"algorithm": DEFAULT_CHECKSUM,
                                                             "type": FULL_OBJECT}
                checksum = AssembledChecksum(asked["algorithm"], asked["type"])
                sent = req.headers.get(f"x-amz-checksum-{asked['algorithm']}".encode())
                md5 = await self.objects.write(
                    key, self._assembled(parts, checksum, sent.decode("latin-1").strip()
                                         if sent is not None else None),
                    sum(p.size for p in parts), req)
                combined = hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in parts))
                etag = f"{combined.hexdigest()}-{len(parts)}"
                if md5:
                    await self.state.keep(ETAG, key, md5, {
                        "etag": etag, "parts": [p.size for p in parts]})
                metadata = {**{k: v for k, v in upload.metadata.items() if k != INITIATOR},
                            "checksum": checksum.document()}
                await self.objects.keep_metadata(key, md5, metadata)
                await completion.finish(key, etag)
        except UploadBusy:
            raise busy(key) from None
        except UploadGone:
            raise no_such_upload(upload_id) from None
        return self._completed(req, key, etag, metadata["checksum"])

    async def _assembled(self, parts: list[Part], checksum: AssembledChecksum,
                         expected: str | None) -> AsyncIterator[bytes]:
        """The parts' bytes in order, each counted into `checksum` (one more pass over bytes
        the master reads anyway), which must come to `expected` if the client sent it: else
        the write fails before its last byte, as a body that fails its checksum does."""
        held = None
        for part in parts:
            checksum.begin_part()
            async with aclosing(self.state.read([part])) as chunks:
                async for chunk in chunks:
                    checksum.update(chunk)
                    if held is not None:
                        yield held
                    held = chunk
        if expected is not None and checksum.document()["value"] != expected:
            raise BadPayload("BadDigest", f"The {checksum.algorithm.upper()} you specified "
                             "did not match the calculated checksum.")
        if held is not None:
            yield held

    async def _parts_to_complete(self, upload_id: str, wanted: list[tuple[int, str]]
                                 ) -> list[Part]:
        """The parts a Complete lists, each as uploaded; S3's errors otherwise."""
        have = await self.state.parts(upload_id)
        parts: list[Part] = []
        # a part number listed twice (a part sent again while the first was on its way, each
        # answer listed) is the last one listed, as Ceph's RGW takes it
        for number, etag in dict(wanted).items():
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
        return parts

    @staticmethod
    def _completed(req: Request, key: bytes, etag: str, checksum: dict | None = None
                   ) -> Response:
        bucket = key.split(b"/")[1].decode("utf-8", "replace")
        host = req.headers.get(b"host", b"").decode("latin-1")
        nodes: list[Node] = [
            ("Location", f"http://{host}{quote(key)}"), ("Bucket", bucket),
            ("Key", object_name(key)), ("ETag", f'"{etag}"')]
        if checksum is not None:
            nodes += [(element_of(checksum["algorithm"]), checksum["value"]),
                      ("ChecksumType", checksum["type"])]
        return Response(200, [XML], s3xml.document("CompleteMultipartUploadResult", nodes))

    async def abort_upload(self, key: bytes, upload_id: str) -> Response:
        await self._upload_of(key, upload_id)
        try:
            await self.state.remove(upload_id)
        except UploadBusy:
            raise busy(key) from None
        return Response(204)

    async def list_parts(self, key: bytes, upload_id: str, params: dict[str, str]) -> Response:
        upload = await self._upload_of(key, upload_id)
        max_parts = int_param(params, "max-parts", MAX_KEYS)
        marker = int_param(params, "part-number-marker", 0)
        have = await self.state.parts(upload_id)
        parts = sorted((p for p in have.values() if p.number > marker), key=lambda p: p.number)
        page = parts[:min(max_parts, MAX_KEYS)]
        truncated = len(parts) > len(page)
        bucket = key.split(b"/")[1].decode("utf-8", "replace")
        owner = await self._owner(bucket)
        nodes: list[Node] = [
            ("Bucket", bucket), ("Key", object_name(key)), ("UploadId", upload_id),
            ("Initiator", self._initiator(upload, owner)),
            ("Owner", self._initiator(upload, owner)), ("StorageClass", "STANDARD"),
            ("PartNumberMarker", str(marker)),
            ("NextPartNumberMarker", str(page[-1].number) if page else None),
            ("MaxParts", str(max_parts)), ("IsTruncated", "true" if truncated else "false")]
        nodes += [("Part", [("PartNumber", str(p.number)),
                            ("LastModified", s3xml.timestamp(p.modified)),
                            ("ETag", f'"{p.md5}"'), ("Size", str(p.size)),
                            *([(element_of(p.checksum[0]), p.checksum[1])] if p.checksum
                              else [])]) for p in page]
        return Response(200, [XML], s3xml.document("ListPartsResult", nodes))

    async def _owner(self, bucket: str) -> list[Node]:
        """The bucket's owner, who owns its objects: an upload's Initiator and Owner when no
        access key began it."""
        access = self.objects.buckets.access
        owner = access.owner(await access.settings(bucket))
        return [("ID", owner), ("DisplayName", owner)]

    @staticmethod
    def _initiator(upload: Upload, owner: list[Node]) -> list[Node]:
        """Who began the upload (the access key that signed it), its Initiator and Owner
        until it completes, as S3 lists them; else the bucket's owner."""
        who = upload.metadata.get(INITIATOR)
        return [("ID", who), ("DisplayName", who)] if who else owner

    async def list_uploads(self, bucket: str, params: dict[str, str]) -> Response:
        owner = await self._owner(bucket)
        prefix = f"/{bucket}/{params.get('prefix', '')}".encode()
        key_marker = params.get("key-marker", "")
        id_marker = params.get("upload-id-marker", "")
        max_uploads = int_param(params, "max-uploads", MAX_KEYS)
        uploads = sorted(await self.state.uploads(prefix),
                         key=lambda u: (u.key, u.initiated, u.id))
        if key_marker:
            mark = f"/{bucket}/{key_marker}".encode()
            uploads = [u for u in uploads if u.key > mark or (
                u.key == mark and id_marker and u.id > id_marker)]
        page = uploads[:min(max_uploads, MAX_KEYS)]
        truncated = len(uploads) > len(page)
        nodes: list[Node] = [
            ("Bucket", bucket), ("KeyMarker", key_marker), ("UploadIdMarker", id_marker),
            ("NextKeyMarker", object_name(page[-1].key) if truncated else None),
            ("NextUploadIdMarker", page[-1].id if truncated else None),
            ("Prefix", params.get("prefix", "")), ("MaxUploads", str(max_uploads)),
            ("IsTruncated", "true" if truncated else "false")]
        nodes += [("Upload", [("Key", object_name(u.key)), ("UploadId", u.id),
                              ("Initiator", self._initiator(u, owner)),
                              ("Owner", self._initiator(u, owner)),
                              ("StorageClass", "STANDARD"),
                              ("Initiated", s3xml.timestamp(u.initiated))]) for u in page]
        return Response(200, [XML], s3xml.document("ListMultipartUploadsResult", nodes))

    # --- housekeeping ---
    async def _sweep(self) -> None:
        """Remove multipart uploads idle for longer than -s3_upload_ttl."""
        try:
            for upload_id in await self.state.sweep(self.config.s3_upload_ttl, time.time()):
                log.warning("S3: removed multipart upload %s, idle past -s3_upload_ttl",
                            upload_id)
        except (OSError, IndexUnavailable, VolumeError) as e:  # the database or a volume is down
            log.warning("S3: removing stale multipart uploads failed: %s", e)
