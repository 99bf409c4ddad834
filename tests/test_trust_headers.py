"""Nothing a request chose reaches a response header unless it is a valid header value, and
before a request is authenticated the master holds a bounded amount for it (issue 19, items 1
and 3), against real masters and nginx volumes. The response writer's own check is tested in
tests/test_httpserver.py."""

import asyncio
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import Master, Reply, keyed_master, request, write_records
from conftest import client as s3_client

from mkv.index import open_index
from mkv.record import Record

ACCESS, SECRET = "TRUSTKEY", "trust/secret"
CONTROL_BYTES = ["%0d%0aSet-Cookie:%20evil=1", "%0aSet-Cookie:%20evil=1", "%0d", "%00", "%01",
                 "%1b", "%7f"]


def code_of(reply: Reply) -> str | None:
    return ElementTree.fromstring(reply.body).findtext("Code")


def nothing_under(master: Master, bucket: str) -> bool:
    """No key at all under the bucket: neither a value nor a record left by a refusal."""
    for what in ("list", "unlinked", "writing"):
        if master.listing(f"/{bucket}/".encode(), what)["keys"]:
            return False
    return True


def form(*fields: tuple[bytes, bytes], boundary: bytes = b"B0UNDARY") -> bytes:
    """A multipart/form-data body of the fields, then a file part, written by hand so that
    names and values carry any byte."""
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
             % (boundary, name, value) for name, value in fields]
    parts.append(b'--%s\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
                 b"value\r\n--%s--\r\n" % (boundary, boundary))
    return b"".join(parts)


FORM_TYPE = {"Content-Type": "multipart/form-data; boundary=B0UNDARY"}


# --- item 1: no header carries bytes a request chose, unless they are a valid value ---


def test_response_overrides_with_control_bytes_are_refused(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"value")
    for bad in CONTROL_BYTES:
        for param in ("response-content-type", "response-content-disposition",
                      "response-expires"):
            for method in ("GET", "HEAD"):
                reply = request(s3master.port, method, f"/{bucket}/k?{param}=text/plain{bad}")
                assert reply.status == 400, (method, param, bad)
                assert reply.header("Set-Cookie") is None
                if method == "GET":
                    assert code_of(reply) == "InvalidArgument"
    # TAB is allowed inside a value
    fine = request(s3master.port, "GET",
                   f"/{bucket}/k?response-content-disposition=attachment;%09filename=a")
    assert (fine.status, fine.body) == (200, b"value")
    assert fine.header("Content-Disposition") == "attachment;\tfilename=a"


@pytest.mark.parametrize("field", [
    (b"x-amz-meta-a", b"1\r\nSet-Cookie: evil=1"), (b"x-amz-meta-a", b"1\x01"),
    (b"Content-Type", b"text/plain\nSet-Cookie: evil=1"), (b"Cache-Control", b"no\x7fcache"),
    (b"Content-Disposition", b"a\x00b"), (b"x-amz-meta-a\x01b", b"1"), (b"x-amz-meta-a b", b"1"),
    (b"success_action_redirect", b"http://example.com/\r\nSet-Cookie: evil=1"),
    (b"redirect", b"http://example.com/\x0b"),
])
def test_form_fields_that_would_break_a_header_write_nothing(s3master, bucket, field):
    reply = request(s3master.port, "POST", f"/{bucket}", form((b"key", b"k"), field),
                    FORM_TYPE)
    assert (reply.status, code_of(reply)) == (400, "InvalidArgument"), reply.body
    assert reply.header("Set-Cookie") is None
    assert nothing_under(s3master, bucket)


def test_a_form_redirect_that_is_not_http_is_ignored(s3master, bucket):
    """S3 "acts as if the field is not present" when it cannot use the URL."""
    for target in (b"javascript:alert(1)", b"//example.com/x", b"ftp://example.com/"):
        reply = request(s3master.port, "POST", f"/{bucket}",
                        form((b"key", b"k"), (b"success_action_redirect", target)), FORM_TYPE)
        assert (reply.status, reply.header("Location")) == (204, f"http://127.0.0.1:"
                                                                 f"{s3master.port}/{bucket}/k")
    reply = request(s3master.port, "POST", f"/{bucket}", form(
        (b"key", b"k"), (b"success_action_redirect", b"https://example.com/done")), FORM_TYPE)
    assert reply.status == 303
    assert reply.header("Location").startswith("https://example.com/done?bucket=")


def test_stored_metadata_with_tab_is_answered(s3master, s3, bucket):
    reply = request(s3master.port, "POST", f"/{bucket}",
                    form((b"key", b"k"), (b"x-amz-meta-a", b"one\ttwo")), FORM_TYPE)
    assert reply.status == 204, reply.body
    assert s3.head_object(Bucket=bucket, Key="k")["Metadata"] == {"a": "one\ttwo"}


def test_the_native_fallback_location_is_the_request_path(make_master):
    master = make_master("-fallback", "127.0.0.1:1")
    reply = request(master.port, "GET", "/a%0d%0aSet-Cookie:%20evil=1")
    assert reply.status == 302
    assert reply.header("Location") == "http://127.0.0.1:1/a%0d%0aSet-Cookie:%20evil=1"
    assert reply.header("Set-Cookie") is None


# --- item 3: bounded before authenticated ---


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, volumes) -> Iterator[Master]:
    yield from keyed_master(tmp_path_factory, volumes, (ACCESS, SECRET))


def post_raw(port: int, path: str, content_type: str, body: bytes) -> tuple[int, bytes]:
    """POST `body`, sent from a thread while the answer is read: the master may answer and
    close before the body ends. The status and the whole answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)

    def send() -> None:
        try:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:
            pass  # answered and closed before the body ended

    sender = threading.Thread(target=send)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        head, _, body_read = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
        while len(body_read) < length and (chunk := sock.recv(65536)):
            body_read += chunk
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the sender if it still waits to send
        except OSError:
            pass
        sock.close()
        sender.join()
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body_read


def keyed_bucket(master: Master) -> str:
    s3 = s3_client(master.port, key=ACCESS, secret=SECRET)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return bucket


def test_form_limits_hold_before_authentication(keyed):
    """100 fields, 64 KiB of their headers and values, 4 KiB of one part's headers: an
    unsigned form within them is read and refused as unsigned (403), one past them is 400."""
    bucket = keyed_bucket(keyed)
    within = [form(*((b"f%d" % i, b"") for i in range(100))),
              form((b"big", b"v" * 60_000)), form((b"n" * 4000, b""))]
    past = {"MaxPostPreDataLengthExceeded": [form(*((b"f%d" % i, b"") for i in range(101))),
                                             form((b"big", b"v" * 70_000)),
                                             form(*((b"f%d" % i, b"v" * 1000)
                                                    for i in range(66)))],
            "MalformedPOSTRequest": [form((b"n" * 4100, b""))]}
    for body in within:
        reply = request(keyed.port, "POST", f"/{bucket}", body, FORM_TYPE)
        assert (reply.status, code_of(reply)) == (403, "AccessDenied")
    for code, bodies in past.items():
        for body in bodies:
            reply = request(keyed.port, "POST", f"/{bucket}", body, FORM_TYPE)
            assert (reply.status, code_of(reply)) == (400, code)
    assert nothing_under(keyed, bucket)


def test_200000_tiny_form_fields_unauthenticated_stay_bounded(keyed):
    bucket = keyed_bucket(keyed)
    body = form((b"key", b"k"), *((b"f%d" % i, b"") for i in range(200_000)))
    before = keyed.process.reset_peak_rss()
    status, answer = post_raw(keyed.port, f"/{bucket}", "multipart/form-data; boundary=B0UNDARY",
                              body)
    grown = keyed.process.peak_rss_kib() - before
    print(f"200,000 form fields: {status}, the master's RSS grew {grown} KiB at its peak")
    assert 400 <= status < 500, answer
    assert grown < 16 * 1024
    assert nothing_under(keyed, bucket)


def fill(db: Path | str, records: dict[bytes, bytes]) -> None:
    """Write raw records into a LevelDB directory or a PostgreSQL database, as they are."""
    if isinstance(db, Path):
        write_records(db, records)
        return

    async def put() -> None:
        index = await open_index(db)
        try:
            await index.put_many([(key, Record.decode(raw)) for key, raw in records.items()])
        finally:
            await index.close()

    asyncio.run(put())


@pytest.fixture(params=["leveldb", "postgresql"])
def engine_db(request, make_master) -> Path | str:
    """A fresh index of each engine: a LevelDB directory, a PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return make_master.new_db()


def test_a_listing_of_many_pages_streams_the_same_json(make_master, volumes, engine_db):
    """Past one page of the index, `?list` streams; its JSON is what one page would say."""
    value = f"{volumes[0].addr}/sv00".encode()
    keys = [b"/many/%05d" % i for i in range(10_000)] + ["/many/é".encode(), b"/many/\xff"]
    records = {key: value for key in keys}
    records.update({b"/many/%05d-gone" % i: b"DELETED" + value for i in range(0, 10_000, 7)})
    fill(engine_db, records)
    master = make_master(db=engine_db)
    reply = request(master.port, "GET", "/many/?list")
    assert (reply.status, reply.header("Transfer-Encoding")) == (200, "chunked")
    expected = {"next": "", "keys": [k.decode(errors="replace") for k in sorted(keys)]}
    assert reply.body == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    unlinked = json.loads(request(master.port, "GET", "/many/?unlinked").body)
    assert len(unlinked["keys"]) == len(range(0, 10_000, 7))
