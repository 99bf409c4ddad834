"""S3 POST Object (browser form uploads) against a real master and nginx volumes: forms made
by boto3's generate_presigned_post (SigV4 and V2) posted with requests, policy conditions,
content-length-range, success_action_status / _redirect, metadata fields, malformed forms,
unsigned forms without -s3_keys, and a large file streamed in bounded memory. A refused form
leaves nothing behind."""

import base64
import hashlib
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
import requests
from conftest import MasterFactory, error_of, md5hex, request
from conftest import client as s3_client

ACCESS, SECRET = "FORMKEY", "form/secret+1"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def signed(tmp_path_factory, volumes):
    """A master under -s3_keys, and boto3 clients signing SigV4 and V2 for it."""
    factory = MasterFactory(tmp_path_factory.mktemp("s3forms"), volumes)
    try:
        yield factory("-s3_keys", f"{ACCESS}:{SECRET}")
    finally:
        factory.stop_all()


def signer(master, version: str | None):
    """boto3 with the master's key; its default presigns forms with V2, "s3v4" with SigV4."""
    return s3_client(master.port, 1, ACCESS, SECRET, version)


def new_bucket(s3) -> str:
    name = f"f-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def post(form: dict, data: bytes, filename: str = "hello.txt", **extra) -> requests.Response:
    return requests.post(form["url"], data={**form["fields"], **extra},
                         files={"file": (filename, data)}, allow_redirects=False, timeout=30)


def code_of(response: requests.Response) -> tuple[str, int]:
    return ElementTree.fromstring(response.content).findtext("Code"), response.status_code


def nothing_at(master, bucket: str) -> bool:
    """No key at all under the bucket: neither a value nor a record left by a refusal."""
    for what in ("list", "unlinked"):
        reply = request(master.port, "GET", f"/{bucket}/?{what}")
        if reply.status != 404 and b'"keys":[]' not in reply.body.replace(b" ", b""):
            return False
    return True


@pytest.mark.parametrize("version", [None, "s3v4"])
def test_a_presigned_post_uploads(signed, version):
    s3 = signer(signed, version)
    bucket = new_bucket(s3)
    form = s3.generate_presigned_post(
        bucket, "up/${filename}", ExpiresIn=60,
        Fields={"Content-Type": "text/plain", "x-amz-meta-who": "me",
                "success_action_status": "201"},
        Conditions=[{"Content-Type": "text/plain"}, {"x-amz-meta-who": "me"},
                    {"success_action_status": "201"}, ["content-length-range", 1, 1000]])
    assert ("x-amz-signature" in form["fields"]) == (version == "s3v4")
    answer = post(form, b"hello form")
    assert answer.status_code == 201, answer.content
    result = ElementTree.fromstring(answer.content)  # no namespace, as S3 answers it
    assert [result.findtext(n) for n in ("Bucket", "Key", "ETag")] == \
        [bucket, "up/hello.txt", f'"{md5hex(b"hello form")}"']
    got = s3.get_object(Bucket=bucket, Key="up/hello.txt")
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == \
        (b"hello form", "text/plain", {"who": "me"})


def test_refused_forms_write_nothing(signed):
    s3 = signer(signed, "s3v4")
    bucket = new_bucket(s3)
    form = s3.generate_presigned_post(bucket, "k", ExpiresIn=60,
                                      Conditions=[["content-length-range", 2, 10]])
    tampered = {**form, "fields": {**form["fields"], "x-amz-signature": "0" * 64}}
    assert code_of(post(tampered, b"abc")) == ("SignatureDoesNotMatch", 403)
    other_key = {**form, "fields": {**form["fields"], "key": "elsewhere"}}
    assert code_of(post(other_key, b"abc")) == ("AccessDenied", 403)  # {"key": "k"} fails
    assert code_of(post(form, b"abc", **{"x-amz-meta-extra": "1"})) == ("AccessDenied", 403)
    assert code_of(post(form, b"x" * 11)) == ("EntityTooLarge", 400)
    assert code_of(post(form, b"x")) == ("EntityTooSmall", 400)
    expired = s3.generate_presigned_post(bucket, "k", ExpiresIn=-10)
    assert code_of(post(expired, b"abc")) == ("AccessDenied", 403)
    unsigned = {"url": form["url"], "fields": {"key": "k"}}
    assert code_of(post(unsigned, b"abc")) == ("AccessDenied", 403)
    # signed but for its signature (the S3 conformance suite's missing-signature case)
    unsigned = {**form, "fields": {k: v for k, v in form["fields"].items()
                                   if k != "x-amz-signature"}}
    assert code_of(post(unsigned, b"abc")) == ("InvalidArgument", 400)
    assert nothing_at(signed, bucket)
    assert post(form, b"abc").status_code == 204  # the same form, as it was signed
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"


def test_a_refused_form_keeps_the_value_it_would_replace(signed):
    s3 = signer(signed, "s3v4")
    bucket = new_bucket(s3)
    s3.put_object(Bucket=bucket, Key="k", Body=b"kept")
    form = s3.generate_presigned_post(bucket, "k", ExpiresIn=60,
                                      Conditions=[["content-length-range", 0, 4]])
    assert code_of(post(form, b"too long")) == ("EntityTooLarge", 400)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"


def test_unsigned_forms_without_keys(s3master, s3, bucket):
    url = f"http://127.0.0.1:{s3master.port}/{bucket}"
    plain = requests.post(url, data={"key": "a/${filename}"}, files={"file": ("x.bin", b"1")},
                          timeout=30)
    assert (plain.status_code, plain.headers["ETag"]) == (204, f'"{md5hex(b"1")}"')
    assert s3master.read(f"/{bucket}/a/x.bin".encode()) == b"1"  # a native read sees it
    assert not nothing_at(s3master, bucket)
    ok = requests.post(url, data={"key": "b", "success_action_status": "200"},
                       files={"file": ("f", b"22")}, timeout=30)
    assert ok.status_code == 200
    moved = requests.post(url, data={"key": "c d", "success_action_redirect":
                                     "http://example.com/done?x=1"},
                          files={"file": ("f", b"333")}, allow_redirects=False, timeout=30)
    assert moved.status_code == 303
    target = urlsplit(moved.headers["Location"])
    assert (target.netloc, parse_qs(target.query)) == ("example.com", {
        "x": ["1"], "bucket": [bucket], "key": ["c d"], "etag": [f'"{md5hex(b"333")}"']})
    assert s3.get_object(Bucket=bucket, Key="c d")["Body"].read() == b"333"


def test_malformed_forms(s3master, bucket):
    url = f"http://127.0.0.1:{s3master.port}/{bucket}"
    no_file = requests.post(url, files={"key": (None, "k")}, timeout=30)
    assert code_of(no_file) == ("InvalidArgument", 400)
    no_key = requests.post(url, files={"file": ("f", b"v")}, timeout=30)
    assert code_of(no_key) == ("InvalidArgument", 400)
    garbage = request(s3master.port, "POST", f"/{bucket}", b"not a form at all",
                      {"Content-Type": "multipart/form-data; boundary=XYZ"})
    assert (garbage.status, b"MalformedPOSTRequest" in garbage.body) == (400, True)
    cut = (b'--XYZ\r\nContent-Disposition: form-data; name="key"\r\n\r\nk\r\n--XYZ\r\n'
           b'Content-Disposition: form-data; name="file"; filename="f"\r\n\r\npartial')
    cut_off = request(s3master.port, "POST", f"/{bucket}", cut,
                      {"Content-Type": "multipart/form-data; boundary=XYZ"})
    assert (cut_off.status, b"MalformedPOSTRequest" in cut_off.body) == (400, True)
    assert nothing_at(s3master, bucket)


def peak_memory(pid: int) -> int:
    """The process's resident high-water mark, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_large_file_streams_through(s3master, s3, bucket):
    size, block = 96 * MiB, os.urandom(MiB)
    head = (b'--B0UNDARY\r\nContent-Disposition: form-data; name="key"\r\n\r\nbig\r\n'
            b'--B0UNDARY\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    tail = b'\r\n--B0UNDARY\r\nContent-Disposition: form-data; name="after"\r\n\r\nx\r\n' \
        b"--B0UNDARY--\r\n"
    before = peak_memory(s3master.process.proc.pid)
    body = [head, *(block for _ in range(size // MiB)), tail]
    reply = request(s3master.port, "POST", f"/{bucket}", body,
                    {"Content-Type": "multipart/form-data; boundary=B0UNDARY"}, chunked=True,
                    timeout=120)
    assert reply.status == 204, reply.body
    digest = hashlib.md5(block * (size // MiB)).hexdigest()
    assert reply.header("ETag") == f'"{digest}"'
    assert s3.head_object(Bucket=bucket, Key="big")["ContentLength"] == size
    assert peak_memory(s3master.process.proc.pid) - before < size // 3  # never held whole


def test_a_forms_tags_acl_and_checksum_are_kept_and_a_wrong_checksum_writes_nothing(
        s3master, s3, bucket):
    url = f"http://127.0.0.1:{s3master.port}/{bucket}"
    body = b"tagged and summed"
    good = base64.b64encode(hashlib.sha256(body).digest()).decode()
    fields = {"key": "t", "acl": "public-read", "x-amz-checksum-sha256": good,
              "tagging": "<Tagging><TagSet><Tag><Key>b</Key><Value>2</Value></Tag><Tag><Key>a"
                         "</Key><Value>1</Value></Tag></TagSet></Tagging>"}
    done = requests.post(url, data=fields, files={"file": ("f", body)}, timeout=30)
    assert done.status_code == 204, done.content
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [
        {"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
    assert s3.head_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED")[
        "ChecksumSHA256"] == good
    assert {g["Permission"] for g in s3.get_object_acl(Bucket=bucket, Key="t")["Grants"]} \
        == {"READ", "FULL_CONTROL"}
    wrong = requests.post(url, data={**fields, "key": "w", "x-amz-checksum-sha256": "A" * 44},
                          files={"file": ("f", body)}, timeout=30)
    assert code_of(wrong) == ("BadDigest", 400)
    assert error_of(s3.head_object, Bucket=bucket, Key="w")[1] == 404
    many = "".join(f"<Tag><Key>{i}</Key><Value>v</Value></Tag>" for i in range(11))
    refused = requests.post(url, data={"key": "x", "tagging": f"<Tagging><TagSet>{many}"
                                                             "</TagSet></Tagging>"},
                            files={"file": ("f", body)}, timeout=30)
    assert code_of(refused) == ("InvalidTag", 400)
