"""The `aws-chunked` content encoding, decoded as it streams: only the payload comes out.

    <hex size>[;chunk-signature=<sig>]\\r\\n <data>\\r\\n ... 0[;chunk-signature=<sig>]\\r\\n
    [<trailer name>:<value>\\r\\n ...] [x-amz-trailer-signature:<sig>\\r\\n] \\r\\n

boto3 ≥ 1.36 sends it (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, a checksum in the trailer) over
TLS; other SDKs sign each chunk (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`). With a
`Signed` context every chunk signature and the trailer signature are checked; without one
(authentication off) signatures are read and ignored. Trailer values are left in `trailers`
for the caller, which checks the checksum they carry.
"""

import hashlib
from collections.abc import AsyncIterator

from mkv.http.flow import ClientGone
from mkv.s3.sigv4 import Signed

MAX_LINE = 4096  # a chunk header: hex size and a signature fit many times over
MAX_TRAILER = 16 * 1024


class BadPayload(ClientGone):
    """A body that must not be stored: S3's error `code`, `message` and `status`.

    A ClientGone, so a write that meets it leaves the key as a broken body would."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _malformed(why: str) -> BadPayload:
    return BadPayload("IncompleteBody", f"malformed aws-chunked body: {why}")


class AwsChunked:
    """Iterate the payload of an aws-chunked body; `trailers` is filled when it ends."""

    def __init__(self, raw: AsyncIterator[bytes], signed: Signed | None = None,
                 expect_signatures: bool = False) -> None:
        self._raw = raw.__aiter__()
        self._signed = signed
        self._expect_signatures = expect_signatures or signed is not None
        self._buf = b""
        self._pos = 0  # what of _buf is consumed: slicing from an offset copies only the piece
        self._ended = False
        self.trailers: dict[str, str] = {}

    async def _more(self) -> None:
        try:
            data = await anext(self._raw)
        except StopAsyncIteration:
            data = b""
        if not data:
            self._ended = True
            raise _malformed("the body ended early")
        self._buf = self._buf[self._pos:] + data
        self._pos = 0

    async def _line(self, limit: int) -> bytes:
        """The next line, at most `limit` bytes however the body was cut into pieces."""
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end - self._pos > limit or end < 0 and len(self._buf) - self._pos > limit + 1:
                raise _malformed("line too long")  # (+ 1: a CR whose LF is yet to come)
            if end >= 0:
                line = self._buf[self._pos:end]
                self._pos = end + 2
                return line
            await self._more()

    def _chunk_header(self, line: bytes) -> tuple[int, str | None]:
        size_text, _, extension = line.partition(b";")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _malformed(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0 or size_text.strip() != size_text or size_text.startswith((b"+", b"-")):
            raise _malformed(f"bad chunk size {size_text[:20]!r}")
        signature = None
        if extension:
            name, _, value = extension.partition(b"=")
            if name.strip() == b"chunk-signature":
                signature = value.strip().decode("latin-1")
        if self._expect_signatures and signature is None:
            raise BadPayload("SignatureDoesNotMatch", "a signed chunk has no signature", 403)
        return size, signature

    def _check(self, signature: str | None, expected: str) -> None:
        if signature != expected:
            raise BadPayload("SignatureDoesNotMatch",
                             "a chunk signature does not match the data", 403)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        previous = self._signed.signature if self._signed else ""
        while True:
            size, signature = self._chunk_header(await self._line(MAX_LINE))
            digest = hashlib.sha256() if self._signed else None
            remaining = size
            while remaining:
                if self._pos == len(self._buf):
                    await self._more()
                piece = self._buf[self._pos:self._pos + remaining]
                self._pos += len(piece)
                remaining -= len(piece)
                if digest is not None:
                    digest.update(piece)
                yield piece
            if self._signed is not None:
                previous_signature = previous
                previous = self._signed.chunk_signature(
                    previous_signature, digest.hexdigest())  # type: ignore[union-attr]
                self._check(signature, previous)
            if size == 0:
                break
            if await self._line(2) != b"":
                raise _malformed("chunk data longer than its size")
        await self._read_trailers(previous)

    async def _read_trailers(self, previous: str) -> None:
        signed_part = b""
        trailer_signature = None
        read = 0
        while True:
            try:
                line = await self._line(MAX_TRAILER)
            except BadPayload:
                if self._ended and not self._buf[self._pos:].strip():
                    break  # no closing blank line: some clients stop after the last trailer
                raise
            read += len(line) + 2
            if read > MAX_TRAILER:
                raise _malformed("trailer too large")
            if not line:
                break
            name, colon, value = line.partition(b":")
            if not colon:
                raise _malformed(f"bad trailer line {line[:40]!r}")
            name_s = name.strip().lower().decode("latin-1")
            value_s = value.strip().decode("latin-1")
            if name_s == "x-amz-trailer-signature":
                trailer_signature = value_s
            else:
                self.trailers[name_s] = value_s
                signed_part += f"{name_s}:{value_s}\n".encode("latin-1")
        rest = self._buf[self._pos:]
        async for extra in self._raw:
            rest += extra
            if len(rest) > MAX_LINE:
                break
        if rest.strip():
            raise _malformed("data after the last chunk")
        if self._signed is not None and self.trailers:
            expected = self._signed.trailer_signature(previous, signed_part)
            if trailer_signature != expected:
                raise BadPayload("SignatureDoesNotMatch",
                                 "the trailer signature does not match", 403)
