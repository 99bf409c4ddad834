"""S3 listings as S3 pages and echoes them: ListObjectsV2 with a continuation token and
StartAfter, ListObjects (V1) echoing Prefix, Marker and Delimiter as sent (URL-encoded only
under encoding-type=url), ListBuckets in pages with a prefix. boto3 and raw requests against
a real master and nginx volumes."""

import uuid
from urllib.parse import quote
from xml.etree import ElementTree

from conftest import request

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def listed(reply) -> dict[str, str]:
    """The top-level text elements of a ListBucketResult."""
    assert reply.status == 200, reply.body
    root = ElementTree.fromstring(reply.body)
    return {child.tag.removeprefix(NS): child.text or "" for child in root if len(child) == 0}


def test_the_continuation_token_decides_start_after_is_echoed(s3, bucket):
    for name in "abcdef":
        s3.put_object(Bucket=bucket, Key=name, Body=b"v")
    first = s3.list_objects_v2(Bucket=bucket, StartAfter="a", MaxKeys=2)
    assert [o["Key"] for o in first["Contents"]] == ["b", "c"]
    token = first["NextContinuationToken"]
    for start_after in ("a", "e", "zzz"):
        page = s3.list_objects_v2(Bucket=bucket, StartAfter=start_after, MaxKeys=2,
                                  ContinuationToken=token)
        assert [o["Key"] for o in page["Contents"]] == ["d", "e"], start_after
        assert (page["StartAfter"], page["ContinuationToken"]) == (start_after, token)
    last = s3.list_objects_v2(Bucket=bucket, StartAfter="a",
                              ContinuationToken=page["NextContinuationToken"])
    assert ([o["Key"] for o in last["Contents"]], last["IsTruncated"]) == (["f"], False)


def test_list_objects_v1_echoes_what_was_sent(s3master, s3, bucket):
    s3.put_object(Bucket=bucket, Key="a b+c/1", Body=b"v")
    prefix, marker, delimiter = "a b+c", "a b+c!", "/"
    query = f"prefix={quote(prefix)}&marker={quote(marker)}&delimiter={quote(delimiter)}"
    plain = listed(request(s3master.port, "GET", f"/{bucket}?{query}"))
    assert (plain["Prefix"], plain["Marker"], plain["Delimiter"]) == (prefix, marker, delimiter)
    assert "EncodingType" not in plain
    encoded = listed(request(s3master.port, "GET", f"/{bucket}?{query}&encoding-type=url"))
    # V1's Prefix comes back raw (the SDKs decode V1's Marker, not its Prefix)
    assert (encoded["Prefix"], encoded["Marker"], encoded["Delimiter"],
            encoded["EncodingType"]) == ("a b+c", "a%20b%2Bc%21", "/", "url")
    # boto3 asks for encoding-type=url itself and decodes what it knows to decode
    page = s3.list_objects(Bucket=bucket, Prefix="a b\n", Marker="a", Delimiter="/")
    assert (page["Prefix"], page["Marker"], page["Delimiter"]) == ("a b\n", "a", "/")
    page = s3.list_objects(Bucket=bucket, Prefix="a b", Marker="a", Delimiter="/")
    assert (page["Prefix"], page["Marker"], page["Delimiter"], page["CommonPrefixes"]) == \
        ("a b", "a", "/", [{"Prefix": "a b+c/"}])


def test_list_buckets_in_pages(s3master, s3):
    prefix = f"lb-{uuid.uuid4().hex[:8]}-"
    names = [f"{prefix}{i}" for i in range(5)]
    for name in names[:4]:
        s3.create_bucket(Bucket=name)
    assert s3master.put(f"/{names[4]}/k".encode(), b"v").status == 201  # a bucket by its key
    first = s3.list_buckets(Prefix=prefix, MaxBuckets=2)
    assert ([b["Name"] for b in first["Buckets"]], first["Prefix"]) == (names[:2], prefix)
    second = s3.list_buckets(Prefix=prefix, MaxBuckets=2,
                             ContinuationToken=first["ContinuationToken"])
    assert [b["Name"] for b in second["Buckets"]] == names[2:4]
    third = s3.list_buckets(Prefix=prefix, MaxBuckets=2,
                            ContinuationToken=second["ContinuationToken"])
    assert ([b["Name"] for b in third["Buckets"]], "ContinuationToken" in third) == \
        (names[4:], False)
    pages = s3.get_paginator("list_buckets").paginate(Prefix=prefix,
                                                      PaginationConfig={"PageSize": 3})
    assert [b["Name"] for p in pages for b in p["Buckets"]] == names
    everything = s3.list_buckets()
    assert set(names) <= {b["Name"] for b in everything["Buckets"]}
    assert "Prefix" not in everything and "ContinuationToken" not in everything
    assert request(s3master.port, "GET", "/?max-buckets=0").status == 400
    assert request(s3master.port, "GET", "/?continuation-token=%21").status == 400


def test_list_object_versions_lists_each_object_once_as_version_null(s3, bucket):
    for key in ("a/1", "a/2", "b", "c d"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    page = s3.list_object_versions(Bucket=bucket, MaxKeys=2)
    assert [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"]) for v in page["Versions"]] \
        == [("a/1", "null", True, 3), ("a/2", "null", True, 3)]
    assert page["IsTruncated"] and page["NextKeyMarker"] == "a/2"
    rest = s3.list_object_versions(Bucket=bucket, KeyMarker=page["NextKeyMarker"],
                                   Delimiter="/")
    assert [v["Key"] for v in rest["Versions"]] == ["b", "c d"] and not rest["IsTruncated"]
    grouped = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/"]
    # what cleaning a bucket by its versions does (the S3 conformance suite's teardown)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": v["Key"], "VersionId": v["VersionId"]} for v in grouped["Versions"]]})
    assert [v["Key"] for v in s3.list_object_versions(Bucket=bucket)["Versions"]] == ["a/1",
                                                                                       "a/2"]
