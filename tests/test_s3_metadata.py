"""S3 object metadata and tags (boto3, pyarrow): stored per object in the spool, answered on
GET/HEAD, carried by CopyObject and multipart, dropped when the value changes any other way."""

import email.header
import os
from datetime import UTC, datetime

from conftest import error_of, md5hex, request
from pyarrow import fs

MiB = 1024 * 1024
STANDARD = {"ContentType": "text/csv", "ContentEncoding": "gzip",
            "ContentDisposition": 'attachment; filename="a.csv"', "ContentLanguage": "de",
            "CacheControl": "max-age=60", "Expires": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)}


def described(answer: dict) -> dict:
    """The metadata fields of a GetObject/HeadObject answer."""
    return {name: answer.get(name) for name in (*STANDARD, "Metadata")}


def test_put_keeps_metadata_for_get_and_head(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="m", Body=b"a,b", Metadata={"owner": "ann", "n": "1"},
                  **STANDARD)
    wanted = {**STANDARD, "Metadata": {"owner": "ann", "n": "1"}}
    assert described(s3.head_object(Bucket=bucket, Key="m")) == wanted
    got = s3.get_object(Bucket=bucket, Key="m")
    assert described(got) == wanted and got["Body"].read() == b"a,b"
    overridden = s3.get_object(Bucket=bucket, Key="m", ResponseContentType="text/plain",
                               ResponseCacheControl="no-cache")
    assert (overridden["ContentType"], overridden["CacheControl"]) == ("text/plain", "no-cache")
    assert s3master.read(f"/{bucket}/m".encode()) == b"a,b"  # the native face: the value alone
    plain = s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    assert plain["ETag"] == f'"{md5hex(b"x")}"'
    head = s3.head_object(Bucket=bucket, Key="plain")
    assert (head["ContentType"], head["Metadata"]) == ("application/octet-stream", {})


def test_too_much_metadata_is_refused_and_writes_nothing(s3master, s3, bucket):
    assert error_of(s3.put_object, Bucket=bucket, Key="big", Body=b"x",
                    Metadata={"k": "v" * 2048}) == ("MetadataTooLarge", 400)
    assert s3master.call("GET", f"/{bucket}/big".encode()).status == 404
    s3.put_object(Bucket=bucket, Key="fits", Body=b"x", Metadata={"k": "v" * 2047})
    assert s3.head_object(Bucket=bucket, Key="fits")["Metadata"] == {"k": "v" * 2047}


def test_non_ascii_metadata_is_answered_rfc2047_encoded(s3master, s3, bucket):
    """botocore sends a header's text as UTF-8 and reads answers as Latin-1, so a raw UTF-8
    value came back garbled ("Hello WorldÃ©"). As S3 does, a non-ASCII value is answered as an
    RFC 2047 encoded-word, and such a word sent back (a copying client) is stored decoded."""
    def unicode_header(**kwargs):
        kwargs["params"]["headers"]["x-amz-meta-meta1"] = "Hello World\xe9 \u2603"
    s3.meta.events.register("before-call.s3.PutObject", unicode_header)
    try:
        s3.put_object(Bucket=bucket, Key="u", Body=b"x", Metadata={"plain": "ascii"})
    finally:
        s3.meta.events.unregister("before-call.s3.PutObject", unicode_header)
    encoded = "=?UTF-8?B?SGVsbG8gV29ybGTDqSDimIM=?="
    for answer in (s3.head_object(Bucket=bucket, Key="u"), s3.get_object(Bucket=bucket, Key="u")):
        assert answer["Metadata"] == {"meta1": encoded, "plain": "ascii"}
    assert str(email.header.make_header(email.header.decode_header(encoded))) == \
        "Hello World\xe9 \u2603"
    s3.put_object(Bucket=bucket, Key="again", Body=b"x", Metadata={"meta1": encoded})
    assert s3.head_object(Bucket=bucket, Key="again")["Metadata"] == {"meta1": encoded}
    # bytes that are not UTF-8 are Latin-1, as HTTP has it; a control character is refused
    for value, answer in ((b"caf\xe9", 200), (b"=?UTF-8?Q?=04x?=", 400), (b"a\x04b", 400)):
        reply = request(s3master.port, "PUT", f"/{bucket}/raw", b"x",
                        headers={"x-amz-meta-m": value})
        assert reply.status == answer, (value, reply.status, reply.body)
    assert s3.head_object(Bucket=bucket, Key="raw")["Metadata"] == {"m": "=?UTF-8?B?Y2Fmw6k=?="}


def test_copy_object_metadata_directive(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"v", ContentType="text/plain",
                  Metadata={"a": "1"}, Tagging="t=1")
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "src"})
    head = s3.head_object(Bucket=bucket, Key="copied")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", {"a": "1"})
    assert s3.get_object_tagging(Bucket=bucket, Key="copied")["TagSet"] == [
        {"Key": "t", "Value": "1"}]
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", ContentType="image/png", Metadata={"b": "2"},
                   TaggingDirective="REPLACE", Tagging="u=2")
    head = s3.head_object(Bucket=bucket, Key="replaced")
    assert (head["ContentType"], head["Metadata"]) == ("image/png", {"b": "2"})
    assert s3.get_object_tagging(Bucket=bucket, Key="replaced")["TagSet"] == [
        {"Key": "u", "Value": "2"}]
    # onto itself: only the metadata changes
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"c": "3"})
    head = s3.head_object(Bucket=bucket, Key="src")
    assert (head["ContentType"], head["Metadata"]) == ("application/octet-stream", {"c": "3"})
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == b"v"


def test_multipart_metadata_applies_at_complete_and_complete_repeats(s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="video/mp4",
                                        Metadata={"take": "3"}, Tagging="k=v")["UploadId"]
    parts = [os.urandom(5 * MiB), b"tail"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload,
                                                     PartNumber=n, Body=data)["ETag"]}
            for n, data in enumerate(parts, 1)]
    first = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                         MultipartUpload={"Parts": done})
    head = s3.head_object(Bucket=bucket, Key="mp")
    assert (head["ContentType"], head["Metadata"]) == ("video/mp4", {"take": "3"})
    assert s3.get_object(Bucket=bucket, Key="mp")["TagCount"] == 1
    again = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                         MultipartUpload={"Parts": done})
    assert again["ETag"] == first["ETag"] == head["ETag"]
    assert error_of(s3.complete_multipart_upload, Bucket=bucket, Key="other", UploadId=upload,
                    MultipartUpload={"Parts": done}) == ("NoSuchUpload", 404)


def test_object_tagging(s3, bucket):
    s3.put_object(Bucket=bucket, Key="t", Body=b"v", Tagging="project=x&empty=")
    assert s3.get_object(Bucket=bucket, Key="t")["TagCount"] == 2
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [  # by key
        {"Key": "empty", "Value": ""}, {"Key": "project", "Value": "x"}]
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [
        {"Key": "a", "Value": "b"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "a", "Value": "b"}]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"v"
    too_many = {"TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]}
    assert error_of(s3.put_object_tagging, Bucket=bucket, Key="t", Tagging=too_many)[1] == 400
    assert error_of(s3.put_object, Bucket=bucket, Key="bad-tag", Body=b"v",
                    Tagging="k=" + "v" * 257) == ("InvalidTag", 400)
    assert error_of(s3.get_object_tagging, Bucket=bucket, Key="missing") == ("NoSuchKey", 404)


def test_a_native_write_or_delete_drops_the_metadata(s3master, s3, bucket):
    key = f"/{bucket}/n".encode()
    s3.put_object(Bucket=bucket, Key="n", Body=b"same", ContentType="text/plain",
                  Metadata={"a": "1"})
    assert s3master.call("DELETE", key).status == 204
    assert s3master.put(key, b"same").status == 201  # the same bytes, written natively
    head = s3.head_object(Bucket=bucket, Key="n")
    assert (head["ContentType"], head["Metadata"]) == ("application/octet-stream", {})
    s3.put_object(Bucket=bucket, Key="n", Body=b"same", Metadata={"a": "1"})
    assert s3master.put(key, b"other", method="REPLACE").status == 201
    assert s3.head_object(Bucket=bucket, Key="n")["Metadata"] == {}


def test_pyarrow_writes_and_reads_metadata(s3master, bucket):
    arrow = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{s3master.port}", scheme="http",
                            access_key="test", secret_key="test", region="us-east-1")
    with arrow.open_output_stream(f"{bucket}/a.json", metadata={
            "Content-Type": "application/json", "Cache-Control": "no-store"}) as out:
        out.write(b"{}")
    with arrow.open_input_stream(f"{bucket}/a.json") as f:
        meta = f.metadata()
        assert f.read() == b"{}"
    assert (meta["Content-Type"], meta["Cache-Control"]) == (b"application/json",
                                                             b"no-store")
    reply = request(s3master.port, "HEAD", f"/{bucket}/a.json",
                    headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    assert reply.header("Content-Type") == "application/json"
