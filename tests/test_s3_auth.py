"""S3 with authentication on (-s3_keys / -s3_keyfile): real SigV4 checks in both forms, the
Authorization header and presigned URLs, and signed aws-chunked bodies. A bad signature is a 403
SignatureDoesNotMatch and writes nothing. Native requests stay as they are.
"""

import email.header
import hashlib
import hmac
import http.client
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import client as s3_client
from conftest import error_of, fetch, keyed_master, request
from pyarrow import fs

from mkv.cli import parse_args

ACCESS, SECRET = "AKIDMKVTEST", "s3cr3t/with+chars"
OTHER_ACCESS, OTHER_SECRET = "SECONDKEY", "another:secret"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def master(tmp_path_factory, volumes):
    yield from keyed_master(tmp_path_factory, volumes, (ACCESS, SECRET),
                            (OTHER_ACCESS, OTHER_SECRET))


def client(master, access=ACCESS, secret=SECRET, signature_version=None):
    return s3_client(master.port, 1, access, secret, signature_version)


def test_the_flags_parse(tmp_path):
    config, _, _ = parse_args(["-s3_keys", "a:b,c:d:e", "-s3_upload_ttl", "2h"])
    assert config.s3_keys == (("a", "b"), ("c", "d:e"))
    assert config.s3_upload_ttl == 7200
    keyfile = tmp_path / "keys"
    keyfile.write_text("# keys, one a line: access:secret\na:b\n  # old, c:d\ne:f\n")
    config, _, _ = parse_args(["-s3_keyfile", str(keyfile), "-s3_port", "3010"])
    assert (config.s3_keys, config.s3_port) == ((("a", "b"), ("e", "f")), 3010)


def test_signed_requests_work_with_either_key(master):
    for access, secret in ((ACCESS, SECRET), (OTHER_ACCESS, OTHER_SECRET)):
        s3 = client(master, access, secret)
        bucket = f"auth-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="dir/k ey+1", Body=b"signed")
        assert s3.get_object(Bucket=bucket, Key="dir/k ey+1")["Body"].read() == b"signed"
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
        assert [o["Key"] for o in listed["Contents"]] == ["dir/k ey+1"]
        upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
        etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1,
                              Body=b"part")["ETag"]
        s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                 "ETag": etag}]})
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "mp"}]})
        s3.delete_object(Bucket=bucket, Key="dir/k ey+1")


def test_a_wrong_signature_is_refused_and_writes_nothing(master):
    bucket = f"auth-{uuid.uuid4().hex[:8]}"
    wrong = client(master, ACCESS, "not the secret")
    assert error_of(wrong.put_object, Bucket=bucket, Key="k", Body=b"x") == \
        ("SignatureDoesNotMatch", 403)
    assert master.call("GET", f"/{bucket}/k".encode()).status == 404
    client(master).put_object(Bucket=bucket, Key="k", Body=b"real")
    assert error_of(wrong.get_object, Bucket=bucket, Key="k") == ("SignatureDoesNotMatch", 403)
    assert error_of(wrong.delete_object, Bucket=bucket, Key="k") == \
        ("SignatureDoesNotMatch", 403)
    unknown = client(master, "NOBODY", SECRET)
    assert error_of(unknown.list_objects_v2, Bucket=bucket) == ("InvalidAccessKeyId", 403)
    assert client(master).get_object(Bucket=bucket, Key="k")["Body"].read() == b"real"


def test_anonymous_s3_requests_are_refused_native_ones_are_not(master):
    bucket = f"auth-{uuid.uuid4().hex[:8]}"  # a private bucket (one not there is NoSuchBucket)
    client(master).create_bucket(Bucket=bucket)
    reply = request(master.port, "GET", f"/{bucket}?list-type=2")
    assert reply.status == 403 and b"<Code>AccessDenied</Code>" in reply.body
    key = f"/native-{uuid.uuid4().hex}".encode()
    assert master.put(key, b"native").status == 201
    assert master.read(key) == b"native"


@pytest.mark.parametrize("query", ["prefix=AWSAccessKeyId=x", "list-type=2&marker=AWSAccessKeyId=",
                                   "uploads&key-marker=AWSAccessKeyId%3Dx&AWSAccessKeyId=x"])
def test_a_signature_field_inside_another_value_is_refused_not_a_500(master, query):
    """test_adversary's finding: `AWSAccessKeyId=` anywhere in the query made the request a
    Version 2 one, whose check then looked for an Authorization header that was not there."""
    reply = request(master.port, "GET", f"/somebucket?{query}")
    assert reply.status == 403 and b"<Code>AccessDenied</Code>" in reply.body, reply.body


def http_call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("version", ["default", "s3v4"])
def test_presigned_urls(master, version):
    # boto3 presigns with Signature Version 2 unless told s3v4
    s3 = client(master, signature_version=None if version == "default" else version)
    bucket = f"pre-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=bucket, Key="obj", Body=b"presigned read")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "obj"},
                                    ExpiresIn=300)
    assert ("X-Amz-Signature=" in url) == (version == "s3v4")
    assert http_call(url) == (200, b"presigned read")  # streamed: no redirect to follow
    status, body = http_call(url.replace("Signature=", "Signature=0"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = http_call(url.replace("/obj?", "/other?"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"},
                                    ExpiresIn=300)
    assert http_call(put, "PUT", b"uploaded")[0] == 200
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == b"uploaded"
    status, _ = http_call(put.replace(f"/{bucket}/up?", f"/{bucket}/up2?"), "PUT", b"x")
    assert status == 403
    assert master.call("GET", f"/{bucket}/up2".encode()).status == 404
    short = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "obj"},
                                      ExpiresIn=1)
    time.sleep(2.1)
    status, body = http_call(short)
    assert status == 403 and b"AccessDenied" in body


# --- signed aws-chunked bodies (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), signed here by hand ---


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str) -> bytes:
    return _hmac(_hmac(_hmac(_hmac(b"AWS4" + secret.encode(), date), "us-east-1"), "s3"),
                 "aws4_request")


def authorization(method: str, path: str, headers: dict[str, str], access: str, secret: str,
                  amz_date: str) -> tuple[str, str]:
    """(Authorization header, signature) for a request with no query, per SigV4."""
    names = sorted(headers)
    canonical = "\n".join([method, path, "", "".join(f"{n}:{headers[n]}\n" for n in names),
                           ";".join(names), headers["x-amz-content-sha256"]])
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key(secret, amz_date[:8]), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    return (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={';'.join(names)}, "
            f"Signature={signature}"), signature


def test_the_hand_signer_matches_the_aws_streaming_example():
    headers = {"host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
               "x-amz-storage-class": "REDUCED_REDUNDANCY",
               "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
               "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "66560",
               "content-length": "66824"}
    _, signature = authorization("PUT", "/examplebucket/chunkObject.txt", headers,
                                 "AKIAIOSFODNN7EXAMPLE",
                                 "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524T000000Z")
    assert signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def signed_chunked_put(master, path: str, data: bytes, corrupt: int | None = None) -> int:
    amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = [data[i:i + 8192] for i in range(0, len(data), 8192)] + [b""]
    body_len = sum(len(b"%x;chunk-signature=" % len(c)) + 64 + 4 + len(c) for c in chunks)
    headers = {"host": f"127.0.0.1:{master.port}", "x-amz-date": amz_date,
               "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
               "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(data)),
               "content-length": str(body_len)}
    auth, previous = authorization("PUT", path, headers, ACCESS, SECRET, amz_date)
    key = signing_key(SECRET, amz_date[:8])
    body = b""
    for i, chunk in enumerate(chunks):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date,
                             f"{amz_date[:8]}/us-east-1/s3/aws4_request", previous, EMPTY_SHA,
                             hashlib.sha256(chunk).hexdigest()])
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        signature = previous if i != corrupt else previous[::-1]
        body += b"%x;chunk-signature=%s\r\n%s\r\n" % (len(chunk), signature.encode(), chunk)
    assert len(body) == body_len
    reply = request(master.port, "PUT", path, body, {**headers, "Authorization": auth})
    return reply.status


def test_signed_chunks_are_verified(master):
    bucket = f"chunks-{uuid.uuid4().hex[:8]}"
    data = os.urandom(50_000)
    assert signed_chunked_put(master, f"/{bucket}/k", data) == 200
    assert master.read(f"/{bucket}/k".encode()) == data
    for corrupt in (0, 3, 7):  # first, middle, and the final empty chunk
        assert signed_chunked_put(master, f"/{bucket}/k", os.urandom(50_000), corrupt) == 403
        assert master.read(f"/{bucket}/k".encode()) == data  # the old value stays
    assert signed_chunked_put(master, f"/{bucket}/new", data, corrupt=2) == 403
    assert master.call("GET", f"/{bucket}/new".encode()).status == 404


# --- other clients with keys ---


def test_pyarrow_and_the_cli_sign_correctly(master, tmp_path):
    bucket = f"keys-{uuid.uuid4().hex[:8]}"
    arrow = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{master.port}", scheme="http",
                            access_key=ACCESS, secret_key=SECRET, region="us-east-1")
    table = pa.table({"a": [1, 2, 3]})
    pq.write_table(table, f"{bucket}/t.parquet", filesystem=arrow)
    assert pq.read_table(f"{bucket}/t.parquet", filesystem=arrow).equals(table)
    wrong = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{master.port}", scheme="http",
                            access_key=ACCESS, secret_key="wrong", region="us-east-1")
    with pytest.raises(OSError):
        pq.write_table(table, f"{bucket}/w.parquet", filesystem=wrong)
    assert master.call("GET", f"/{bucket}/w.parquet".encode()).status == 404
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "BOTO_DISABLE_CRT": "true"}
    (tmp_path / "f.txt").write_bytes(b"from the cli")
    subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url",
                    f"http://127.0.0.1:{master.port}", "s3", "cp", "--only-show-errors",
                    str(tmp_path / "f.txt"), f"s3://{bucket}/dir/f.txt"],
                   env=env, check=True, timeout=60)
    listed = subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url",
                             f"http://127.0.0.1:{master.port}", "s3", "ls", "--recursive",
                             f"s3://{bucket}"], env=env, check=True, timeout=60,
                            capture_output=True, text=True).stdout
    assert "dir/f.txt" in listed and "t.parquet" in listed
    reply = master.call("GET", f"/{bucket}/dir/f.txt".encode())
    assert fetch(reply.header("Location")) == b"from the cli"


def test_signature_version_2_headers(master):
    s3 = client(master, signature_version="s3")
    bucket = f"v2-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=bucket, Key="k", Body=b"v2 signed")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2 signed"
    wrong = client(master, ACCESS, "nope", signature_version="s3")
    assert error_of(wrong.put_object, Bucket=bucket, Key="w", Body=b"x") == \
        ("SignatureDoesNotMatch", 403)
    assert master.call("GET", f"/{bucket}/w".encode()).status == 404


def test_non_ascii_metadata_verifies_under_sigv4(master):
    bucket = f"auth-{uuid.uuid4().hex[:8]}"
    client(master).create_bucket(Bucket=bucket)
    amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": f"127.0.0.1:{master.port}", "x-amz-date": amz_date,
               "x-amz-content-sha256": hashlib.sha256(b"v").hexdigest(),
               "x-amz-meta-city": "Zürich – 東京"}
    auth, _ = authorization("PUT", f"/{bucket}/u", headers, ACCESS, SECRET, amz_date)
    sent = {**headers, "x-amz-meta-city": headers["x-amz-meta-city"].encode(),  # UTF-8 bytes
            "Authorization": auth}
    reply = request(master.port, "PUT", f"/{bucket}/u", b"v", sent)
    assert reply.status == 200, reply.body
    head = request(master.port, "HEAD", f"/{bucket}/u", headers={"x-amz-content-sha256": "x"})
    assert head.status == 403  # unsigned: refused, so ask with boto3
    got = client(master).head_object(Bucket=bucket, Key="u")["ResponseMetadata"]["HTTPHeaders"]
    # answered as S3 answers a non-ASCII value: one RFC 2047 encoded-word
    city = email.header.make_header(email.header.decode_header(got["x-amz-meta-city"]))
    assert got["x-amz-meta-city"].startswith("=?UTF-8?B?") and str(city) == "Zürich – 東京"
    headers["x-amz-meta-city"] = "Zurich"  # signed for other bytes than sent
    auth, _ = authorization("PUT", f"/{bucket}/u2", headers, ACCESS, SECRET, amz_date)
    reply = request(master.port, "PUT", f"/{bucket}/u2", b"v", {**sent, "Authorization": auth})
    assert reply.status == 403 and b"SignatureDoesNotMatch" in reply.body


def test_presigned_expiry_outside_one_second_to_a_week_is_refused(master):
    bucket = f"auth-{uuid.uuid4().hex[:8]}"
    s3 = client(master, signature_version="s3v4")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    for seconds, status in ((604800, 200), (604801, 403)):  # boto3 itself refuses 0
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                        ExpiresIn=seconds)
        got, body = http_call(url)
        assert got == status, (seconds, body)
        assert status == 200 or b"<Code>AccessDenied</Code>" in body
