"""Harness `sigv4`: AWS signatures as the S3 face checks them (`verify`, `verify_v2`, and the
chunk and trailer signatures of `Signed`), with one known key.

The last byte picks a mode; the others' fields are lines of the input:
- raw: a target and `name: value` header lines, checked as the face does (V2 if `is_v2`);
- V4 header, V4 presigned, V2 header, V2 presigned, each twice: *loose*, the fields of a
  well-shaped request filled with any bytes, so parsing goes past the first checks; and
  *signed*, a request signed here by a reference signer written from AWS's description, over
  any path and query bytes (percent-encoded), any header values, any region, date skew and
  expiry, then perhaps tampered with (signature, a signed header, the method);
- chunks: `Signed.chunk_signature`/`trailer_signature` against the reference.
A crash is an exception other than AuthError, or a broken invariant: a signed request within
its time window verifies (as the right key; its chunk signatures match the reference), one
outside it or tampered with does not.
"""

import base64
import email.utils
import hashlib
import hmac
import re
import time

import atheris

from fuzz.common import check, run, tail

with atheris.instrument_imports(include=["mkv"]):
    from mkv.s3.sigv4 import (
        MAX_EXPIRES,
        MAX_SKEW,
        V2_SUBRESOURCES,
        AuthError,
        Signed,
        is_v2,
        verify,
        verify_v2,
    )

MAX_LEN = 4096
ACCESS_KEY, SECRET = "AKIDFUZZ", "fuzz/secret+key"
SECRETS = {ACCESS_KEY: SECRET, "other": "x"}
NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
METHODS = (b"GET", b"PUT", b"POST", b"HEAD", b"DELETE", b"REPLACE")
RAW, V4, V4_LOOSE, PRESIGNED, PRESIGNED_LOOSE, V2, V2_LOOSE, V2_PRESIGNED, \
    V2_PRESIGNED_LOOSE, CHUNKS = range(10)
NO_TAMPER, TAMPER_SIGNATURE, TAMPER_HEADER, TAMPER_METHOD = range(4)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_TOKEN = b"abcdefghijklmnopqrstuvwxyz0123456789-"


# --- a reference signer, from AWS's description of SigV4 and V2 ---
def encode(data: bytes, safe: bytes = b"") -> str:
    """Percent-encoding as SigV4 canonicalises: unreserved bytes as they are, others %XX."""
    return "".join(chr(b) if b in _UNRESERVED or b in safe else f"%{b:02X}" for b in data)


def amz_date(seconds: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def sign_v4(method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
            payload: str, when: str, region: str) -> str:
    """The signature of a request whose path and query are already canonical; every header
    in `headers` is signed."""
    names = sorted(headers)
    canonical = "\n".join((
        method, path, "&".join(f"{n}={v}" for n, v in sorted(query)),
        "".join(f"{n}:{re.sub(' +', ' ', headers[n].strip(' '))}\n" for n in names),
        ";".join(names), payload))
    scope = f"{when[:8]}/{region}/s3/aws4_request"
    string = f"AWS4-HMAC-SHA256\n{when}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return hmac.new(v4_key(when[:8], region), string.encode(), hashlib.sha256).hexdigest()


def v4_key(date: str, region: str) -> bytes:
    key = ("AWS4" + SECRET).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_v2(method: str, resource: str, content_md5: str, content_type: str, date: str,
            amz: dict[str, str]) -> str:
    string = "\n".join((method, content_md5, content_type, date,
                        "".join(f"{n}:{amz[n]}\n" for n in sorted(amz)) + resource))
    return base64.b64encode(hmac.new(SECRET.encode(), string.encode(), hashlib.sha1).digest()
                            ).decode()


# --- the input's fields ---
def printable(data: bytes, space: bool = True) -> str:
    low = 0x20 if space else 0x21
    return bytes(low + b % (0x7f - low) for b in data).decode()


def token(data: bytes) -> str:
    return bytes(_TOKEN[b % len(_TOKEN)] for b in data).decode()


def header_lines(lines: list[bytes]) -> dict[bytes, bytes]:
    """`name: value` lines as the server hands headers over (names lower-cased)."""
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip(b" \t").replace(b"\r", b"").replace(
            b"\x00", b"")
    return headers


def query_pairs(data: bytes, v2: bool = False) -> list[tuple[str, str]]:
    """Parameters of any bytes, percent-encoded; none that would change how a request is
    authenticated, nor (V2) one V2 signs."""
    pairs = []
    for item in data.split(b"&") if data else ():
        name, _, value = item.partition(b"=")
        low = name.lower()
        if not name or b"x-amz-" in low or b"awsaccesskeyid" in low \
                or low.startswith((b"signature", b"expires")) \
                or v2 and name.decode("latin-1") in V2_SUBRESOURCES:
            continue
        pairs.append((encode(name), encode(value)))
    return pairs


def lines_of(fdp: atheris.FuzzedDataProvider) -> list[bytes]:
    """The rest of the input (after the integers at its end), as at least 8 lines."""
    lines = fdp.ConsumeBytes(fdp.remaining_bytes()).split(b"\n")
    return lines + [b""] * (8 - len(lines))


def skewed(choice: int) -> int:
    return NOW + (choice - 128) * 8  # ±1024 s: either side of MAX_SKEW


def outcome(call, *args) -> Signed | str | AuthError:
    try:
        return call(*args, SECRETS, NOW)
    except AuthError as e:
        return e


def expect(result, valid: bool, what: str) -> None:
    if valid:
        check(not isinstance(result, AuthError), f"{what}: a valid signature refused: {result}")
    else:
        check(isinstance(result, AuthError), f"{what}: an invalid signature accepted")


def tampered(signature: str, flip: int) -> str:
    i = flip % len(signature)
    return signature[:i] + ("0" if signature[i] != "0" else "1") + signature[i + 1:]


# --- the modes ---
def raw(fdp: atheris.FuzzedDataProvider) -> None:
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
    lines = lines_of(fdp)
    path, _, query = lines[0].partition(b"?")
    headers = header_lines(lines[1:])
    if is_v2(query, headers):
        outcome(verify_v2, method, path, query, headers)
    else:
        outcome(verify, method, path, query, headers)


def v4(fdp: atheris.FuzzedDataProvider, presigned: bool) -> None:
    tamper, method_choice, skew, flip = (fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(
        0, len(METHODS) - 1), fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 255))
    expires = fdp.ConsumeIntInRange(0, 255) * 8  # 0 (refused) to 2040 s
    lines = lines_of(fdp)
    method = METHODS[method_choice].decode()
    path = encode(b"/" + lines[0], safe=b"/")
    query = query_pairs(lines[1])
    region = token(lines[2]) or "us-east-1"
    signed_at = skewed(skew)
    when = amz_date(signed_at)
    headers = {"host": "localhost:3000"}
    for line in lines[3:]:
        name, _, value = line.partition(b":")
        name_s = token(name)
        if name_s and name_s not in ("authorization", "x-amz-date", "x-amz-content-sha256"):
            headers[name_s] = printable(value)
    credential = f"{ACCESS_KEY}/{when[:8]}/{region}/s3/aws4_request"
    if presigned:
        query += [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                  ("X-Amz-Credential", encode(credential.encode())),
                  ("X-Amz-Date", when), ("X-Amz-Expires", str(expires)),
                  ("X-Amz-SignedHeaders", encode(";".join(sorted(headers)).encode()))]
        payload = "UNSIGNED-PAYLOAD"
        valid = 1 <= expires <= MAX_EXPIRES and signed_at <= NOW + MAX_SKEW \
            and NOW <= signed_at + expires
    else:
        headers["x-amz-date"] = when
        headers["x-amz-content-sha256"] = payload = "UNSIGNED-PAYLOAD" if flip & 1 else \
            hashlib.sha256(lines[1]).hexdigest()
        valid = abs(NOW - signed_at) <= MAX_SKEW
    signature = sign_v4(method, path, query, headers, payload, when, region)
    if tamper == TAMPER_SIGNATURE:
        signature = tampered(signature, flip)
    elif tamper == TAMPER_HEADER:
        name = sorted(headers)[flip % len(headers)]
        headers[name] = headers[name].strip() + "!"
    elif tamper == TAMPER_METHOD:
        method = "PATCH"
    valid = valid and tamper == NO_TAMPER
    wire = {name.encode(): value.encode() for name, value in headers.items()}
    if presigned:
        query.append(("X-Amz-Signature", signature))
    else:
        wire[b"authorization"] = (f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders="
                                  f"{';'.join(sorted(headers))}, Signature={signature}").encode()
    query_string = "&".join(f"{n}={v}" for n, v in query).encode()
    result = outcome(verify, method.encode(), path.encode(), query_string, wire)
    expect(result, valid, "V4 presigned" if presigned else "V4")
    if isinstance(result, Signed):
        check(result.access_key == ACCESS_KEY and result.signature == signature,
              "verify returned another key or signature")
        check_chunks(result, when, region, signature, lines[1])


def check_chunks(signed: Signed, when: str, region: str, previous: str, data: bytes) -> None:
    scope = f"{when[:8]}/{region}/s3/aws4_request"
    key = v4_key(when[:8], region)
    data_sha, empty_sha = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"").hexdigest()
    string = f"AWS4-HMAC-SHA256-PAYLOAD\n{when}\n{scope}\n{previous}\n{empty_sha}\n{data_sha}"
    chunk = hmac.new(key, string.encode(), hashlib.sha256).hexdigest()
    check(signed.chunk_signature(previous, data_sha) == chunk, "chunk signature differs")
    string = f"AWS4-HMAC-SHA256-TRAILER\n{when}\n{scope}\n{chunk}\n{data_sha}"
    trailer = hmac.new(key, string.encode(), hashlib.sha256).hexdigest()
    check(signed.trailer_signature(chunk, data) == trailer, "trailer signature differs")


def v4_loose(fdp: atheris.FuzzedDataProvider, presigned: bool) -> None:
    """A request shaped as V4 with any bytes in its fields: credential, signed headers,
    signature, date, expiry, path and query."""
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
    keep_date = fdp.ConsumeIntInRange(0, 1) == 1
    lines = lines_of(fdp)
    credential, signed_headers, signature, date, expires = lines[:5]
    path, _, query = lines[5].partition(b"?")
    headers = header_lines(lines[6:])
    headers.setdefault(b"host", b"localhost")
    when = amz_date(NOW).encode() if keep_date else date
    if presigned:
        fields = [(b"X-Amz-Algorithm", b"AWS4-HMAC-SHA256"), (b"X-Amz-Credential", credential),
                  (b"X-Amz-SignedHeaders", signed_headers), (b"X-Amz-Signature", signature),
                  (b"X-Amz-Date", when), (b"X-Amz-Expires", expires)]
        query = b"&".join([query] * bool(query) + [n + b"=" + v for n, v in fields])
    else:
        headers[b"authorization"] = b"AWS4-HMAC-SHA256 Credential=" + credential + \
            b", SignedHeaders=" + signed_headers + b", Signature=" + signature
        headers[b"x-amz-date"] = when
        headers.setdefault(b"x-amz-content-sha256", expires)
    outcome(verify, method, path, query, headers)


def v2(fdp: atheris.FuzzedDataProvider, presigned: bool) -> None:
    tamper, method_choice, skew, flip = (fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(
        0, len(METHODS) - 1), fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 255))
    subresource = sorted(V2_SUBRESOURCES)[fdp.ConsumeIntInRange(0, len(V2_SUBRESOURCES) - 1)]
    lines = lines_of(fdp)
    method = METHODS[method_choice].decode()
    resource = encode(b"/" + lines[0], safe=b"/")
    query = query_pairs(lines[1], v2=True)
    sub_value = encode(lines[2])
    if flip & 1:
        query.append((subresource, sub_value))
    headers, amz = {"host": "localhost"}, {}
    for line in lines[3:]:
        name, _, value = line.partition(b":")
        name_s = token(name)
        if name_s in ("host", "authorization", "date", "x-amz-date", "expires") or not name_s:
            continue
        if presigned and name_s.startswith("x-amz-"):
            continue
        headers[name_s] = printable(value, space=False)
        if name_s.startswith("x-amz-"):
            amz[name_s] = headers[name_s]
    when = skewed(skew)
    if presigned:
        date = str(when)
        valid = NOW <= when
    elif flip & 2:
        headers["x-amz-date"] = amz["x-amz-date"] = email.utils.formatdate(when, usegmt=True)
        date = ""
        valid = abs(NOW - when) <= MAX_SKEW
    else:
        headers["date"] = date = email.utils.formatdate(when, usegmt=True)
        valid = abs(NOW - when) <= MAX_SKEW
    sub = f"?{subresource}={decoded(lines[2])}" if flip & 1 else ""
    signature = sign_v2(method, resource + sub,
                        headers.get("content-md5", ""), headers.get("content-type", ""), date,
                        amz)
    if tamper == TAMPER_SIGNATURE:
        signature = tampered(signature, flip >> 2)
    elif tamper == TAMPER_HEADER and amz:
        name = sorted(amz)[flip % len(amz)]
        headers[name] += "!"
    elif tamper == TAMPER_METHOD:
        method = "PATCH"
    valid = valid and (tamper == NO_TAMPER or tamper == TAMPER_HEADER and not amz)
    wire = {name.encode(): value.encode() for name, value in headers.items()}
    if presigned:
        query += [("AWSAccessKeyId", ACCESS_KEY), ("Expires", date),
                  ("Signature", encode(signature.encode()))]
    else:
        wire[b"authorization"] = f"AWS {ACCESS_KEY}:{signature}".encode()
    query_string = "&".join(f"{n}={v}" for n, v in query).encode()
    check(is_v2(query_string, wire), "a V2 request is not seen as V2")
    result = outcome(verify_v2, method.encode(), resource.encode(), query_string, wire)
    expect(result, valid, "V2 presigned" if presigned else "V2")
    if not isinstance(result, AuthError):
        check(result == ACCESS_KEY, f"verify_v2 gave {result!r}")


def decoded(value: bytes) -> str:
    """A subresource's value as V2 signs it: decoded, as UTF-8."""
    return value.decode("utf-8", "replace")


def v2_loose(fdp: atheris.FuzzedDataProvider, presigned: bool) -> None:
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
    own_key = fdp.ConsumeIntInRange(0, 1) == 1
    lines = lines_of(fdp)
    access_key = ACCESS_KEY.encode() if own_key else lines[0]
    signature, date = lines[1:3]
    path, _, query = lines[3].partition(b"?")
    headers = header_lines(lines[4:])
    if presigned:
        query = b"&".join([query] * bool(query) + [b"AWSAccessKeyId=" + access_key,
                                                   b"Signature=" + signature, b"Expires=" + date])
    else:
        headers[b"authorization"] = b"AWS " + access_key + b":" + signature
        headers[b"date"] = date
    outcome(verify_v2, method, path, query, headers)


def chunks(fdp: atheris.FuzzedDataProvider) -> None:
    when, region, previous, data = (line.decode("latin-1") for line in lines_of(fdp)[:4])
    key = v4_key(when[:8], region)
    signed = Signed(ACCESS_KEY, key, when, f"{when[:8]}/{region}/s3/aws4_request", previous)
    check_chunks(signed, when, region, previous, data.encode("latin-1"))


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, CHUNKS)
    if mode == RAW:
        raw(fdp)
    elif mode in (V4, PRESIGNED):
        v4(fdp, presigned=mode == PRESIGNED)
    elif mode in (V4_LOOSE, PRESIGNED_LOOSE):
        v4_loose(fdp, presigned=mode == PRESIGNED_LOOSE)
    elif mode in (V2, V2_PRESIGNED):
        v2(fdp, presigned=mode == V2_PRESIGNED)
    elif mode in (V2_LOOSE, V2_PRESIGNED_LOOSE):
        v2_loose(fdp, presigned=mode == V2_PRESIGNED_LOOSE)
    else:
        chunks(fdp)


def _raw_seed() -> bytes:
    when = amz_date(NOW)
    return (b"/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00\n"
            b"authorization: AWS4-HMAC-SHA256 Credential=AKIDFUZZ/" + when[:8].encode() +
            b"/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\n"
            b"host: localhost\nx-amz-date: " + when.encode() + b"\n"
            b"x-amz-content-sha256: UNSIGNED-PAYLOAD") + tail(RAW, 0)


SEEDS = [
    _raw_seed(),
    b"/b/k?AWSAccessKeyId=AKIDFUZZ&Expires=1700000100&Signature=abc%3D\nhost: h" + tail(RAW, 1),
    b"/b/k?prefix=AWSAccessKeyId=x\nhost: h" + tail(RAW, 0),
    b"/b/k\nauthorization: AWS AKIDFUZZ:c2lnbmF0dXJl\ndate: Tue, 14 Nov 2023 22:13:20 GMT"
    + tail(RAW, 2),
    b"bucket/a key\nlist-type=2&prefix=a%2Fb&x=\neu-west-1\ncontent-type: text/plain\n"
    b"x-amz-meta-a:  two  spaces " + tail(V4, NO_TAMPER, 1, 128, 3, 0),
    b"bucket/\xe2\x82\xac\n\n\nx-amz-meta-b: 1" + tail(V4, TAMPER_SIGNATURE, 0, 200, 7, 0),
    b"b/k\nuploadId=1&partNumber=2\nus-east-1\nx-amz-copy-source: /b/other"
    + tail(PRESIGNED, NO_TAMPER, 1, 120, 0, 100),
    b"b/k\n\n\n" + tail(PRESIGNED, TAMPER_HEADER, 0, 40, 2, 255),
    b"AKIDFUZZ/20231114/us-east-1/s3/aws4_request\nhost;x-amz-content-sha256;x-amz-date\n"
    + b"0" * 64 +
    b"\n20231114T221320Z\n3600\n/b/k?a=1\nhost: localhost" + tail(V4_LOOSE, 0, 0),
    b"AKIDFUZZ%2F20231314%2Fus-east-1%2Fs3%2Faws4_request\nhost\n" + b"f" * 64 +
    b"\n20231314T221320Z\n86400\n/b/k\nhost: localhost" + tail(PRESIGNED_LOOSE, 0, 0),
    b"AKIDFUZZ%2F20231114%2Fus-east-1%2Fs3%2Faws4_request\nhost%3Bx-amz-meta-a\n" + b"f" * 64
    + b"\n20231114T221320Z\n86400\n/b/k\nhost: localhost\nx-amz-meta-a: 1"
    + tail(PRESIGNED_LOOSE, 0, 0),
    b"bucket/key\nmax-keys=3\n\nx-amz-meta-x:y\ncontent-type:text/plain\ncontent-md5:abc"
    + tail(V2, NO_TAMPER, 0, 128, 0, 0),
    b"bucket/key\n\n1\nx-amz-acl:private" + tail(V2, NO_TAMPER, 1, 140, 3, 23),
    b"bucket/key\na=b\n\ncontent-type:image/png" + tail(V2_PRESIGNED, NO_TAMPER, 0, 200, 0, 0),
    b"AKIDFUZZ\nc2lnbmF0dXJl\nTue, 14 Nov 2023 22:13:20 GMT\n/b/k?acl\nhost: h"
    + tail(V2_LOOSE, 0, 1),
    b"AKIDFUZZ\nc2lnbmF0dXJl\n1700000100\n/b/k?uploads\nhost: h" + tail(V2_PRESIGNED_LOOSE, 0, 1),
    b"20231114T221320Z\nus-east-1\n" + b"a" * 64 + b"\nchunk data" + tail(CHUNKS),
    # crashes found and fixed, kept: a signature that is not ASCII, a Date past any clock,
    # a presigned signed-header name that is not UTF-8
    b"AKIDFUZZ\n\xe2\x82\xac\nTue, 14 Nov 2023 22:13:20 GMT\n/b/k\nhost: h" + tail(V2_LOOSE, 0, 1),
    b"AKIDFUZZ\nc2ln\nTue, 14 Nov 2023 2255555555555555555555:13:20 GMT\n/b/k\nhost: h"
    + tail(V2_LOOSE, 0, 1),
    b"AKIDFUZZ%2F20231114%2Fus-east-1%2Fs3%2Faws4_request\nhost%3Bx%FF\n" + b"f" * 64
    + b"\n20231114T221320Z\n86400\n/b/k\nhost: localhost" + tail(PRESIGNED_LOOSE, 0, 0),
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN)
