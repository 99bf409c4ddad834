"""S3 semantics that real clients and conformance suites check (boto3): bucket names and
NoSuchBucket (S3's rules on -s3_port, Go mkv's implicit buckets on the main port), conditional
writes and copies, concurrent writes, UploadPartCopy ranges, presigned expiry bounds."""

import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from cluster import free_port
from conftest import (
    MasterFactory,
    client,
    error_of,
    files_of,
    finish_put,
    md5hex,
    open_put,
    part_files,
    request,
)

from bench.cluster import LocalCluster
from bench.gomkv import peer_source

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3master(tmp_path_factory, volumes):
    """conftest's `s3` and `bucket` on a master with -s3_port too."""
    factory = MasterFactory(tmp_path_factory.mktemp("s3sem"), volumes)
    try:
        yield factory("-s3_port", str(free_port()))
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def strict(s3master):
    """boto3 on -s3_port."""
    return client(int(s3master.flags[1]), retries=1)


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Upper", "under_score", "-dash", "dot.",
                                  "two..dots", "192.168.1.1"])
def test_invalid_bucket_names(s3, name):
    assert error_of(s3.create_bucket, Bucket=name) == ("InvalidBucketName", 400)


def test_valid_bucket_names(s3):
    for name in ("abc", "a" * 63, f"my.bucket-{uuid.uuid4().hex[:6]}", "1.2.3.4a"):
        s3.create_bucket(Bucket=name)
        s3.head_bucket(Bucket=name)


def test_no_such_bucket(s3master, s3, strict):
    missing = f"none-{uuid.uuid4().hex[:12]}"
    assert error_of(strict.put_object, Bucket=missing, Key="k", Body=b"v") == \
        ("NoSuchBucket", 404)
    assert s3master.call("GET", f"/{missing}/k".encode()).status == 404  # nothing written
    assert error_of(strict.create_multipart_upload, Bucket=missing, Key="k") == \
        ("NoSuchBucket", 404)
    for s3_client in (s3, strict):
        assert error_of(s3_client.get_object, Bucket=missing, Key="k") == ("NoSuchBucket", 404)
    assert error_of(strict.delete_bucket, Bucket=missing) == ("NoSuchBucket", 404)
    # the main port keeps Go mkv's buckets: a write makes one
    s3.put_object(Bucket=missing, Key="k", Body=b"v")
    assert strict.get_object(Bucket=missing, Key="k")["Body"].read() == b"v"
    assert error_of(strict.get_object, Bucket=missing, Key="other") == ("NoSuchKey", 404)


def test_conditional_writes(s3, bucket):
    s3.put_object(Bucket=bucket, Key="c", Body=b"one", IfNoneMatch="*")
    assert error_of(s3.put_object, Bucket=bucket, Key="c", Body=b"two", IfNoneMatch="*") == \
        ("PreconditionFailed", 412)
    assert error_of(s3.put_object, Bucket=bucket, Key="c", Body=b"two",
                    IfMatch=f'"{md5hex(b"other")}"') == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"one"  # kept
    s3.put_object(Bucket=bucket, Key="c", Body=b"two", IfMatch=f'"{md5hex(b"one")}"')
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"two"
    assert error_of(s3.put_object, Bucket=bucket, Key="absent", Body=b"x",
                    IfMatch='"abc"') == ("NoSuchKey", 404)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="c")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="c", UploadId=upload, PartNumber=1,
                          Body=b"three")["ETag"]
    assert error_of(s3.complete_multipart_upload, Bucket=bucket, Key="c", UploadId=upload,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
                    IfNoneMatch="*") == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"two"
    # If-None-Match with ETags, as Ceph's RGW takes it (s3-tests' test_put_object_ifnonmatch_*):
    # refused when the value there has one of them, written otherwise
    two = f'"{md5hex(b"two")}"'
    assert error_of(s3.put_object, Bucket=bucket, Key="c", Body=b"three",
                    IfNoneMatch=f'"{md5hex(b"other")}", {two}') == ("PreconditionFailed", 412)
    s3.put_object(Bucket=bucket, Key="c", Body=b"three", IfNoneMatch='"ABCORZ"')
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"three"
    s3.put_object(Bucket=bucket, Key="new", Body=b"x", IfNoneMatch=two)  # nothing there


def test_copy_source_conditions(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"v")
    source = {"Bucket": bucket, "Key": "src"}
    etag = f'"{md5hex(b"v")}"'
    future, past = datetime(2100, 1, 1, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC)
    for condition in ({"CopySourceIfMatch": '"0000"'}, {"CopySourceIfNoneMatch": etag},
                      {"CopySourceIfModifiedSince": future},
                      {"CopySourceIfUnmodifiedSince": past}):
        assert error_of(s3.copy_object, Bucket=bucket, Key="dst", CopySource=source,
                        **condition) == ("PreconditionFailed", 412), condition
    assert error_of(s3.head_object, Bucket=bucket, Key="dst")[1] == 404
    s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, CopySourceIfMatch=etag,
                   CopySourceIfModifiedSince=past)
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"v"


def test_concurrent_put_objects_both_succeed_the_last_wins(s3master, bucket):
    values = [os.urandom(20 * MiB), b"small"]
    done: list[str] = []

    def put(value: bytes) -> None:
        client(s3master.port, retries=1).put_object(Bucket=bucket, Key="race", Body=value)
        done.append(md5hex(value))

    writers = [threading.Thread(target=put, args=(v,)) for v in values]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert sorted(done) == sorted(md5hex(v) for v in values)  # both succeeded
    got = client(s3master.port).head_object(Bucket=bucket, Key="race")["ETag"]
    assert got == f'"{done[-1]}"'  # the last one to complete


def staged_files(master) -> set:
    return {p for p in part_files(master.volumes) if "staged" in p.parts}


def _s3_put_head(port: int, path: str, length: int) -> socket.socket:
    """A connection that has sent an (unsigned) S3 PutObject's head, its body to follow."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                 "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("sizes", [(3 * MiB, MiB), (40_000, 10_000)], ids=["staged", "held"])
def test_a_key_written_again_mid_write_does_not_wait_on_it(s3master, s3, bucket, sizes):
    """One client thread writes a key (A) and, in the middle of A's body, writes it again
    whole (B), as s3-tests' atomic-write tests do. B does not wait on A (a large value streams
    to a staged file, a small one is read whole, and only then is the key taken): A finishes
    last and wins, every replica holding A whole, nothing staged left behind."""
    a, b = os.urandom(sizes[0]), os.urandom(sizes[1])
    key = f"/{bucket}/twice-{sizes[0]}".encode()
    name = key.decode().split("/", 2)[2]
    before = staged_files(s3master)
    first = _s3_put_head(s3master.port, key.decode(), len(a))
    first.sendall(a[:len(a) // 3])
    assert s3.put_object(Bucket=bucket, Key=name, Body=b)["ETag"] == f'"{md5hex(b)}"'
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == b
    assert finish_put(first, [a[len(a) // 3:]], 0.01) == 200
    assert s3.head_object(Bucket=bucket, Key=name)["ETag"] == f'"{md5hex(a)}"'
    assert sorted(p.read_bytes() == a for p in files_of(s3master.volumes, key)) == [True] * 3
    assert staged_files(s3master) == before


def test_many_writers_of_one_key_leave_one_whole_value(s3master, bucket):
    """8 threads × 4 PutObjects of distinct 1 MiB values to one key: every write succeeds,
    and afterwards every replica holds the same whole value, the one a GET reads and the
    record's md5 names."""
    values = {}
    key = f"/{bucket}/contended".encode()
    before = staged_files(s3master)

    def writer() -> None:
        s3 = client(s3master.port, retries=1)
        for _ in range(4):
            value = os.urandom(MiB)
            values[md5hex(value)] = value
            s3.put_object(Bucket=bucket, Key="contended", Body=value)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(values) == 32
    etag = client(s3master.port).head_object(Bucket=bucket, Key="contended")["ETag"]
    won = values[etag.strip('"')]
    assert [p.read_bytes() == won for p in files_of(s3master.volumes, key)] == [True] * 3
    assert s3master.read(key) == won
    assert staged_files(s3master) == before


def test_a_writer_hanging_up_mid_body_changes_nothing(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="kept", Body=b"the old value")
    before = staged_files(s3master)
    sock = _s3_put_head(s3master.port, f"/{bucket}/kept", 2 * MiB)
    sock.sendall(os.urandom(MiB))
    sock.close()
    deadline = time.monotonic() + 10
    while staged_files(s3master) != before:
        assert time.monotonic() < deadline, "a staged file stays"
        time.sleep(0.05)
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"the old value"
    assert s3master.listing(f"/{bucket}/kept".encode(), "writing")["keys"] == []


@pytest.mark.skipif(peer_source() is None, reason="no copy of Go mkv's source on this machine")
def test_volumes_that_cannot_rename_keep_the_locked_write():
    """Go mkv's own volume launcher allows no MOVE: S3 writes there hold the key while they
    stream, as before (concurrent writers still all succeed, one after another), and nothing
    is staged."""
    with LocalCluster(volume_script=peer_source() / "volume") as cluster:  # a dir nginx enters
        s3 = client(cluster.master.port, retries=1)
        s3.create_bucket(Bucket="govol")
        values = [os.urandom(2 * MiB), b"small"]
        writers = [threading.Thread(target=lambda v=v: client(
            cluster.master.port, retries=1).put_object(Bucket="govol", Key="k", Body=v))
            for v in values]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        assert s3.get_object(Bucket="govol", Key="k")["Body"].read() in values
        staged = [p for d in cluster.volume_dirs for p in d.rglob("staged")]
        assert staged == []


def test_upload_part_copy_past_the_end_is_invalid_range(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    assert error_of(s3.upload_part_copy, Bucket=bucket, Key="dst", UploadId=upload,
                    PartNumber=1, CopySource={"Bucket": bucket, "Key": "src"},
                    CopySourceRange="bytes=0-10") == ("InvalidRange", 416)
    part = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                               CopySource={"Bucket": bucket, "Key": "src"},
                               CopySourceRange="bytes=2-9")
    assert part["CopyPartResult"]["ETag"] == f'"{md5hex(b"23456789")}"'


def test_get_and_head_by_part_number(s3, bucket):
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB + 7), b"tail"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=n + 1,
                            Body=part)["ETag"] for n, part in enumerate(parts)]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
    whole = s3.head_object(Bucket=bucket, Key="mp")
    assert "PartsCount" not in whole  # only a part's answer counts them, as on S3
    total = sum(map(len, parts))
    first = 0
    for number, part in enumerate(parts, 1):
        got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        span = f"bytes {first}-{first + len(part) - 1}/{total}"
        assert got["Body"].read() == part
        assert (got["ResponseMetadata"]["HTTPStatusCode"], got["ContentRange"],
                got["PartsCount"], got["ETag"]) == (206, span, 3, whole["ETag"])
        head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert (head["ContentLength"], head["ContentRange"], head["PartsCount"]) == \
            (len(part), span, 3)
        first += len(part)
    # a part past the last: 400 InvalidPartNumber, as the S3 conformance suite has it
    assert error_of(s3.get_object, Bucket=bucket, Key="mp", PartNumber=4) == \
        ("InvalidPartNumber", 400)
    assert error_of(s3.head_object, Bucket=bucket, Key="mp", PartNumber=4) == ("400", 400)
    assert error_of(s3.get_object, Bucket=bucket, Key="mp", PartNumber=1,
                    Range="bytes=0-1") == ("InvalidRequest", 400)
    assert error_of(s3.get_object, Bucket=bucket, Key="mp", PartNumber=0)[1] == 400


def test_a_plain_object_is_one_part(s3, bucket):
    s3.put_object(Bucket=bucket, Key="plain", Body=b"0123456789")
    got = s3.get_object(Bucket=bucket, Key="plain", PartNumber=1)
    assert (got["Body"].read(), got["ContentRange"], got.get("PartsCount")) == \
        (b"0123456789", "bytes 0-9/10", None)
    head = s3.head_object(Bucket=bucket, Key="plain", PartNumber=1)
    assert (head["ContentLength"], head["ContentRange"]) == (10, "bytes 0-9/10")
    assert error_of(s3.get_object, Bucket=bucket, Key="plain", PartNumber=2) == \
        ("InvalidPartNumber", 400)
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="empty", PartNumber=1)["Body"].read() == b""


def test_conditional_delete_object(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="d", Body=b"value")
    bad = request(s3master.port, "DELETE", f"/{bucket}/d", headers={"x-amz-if-match-size": "-1"})
    assert (bad.status, b"<Code>InvalidArgument</Code>" in bad.body) == (400, True)
    head = s3.head_object(Bucket=bucket, Key="d")
    modified, etag = head["LastModified"], head["ETag"]
    for condition in ({"IfMatch": f'"{md5hex(b"other")}"'}, {"IfMatchSize": 4},
                      {"IfMatchLastModifiedTime": datetime(2000, 1, 1, tzinfo=UTC)},
                      {"IfMatch": etag, "IfMatchSize": 6}):
        assert error_of(s3.delete_object, Bucket=bucket, Key="d", **condition) == \
            ("PreconditionFailed", 412), condition
    assert s3.get_object(Bucket=bucket, Key="d")["Body"].read() == b"value"  # kept
    s3.delete_object(Bucket=bucket, Key="d", IfMatch=etag, IfMatchSize=5,
                     IfMatchLastModifiedTime=modified)
    assert error_of(s3.head_object, Bucket=bucket, Key="d")[1] == 404
    # a key that is not there: If-Match is NoSuchKey, the other conditions hold
    assert error_of(s3.delete_object, Bucket=bucket, Key="d", IfMatch=etag) == \
        ("NoSuchKey", 404)
    s3.delete_object(Bucket=bucket, Key="d", IfMatchSize=5)
    s3.put_object(Bucket=bucket, Key="any", Body=b"v")
    s3.delete_object(Bucket=bucket, Key="any", IfMatch="*")
    assert error_of(s3.head_object, Bucket=bucket, Key="any")[1] == 404


def test_conditional_delete_objects(s3, bucket):
    for name in ("a", "b", "c", "d"):
        s3.put_object(Bucket=bucket, Key=name, Body=name.encode() * 3)
    heads = {name: s3.head_object(Bucket=bucket, Key=name) for name in "abcd"}
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "a", "ETag": heads["a"]["ETag"], "Size": 3},
        {"Key": "b", "ETag": f'"{md5hex(b"x")}"'},
        {"Key": "c", "Size": 4},
        {"Key": "d", "LastModifiedTime": heads["d"]["LastModified"]}]})
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["a", "d"]
    assert sorted((e["Key"], e["Code"]) for e in answer["Errors"]) == \
        [("b", "PreconditionFailed"), ("c", "PreconditionFailed")]
    left = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in left] == ["b", "c"]


def test_a_copy_onto_a_busy_key_waits_its_turn_and_wins(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="source", Body=b"copied")
    key = f"/{bucket}/target".encode()
    sock = open_put(s3master.port, key, 7)  # a native PUT holds the key
    result: dict = {}
    copier = client(s3master.port, retries=1)
    copy = threading.Thread(target=lambda: result.update(copier.copy_object(
        Bucket=bucket, Key="target", CopySource={"Bucket": bucket, "Key": "source"})))
    copy.start()
    time.sleep(0.5)
    assert copy.is_alive()  # waiting, not refused with 409
    assert finish_put(sock, [b"written"], 0.01) == 201
    copy.join(30)
    assert result["CopyObjectResult"]["ETag"] == f'"{md5hex(b"copied")}"'
    assert s3.get_object(Bucket=bucket, Key="target")["Body"].read() == b"copied"
