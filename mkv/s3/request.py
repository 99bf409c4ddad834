"""Reading an S3 request: whether it is S3's at all, its query parameters, dates and ranges."""

import base64
import binascii
import email.utils
import re
from urllib.parse import unquote, unquote_to_bytes

from mkv.http.messages import Request
from mkv.s3.errors import S3Error

MAX_KEYS = 1000  # the most keys, parts or uploads one listing page holds
MAX_PART_NUMBER = 10_000  # a multipart upload's parts are numbered 1 to this, as on S3
S3_QUERY = frozenset(
    b"list-type uploads uploadId partNumber delete x-id location versioning prefix delimiter "
    b"max-buckets bucket-region "
    b"marker max-keys encoding-type continuation-token start-after fetch-owner max-uploads "
    b"key-marker upload-id-marker max-parts part-number-marker versionId acl tagging policy "
    b"cors lifecycle website logging notification replication encryption object-lock "
    b"retention legal-hold restore select attributes versions response-content-type "
    b"response-content-disposition response-content-encoding response-content-language "
    b"response-cache-control response-expires X-Amz-Signature X-Amz-Algorithm "
    b"X-Amz-Credential X-Amz-Date AWSAccessKeyId".split())
_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def is_s3(req: Request) -> bool:
    """Whether a request on the main port is S3's: an AWS Authorization header, an S3 query
    parameter, an AWS SDK's own headers (`amz-sdk-invocation-id`, `amz-sdk-request`: sent
    signed or not), an `x-amz-*` header, or a POSTed form. Go mkv's clients send none of
    these. Cheap on the
    native GET path: a few dict lookups and a look at the header names."""
    headers = req.headers
    if b"authorization" in headers:
        return headers[b"authorization"].startswith(b"AWS")
    if b"amz-sdk-invocation-id" in headers or b"amz-sdk-request" in headers:
        return True
    if req.method == b"POST" and is_form(req):  # POST Object: the native API has no POST
        return True
    if req.query:
        for item in req.query.split(b"&"):
            if item.partition(b"=")[0] in S3_QUERY:
                return True
    return any(name.startswith(b"x-amz-") for name in headers)


def is_form(req: Request) -> bool:
    """A browser form upload (POST Object)."""
    return req.headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")


def etag_matches(header: bytes, etag: str) -> bool:
    """Whether an If-Match / If-None-Match list names `etag` (or is `*`)."""
    tags = [t.strip().removeprefix("W/") for t in header.decode("latin-1").split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def parse_http_date(value: bytes | str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(
            value.decode("latin-1") if isinstance(value, bytes) else value).timestamp()
    except (TypeError, ValueError, OverflowError):  # a zone of +99999999999999999999
        return None


def params_of(query: bytes) -> dict[str, str]:
    params = {}
    for item in query.split(b"&") if query else ():
        if item:
            name, _, value = item.partition(b"=")
            params[unquote(name.decode("latin-1"))] = \
                unquote_to_bytes(value).decode("utf-8", "replace")
    return params


def int_param(params: dict[str, str], name: str, default: int, low: int = 0,
               high: int | None = None) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise S3Error(400, "InvalidArgument", f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise S3Error(400, "InvalidArgument", f"{name} is out of range")
    return value


def encode_token(position: bytes) -> str:
    """A continuation token: where the next page of a listing starts."""
    return base64.urlsafe_b64encode(position).decode()


def decode_token(token: str) -> bytes:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise S3Error(400, "InvalidArgument", "The continuation token provided is "
                      "incorrect") from None


def single_range(header: bytes | None) -> re.Match | None:
    """A `Range: bytes=a-b` header of one range; other forms are ignored, as S3 does."""
    if not header:
        return None
    m = _RANGE.match(header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    return m


def range_bound(digits: bytes) -> int:
    """A number of a range: any count of digits (int() refuses over 4,300), those past 18
    all beyond the end of any object."""
    digits = digits.lstrip(b"0")
    return int(digits or b"0") if len(digits) <= 18 else 1 << 62


def resolve_range(m: re.Match, size: int) -> tuple[int, int] | None:
    """First and last byte of a range over `size` bytes; None if it cannot be satisfied."""
    first, last = m.group(1), m.group(2)
    if not first:
        length = range_bound(last)
        return (max(size - length, 0), size - 1) if length and size else None
    start = range_bound(first)
    end = min(range_bound(last), size - 1) if last else size - 1
    if start >= size or (last and range_bound(last) < start):
        return None
    return start, end
