"""A request body as it will be stored, checked on the way through (lengths, digests, checksums)."""

import hashlib
from collections.abc import AsyncIterator

from mkv.http.flow import Body
from mkv.s3.awschunked import AwsChunked, BadPayload
from mkv.s3.checksums import Checksum


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
