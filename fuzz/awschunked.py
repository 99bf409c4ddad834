"""Harness `awschunked`: aws-chunked bodies decoded as they stream in (`AwsChunked`), from an
in-memory body cut into pieces.

The last bytes pick a mode and how the body is cut:
- raw: the input is the body, decoded without signatures, expecting them, or with a `Signed`
  context (every chunk signature then checked);
- encoded: the input gives chunk data and trailer lines, encoded here as a client would (with
  chunk and trailer signatures by a reference signer, or without), then perhaps damaged: a byte
  of chunk data flipped, the body cut short, bytes added after its end.
A crash is an exception other than BadPayload (a ClientGone), or a broken invariant:
- the outcome (the payload and trailers, or the error's code) is the same however the body is
  cut into pieces;
- an encoded body decodes to its chunks' data and its trailers; a flipped data byte is refused
  when signed and passed through when not; a body cut before its trailers, or followed by
  more than whitespace, is refused (one cut between trailer lines may pass with the lines
  before the cut: the caller checks that the checksum it was promised came).
"""

import hashlib
import hmac

import atheris

from fuzz.common import Broken, check, drive, pieces, run, source, tail

with atheris.instrument_imports(include=["mkv"]):
    from mkv.http.flow import ClientGone
    from mkv.s3.awschunked import AwsChunked
    from mkv.s3.sigv4 import EMPTY_SHA256, Signed, signing_key

MAX_LEN = 8192
RAW_UNSIGNED, RAW_EXPECTING, RAW_SIGNED, ENCODED = range(4)
INTACT, FLIP, CUT, EXTRA = range(4)
WHEN, SCOPE = "20231114T221320Z", "20231114/us-east-1/s3/aws4_request"
KEY = signing_key("fuzz-secret", "20231114", "us-east-1", "s3")
SEED_SIGNATURE = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def signed() -> Signed:
    return Signed("AKIDFUZZ", KEY, WHEN, SCOPE, SEED_SIGNATURE)


def reference(kind: str, previous: str, *hashes: str) -> str:
    string = "\n".join((kind, WHEN, SCOPE, previous, *hashes))
    return hmac.new(KEY, string.encode(), hashlib.sha256).hexdigest()


def encode(chunks: list[bytes], trailers: list[tuple[bytes, bytes]], sign: bool
           ) -> tuple[bytes, int]:
    """An aws-chunked body as SDKs send it: each chunk, the empty last one, the trailers; and
    where the trailers start."""
    out, previous = [], SEED_SIGNATURE
    for data in [*chunks, b""]:
        extension = b""
        if sign:
            previous = reference("AWS4-HMAC-SHA256-PAYLOAD", previous, EMPTY_SHA256,
                                 hashlib.sha256(data).hexdigest())
            extension = b";chunk-signature=" + previous.encode()
        out.append(b"%x%s\r\n%s" % (len(data), extension, data + b"\r\n" * bool(data)))
    canonical = b"".join(b"%s:%s\n" % (name.strip().lower(), value.strip())
                         for name, value in trailers)
    trailers_at = len(b"".join(out))
    out += [b"%s:%s\r\n" % pair for pair in trailers]
    if sign and trailers:
        signature = reference("AWS4-HMAC-SHA256-TRAILER", previous,
                              hashlib.sha256(canonical).hexdigest())
        out.append(b"x-amz-trailer-signature:%s\r\n" % signature.encode())
    return b"".join(out) + b"\r\n", trailers_at


async def _decode(parts: list[bytes], context: Signed | None, expect: bool) -> tuple:
    chunked = AwsChunked(source(parts), context, expect)
    try:
        payload = b"".join([piece async for piece in chunked])
    except ClientGone as e:  # BadPayload among them
        return ("refused", type(e).__name__, getattr(e, "code", ""))
    return ("decoded", payload, chunked.trailers)


def decode(body: bytes, cut: int, context: Signed | None, expect: bool) -> tuple:
    """The outcome, the same whether the body comes whole or in pieces."""
    whole = drive(_decode([body] if body else [], context, expect))
    split = drive(_decode(pieces(body, cut, 7, 13, 64), context, expect))
    check(whole == split, f"whole: {whole[:3]!r}, in pieces: {split[:3]!r}")
    return whole


def encoded(fdp: atheris.FuzzedDataProvider) -> None:
    sign, damage, cut, where = (fdp.ConsumeIntInRange(0, 1), fdp.ConsumeIntInRange(0, 3),
                                fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 255))
    sizes = [fdp.ConsumeIntInRange(0, 255) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    data = fdp.ConsumeBytes(sum(sizes))
    chunks, i = [], 0
    for size in sizes:
        if data[i:i + size]:
            chunks.append(data[i:i + size])
        i += size
    trailers = []
    for line in fdp.ConsumeBytes(fdp.remaining_bytes()).split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip() and b"\r" not in line and \
                name.strip().lower() != b"x-amz-trailer-signature":
            trailers.append((name, value))
    body, trailers_at = encode(chunks, trailers, bool(sign))
    context = signed() if sign else None
    expected = ("decoded", b"".join(chunks), {name.strip().lower().decode("latin-1"):
                                              value.strip().decode("latin-1")
                                              for name, value in trailers})
    if damage == INTACT:
        outcome = decode(body, cut, context, bool(sign))
        check(outcome == expected, f"decoded {outcome!r}, sent {expected!r}")
    elif damage == FLIP and chunks:
        spot = where % sum(len(c) for c in chunks)  # a byte of chunk data, found in the body
        at, offset = 0, spot
        for data in chunks:
            if offset < len(data):
                at = body.index(b"\r\n", at) + 2 + offset
                break
            offset -= len(data)
            at = body.index(b"\r\n", at) + 2 + len(data) + 2
        flipped = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1:]
        outcome = decode(flipped, cut, context, bool(sign))
        if sign:
            check(outcome[0] == "refused", "a flipped byte passed the chunk signatures")
        else:
            check(outcome[0] == "decoded" and outcome[1] != expected[1], "flipped byte lost")
    elif damage == CUT:
        short = body[:where * len(body) // 256]
        outcome = decode(short, cut, context, bool(sign))
        if len(short) < trailers_at:
            check(outcome[0] == "refused", f"cut short: {short!r}")
        elif outcome[0] == "decoded":  # cut between trailer lines: those read, the caller
            sent = set(expected[2].items())  # then misses a checksum it was promised
            sent |= {(n.strip().lower().decode("latin-1"), v.strip().decode("latin-1"))
                     for n, v in trailers}
            check(outcome[1] == expected[1] and set(outcome[2].items()) <= sent,
                  f"cut in the trailers: decoded {outcome!r}")
    elif damage == EXTRA:
        extra = bytes([where]) + body[:where % 8]
        outcome = decode(body + extra, cut, context, bool(sign))
        if extra.strip():
            check(outcome[0] == "refused", f"{extra!r} after the end accepted")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, ENCODED)
    if mode == ENCODED:
        encoded(fdp)
        return
    cut = fdp.ConsumeIntInRange(0, 255)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    outcome = decode(body, cut, signed() if mode == RAW_SIGNED else None,
                     mode == RAW_EXPECTING)
    if outcome[0] == "decoded" and not isinstance(outcome[1], bytes):
        raise Broken(f"decoded to {outcome[1]!r}")


def _signed_seed() -> bytes:
    return encode([b"hello ", b"world"], [(b"x-amz-checksum-crc32", b"DUYdtA==")], True)[0]


SEEDS = [
    b"5\r\nhello\r\n0\r\n\r\n" + tail(RAW_UNSIGNED, 3),
    b"5;chunk-signature=ab\r\nhello\r\n0;chunk-signature=cd\r\n\r\n" + tail(RAW_EXPECTING, 1),
    b"a\r\n0123456789\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n" + tail(RAW_UNSIGNED, 9),
    b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n" + tail(RAW_UNSIGNED, 0),
    b"ffffffffffffffff\r\nx\r\n" + tail(RAW_UNSIGNED, 2),
    b"+5\r\nhello\r\n0_0\r\n\r\n" + tail(RAW_UNSIGNED, 1),
    b"5;" + b"x" * 4100 + b"\r\nhello\r\n0\r\n\r\n" + tail(RAW_UNSIGNED, 5),  # past MAX_LINE
    _signed_seed() + tail(RAW_SIGNED, 5),
    encode([b"abc"], [], False)[0] + b"trailing" + tail(RAW_UNSIGNED, 4),
    b"hello world" + b"x-amz-checksum-sha256:abc\nX-Other: 1" + tail(ENCODED, 1, INTACT, 7, 0, 2,
                                                                    5, 6),
    b"some data" + tail(ENCODED, 0, INTACT, 1, 0, 1, 9),
    b"signed data flipped" + tail(ENCODED, 1, FLIP, 0, 33, 1, 19),
    b"cut" + b"x-amz-checksum-crc32:x" + tail(ENCODED, 1, CUT, 3, 200, 1, 3),
    b"extra" + tail(ENCODED, 0, EXTRA, 3, 65, 1, 5),
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN)
