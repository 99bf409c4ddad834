"""A request body as it will be stored, checked on the way through (lengths, digests,
checksums): `payload_of` reads how from the request's headers, `read_xml` reads a small XML
body so. Every service that takes a body uses these two."""

import base64
import binascii
import hashlib
import re
from collections.abc import AsyncIterator

from mkv.http.flow import Body
from mkv.http.messages import Request
from mkv.s3 import xml as s3xml
from mkv.s3.awschunked import AwsChunked, BadPayload
from mkv.s3.checksums import ALGORITHMS, DEFAULT_CHECKSUM, Checksum, algorithm_of
from mkv.s3.errors import S3Error
from mkv.s3.sigv4 import UNSIGNED_PAYLOAD, Signed
from mkv.s3.xml import MalformedXML


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
        # (algorithm, value) of the body as read, once read: the checksum sent (verified), or
        # without one the one S3 computes for every object it stores (CRC64NVME, ~0.03 s/GiB)
        self.computed: tuple[str, str] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        md5 = hashlib.md5() if self.content_md5 is not None else None
        sha = hashlib.sha256() if self.sha256 else None
        crc = Checksum(self.algorithm or DEFAULT_CHECKSUM)
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
        value = crc.b64digest()
        if self.algorithm is not None:
            header = f"x-amz-checksum-{self.algorithm}"
            expected = self.expected
            if expected is None and self.chunked is not None:
                expected = self.chunked.trailers.get(header)
            if expected is None:
                raise BadPayload("InvalidRequest", f"the {header} trailer is missing")
            if value != expected:
                raise BadPayload("BadDigest", f"The {self.algorithm.upper()} you specified "
                                 "did not match the calculated checksum.")
            self.checksum = (header, expected)
        self.computed = (self.algorithm or DEFAULT_CHECKSUM, value)
        if held is not None:
            yield held


def payload_of(req: Request, signed: Signed | None, its_checksum: bool = True) -> Payload:
    """How to read and check a request body, from its headers; errors before reading.
    Without `its_checksum`, an x-amz-checksum-* header is not the body's (Complete's is the
    object's)."""
    h = req.headers
    sha = h.get(b"x-amz-content-sha256", b"").decode("latin-1")
    bound = signed.payload_hash if signed is not None else UNSIGNED_PAYLOAD
    if bound not in (sha, UNSIGNED_PAYLOAD):
        # a presigned URL's X-Amz-Content-Sha256 (a hex, as verify checked) binds the body
        if sha:
            raise S3Error(400, "XAmzContentSHA256Mismatch", "x-amz-content-sha256 differs "
                          "from the X-Amz-Content-Sha256 the URL signed")
        sha = bound
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
    for name, value in h.items() if its_checksum else ():
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


async def read_xml(req: Request, signed: Signed | None, its_checksum: bool = True) -> bytes:
    """A request's (small) XML body, checked as any payload is (see `payload_of`)."""
    if req.body.length is not None and req.body.length > s3xml.MAX_XML_BODY:
        raise MalformedXML("the XML body is too large")
    data = bytearray()
    async for chunk in payload_of(req, signed, its_checksum):
        data += chunk
        if len(data) > s3xml.MAX_XML_BODY:
            raise MalformedXML("the XML body is too large")
    return bytes(data)
