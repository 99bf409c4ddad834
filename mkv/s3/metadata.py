"""S3 object metadata and tags: what a write asks to keep (checked as S3 checks it), the
headers a read answers with. Kept in the S3 state (mkv/s3/state.py); tags are read and set by
the tagging service (mkv/s3/tagging.py)."""

import base64
import email.errors
import email.header
from collections.abc import Iterable
from urllib.parse import parse_qsl

from mkv.http.headers import valid_name, valid_value
from mkv.http.messages import Request
from mkv.s3.errors import S3Error
from mkv.s3.grants import Grant, acl_of_headers, private

# the headers S3 stores with an object and answers with, as S3 spells them
STORED = {name.lower().encode(): name for name in (
    "Content-Type", "Content-Encoding", "Content-Disposition", "Content-Language",
    "Cache-Control", "Expires")}
USER_PREFIX = b"x-amz-meta-"
MAX_USER_METADATA = 2048  # bytes of x-amz-meta-* names (without the prefix) and values
MAX_TAGS = 10
DEFAULT_TYPE = "application/octet-stream"

Tags = list[tuple[str, str]]


def _text(value: bytes) -> str:
    # UTF-8 as clients send it; any other byte kept as it came, to be answered unchanged
    return value.decode("utf-8", "surrogateescape").strip()


def _user_value(value: bytes) -> str:
    """A user metadata value as S3 keeps it: text, its RFC 2047 encoded-words decoded (what
    S3 answers for a non-ASCII value, sent back by a copying client). Bytes that are not
    UTF-8 are read as Latin-1, as HTTP has it, so every engine of the S3 state stores it."""
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = value.decode("latin-1").strip()
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
            pass  # not encoded-words after all: kept as sent
    return text


def _mail_safe(value: str) -> str:
    """A user metadata value as S3 answers it: as is when ASCII, else one RFC 2047
    encoded-word of its UTF-8 (a header's bytes are Latin-1 to most HTTP clients, so raw
    UTF-8 would come back garbled)."""
    if value.isascii():
        return value
    # a value kept before values were text (non-UTF-8 bytes as surrogates) keeps its bytes
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8", "surrogateescape")).decode() \
        + "?="


def header_value(what: str, value: str) -> str:
    """`value`, if it may be sent as a header's; else 400 InvalidArgument."""
    if not valid_value(value):
        raise S3Error(400, "InvalidArgument", f"{what} holds a control character",
                      ArgumentName=what)
    return value


def headers_of(req: Request) -> list[tuple[str, str]]:
    """The metadata headers of a write (PutObject, CopyObject REPLACE, CreateMultipartUpload)."""
    return headers_from(req.headers.items())


def headers_from(items: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The metadata among (lower-case name, value) pairs: a write's headers, or a POST
    form's fields. Each will be a header of every read: one that could not be is refused."""
    kept, user_size = [], 0
    for name, value in items:
        if name in STORED:
            text = header_value(STORED[name], _text(value))
            if name == b"content-encoding":  # the transfer's own coding is not the object's
                text = ", ".join(t.strip() for t in text.split(",")
                                 if t.strip() and t.strip().lower() != "aws-chunked")
            if text:
                kept.append((STORED[name], text))
        elif name.startswith(USER_PREFIX):
            field = _text(name)
            if not valid_name(field):
                raise S3Error(400, "InvalidArgument", "a metadata name must be a token "
                              "(RFC 9110)", ArgumentName="x-amz-meta-*")
            kept.append((field, header_value(field, _user_value(value))))
            user_size += len(name) - len(USER_PREFIX) + len(value)
    if user_size > MAX_USER_METADATA:
        raise S3Error(400, "MetadataTooLarge", "Your metadata headers exceed the maximum "
                      f"allowed metadata size ({MAX_USER_METADATA} bytes)",
                      Size=str(user_size), MaxSizeAllowed=str(MAX_USER_METADATA))
    return kept


def check_tags(tags: Tags) -> Tags:
    if len(tags) > MAX_TAGS:
        raise S3Error(400, "InvalidTag", f"Object tags cannot be greater than {MAX_TAGS}")
    if len({key for key, _ in tags}) != len(tags):
        raise S3Error(400, "InvalidTag", "Cannot provide multiple Tags with the same key")
    for key, value in tags:
        if not 1 <= len(key) <= 128:
            raise S3Error(400, "InvalidTag", "The TagKey you have provided is invalid")
        if len(value) > 256:
            raise S3Error(400, "InvalidTag", "The TagValue you have provided is invalid")
    return tags


def tags_of(req: Request) -> Tags:
    """The `x-amz-tagging` header: URL-encoded `k=v&k2=v2`."""
    header = req.headers.get(b"x-amz-tagging")
    if header is None:
        return []
    return check_tags(parse_qsl(header.decode("utf-8", "replace"), keep_blank_values=True))


def of_request(req: Request) -> dict:
    """What a write asks to keep: {"headers": [...], "tags": [...], "acl": [...]} (checked,
    nothing written). The ACL's grantees were checked against the access keys by the face."""
    return {"headers": headers_of(req), "tags": tags_of(req), "acl": acl_of_request(req)}


def acl_of_request(req: Request) -> list[Grant]:
    """The ACL a write asks for: `private` unless its headers say otherwise."""
    return acl_of_headers(req.headers, None) or private()


def answer_headers(metadata: dict | None) -> list[tuple[str, str]]:
    """The headers GetObject and HeadObject add for an object's metadata."""
    if not metadata:
        return [("Content-Type", DEFAULT_TYPE)]
    headers = [(name, _mail_safe(value) if name.startswith("x-amz-meta-") else value)
               for name, value in metadata.get("headers", [])]
    if not any(name == "Content-Type" for name, _ in headers):
        headers.append(("Content-Type", DEFAULT_TYPE))
    if metadata.get("tags"):
        headers.append(("x-amz-tagging-count", str(len(metadata["tags"]))))
    return headers
