"""Checksums S3 clients send (`x-amz-checksum-*`) are kept with the object and given back as
S3 gives them: on GET/HEAD with `ChecksumMode=ENABLED` (boto3 then checks the body against
it), by GetObjectAttributes, and for a multipart upload that asked for one (CRC32 by default
in boto3's upload_file) as a COMPOSITE checksum of the parts' or a FULL_OBJECT one. boto3
against a real master and nginx volumes."""

import base64
import functools
import hashlib
import io
import os
import zlib

import pytest
from awscrt import checksums as crt
from boto3.s3.transfer import TransferConfig
from conftest import error_of, request

MiB = 1024 * 1024


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def crc64(data: bytes) -> str:
    return b64(crt.crc64nvme(data).to_bytes(8, "big"))


def composite(algorithm: str, parts: list[bytes]) -> str:
    """S3's checksum of checksums: over the parts' raw digests, `-N` after it."""
    digest = {"crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
              "sha256": lambda d: hashlib.sha256(d).digest()}[algorithm]
    return f"{b64(digest(b''.join(digest(p) for p in parts)))}-{len(parts)}"


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"])
def test_a_put_checksum_is_kept_and_given_back(s3, bucket, algorithm):
    body = os.urandom(100_000)
    sent = s3.put_object(Bucket=bucket, Key=f"c-{algorithm}", Body=body,
                         ChecksumAlgorithm=algorithm)[f"Checksum{algorithm}"]
    got = s3.get_object(Bucket=bucket, Key=f"c-{algorithm}", ChecksumMode="ENABLED")
    assert (got[f"Checksum{algorithm}"], got["ChecksumType"]) == (sent, "FULL_OBJECT")
    assert got["Body"].read() == body  # boto3 checked it against the checksum as it read
    head = s3.head_object(Bucket=bucket, Key=f"c-{algorithm}", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"] == sent
    attributes = s3.get_object_attributes(Bucket=bucket, Key=f"c-{algorithm}",
                                          ObjectAttributes=["Checksum", "ObjectSize"])
    assert attributes["Checksum"] == {f"Checksum{algorithm}": sent,
                                      "ChecksumType": "FULL_OBJECT"}
    assert attributes["ObjectSize"] == len(body)
    if algorithm == "CRC32":
        assert sent == crc32(body)
    # without ChecksumMode, and for a range, no checksum (S3 gives none for part of a value)
    assert f"Checksum{algorithm}" not in s3.head_object(Bucket=bucket, Key=f"c-{algorithm}")
    ranged = s3.get_object(Bucket=bucket, Key=f"c-{algorithm}", Range="bytes=0-9",
                           ChecksumMode="ENABLED")
    assert f"Checksum{algorithm}" not in ranged and ranged["Body"].read() == body[:10]


def test_a_copy_keeps_the_checksum_and_a_rewrite_drops_it(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"value", ChecksumAlgorithm="CRC32")
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"a": "1"})
    assert s3.head_object(Bucket=bucket, Key="dst", ChecksumMode="ENABLED")[
        "ChecksumCRC32"] == crc32(b"value")
    assert request(s3master.port, "PUT", f"/{bucket}/src", b"other", headers={  # no sum
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}).status == 200
    head = s3.head_object(Bucket=bucket, Key="src", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" not in head  # S3's own instead, as for any object sent without
    assert head["ChecksumCRC64NVME"] == crc64(b"other")
    assert s3master.call("REPLACE", f"/{bucket}/dst".encode(), b"native").status == 201
    assert "ChecksumCRC32" not in s3.head_object(Bucket=bucket, Key="dst",
                                                 ChecksumMode="ENABLED")


def test_upload_file_gets_a_composite_crc32(s3, bucket):
    """boto3's upload_file asks for CRC32 and sends each part's; the object's is COMPOSITE."""
    data = os.urandom(11 * MiB)
    s3.upload_fileobj(io.BytesIO(data), bucket, "big", Config=TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    parts = [data[:5 * MiB], data[5 * MiB:10 * MiB], data[10 * MiB:]]
    head = s3.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC32"], head["ChecksumType"]) == (composite("crc32", parts),
                                                             "COMPOSITE")
    got = s3.get_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    attributes = s3.get_object_attributes(
        Bucket=bucket, Key="big", MaxParts=2,
        ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"])
    assert attributes["ETag"] == head["ETag"].strip('"') and attributes["ETag"].endswith("-3")
    assert attributes["StorageClass"] == "STANDARD" and attributes["ObjectSize"] == len(data)
    listed = attributes["ObjectParts"]
    assert (listed["TotalPartsCount"], listed["IsTruncated"], listed["NextPartNumberMarker"]) \
        == (3, True, 2)
    assert [(p["PartNumber"], p["Size"], p["ChecksumCRC32"]) for p in listed["Parts"]] == \
        [(n + 1, len(p), crc32(p)) for n, p in enumerate(parts[:2])]
    rest = s3.get_object_attributes(Bucket=bucket, Key="big", PartNumberMarker=2,
                                    ObjectAttributes=["ObjectParts"])["ObjectParts"]
    assert [p["PartNumber"] for p in rest["Parts"]] == [3] and not rest["IsTruncated"]


def test_list_parts_gives_each_part_its_checksum(s3, bucket):
    parts = [os.urandom(5 * MiB), b"last"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="listed", ChecksumAlgorithm="SHA256")
    for n, body in enumerate(parts, 1):
        s3.upload_part(Bucket=bucket, Key="listed", UploadId=upload["UploadId"], PartNumber=n,
                       Body=body, ChecksumAlgorithm="SHA256")
    s3.upload_part(Bucket=bucket, Key="listed", UploadId=upload["UploadId"], PartNumber=3,
                   Body=b"no checksum asked", ChecksumAlgorithm="CRC32")
    listed = s3.list_parts(Bucket=bucket, Key="listed", UploadId=upload["UploadId"])["Parts"]
    assert [(p["PartNumber"], p.get("ChecksumSHA256")) for p in listed[:2]] == [
        (n + 1, b64(hashlib.sha256(body).digest())) for n, body in enumerate(parts)]
    assert listed[2]["ChecksumCRC32"] == crc32(b"no checksum asked")
    s3.abort_multipart_upload(Bucket=bucket, Key="listed", UploadId=upload["UploadId"])


@pytest.mark.parametrize("algorithm, kind", [("CRC32", "FULL_OBJECT"),
                                             ("CRC64NVME", None), ("SHA256", "COMPOSITE")])
def test_a_multipart_checksum_of_the_type_asked(s3, bucket, algorithm, kind):
    parts = [os.urandom(5 * MiB), b"the last part"]
    asked = {"ChecksumType": kind} if kind else {}
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm=algorithm,
                                        **asked)
    assert upload["ChecksumAlgorithm"] == algorithm
    done = []
    for n, body in enumerate(parts, 1):
        answer = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],
                                PartNumber=n, Body=body, ChecksumAlgorithm=algorithm)
        done.append({"PartNumber": n, "ETag": answer["ETag"],
                     f"Checksum{algorithm}": answer[f"Checksum{algorithm}"]})
    completed = s3.complete_multipart_upload(Bucket=bucket, Key="mp",
                                             UploadId=upload["UploadId"],
                                             MultipartUpload={"Parts": done})
    whole = b"".join(parts)
    if algorithm == "CRC32" and kind == "FULL_OBJECT":
        wanted = (crc32(whole), "FULL_OBJECT")
    elif algorithm == "CRC64NVME":
        wanted = (b64(crt.crc64nvme(whole).to_bytes(8, "big")), "FULL_OBJECT")
    else:
        wanted = (composite("sha256", parts), "COMPOSITE")
    assert (completed[f"Checksum{algorithm}"], completed["ChecksumType"]) == wanted
    got = s3.get_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert (got[f"Checksum{algorithm}"], got["ChecksumType"]) == wanted
    assert got["Body"].read() == whole


def test_an_object_sent_without_a_checksum_gets_s3s_own(s3master, s3, bucket):
    """As S3 does since 2025: CRC64NVME over the whole object, for a PutObject and for a
    multipart upload that asked for none."""
    assert request(s3master.port, "PUT", f"/{bucket}/bare", b"no checksum sent", headers={
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}).status == 200
    got = s3.get_object(Bucket=bucket, Key="bare", ChecksumMode="ENABLED")
    assert (got["ChecksumCRC64NVME"], got["ChecksumType"]) == (crc64(b"no checksum sent"),
                                                               "FULL_OBJECT")
    assert got["Body"].read() == b"no checksum sent"
    parts = [os.urandom(5 * MiB), b"end"]
    upload = request(s3master.port, "POST", f"/{bucket}/bare-mp?uploads", b"",
                     headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    upload_id = upload.body.split(b"<UploadId>")[1].split(b"<")[0].decode()
    listed = []
    for n, body in enumerate(parts, 1):
        answer = s3.upload_part(Bucket=bucket, Key="bare-mp", UploadId=upload_id,
                                PartNumber=n, Body=body)
        listed.append({"PartNumber": n, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="bare-mp", UploadId=upload_id,
                                 MultipartUpload={"Parts": listed})
    head = s3.head_object(Bucket=bucket, Key="bare-mp", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC64NVME"], head["ChecksumType"]) == (crc64(b"".join(parts)),
                                                                 "FULL_OBJECT")


@pytest.mark.parametrize("headers", [
    {"x-amz-checksum-algorithm": "MD5"},
    {"x-amz-checksum-algorithm": "CRC64NVME", "x-amz-checksum-type": "COMPOSITE"},
    {"x-amz-checksum-algorithm": "SHA1", "x-amz-checksum-type": "FULL_OBJECT"},
    {"x-amz-checksum-type": "COMPOSITE"},
])
def test_an_upload_asking_for_a_checksum_s3_cannot_give_is_refused(s3master, bucket, headers):
    reply = request(s3master.port, "POST", f"/{bucket}/refused?uploads", b"", headers=headers)
    assert reply.status == 400 and b"<Code>InvalidRequest</Code>" in reply.body, reply.body


def test_object_attributes_are_asked_by_name(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    plain = s3.get_object_attributes(Bucket=bucket, Key="plain",
                                     ObjectAttributes=["ObjectParts", "Checksum", "ETag"])
    assert "ObjectParts" not in plain  # one part: none listed
    assert plain["Checksum"]["ChecksumCRC32"] == crc32(b"x")  # boto3 sends CRC32 by default
    for asked in ("", "Size", "ETag,Colour"):
        reply = request(s3master.port, "GET", f"/{bucket}/plain?attributes",
                        headers={"x-amz-object-attributes": asked} if asked else {})
        assert reply.status == 400 and b"InvalidArgument" in reply.body, (asked, reply.body)
    for paging in ({"x-amz-max-parts": "many"}, {"x-amz-max-parts": "-1"},
                   {"x-amz-part-number-marker": "1e999"}):
        reply = request(s3master.port, "GET", f"/{bucket}/plain?attributes",
                        headers={"x-amz-object-attributes": "ObjectParts", **paging})
        assert reply.status == 400 and b"InvalidArgument" in reply.body, (paging, reply.body)
    assert error_of(s3.get_object_attributes, Bucket=bucket, Key="absent",
                    ObjectAttributes=["ETag"]) == ("NoSuchKey", 404)


@pytest.mark.parametrize("sent_right", [True, False])
def test_complete_checks_the_object_checksum_it_is_sent(s3, bucket, sent_right):
    parts = [os.urandom(5 * MiB), b"last"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="sent", ChecksumAlgorithm="SHA256")
    done = []
    for n, body in enumerate(parts, 1):
        answer = s3.upload_part(Bucket=bucket, Key="sent", UploadId=upload["UploadId"],
                                PartNumber=n, Body=body, ChecksumAlgorithm="SHA256")
        done.append({"PartNumber": n, "ETag": answer["ETag"],
                     "ChecksumSHA256": answer["ChecksumSHA256"]})
    value = composite("sha256", parts) if sent_right else composite("sha256", parts[::-1])
    complete = functools.partial(s3.complete_multipart_upload, Bucket=bucket, Key="sent",
                                 UploadId=upload["UploadId"], MultipartUpload={"Parts": done},
                                 ChecksumSHA256=value)
    if sent_right:
        assert complete()["ChecksumSHA256"] == value
        assert s3.get_object(Bucket=bucket, Key="sent")["Body"].read() == b"".join(parts)
    else:  # refused, nothing written, the upload still there to complete right
        assert error_of(complete) == ("BadDigest", 400)
        assert error_of(s3.head_object, Bucket=bucket, Key="sent")[1] == 404
        assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] \
            == [upload["UploadId"]]
