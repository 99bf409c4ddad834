"""S3 POST Object: browser form uploads (`multipart/form-data` POSTed to the bucket URL).

The form is parsed as it streams in (python-multipart): the fields before the `file` field
are read first and checked (the policy document's expiration and conditions, its SigV4 or V2
signature under -s3_keys), then the file's bytes stream through the store into the replicas
like a PutObject body, never held whole. Fields after the file are ignored, as on S3. What is
held before the signature is checked is bounded: MAX_FIELDS fields, MAX_FIELDS_SIZE bytes of
their headers and values, MAX_PART_HEADER bytes of any part's headers.
"""

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from urllib.parse import quote, urlencode, urlsplit

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from mkv.http.flow import Body
from mkv.http.messages import Request, Response
from mkv.http.target import parse_key
from mkv.s3 import xml as s3xml
from mkv.s3.access import Access
from mkv.s3.awschunked import BadPayload
from mkv.s3.checksums import ALGORITHMS, FULL_OBJECT
from mkv.s3.errors import S3Error
from mkv.s3.grants import WRITE, canned_acl
from mkv.s3.metadata import check_tags, header_value, headers_from
from mkv.s3.objects import Objects, check_storable
from mkv.s3.payload import Payload
from mkv.s3.sigv4 import ALGORITHM, signing_key
from mkv.s3.xml import XML

MAX_FIELDS = 100  # fields before the file
MAX_FIELDS_SIZE = 64 * 1024  # their headers' and values' bytes (S3 allows 20 KB of policy)
MAX_PART_HEADER = 4 * 1024  # the bytes of one part's headers (its field name among them)
# fields the policy need not name: the signature's own, the file, x-ignore-*
_UNCONDITIONED = frozenset(("policy", "x-amz-signature", "signature", "awsaccesskeyid", "file"))


def _malformed(why: str) -> BadPayload:
    return BadPayload("MalformedPOSTRequest", "The body of your POST request is not "
                      f"well-formed multipart/form-data: {why}")


def _too_large() -> S3Error:
    return S3Error(400, "MaxPostPreDataLengthExceeded", "Your POST request fields preceding "
                   "the upload file were too large.")


class Form:
    """A multipart/form-data body read as it arrives: `read_fields` until the file starts,
    then `file()` streams the file's bytes (the rest of the body is read and dropped)."""

    def __init__(self, body: Body, content_type: bytes) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise S3Error(400, "MalformedPOSTRequest", "The body of your POST request is not "
                          "well-formed multipart/form-data: no boundary")
        self.fields: dict[str, str] = {}  # lower-cased name → value, first one wins
        self.filename = ""
        self._chunks = body.__aiter__()
        self._size = 0  # bytes of the fields' headers and values
        self._parts = 0  # fields read
        self._part_head = 0  # bytes of this part's headers
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = self._text = b""  # the header name and value being read
        self._name: bytes | None = None
        self._value = bytearray()
        self._state = "fields"  # then "file" while its bytes come, "after" once it ended
        self._ended = False
        self._file_data: list[bytes] = []
        try:
            self._parser = MultipartParser(boundary, {
                "on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end})
        except FormParserError as e:  # a boundary over python-multipart's 256 bytes
            raise S3Error(400, "MalformedPOSTRequest", "The body of your POST request is not "
                          f"well-formed multipart/form-data: {e}") from None

    # --- parser callbacks ---
    def _part_begin(self) -> None:
        self._headers, self._name, self._value = [], None, bytearray()
        self._field, self._text = b"", b""
        self._part_head = 0

    def _count(self, size: int, head: bool) -> None:
        """Count bytes of a part's headers or a field's value against the limits."""
        if head:
            self._part_head += size
            if self._part_head > MAX_PART_HEADER:
                raise _malformed(f"a part's headers are over {MAX_PART_HEADER} bytes")
        if self._state == "fields":
            self._size += size
            if self._size > MAX_FIELDS_SIZE:
                raise _too_large()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start, head=True)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start, head=True)
        self._text += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field.lower(), self._text))
        self._field, self._text = b"", b""

    def _headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        self._name = options.get(b"name")
        if self._state == "fields" and self._name is not None and self._name.lower() == b"file":
            self._state = "file"
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        elif self._state == "fields":
            self._parts += 1
            if self._parts > MAX_FIELDS:
                raise _too_large()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._state == "file":
            self._file_data.append(bytes(data[start:end]))
        elif self._state == "fields":
            self._count(end - start, head=False)
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._state == "file":
            self._state = "after"
        elif self._state == "fields" and self._name is not None:
            self.fields.setdefault(self._name.decode("utf-8", "replace").lower(),
                                   self._value.decode("utf-8", "replace"))

    def _end(self) -> None:
        self._ended = True

    # --- reading ---
    async def _feed(self) -> bool:
        """Parse the next chunk of the body; False at its end."""
        chunk = await anext(self._chunks, None)
        if chunk is None:
            return False
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise _malformed(str(e)) from None
        return True

    async def read_fields(self) -> None:
        """Read up to the file's first byte; S3Error if the form has no file."""
        while self._state == "fields":
            if not await self._feed():
                if not self._ended:
                    raise _malformed("the body ended early")
                raise S3Error(400, "InvalidArgument", "POST requires exactly one file upload "
                              "per request.", ArgumentName="file", ArgumentValue="0")

    async def file(self, smallest: int = 0, largest: int | None = None
                   ) -> AsyncIterator[bytes]:
        """The file's bytes, checked against content-length-range. The last block is held
        back until the form has ended well, so a replica never completes a refused value."""
        held, size = None, 0
        while True:
            blocks, self._file_data = self._file_data, []
            for block in blocks:
                size += len(block)
                if largest is not None and size > largest:
                    raise BadPayload("EntityTooLarge", "Your proposed upload exceeds the "
                                     "maximum allowed size")
                if held is not None:
                    yield held
                held = block
            if self._state == "after":
                break
            if not await self._feed():
                raise _malformed("the body ended inside the file")
        while await self._feed():  # fields after the file: read, ignored
            pass
        if not self._ended:
            raise _malformed("the body ended early")
        if size < smallest:
            raise BadPayload("EntityTooSmall", "Your proposed upload is smaller than the "
                             "minimum allowed size")
        if held is not None:
            yield held


def _denied(why: str) -> S3Error:
    return S3Error(403, "AccessDenied", f"Invalid according to Policy: {why}")


_EXPIRATION = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z\Z", re.ASCII)


def _invalid_policy(why: str) -> S3Error:
    return S3Error(400, "InvalidPolicyDocument", f"Invalid Policy: {why}")


def check_policy(policy: str, fields: dict[str, str], bucket: str,
                 now: float) -> tuple[int, int | None]:
    """The policy document's expiration and conditions against the form (its key with
    ${filename} filled in); the content-length-range it sets, (0, None) if none."""
    try:
        document = json.loads(base64.b64decode(policy, validate=True))
    except (binascii.Error, ValueError, RecursionError):  # [[[[… a thousand deep
        raise _invalid_policy("Invalid JSON.") from None
    if not isinstance(document, dict) or "expiration" not in document:
        raise _invalid_policy("Policy missing expiration.")
    written = document["expiration"]
    try:  # ISO 8601 in UTC as S3 has it ("2030-01-01T00:00:00Z", ".000Z" too), nothing looser
        if not isinstance(written, str) or not _EXPIRATION.match(written):
            raise ValueError(written)
        expiration = datetime.fromisoformat(written.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise _invalid_policy("Invalid 'expiration' value.") from None
    if now > expiration:
        raise _denied("Policy expired.")
    conditions = document.get("conditions")
    if not isinstance(conditions, list):
        raise _invalid_policy("Policy missing conditions.")
    named, length_range = set(), (0, None)
    for condition in conditions:
        if isinstance(condition, dict) and len(condition) == 1:
            (name, value), = condition.items()
            operator, name = "eq", f"${name}"
        elif isinstance(condition, list) and len(condition) == 3:
            operator, name, value = condition
            operator = str(operator).lower()
        else:
            raise _invalid_policy(f"Invalid condition {json.dumps(condition)}.")
        if operator == "content-length-range":
            try:
                length_range = (int(name), int(value))
            except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999 is inf
                raise _invalid_policy("content-length-range needs two integers.") from None
            continue
        if operator not in ("eq", "starts-with") or not isinstance(name, str) \
                or not name.startswith("$") or not isinstance(value, str):
            raise _invalid_policy(f"Invalid condition {json.dumps(condition)}.")
        field = name[1:].lower()
        actual = bucket if field == "bucket" else fields.get(field)
        holds = actual is not None and (actual == value if operator == "eq"
                                        else actual.startswith(value))
        if not holds:
            raise _denied(f"Policy Condition failed: {json.dumps(condition)}")
        named.add(field)
    extra = sorted(name for name in fields if name not in named and name not in _UNCONDITIONED
                   and not name.startswith(("x-ignore-", "x-amz-checksum-")))
    if extra:
        raise _denied(f"Extra input fields: {extra[0]}")
    return length_range


def check_signature(fields: dict[str, str], secrets: dict[str, str]) -> str | None:
    """The form's signature of its policy, SigV4 (x-amz-credential, x-amz-signature) or V2
    (AWSAccessKeyId, signature): the access key that signed it; None for a form that is not
    signed (anonymous)."""
    policy = fields.get("policy")
    if "x-amz-signature" in fields:
        if fields.get("x-amz-algorithm") != ALGORITHM:
            raise S3Error(400, "InvalidArgument", "x-amz-algorithm must be AWS4-HMAC-SHA256",
                          ArgumentName="x-amz-algorithm")
        parts = fields.get("x-amz-credential", "").split("/")
        if len(parts) != 5 or parts[4] != "aws4_request" or policy is None:
            raise S3Error(400, "InvalidArgument", "a signed form needs x-amz-credential "
                          "(key/date/region/service/aws4_request) and policy")
        access_key, date, region, service, _ = parts
        secret = _secret(secrets, access_key)
        expected = hmac.new(signing_key(secret, date, region, service), policy.encode(),
                            hashlib.sha256).hexdigest()
        given = fields["x-amz-signature"]
    elif "signature" in fields:
        if policy is None or "awsaccesskeyid" not in fields:
            raise S3Error(400, "InvalidArgument", "a signed form needs AWSAccessKeyId and "
                          "policy")
        access_key = fields["awsaccesskeyid"]
        secret = _secret(secrets, access_key)
        expected = base64.b64encode(hmac.new(secret.encode(), policy.encode(),
                                             hashlib.sha1).digest()).decode()
        given = fields["signature"]
    elif policy is not None or "awsaccesskeyid" in fields or "x-amz-credential" in fields:
        # a form meant to be signed, its signature left out: malformed, as S3 answers it
        raise S3Error(400, "InvalidArgument", "Bucket POST must contain a field named "
                      "'x-amz-signature' (or 'Signature').  If it is specified, please check "
                      "the order of the fields.", ArgumentName="x-amz-signature")
    else:
        return None
    if not hmac.compare_digest(expected.encode(), given.encode()):  # given: any text
        raise S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does "
                      "not match the signature you provided. Check your key and signing "
                      "method.")
    return access_key


def _secret(secrets: dict[str, str], access_key: str) -> str:
    secret = secrets.get(access_key)
    if secret is None:
        raise S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not "
                      "exist in our records.")
    return secret


def _redirect(fields: dict[str, str]) -> str | None:
    """Where success_action_redirect (or redirect) sends the browser: an http(s) URL, as S3
    acts as if a URL it cannot use were absent; one with a control is refused (400)."""
    name = "success_action_redirect" if fields.get("success_action_redirect") else "redirect"
    target = fields.get(name)
    if not target:
        return None
    header_value(name, target)
    try:
        url = urlsplit(target)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        return None
    return target if url.scheme.lower() in ("http", "https") and url.netloc else None


def _answer(req: Request, redirect: str | None, fields: dict[str, str], bucket: str,
            name: str, etag: str) -> Response:
    """A 303 to `redirect`, else success_action_status: 200, 201 (PostResponse XML) or 204
    (the default, and what any other value gets)."""
    host = req.headers.get(b"host", b"").decode("latin-1")
    location = f"http://{host}/{quote(bucket)}/{quote(name)}"
    headers = [("ETag", etag), ("Location", location)]
    if redirect:
        query = urlencode({"bucket": bucket, "key": name, "etag": etag})
        target = f"{redirect}{'&' if '?' in redirect else '?'}{query}"
        return Response(303, [("Location", target), ("ETag", etag), ("Content-Length", "0")])
    status = fields.get("success_action_status", "")
    if status == "201":
        body = s3xml.document("PostResponse", [("Location", location), ("Bucket", bucket),
                                               ("Key", name), ("ETag", etag)],
                              namespaced=False)  # as S3 and RGW answer it
        return Response(201, headers + [XML], body)
    return Response(200 if status == "200" else 204, headers + [("Content-Length", "0")])


class Forms:
    """POST Object: the form checked against the S3 keys (`secrets`, empty: unsigned forms
    welcome), its file written through the objects service as PutObject writes."""

    def __init__(self, objects: Objects, secrets: dict[str, str], access: Access) -> None:
        self.objects = objects
        self.secrets = secrets
        self.access = access

    async def post_object(self, bucket: str, req: Request) -> Response:
        form = Form(req.body, req.headers[b"content-type"])
        await form.read_fields()
        fields = form.fields
        caller = check_signature(fields, self.secrets) if self.secrets else None
        await self.access.check_bucket(caller, bucket, WRITE)
        if "key" not in fields:
            raise S3Error(400, "InvalidArgument", "Bucket POST must contain a field named "
                          "'key'.  If it is specified, please check the order of the fields.",
                          ArgumentName="key", ArgumentValue="")
        fields["key"] = fields["key"].replace("${filename}", form.filename)
        name = fields["key"]
        key = f"/{bucket}/{name}".encode()
        if isinstance(parse_key(quote(key, safe="/").encode()), str):
            raise S3Error(400, "InvalidArgument", "this key cannot be named")
        check_storable(key)
        smallest, largest = (check_policy(fields["policy"], fields, bucket, time.time())
                             if "policy" in fields else (0, None))
        metadata = {"headers": headers_from((field.encode(), value.encode())
                                            for field, value in fields.items()),
                    "tags": check_tags(s3xml.parse_tagging(fields["tagging"].encode()))
                    if "tagging" in fields else [],
                    "acl": canned_acl(fields.get("acl", "private"))}
        redirect = _redirect(fields)  # checked, as the metadata is, before anything is written
        sent = [(algorithm, fields[f"x-amz-checksum-{algorithm}"]) for algorithm in ALGORITHMS
                if f"x-amz-checksum-{algorithm}" in fields][:1]
        algorithm, expected = sent[0] if sent else (None, None)
        file = Payload(form.file(smallest, largest), None, None, None, algorithm, expected, None)
        md5 = await self.objects.write(key, file, None)
        if file.computed:  # as PutObject keeps it
            metadata["checksum"] = {"algorithm": file.computed[0], "type": FULL_OBJECT,
                                    "value": file.computed[1]}
        await self.objects.keep_metadata(key, md5, metadata)
        return _answer(req, redirect, fields, bucket, name, f'"{md5}"' if md5 else '""')
