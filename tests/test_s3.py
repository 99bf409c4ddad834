"""The S3 face with boto3 (its default settings), against a real master and nginx volumes.

Every S3 object is also an mkv key (`/bucket/key`), so each test also checks the value
through the native API, or writes it natively and reads it through S3.
"""

import base64
import hashlib
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from conftest import (
    client,
    error_of,
    fetch,
    finish_put,
    md5hex,
    open_put,
    part_files,
    request,
)

from mkv.s3.parts import PARTS

MiB = 1024 * 1024


def native_value(master, key: bytes) -> bytes:
    reply = master.call("GET", key)
    assert reply.status == 302, reply.status
    return fetch(reply.header("Location"))


# --- objects ---


def test_put_get_head_and_the_same_value_natively(s3master, s3, bucket):
    value = os.urandom(100_000)
    put = s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=value)
    assert put["ETag"] == f'"{md5hex(value)}"'
    assert put["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == value
    assert got["ETag"] == f'"{md5hex(value)}"'
    assert got["ContentLength"] == len(value)
    assert abs(got["LastModified"].timestamp() - time.time()) < 60
    head = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert (head["ContentLength"], head["ETag"]) == (len(value), put["ETag"])
    assert head["LastModified"] == got["LastModified"]
    # the native API sees the same key, redirects (unsigned) and knows the md5
    key = f"/{bucket}/dir/obj.bin".encode()
    assert native_value(s3master, key) == value
    assert s3master.call("GET", key).header("Content-Md5") == md5hex(value)


def test_native_writes_are_s3_objects(s3master, s3, bucket):
    key = f"/{bucket}/native/one".encode()
    assert s3master.put(key, b"written natively").status == 201
    assert s3.get_object(Bucket=bucket, Key="native/one")["Body"].read() == b"written natively"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="native/")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [
        ("native/one", 16, f'"{md5hex(b"written natively")}"')]


def test_range_get_and_head(s3, bucket):
    value = bytes(range(256)) * 40
    s3.put_object(Bucket=bucket, Key="r", Body=value)
    got = s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 10-19/{len(value)}"
    assert got["Body"].read() == value[10:20]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-5")["Body"].read() == value[-5:]
    assert s3.get_object(Bucket=bucket, Key="r",
                         Range="bytes=10200-")["Body"].read() == value[10200:]
    head = s3.head_object(Bucket=bucket, Key="r", Range="bytes=0-99")
    assert (head["ContentLength"], head["ContentRange"]) == (100, f"bytes 0-99/{len(value)}")
    assert error_of(s3.get_object, Bucket=bucket, Key="r", Range="bytes=20000-") == \
        ("InvalidRange", 416)
    assert error_of(s3.head_object, Bucket=bucket, Key="r", Range="bytes=20000-")[1] == 416


def test_missing_keys(s3, bucket):
    assert error_of(s3.get_object, Bucket=bucket, Key="nope") == ("NoSuchKey", 404)
    assert error_of(s3.head_object, Bucket=bucket, Key="nope") == ("404", 404)


def test_conditional_requests(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"conditional")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"conditional"
    assert error_of(s3.get_object, Bucket=bucket, Key="c", IfMatch='"0000"') == \
        ("PreconditionFailed", 412)
    assert error_of(s3.get_object, Bucket=bucket, Key="c", IfNoneMatch=etag)[1] == 304
    assert error_of(s3.head_object, Bucket=bucket, Key="c", IfNoneMatch=etag)[1] == 304
    modified = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    assert error_of(s3.get_object, Bucket=bucket, Key="c", IfModifiedSince=modified)[1] == 304
    assert error_of(s3.get_object, Bucket=bucket, Key="c", IfUnmodifiedSince=datetime(
        2000, 1, 1, tzinfo=UTC)) == ("PreconditionFailed", 412)
    got = s3.get_object(Bucket=bucket, Key="c", ResponseContentType="text/plain",
                        ResponseContentDisposition="attachment")
    assert (got["ContentType"], got["ContentDisposition"]) == ("text/plain", "attachment")


def test_overwrite_is_allowed_and_empty_objects_work(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"first")
    s3.put_object(Bucket=bucket, Key="o", Body=b"second value")
    assert s3.get_object(Bucket=bucket, Key="o")["Body"].read() == b"second value"
    assert native_value(s3master, f"/{bucket}/o".encode()) == b"second value"
    put = s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert put["ETag"] == f'"{md5hex(b"")}"'
    got = s3.get_object(Bucket=bucket, Key="empty")
    assert (got["Body"].read(), got["ContentLength"]) == (b"", 0)


def test_content_md5_and_checksums_are_checked(s3master, s3, bucket):
    good = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=b"payload", ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert error_of(s3.put_object, Bucket=bucket, Key="bad-md5", Body=b"payload",
                    ContentMD5=bad) == ("BadDigest", 400)
    assert s3master.call("GET", f"/{bucket}/bad-md5".encode()).status == 404
    # a failed overwrite leaves the old value live
    assert error_of(s3.put_object, Bucket=bucket, Key="md5", Body=b"new", ContentMD5=bad) == \
        ("BadDigest", 400)
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == b"payload"
    # boto3 sends a CRC32 by default; SHA256 and a wrong CRC32 on request
    put = s3.put_object(Bucket=bucket, Key="sha", Body=b"payload", ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"payload").digest()).decode()
    for algorithm in ("CRC32C", "CRC64NVME", "SHA1"):  # the CRCs computed by boto3 with awscrt
        put = s3.put_object(Bucket=bucket, Key="crcs", Body=b"payload",
                            ChecksumAlgorithm=algorithm)
        assert put[f"Checksum{algorithm}"]
    assert error_of(s3.put_object, Bucket=bucket, Key="crc", Body=b"payload",
                    ChecksumCRC32="AAAAAA==") == ("BadDigest", 400)
    assert s3master.call("GET", f"/{bucket}/crc".encode()).status == 404


def test_signed_payload_hash_mismatch_is_refused(s3master, bucket):
    # what boto3 sends over plain HTTP: the payload's sha256, here wrong for the body
    headers = {"x-amz-content-sha256": hashlib.sha256(b"something else").hexdigest(),
               "Authorization": "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/s3/"
                                "aws4_request, SignedHeaders=host, Signature=00"}
    reply = request(s3master.port, "PUT", f"/{bucket}/sha-mismatch", b"body", headers)
    assert reply.status == 400 and b"XAmzContentSHA256Mismatch" in reply.body
    assert s3master.call("GET", f"/{bucket}/sha-mismatch".encode()).status == 404


def test_concurrent_writes_of_a_key_all_succeed_and_the_last_wins(s3master, bucket):
    key = f"/{bucket}/busy".encode()
    sock = open_put(s3master.port, key, 5)  # a native PUT holds the key
    result: dict = {}
    s3 = client(s3master.port, retries=1)
    writer = threading.Thread(target=lambda: result.update(
        s3.put_object(Bucket=bucket, Key="busy", Body=b"second")))
    writer.start()
    time.sleep(0.5)
    assert writer.is_alive()  # S3's write waits its turn
    assert request(s3master.port, "PUT", key.decode(), b"x").status == 409  # the native 409
    assert finish_put(sock, [b"first"], 0.01) == 201
    writer.join(30)
    assert result["ETag"] == f'"{md5hex(b"second")}"'
    assert native_value(s3master, key) == b"second"


def test_keys_with_odd_characters_round_trip(s3, bucket):
    names = ["sp ace/plus+sign", "ünï/cödé", "q?uery&amp=x", "pct%2Fnot-a-slash", "tilde~"]
    for name in names:
        s3.put_object(Bucket=bucket, Key=name, Body=name.encode())
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == name.encode()
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(names, key=lambda n: n.encode())
    assert error_of(s3.put_object, Bucket=bucket, Key="a/../b", Body=b"x")[0] == \
        "InvalidArgument"


# --- listing ---


def test_list_objects_v2_prefix_delimiter_paging(s3, bucket):
    keys = ["a/1", "a/2", "a/b/3", "b/4", "c", "d/5"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["c"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "d/"]
    assert (top["KeyCount"], top["IsTruncated"]) == (4, False)
    inner = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in inner["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in inner["CommonPrefixes"]] == ["a/b/"]
    assert [o["Size"] for o in inner["Contents"]] == [3, 3]
    page = s3.list_objects_v2(Bucket=bucket, MaxKeys=2)
    assert ([o["Key"] for o in page["Contents"]], page["IsTruncated"], page["KeyCount"]) == \
        (["a/1", "a/2"], True, 2)
    rest = s3.list_objects_v2(Bucket=bucket, MaxKeys=2,
                              ContinuationToken=page["NextContinuationToken"])
    assert [o["Key"] for o in rest["Contents"]] == ["a/b/3", "b/4"]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="b/4")
    assert [o["Key"] for o in after["Contents"]] == ["c", "d/5"]
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1})
    seen = []
    for p in pages:
        seen += [o["Key"] for o in p.get("Contents", [])]
        seen += [c["Prefix"] for c in p.get("CommonPrefixes", [])]
    assert seen == ["a/", "b/", "c", "d/"]
    every = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 4}) for o in p["Contents"]]
    assert every == keys


def test_list_objects_v1_marker_paging_and_url_encoding(s3, bucket):
    keys = [f"k{i:02d} +x" for i in range(7)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"v")
    every = [o["Key"] for p in s3.get_paginator("list_objects").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 3}) for o in p["Contents"]]
    assert every == keys
    page = s3.list_objects(Bucket=bucket, Marker=keys[4])
    assert [o["Key"] for o in page["Contents"]] == keys[5:]
    # boto3 asks for encoding-type=url itself and decodes; asked by the caller, it does not
    raw = s3.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="k00")
    # as S3: a space is %20 (Ceph's s3-tests: test_bucket_list_encoding_basic's 'quux%20ab/')
    assert (raw["EncodingType"], raw["Contents"][0]["Key"]) == ("url", "k00%20%2Bx")


def test_buckets_are_prefixes(s3master, s3):
    name = f"nb-{uuid.uuid4().hex[:12]}"
    assert error_of(s3.head_bucket, Bucket=name) == ("404", 404)
    assert error_of(s3.list_objects_v2, Bucket=name) == ("NoSuchBucket", 404)
    assert s3master.put(f"/{name}/natively".encode(), b"v").status == 201
    s3.head_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert error_of(s3.delete_bucket, Bucket=name) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="natively")
    s3.delete_bucket(Bucket=name)  # a bucket made only of keys is gone with them: fine
    assert error_of(s3.head_bucket, Bucket=name) == ("404", 404)
    made = f"mb-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=made)
    s3.head_bucket(Bucket=made)
    assert s3.get_bucket_location(Bucket=made)["LocationConstraint"] is None
    assert s3.list_objects_v2(Bucket=made)["KeyCount"] == 0
    assert made in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.delete_bucket(Bucket=made)
    assert error_of(s3.head_bucket, Bucket=made) == ("404", 404)
    fake = {"Authorization": "AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=0"}
    reply = request(s3master.port, "PUT", "/b%21ad", None, fake)
    assert reply.status == 400 and b"InvalidBucketName" in reply.body


# --- deleting ---


def test_delete_object_and_delete_objects(s3master, s3, bucket):
    for key in ("x", "y", "z"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"v")
    assert s3.delete_object(Bucket=bucket, Key="x")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket=bucket, Key="x")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3master.call("GET", f"/{bucket}/x".encode()).status == 404
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "y"}, {"Key": "missing"}, {"Key": "a/../b"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["missing", "y"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("a/../b", "InvalidArgument")]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "z"}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_delete_under_protect_unlinks(make_master):
    master = make_master("-protect")
    s3 = client(master.port)
    s3.create_bucket(Bucket="prot")
    s3.put_object(Bucket="prot", Key="k", Body=b"kept on disk")
    s3.delete_object(Bucket="prot", Key="k")
    assert error_of(s3.get_object, Bucket="prot", Key="k")[0] == "NoSuchKey"
    assert master.listing(b"/prot/", "unlinked")["keys"] == ["/prot/k"]
    assert master.call("RELINK", b"/prot/k").status == 204


# --- copying ---


def test_copy_object_same_and_other_bucket(s3master, s3, bucket):
    value = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="src", Body=value)
    other = f"o-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=other)
    result = s3.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert result["CopyObjectResult"]["ETag"] == f'"{md5hex(value)}"'
    assert s3.get_object(Bucket=other, Key="dst")["Body"].read() == value
    assert native_value(s3master, f"/{other}/dst".encode()) == value
    s3.copy_object(Bucket=bucket, Key="sp ace", CopySource=f"{bucket}/src")
    assert s3.get_object(Bucket=bucket, Key="sp ace")["Body"].read() == value
    assert error_of(s3.copy_object, Bucket=bucket, Key="src",
                    CopySource={"Bucket": bucket, "Key": "src"})[0] == "InvalidRequest"
    assert error_of(s3.copy_object, Bucket=bucket, Key="d2",
                    CopySource={"Bucket": bucket, "Key": "missing"}) == ("NoSuchKey", 404)


def test_managed_copy_uses_upload_part_copy(s3, bucket):
    value = os.urandom(11 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=value)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.copy({"Bucket": bucket, "Key": "big"}, bucket, "big-copy", Config=config)
    head = s3.head_object(Bucket=bucket, Key="big-copy")
    assert head["ETag"].endswith('-3"')  # three parts, copied server side
    assert s3.get_object(Bucket=bucket, Key="big-copy")["Body"].read() == value


# --- multipart ---


def upload_parts(s3, bucket: str, key: str, parts: list[bytes]) -> tuple[str, list[dict]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, data in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                              Body=data)["ETag"]
        assert etag == f'"{md5hex(data)}"'
        done.append({"PartNumber": number, "ETag": etag})
    return upload_id, done


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def test_multipart_upload(s3master, s3, bucket):
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    upload_id, done = upload_parts(s3, bucket, "mp/obj", parts)
    listed = s3.list_parts(Bucket=bucket, Key="mp/obj", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MiB), (2, 5 * MiB), (3, 4)]
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("mp/obj", upload_id)]
    result = s3.complete_multipart_upload(Bucket=bucket, Key="mp/obj", UploadId=upload_id,
                                          MultipartUpload={"Parts": done})
    value = b"".join(parts)
    assert result["ETag"] == multipart_etag(parts)
    assert s3.get_object(Bucket=bucket, Key="mp/obj")["Body"].read() == value
    assert s3.head_object(Bucket=bucket, Key="mp/obj")["ETag"] == multipart_etag(parts)
    # the index keeps the md5 of the whole value; the upload is gone from the spool
    assert s3master.call("GET", f"/{bucket}/mp/obj".encode()).header("Content-Md5") == \
        md5hex(value)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert error_of(s3.list_parts, Bucket=bucket, Key="mp/obj", UploadId=upload_id) == \
        ("NoSuchUpload", 404)
    # a plain overwrite gets a plain ETag again
    assert s3.put_object(Bucket=bucket, Key="mp/obj", Body=b"small")["ETag"] == \
        s3.head_object(Bucket=bucket, Key="mp/obj")["ETag"]


def test_multipart_errors(s3, bucket):
    parts = [os.urandom(5 * MiB), b"second", b"third"]
    upload_id, done = upload_parts(s3, bucket, "bad", parts)

    def complete(parts_list):
        return error_of(s3.complete_multipart_upload, Bucket=bucket, Key="bad",
                        UploadId=upload_id, MultipartUpload={"Parts": parts_list})

    assert complete([done[1], done[0]]) == ("InvalidPartOrder", 400)
    assert complete([done[0], {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}]) == \
        ("InvalidPart", 400)
    assert complete([done[0], {"PartNumber": 9, "ETag": done[1]["ETag"]}]) == \
        ("InvalidPart", 400)
    assert complete([done[0], done[1], done[2]]) == ("EntityTooSmall", 400)
    assert error_of(s3.upload_part, Bucket=bucket, Key="bad", UploadId="f" * 32,
                    PartNumber=1, Body=b"x") == ("NoSuchUpload", 404)
    assert error_of(s3.upload_part, Bucket=bucket, Key="other-key", UploadId=upload_id,
                    PartNumber=1, Body=b"x") == ("NoSuchUpload", 404)
    assert error_of(s3.upload_part, Bucket=bucket, Key="bad", UploadId=upload_id,
                    PartNumber=10001, Body=b"x")[1] == 400
    # parts the Complete leaves out are dropped; a part sent again replaces the first
    again = s3.upload_part(Bucket=bucket, Key="bad", UploadId=upload_id, PartNumber=2,
                           Body=b"second, again")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload_id,
                                 MultipartUpload={"Parts": [done[0], {"PartNumber": 2,
                                                                      "ETag": again}]})
    assert s3.get_object(Bucket=bucket, Key="bad")["Body"].read() == parts[0] + b"second, again"


def test_abort_removes_parts(s3master, s3, bucket):
    """Parts' bytes are on the volumes (-replicas copies), the spool keeps their records;
    an abort removes both."""
    upload_id, _ = upload_parts(s3, bucket, "aborted", [b"one", b"two"])
    spool = Path(f"{s3master.db}.s3") / "uploads" / upload_id
    assert sorted(p.name for p in spool.iterdir() if p.name[0].isdigit()) == \
        ["1.part", "2.part"]
    on_volumes = part_files(s3master.volumes, upload_id)
    assert sorted(p.read_bytes() for p in on_volumes) == [b"one"] * 3 + [b"two"] * 3
    s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload_id)
    assert not spool.exists()
    assert part_files(s3master.volumes, upload_id) == []
    assert error_of(s3.abort_multipart_upload, Bucket=bucket, Key="aborted",
                    UploadId=upload_id) == ("NoSuchUpload", 404)
    assert error_of(s3.get_object, Bucket=bucket, Key="aborted")[0] == "NoSuchKey"


def test_a_part_sent_again_while_the_first_is_on_its_way(s3master, s3, bucket):
    """One client thread sends part 1 (A), and in its middle part 1 again (B), which must not
    wait for A (s3-tests' test_multipart_resend_first_finishes_last). A finishes last, so A is
    the part; a Complete listing both answers is the last listed, as Ceph's RGW takes it."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="resent")["UploadId"]
    a, b = b"A" * 8, b"B" * 8
    first = socket.create_connection(("127.0.0.1", s3master.port), timeout=30)
    first.sendall(f"PUT /{bucket}/resent?partNumber=1&uploadId={upload_id} HTTP/1.1\r\n"
                  f"Host: x\r\nContent-Length: {len(a)}\r\n\r\n".encode() + a[:4])
    etag_b = s3.upload_part(Bucket=bucket, Key="resent", UploadId=upload_id, PartNumber=1,
                            Body=b)["ETag"]
    assert finish_put(first, [a[4:]], 0.01) == 200
    listed = s3.list_parts(Bucket=bucket, Key="resent", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in listed] == [(1, f'"{md5hex(a)}"')]
    assert len(part_files(s3master.volumes, upload_id)) == 3  # B's files went with its record
    parts = [{"PartNumber": 1, "ETag": etag_b}, {"PartNumber": 1, "ETag": f'"{md5hex(a)}"'}]
    s3.complete_multipart_upload(Bucket=bucket, Key="resent", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key="resent")["Body"].read() == a


def test_malformed_xml_is_400_never_500(s3master, s3, bucket):
    upload_id, _ = upload_parts(s3, bucket, "xml", [b"x"])
    laughs = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
              b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
              b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&b;</ETag>"
              b"</Part></CompleteMultipartUpload>")
    for body in (b"<CompleteMultipartUpload>", b"garbage", laughs):
        reply = request(s3master.port, "POST", f"/{bucket}/xml?uploadId={upload_id}", body)
        assert reply.status == 400 and b"<Code>MalformedXML</Code>" in reply.body, reply.body
    # an oversized body is refused from its Content-Length, before it is sent
    with socket.create_connection(("127.0.0.1", s3master.port), timeout=10) as sock:
        sock.sendall(f"POST /{bucket}/xml?uploadId={upload_id} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {3 * MiB}\r\n\r\n".encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400") and b"MalformedXML" in answer
    reply = request(s3master.port, "POST", f"/{bucket}?delete", b"<Delete><Object>")
    assert reply.status == 400 and b"MalformedXML" in reply.body


def test_multipart_survives_a_restart(make_master):
    master = make_master()
    s3 = client(master.port)
    s3.create_bucket(Bucket="restart")
    first = os.urandom(5 * MiB)
    upload_id = s3.create_multipart_upload(Bucket="restart", Key="k")["UploadId"]
    etag1 = s3.upload_part(Bucket="restart", Key="k", UploadId=upload_id, PartNumber=1,
                           Body=first)["ETag"]
    master.stop()
    again = make_master(db=master.db)
    s3 = client(again.port)
    etag2 = s3.upload_part(Bucket="restart", Key="k", UploadId=upload_id, PartNumber=2,
                           Body=b"after the restart")["ETag"]
    s3.complete_multipart_upload(Bucket="restart", Key="k", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]})
    assert s3.get_object(Bucket="restart", Key="k")["Body"].read() == first + b"after the restart"
    assert s3.head_object(Bucket="restart", Key="k")["ETag"] == \
        multipart_etag([first, b"after the restart"])


def test_stale_uploads_are_cleaned(make_master, tmp_path):
    """An upload idle past -s3_upload_ttl goes with its parts' files, and so does a directory
    of parts no upload knows (a master stopped between a part's files and its record)."""
    spool = tmp_path / "spool"
    master = make_master("-s3_upload_ttl", "1s", "-s3_spool", str(spool))
    s3 = client(master.port)
    upload_id, _ = upload_parts(s3, "ttl", "k", [b"part"])
    assert (spool / "uploads" / upload_id).is_dir()
    assert len(part_files(master.volumes, upload_id)) == 3
    stray = master.volumes[0].dir / PARTS / ("0" * 32)
    stray.mkdir(parents=True)
    (stray / "1.0123456789abcdef").write_bytes(b"left behind")
    # S3 writes' staged values: one a crash left two hours ago goes, a fresh one (its write
    # waiting for its key) stays whatever the ttl
    old, fresh = (vol.dir / PARTS / "staged" for vol in master.volumes[1:3])
    for staged in (old, fresh):
        staged.mkdir(parents=True)
        (staged / "0123456789abcdef").write_bytes(b"staged")
    then = time.time() - 7200
    os.utime(old, (then, then))
    deadline = time.monotonic() + 10
    while ((spool / "uploads" / upload_id).exists() or part_files(master.volumes, upload_id)
           or stray.exists() or old.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (spool / "uploads" / upload_id).exists()
    assert part_files(master.volumes, upload_id) == [] and not stray.exists()
    assert not old.exists() and (fresh / "0123456789abcdef").read_bytes() == b"staged"
    (fresh / "0123456789abcdef").unlink()  # the volumes are the session's
    assert error_of(s3.list_parts, Bucket="ttl", Key="k", UploadId=upload_id)[0] == \
        "NoSuchUpload"


def test_native_behaviour_is_unchanged(s3master):
    key = f"/native-{uuid.uuid4().hex}".encode()
    assert s3master.put(key, b"v").status == 201
    assert s3master.put(key, b"v").status == 403
    assert s3master.call("GET", key).status == 302
    assert request(s3master.port, "GET", f"{key.decode()}?foo=bar").status == 403
    assert request(s3master.port, "POST", key.decode(), b"x").status == 405
    assert request(s3master.port, "PUT", "/empty-native", b"").status == 411


def test_values_stream_through_the_master_in_bounded_memory(make_master):
    master = make_master()
    s3 = client(master.port)
    s3.put_object(Bucket="mem", Key="warm", Body=b"x" * 100_000)
    s3.get_object(Bucket="mem", Key="warm")["Body"].read()
    baseline = master.process.peak_rss_kib()
    value = os.urandom(64 * MiB)
    s3.put_object(Bucket="mem", Key="big", Body=value)
    # a reader that stalls: the master must stop reading from the volume, not buffer it all
    fake_auth = "AWS4-HMAC-SHA256 Credential=x/20250101/us-east-1/s3/aws4_request, " \
                "SignedHeaders=host, Signature=0"
    with socket.create_connection(("127.0.0.1", master.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /mem/big HTTP/1.1\r\nHost: x\r\nAuthorization: {fake_auth}\r\n"
                     f"\r\n".encode())
        received = sock.recv(1 << 20)
        time.sleep(1.0)
        stalled_peak = master.process.peak_rss_kib()
        digest = hashlib.md5()
        received = received[received.index(b"\r\n\r\n") + 4:]
        total = len(received)
        digest.update(received)
        while total < len(value):
            chunk = sock.recv(1 << 20)
            assert chunk, "the answer ended early"
            digest.update(chunk)
            total += len(chunk)
    assert digest.hexdigest() == md5hex(value)
    assert (stalled_peak - baseline) < 32 * 1024, (baseline, stalled_peak)
    assert (master.process.peak_rss_kib() - baseline) < 32 * 1024
