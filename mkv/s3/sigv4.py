"""AWS request signatures, checked rather than made. Signature Version 4: the `Authorization`
header form, the presigned-URL form (`X-Amz-Signature` in the query), and the per-chunk and
trailer signatures of `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` bodies. Signature Version 2
too (`Authorization: AWS key:sig`, or `AWSAccessKeyId`/`Signature`/`Expires` in the query),
because boto3's `generate_presigned_url` still makes those by default.

The canonical request follows the S3 flavour of SigV4: the path is not double-encoded, the
query is re-encoded and sorted, and the signed headers are taken as the request sent them.
Clients differ in how they percent-encode a path; the path as sent is tried first, then
its canonical re-encoding.

A signature binds what it claims, as S3's does: every `x-amz-*` header must be among a SigV4
request's signed headers (Version 2 signs them all by construction), and the payload hash
signed is handed on (`Signed.payload_hash`) for the body to be checked against.
"""

import base64
import email.utils
import hashlib
import hmac
import re
import time
from calendar import timegm
from datetime import datetime
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = 15 * 60  # seconds between the client's clock and ours, as S3 allows
MAX_EXPIRES = 7 * 24 * 3600  # the longest a presigned URL may live, as S3 allows
_SPACES = re.compile(r"\s+")
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class AuthError(Exception):
    """A request S3 would refuse: `code` and `status` as S3 answers them."""

    def __init__(self, code: str, message: str, status: int = 403,
                 extra: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra or {}  # elements S3 adds to its <Error>, such as HeadersNotSigned


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


@lru_cache(maxsize=64)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def _uri_encode(data: bytes | str, safe: str = "-_.~") -> str:
    return quote(data, safe=safe)


def canonical_query(query: bytes, drop: str | None = None) -> str:
    """The query re-encoded as SigV4 wants it: each name and value percent-encoded, sorted."""
    pairs = []
    for item in query.split(b"&") if query else ():
        if not item:
            continue
        name, _, value = item.partition(b"=")
        name_s = _uri_encode(unquote_to_bytes(name))
        if name_s == drop:
            continue
        pairs.append((name_s, _uri_encode(unquote_to_bytes(value))))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def _canonical_paths(path: bytes) -> list[str]:
    raw = path.decode("latin-1")
    encoded = _uri_encode(unquote_to_bytes(path), safe="/-_.~")
    return [raw] if encoded == raw else [raw, encoded]


def _header_value(value: bytes) -> str:
    # header values are signed as the bytes sent: UTF-8 (x-amz-meta-* may hold any text),
    # other bytes carried through by surrogateescape and restored by _signed_bytes
    return _SPACES.sub(" ", value.decode("utf-8", "surrogateescape").strip())


def _signed_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def parse_amz_date(text: str) -> int:
    """Seconds since the epoch of an ISO 8601 basic date such as 20130524T000000Z."""
    m = _DATE.match(text)
    try:
        when = datetime(*(int(g) for g in m.groups())) if m else None  # month 13: ValueError
    except ValueError:
        when = None
    if when is None:
        raise AuthError("AccessDenied", f"invalid X-Amz-Date {text!r}")
    return timegm(when.timetuple())


class Signed:
    """What a verified request leaves behind: the payload hash it signed, and enough to check
    the signatures of its chunks."""

    def __init__(self, access_key: str, key: bytes, amz_date: str, scope: str,
                 signature: str, payload_hash: str = UNSIGNED_PAYLOAD) -> None:
        self.access_key = access_key
        self._key = key
        self.amz_date = amz_date
        self.scope = scope
        self.signature = signature  # the seed: the first chunk's previous signature
        # a hex SHA-256, UNSIGNED-PAYLOAD or STREAMING-…: x-amz-content-sha256 with header
        # auth, a presigned URL's X-Amz-Content-Sha256 (UNSIGNED-PAYLOAD when it has none)
        self.payload_hash = payload_hash

    def _sign(self, kind: str, previous: str, *hashes: str) -> str:
        string = "\n".join((kind, self.amz_date, self.scope, previous, *hashes))
        return hmac.new(self._key, string.encode(), hashlib.sha256).hexdigest()

    def chunk_signature(self, previous: str, data_sha256: str) -> str:
        return self._sign("AWS4-HMAC-SHA256-PAYLOAD", previous, EMPTY_SHA256, data_sha256)

    def trailer_signature(self, previous: str, trailer: bytes) -> str:
        return self._sign("AWS4-HMAC-SHA256-TRAILER", previous,
                          hashlib.sha256(trailer).hexdigest())


def _parse_authorization(value: str) -> dict[str, str]:
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise AuthError("AccessDenied", f"unsupported authorization {algorithm!r}: "
                        "only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted")
    fields = {}
    for part in rest.split(","):
        name, eq, field = part.strip().partition("=")
        if eq:
            fields[name] = field
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise AuthError("AuthorizationHeaderMalformed",
                        "the authorization header needs Credential, SignedHeaders and Signature",
                        400)
    return fields


def _query_params(query: bytes) -> dict[str, str]:
    params = {}
    for item in query.split(b"&") if query else ():
        name, _, value = item.partition(b"=")
        params[unquote_to_bytes(name).decode("latin-1")] = \
            unquote_to_bytes(value).decode("utf-8", "replace")
    return params


def unsigned_headers(headers: dict[bytes, bytes], signed: list[str]) -> list[str]:
    """The request's `x-amz-*` header names (lower case, sorted) not among `signed`."""
    names = set(signed)
    return sorted(name for name in (n.decode("latin-1") for n in headers)
                  if name.startswith("x-amz-") and name not in names)


def verify(method: bytes, path: bytes, query: bytes, headers: dict[bytes, bytes],
           secrets: dict[str, str], now: float | None = None) -> Signed:
    """Check a request's SigV4 signature against `secrets` (access key → secret key).

    Returns what chunk signatures are checked with; raises AuthError when S3 would refuse.
    """
    now = time.time() if now is None else now
    presigned = b"X-Amz-Signature=" in query or b"x-amz-signature=" in query.lower()
    if presigned:
        params = _query_params(query)
        if params.get("X-Amz-Algorithm") != ALGORITHM:
            raise AuthError("AuthorizationQueryParametersError",
                            "X-Amz-Algorithm must be AWS4-HMAC-SHA256", 400)
        try:
            credential = params["X-Amz-Credential"]
            signed_headers = params["X-Amz-SignedHeaders"]
            signature = params["X-Amz-Signature"]
            amz_date = params["X-Amz-Date"]
            expires = int(params["X-Amz-Expires"])
        except (KeyError, ValueError):
            raise AuthError("AuthorizationQueryParametersError",
                            "a presigned URL needs X-Amz-Credential, X-Amz-SignedHeaders, "
                            "X-Amz-Signature, X-Amz-Date and X-Amz-Expires", 400) from None
        if not 1 <= expires <= MAX_EXPIRES:
            raise AuthError("AccessDenied", "X-Amz-Expires must be between 1 and 604800 "
                            "seconds")
        signed_at = parse_amz_date(amz_date)
        if now > signed_at + expires:
            raise AuthError("AccessDenied", "Request has expired")
        if signed_at - now > MAX_SKEW:
            raise AuthError("AccessDenied", "Request is not valid yet")
        payload_hash = params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
        if payload_hash != UNSIGNED_PAYLOAD and not SHA256_HEX.fullmatch(payload_hash):
            # anything else could not be checked against the body, so nothing would bind it
            raise AuthError("AuthorizationQueryParametersError", "X-Amz-Content-Sha256 must "
                            "be UNSIGNED-PAYLOAD or a lower-case hex SHA-256", 400)
        query_string = canonical_query(query, drop="X-Amz-Signature")
    else:
        fields = _parse_authorization(headers.get(b"authorization", b"").decode("latin-1"))
        credential = fields["Credential"]
        signed_headers = fields["SignedHeaders"]
        signature = fields["Signature"]
        amz_date = (headers.get(b"x-amz-date") or b"").decode("latin-1")
        if not amz_date:
            raise AuthError("AccessDenied", "AWS authentication requires a valid X-Amz-Date")
        if abs(now - parse_amz_date(amz_date)) > MAX_SKEW:
            raise AuthError("RequestTimeTooSkewed", "The difference between the request time "
                            "and the server's time is too large.")
        payload = headers.get(b"x-amz-content-sha256")
        if payload is None:
            raise AuthError("InvalidRequest", "Missing required header for this request: "
                            "x-amz-content-sha256", 400)
        payload_hash = payload.decode("latin-1")
        query_string = canonical_query(query)

    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise AuthError("AuthorizationHeaderMalformed", f"malformed credential {credential!r}",
                        400)
    access_key, date, region, service, _ = parts
    if date != amz_date[:8]:
        raise AuthError("AuthorizationHeaderMalformed",
                        "the credential's date does not match X-Amz-Date", 400)
    secret = secrets.get(access_key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId",
                        "The AWS Access Key Id you provided does not exist in our records.")
    names = signed_headers.split(";")
    if "host" not in names:
        raise AuthError("AccessDenied", "the host header must be signed")
    # an x-amz-* header changes what a request does (x-amz-copy-source makes a PUT a copy):
    # one the signer did not sign could have been added by anyone on the way
    unsigned = unsigned_headers(headers, names)
    if unsigned:
        raise AuthError("AccessDenied", "There were headers present in the request which were "
                        "not signed", extra={"HeadersNotSigned": ", ".join(unsigned)})
    lines = []
    for name in names:
        value = headers.get(name.encode())  # a presigned name may be any text
        if value is None:
            raise AuthError("SignatureDoesNotMatch", f"signed header {name!r} is missing")
        lines.append(f"{name}:{_header_value(value)}\n")
    header_block = "".join(lines)
    scope = f"{date}/{region}/{service}/aws4_request"
    key = signing_key(secret, date, region, service)
    for canonical_path in _canonical_paths(path):
        canonical = "\n".join((method.decode(), canonical_path, query_string, header_block,
                               signed_headers, payload_hash))
        string_to_sign = "\n".join((ALGORITHM, amz_date, scope,
                                    hashlib.sha256(_signed_bytes(canonical)).hexdigest()))
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), signature.encode()):  # any text
            return Signed(access_key, key, amz_date, scope, signature, payload_hash)
    raise AuthError("SignatureDoesNotMatch", "The request signature we calculated does not "
                    "match the signature you provided. Check your key and signing method.")


# the query parameters S3 signs in Version 2 (what botocore's HmacV1Auth includes)
V2_SUBRESOURCES = frozenset(
    "accelerate acl cors defaultObjectAcl location logging partNumber policy requestPayment "
    "torrent versioning versionId versions website uploads uploadId response-content-type "
    "response-content-language response-expires response-cache-control "
    "response-content-disposition response-content-encoding delete lifecycle tagging restore "
    "storageClass notification replication analytics metrics inventory select select-type "
    "object-lock".split())


def is_v2(query: bytes, headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"authorization", b"").startswith(b"AWS ") or b"AWSAccessKeyId=" in query


def verify_v2(method: bytes, path: bytes, query: bytes, headers: dict[bytes, bytes],
              secrets: dict[str, str], now: float | None = None) -> str:
    """Check a Signature Version 2 request; the access key, or AuthError."""
    now = time.time() if now is None else now
    params = _query_params(query)
    if "AWSAccessKeyId" in params:
        access_key = params["AWSAccessKeyId"]
        signature = params.get("Signature", "")
        try:
            expires = int(params["Expires"])
        except (KeyError, ValueError):
            raise AuthError("AccessDenied", "a presigned URL needs Expires") from None
        if now > expires:
            raise AuthError("AccessDenied", "Request has expired")
        date = str(expires)
    else:
        authorization = headers.get(b"authorization", b"")
        if not authorization.startswith(b"AWS "):  # is_v2 saw "AWSAccessKeyId=" in a value
            raise AuthError("AccessDenied", "a Version 2 request needs an AWSAccessKeyId "
                            "parameter or an Authorization: AWS header")
        access_key, _, signature = authorization[4:].decode("latin-1").strip().rpartition(":")
        stamp = headers.get(b"x-amz-date") or headers.get(b"date")
        try:
            signed_at = email.utils.parsedate_to_datetime(stamp.decode("latin-1")).timestamp()
        except (AttributeError, TypeError, ValueError, OverflowError):  # 99999…:13:20 too
            raise AuthError("AccessDenied", "AWS authentication requires a valid Date or "
                            "x-amz-date header") from None
        if abs(now - signed_at) > MAX_SKEW:
            raise AuthError("RequestTimeTooSkewed", "The difference between the request time "
                            "and the server's time is too large.")
        date = "" if b"x-amz-date" in headers else stamp.decode("latin-1").strip()
    secret = secrets.get(access_key)
    if secret is None:
        raise AuthError("InvalidAccessKeyId",
                        "The AWS Access Key Id you provided does not exist in our records.")

    def header(name: str) -> str:
        value = headers.get(name.encode())
        return value.decode("latin-1").strip() if value is not None else params.get(name, "")

    amz = {name.decode("latin-1"): _header_value(value) for name, value in headers.items()
           if name.startswith(b"x-amz-")}
    amz.update({name: value for name, value in params.items()
                if name.startswith("x-amz-") and name not in amz})
    amz_lines = "".join(f"{name}:{amz[name]}\n" for name in sorted(amz))
    subresources = []
    for item in query.split(b"&") if query else ():
        name, eq, value = item.partition(b"=")
        name_s = unquote_to_bytes(name).decode("latin-1")
        if name_s in V2_SUBRESOURCES:
            value_s = unquote_to_bytes(value).decode("utf-8", "replace")
            subresources.append((name_s, f"{name_s}={value_s}" if eq else name_s))
    sub = "&".join(text for _, text in sorted(subresources, key=lambda pair: pair[0]))
    resources = _canonical_paths(path)
    if path.count(b"/") == 1 and len(path) > 1:  # a bucket: botocore signs `/bucket/`
        resources += [r + "/" for r in resources]
    for resource in resources:
        string = "\n".join((method.decode(), header("content-md5"), header("content-type"),
                             date, amz_lines + resource + (f"?{sub}" if sub else "")))
        expected = base64.b64encode(hmac.new(secret.encode(), _signed_bytes(string),
                                             hashlib.sha1).digest()).decode()
        if hmac.compare_digest(expected.encode(), signature.encode()):  # any text
            return access_key
    raise AuthError("SignatureDoesNotMatch", "The request signature we calculated does not "
                    "match the signature you provided. Check your key and signing method.")
