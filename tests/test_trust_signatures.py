"""Signatures bind what they claim (issue 19, item 2). With keys set, every `x-amz-*` header a
request carries must be signed (SigV4 header auth and presigned URLs: else 403 AccessDenied,
HeadersNotSigned), a presigned URL's X-Amz-Content-Sha256 binds its body, and Signature
Version 2 signs every `x-amz-*` header it honours. Requests are signed by botocore, then altered;
a refused one writes or copies nothing.
"""

import hashlib
import uuid
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import client as s3_client
from conftest import keyed_master, request

from mkv.s3.sigv4 import AuthError, unsigned_headers, verify

ACCESS, SECRET = "AKIDTRUST", "trust/secret+1"
SECRET_VALUE = b"the secret value"


@pytest.fixture(scope="module")
def master(tmp_path_factory, volumes):
    yield from keyed_master(tmp_path_factory, volumes, (ACCESS, SECRET))


def client(master, signature_version: str = "s3v4"):
    return s3_client(master.port, 1, ACCESS, SECRET, signature_version)


@pytest.fixture
def bucket(master):
    """A bucket holding `secret`, a value no altered request may copy or read."""
    name = f"trust-{uuid.uuid4().hex[:8]}"
    s3 = client(master)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="secret", Body=SECRET_VALUE)
    return name


def send(url: str, method: str, body: bytes = b"", headers: dict[str, str] | None = None,
         path: str | None = None):
    """A presigned URL sent as is, or with headers added or its path swapped."""
    parts = urlsplit(url)
    return request(parts.port, method, f"{path or parts.path}?{parts.query}", body, headers)


def records(master, bucket: str) -> dict[str, list[str]]:
    """The bucket's keys in every state the native API lists."""
    return {what: master.listing(f"/{bucket}/", what)["keys"]
            for what in ("list", "unlinked", "writing")}


def assert_untouched(master, bucket: str, s3) -> None:
    assert records(master, bucket) == {"list": [f"/{bucket}/secret"], "unlinked": [],
                                       "writing": []}
    assert s3.get_object(Bucket=bucket, Key="secret")["Body"].read() == SECRET_VALUE


def assert_not_signed(reply, names: str) -> None:
    assert reply.status == 403, reply.body
    assert b"<Code>AccessDenied</Code>" in reply.body
    assert b"There were headers present in the request which were not signed" in reply.body
    assert f"<HeadersNotSigned>{names}</HeadersNotSigned>".encode() in reply.body


# --- presigned URLs (SigV4) ---


def test_a_presigned_put_plus_an_unsigned_copy_source_copies_nothing(master, bucket):
    s3 = client(master)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "upload"},
                                    ExpiresIn=300)
    reply = send(url, "PUT", headers={"x-amz-copy-source": f"/{bucket}/secret"})
    assert_not_signed(reply, "x-amz-copy-source")
    assert_untouched(master, bucket, s3)
    # nor over a value already there
    s3.put_object(Bucket=bucket, Key="upload", Body=b"mine")
    reply = send(url, "PUT", b"", {"x-amz-copy-source": f"/{bucket}/secret",
                                   "x-amz-metadata-directive": "REPLACE"})
    assert_not_signed(reply, "x-amz-copy-source, x-amz-metadata-directive")
    assert s3.get_object(Bucket=bucket, Key="upload")["Body"].read() == b"mine"
    assert send(url, "PUT", b"uploaded").status == 200  # the URL itself still works
    assert s3.get_object(Bucket=bucket, Key="upload")["Body"].read() == b"uploaded"


def test_a_presigned_put_plus_unsigned_metadata_is_refused(master, bucket):
    s3 = client(master)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "m"},
                                    ExpiresIn=300)
    reply = send(url, "PUT", b"v", {"x-amz-meta-owner": "mallory"})
    assert_not_signed(reply, "x-amz-meta-owner")
    assert_untouched(master, bucket, s3)


def test_headers_a_presigned_url_signed_must_be_sent_as_signed(master, bucket):
    s3 = client(master)
    url = s3.generate_presigned_url("put_object", ExpiresIn=300, Params={
        "Bucket": bucket, "Key": "meta", "Metadata": {"owner": "alice"}})
    assert "x-amz-meta-owner" in url  # botocore signs it as a header: X-Amz-SignedHeaders
    reply = send(url, "PUT", b"v", {"x-amz-meta-owner": "mallory"})  # a signed value changed
    assert reply.status == 403 and b"SignatureDoesNotMatch" in reply.body
    assert_untouched(master, bucket, s3)
    assert send(url, "PUT", b"v", {"x-amz-meta-owner": "alice"}).status == 200
    assert s3.head_object(Bucket=bucket, Key="meta")["Metadata"] == {"owner": "alice"}


def test_a_presigned_url_moved_to_another_key_is_refused(master, bucket):
    s3 = client(master)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "mine"},
                                    ExpiresIn=300)
    for path in (f"/{bucket}/secret", f"/{bucket}/other"):
        reply = send(url, "PUT", b"overwritten", path=path)
        assert reply.status == 403 and b"SignatureDoesNotMatch" in reply.body
    assert_untouched(master, bucket, s3)


class PayloadQueryAuth(S3SigV4QueryAuth):
    """botocore's presigner, signing a payload hash in place of UNSIGNED-PAYLOAD (some clients
    put one in a presigned URL's query as X-Amz-Content-Sha256)."""

    def __init__(self, payload_hash: str) -> None:
        super().__init__(Credentials(ACCESS, SECRET), "s3", "us-east-1", expires=300)
        self.payload_hash = payload_hash

    def payload(self, request) -> str:
        return self.payload_hash


def presign_with_payload_hash(url: str, payload_hash: str, method: str = "PUT") -> str:
    """`url` (its query ending in `&` or `?`) presigned with X-Amz-Content-Sha256."""
    req = AWSRequest(method, f"{url}X-Amz-Content-Sha256={payload_hash}")
    PayloadQueryAuth(payload_hash).add_auth(req)
    return req.url


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_presigned_payload_hash_binds_the_body(master, bucket):
    s3 = client(master)
    url = presign_with_payload_hash(f"http://127.0.0.1:{master.port}/{bucket}/hashed?",
                                    sha256(b"the signed body"))
    for body in (b"another body", b"the signed bodY", b"the signed body and more"):
        reply = send(url, "PUT", body)
        assert reply.status == 400, reply.body
        assert b"<Code>XAmzContentSHA256Mismatch</Code>" in reply.body
        assert_untouched(master, bucket, s3)
    assert send(url, "PUT", b"the signed body").status == 200
    assert s3.get_object(Bucket=bucket, Key="hashed")["Body"].read() == b"the signed body"
    reply = send(url, "PUT", b"a replacement")
    assert reply.status == 400 and b"XAmzContentSHA256Mismatch" in reply.body
    assert s3.get_object(Bucket=bucket, Key="hashed")["Body"].read() == b"the signed body"
    # the hash is signed: the URL with another hash in its query is another URL
    other = url.replace("X-Amz-Content-Sha256=", f"X-Amz-Content-Sha256={sha256(b'x')}&was=")
    assert send(other, "PUT", b"x").status == 403


def test_a_presigned_part_upload_with_a_payload_hash_is_checked(master, bucket):
    s3 = client(master)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    url = presign_with_payload_hash(f"http://127.0.0.1:{master.port}/{bucket}/mp?partNumber=1"
                                    f"&uploadId={quote(upload)}&", sha256(b"part one"))
    reply = send(url, "PUT", b"part two")
    assert reply.status == 400 and b"XAmzContentSHA256Mismatch" in reply.body
    assert s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload).get("Parts", []) == []
    assert send(url, "PUT", b"part one").status == 200
    assert [p["Size"] for p in s3.list_parts(Bucket=bucket, Key="mp",
                                             UploadId=upload)["Parts"]] == [8]


def test_a_presigned_payload_hash_binds_a_body_the_operation_ignores(master, bucket):
    """CreateMultipartUpload, ListMultipartUploads, DeleteObject read no body: the one sent
    must still be the one signed, else nothing happens."""
    s3 = client(master)
    base = f"http://127.0.0.1:{master.port}/{bucket}"
    calls = [("POST", f"{base}/mp?uploads&", 200), ("GET", f"{base}?uploads&", 200),
             ("DELETE", f"{base}/secret?", 204)]
    for method, url, _ in calls:
        signed = presign_with_payload_hash(url, sha256(b""), method)
        reply = send(signed, method, b"!")
        assert reply.status == 400 and b"XAmzContentSHA256Mismatch" in reply.body, reply.body
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert_untouched(master, bucket, s3)
    for method, url, status in calls:  # the body signed: done
        assert send(presign_with_payload_hash(url, sha256(b""), method), method).status == \
            status


# --- the Authorization header (SigV4) ---


def altered_after_signing(s3, event: str, **headers: str) -> None:
    """Add or change headers on every request of `event` once botocore has signed it."""
    def alter(request, **_):
        for name, value in headers.items():
            request.headers[name] = value

    s3.meta.events.register(f"before-send.s3.{event}", alter)


def error_of(call, **kw) -> tuple[int, dict]:
    with pytest.raises(ClientError) as e:
        call(**kw)
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]


def test_header_auth_refuses_an_unsigned_copy_source(master, bucket):
    s3 = client(master)
    altered_after_signing(s3, "PutObject", **{"x-amz-copy-source": f"/{bucket}/secret"})
    status, error = error_of(s3.put_object, Bucket=bucket, Key="copied", Body=b"")
    assert (status, error["Code"]) == (403, "AccessDenied")
    assert error["Message"] == "There were headers present in the request which were not signed"
    assert error["HeadersNotSigned"] == "x-amz-copy-source"
    assert_untouched(master, bucket, client(master))


def test_header_auth_refuses_unsigned_or_changed_x_amz_headers(master, bucket):
    s3 = client(master)
    altered_after_signing(s3, "PutObject", **{"x-amz-meta-owner": "mallory"})
    status, error = error_of(s3.put_object, Bucket=bucket, Key="secret", Body=b"overwritten")
    assert (status, error["Code"], error["HeadersNotSigned"]) == \
        (403, "AccessDenied", "x-amz-meta-owner")
    assert_untouched(master, bucket, client(master))
    s3 = client(master)  # a signed header's value changed
    altered_after_signing(s3, "PutObject", **{"x-amz-meta-owner": "mallory"})
    status, error = error_of(s3.put_object, Bucket=bucket, Key="secret", Body=b"overwritten",
                             Metadata={"owner": "alice"})
    assert (status, error["Code"]) == (403, "SignatureDoesNotMatch")
    assert_untouched(master, bucket, client(master))


def test_signed_copies_still_work(master, bucket):
    s3 = client(master)
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "secret"})
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == SECRET_VALUE


# --- Signature Version 2 ---


def test_v2_presigned_put_plus_an_unsigned_copy_source_is_refused(master, bucket):
    s3 = client(master, signature_version="s3")
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "v2"},
                                    ExpiresIn=300)
    assert "AWSAccessKeyId=" in url
    reply = send(url, "PUT", headers={"x-amz-copy-source": f"/{bucket}/secret"})
    assert reply.status == 403 and b"SignatureDoesNotMatch" in reply.body
    assert_untouched(master, bucket, client(master))
    assert send(url, "PUT", b"v2 value").status == 200


def test_v2_header_auth_signs_every_x_amz_header(master, bucket):
    s3 = client(master, signature_version="s3")
    altered_after_signing(s3, "PutObject", **{"x-amz-copy-source": f"/{bucket}/secret"})
    status, error = error_of(s3.put_object, Bucket=bucket, Key="v2h", Body=b"")
    assert (status, error["Code"]) == (403, "SignatureDoesNotMatch")
    assert_untouched(master, bucket, client(master))


# --- the pure check ---


def test_unsigned_headers_names_every_unsigned_x_amz_header():
    headers = {b"host": b"h", b"x-amz-date": b"d", b"x-amz-content-sha256": b"s",
               b"x-amz-copy-source": b"/b/k", b"x-amz-meta-a": b"1", b"content-type": b"t"}
    assert unsigned_headers(headers, ["host", "x-amz-content-sha256", "x-amz-date"]) == \
        ["x-amz-copy-source", "x-amz-meta-a"]
    assert unsigned_headers(headers, ["host", "x-amz-content-sha256", "x-amz-copy-source",
                                      "x-amz-date", "x-amz-meta-a"]) == []
    assert unsigned_headers({b"host": b"h", b"user-agent": b"u"}, ["host"]) == []


EXAMPLE_SECRETS = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
MAY_24_2013 = 1369353600
EXAMPLE_QUERY = (b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE"
                 b"%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
                 b"&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature="
                 b"aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")


def test_verify_refuses_unsigned_x_amz_headers_in_either_form():
    # AWS's presigned GET example, then with a header it did not sign
    headers = {b"host": b"examplebucket.s3.amazonaws.com"}
    signed = verify(b"GET", b"/test.txt", EXAMPLE_QUERY, headers, EXAMPLE_SECRETS,
                    now=MAY_24_2013 + 60)
    assert signed.payload_hash == "UNSIGNED-PAYLOAD"
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/test.txt", EXAMPLE_QUERY,
               {**headers, b"x-amz-copy-source": b"/examplebucket/secret"}, EXAMPLE_SECRETS,
               now=MAY_24_2013 + 60)
    assert (e.value.status, e.value.code, e.value.extra) == \
        (403, "AccessDenied", {"HeadersNotSigned": "x-amz-copy-source"})
    # AWS's GET Object example (header auth), plus an unsigned header
    headers = {b"host": b"examplebucket.s3.amazonaws.com", b"range": b"bytes=0-9",
               b"x-amz-content-sha256": sha256(b"").encode(),
               b"x-amz-date": b"20130524T000000Z",
               b"authorization": b"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
               b"us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;"
               b"x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd910"
               b"39c6036bdb41"}
    signed = verify(b"GET", b"/test.txt", b"", headers, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert signed.payload_hash == sha256(b"")
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/test.txt", b"", {**headers, b"x-amz-security-token": b"t"},
               EXAMPLE_SECRETS, now=MAY_24_2013)
    assert (e.value.code, e.value.extra) == \
        ("AccessDenied", {"HeadersNotSigned": "x-amz-security-token"})


def test_verify_carries_a_presigned_payload_hash_and_refuses_a_malformed_one():
    digest = sha256(b"body")
    for value, ok in ((digest, True), ("UNSIGNED-PAYLOAD", True), (digest.upper(), False),
                      ("not-a-hash", False)):
        query = urlsplit(presign_with_payload_hash("http://h/b/k?", value)).query.encode()
        if ok:
            assert verify(b"PUT", b"/b/k", query, {b"host": b"h"},
                          {ACCESS: SECRET}).payload_hash == value
        else:
            with pytest.raises(AuthError) as e:
                verify(b"PUT", b"/b/k", query, {b"host": b"h"}, {ACCESS: SECRET})
            assert e.value.status == 400


def test_v2_header_auth_works_on_buckets(master):
    """botocore's Signature Version 2 signs a bucket's resource as `/bucket/` and sends
    `/bucket`: both are the bucket."""
    s3 = client(master, "s3")
    name = f"trust-v2-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    s3.head_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="a", Body=b"1")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]] == ["a"]
    s3.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "a"}]})
    s3.delete_bucket(Bucket=name)
