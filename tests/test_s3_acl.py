"""The S3 permission model with keys set (boto3 as the client): each access key owns the buckets
it creates; canned ACLs and grants on buckets and objects, in every form S3 takes them; anonymous
and other keys' requests allowed exactly where an ACL says, refused (403, nothing written)
everywhere else. Without keys everything stays open and the ACLs are only kept and answered."""

import uuid

import pytest
from botocore import UNSIGNED
from conftest import client, error_of, keyed_master, request

OWNER, OWNER_SECRET = "OWNERKEY", "owner-secret"
OTHER, OTHER_SECRET = "OTHERKEY", "other-secret"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


@pytest.fixture(scope="module")
def master(tmp_path_factory, volumes):
    yield from keyed_master(tmp_path_factory, volumes, (OWNER, OWNER_SECRET),
                            (OTHER, OTHER_SECRET))


@pytest.fixture(scope="module")
def owner(master):
    return client(master.port, 1, OWNER, OWNER_SECRET)


@pytest.fixture(scope="module")
def other(master):
    return client(master.port, 1, OTHER, OTHER_SECRET)


@pytest.fixture(scope="module")
def anonymous(master):
    return client(master.port, 1, signature_version=UNSIGNED)


def new_bucket(s3, **kw) -> str:
    name = f"acl-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, **kw)
    return name


def grants_of(answer: dict) -> set[tuple[str, str]]:
    found = set()
    for grant in answer["Grants"]:
        grantee = grant["Grantee"]
        found.add((grantee.get("URI") or grantee["ID"], grant["Permission"]))
    return found


def test_a_bucket_is_its_creators_alone(master, owner, other, anonymous):
    bucket = new_bucket(owner)
    owner.put_object(Bucket=bucket, Key="k", Body=b"mine")
    for s3 in (other, anonymous):
        assert error_of(s3.list_objects_v2, Bucket=bucket) == ("AccessDenied", 403)
        assert error_of(s3.get_object, Bucket=bucket, Key="k") == ("AccessDenied", 403)
        assert error_of(s3.head_object, Bucket=bucket, Key="k")[1] == 403
        assert error_of(s3.put_object, Bucket=bucket, Key="k", Body=b"theirs") == \
            ("AccessDenied", 403)
        assert error_of(s3.delete_object, Bucket=bucket, Key="k") == ("AccessDenied", 403)
        assert error_of(s3.get_bucket_acl, Bucket=bucket) == ("AccessDenied", 403)
        assert error_of(s3.put_bucket_acl, Bucket=bucket, ACL="public-read-write") == \
            ("AccessDenied", 403)
        assert error_of(s3.delete_bucket, Bucket=bucket) == ("AccessDenied", 403)
    # nor copy out of it into a bucket of their own
    theirs = new_bucket(other)
    assert error_of(other.copy_object, Bucket=theirs, Key="stolen",
                    CopySource={"Bucket": bucket, "Key": "k"}) == ("AccessDenied", 403)
    assert error_of(other.get_object, Bucket=theirs, Key="stolen")[1] == 404
    # nor recreate it; its owner may (nothing changes)
    assert error_of(other.create_bucket, Bucket=bucket) == ("BucketAlreadyExists", 409)
    owner.create_bucket(Bucket=bucket)
    assert owner.get_object(Bucket=bucket, Key="k")["Body"].read() == b"mine"
    assert error_of(anonymous.create_bucket, Bucket=f"anon-{uuid.uuid4().hex[:8]}") == \
        ("AccessDenied", 403)
    # each key lists its own buckets
    assert bucket in [b["Name"] for b in owner.list_buckets()["Buckets"]]
    listed = other.list_buckets()
    assert bucket not in [b["Name"] for b in listed["Buckets"]]
    assert theirs in [b["Name"] for b in listed["Buckets"]]
    assert listed["Owner"]["ID"] == OTHER
    assert anonymous.list_buckets()["Buckets"] == []  # anonymous owns none


def test_a_public_read_bucket_lists_for_anyone_but_its_objects_keep_their_acl(
        master, owner, other, anonymous):
    bucket = new_bucket(owner, ACL="public-read")
    owner.put_object(Bucket=bucket, Key="private", Body=b"p")
    owner.put_object(Bucket=bucket, Key="public", Body=b"shown", ACL="public-read")
    for s3 in (other, anonymous):
        names = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert names == ["private", "public"]
        assert s3.get_object(Bucket=bucket, Key="public")["Body"].read() == b"shown"
        assert error_of(s3.get_object, Bucket=bucket, Key="private") == ("AccessDenied", 403)
        assert error_of(s3.get_object, Bucket=bucket, Key="missing") == ("NoSuchKey", 404)
        assert error_of(s3.put_object, Bucket=bucket, Key="new", Body=b"x") == \
            ("AccessDenied", 403)
    assert error_of(owner.get_object, Bucket=bucket, Key="new") == ("NoSuchKey", 404)


def test_a_public_object_in_a_private_bucket_reads_but_does_not_list(owner, anonymous):
    bucket = new_bucket(owner)
    owner.put_object(Bucket=bucket, Key="k", Body=b"out")
    assert error_of(anonymous.get_object, Bucket=bucket, Key="k") == ("AccessDenied", 403)
    owner.put_object_acl(Bucket=bucket, Key="k", ACL="public-read")
    assert anonymous.get_object(Bucket=bucket, Key="k")["Body"].read() == b"out"
    assert grants_of(owner.get_object_acl(Bucket=bucket, Key="k")) == {
        (OWNER, "FULL_CONTROL"), (ALL_USERS, "READ")}
    assert error_of(anonymous.list_objects_v2, Bucket=bucket) == ("AccessDenied", 403)
    # a value written again gets the ACL its write asks for: private by default
    owner.put_object(Bucket=bucket, Key="k", Body=b"in")
    assert error_of(anonymous.get_object, Bucket=bucket, Key="k") == ("AccessDenied", 403)


def test_public_read_write_lets_anyone_write_and_delete(master, owner, anonymous, other):
    bucket = new_bucket(owner, ACL="public-read-write")
    anonymous.put_object(Bucket=bucket, Key="anon", Body=b"a", ACL="public-read")
    other.put_object(Bucket=bucket, Key="other", Body=b"o")
    assert owner.get_object(Bucket=bucket, Key="anon")["Body"].read() == b"a"
    assert owner.get_object(Bucket=bucket, Key="other")["Body"].read() == b"o"
    # the bucket's owner owns what others wrote in it; the writer reads only what an ACL lets
    assert error_of(other.get_object, Bucket=bucket, Key="other") == ("AccessDenied", 403)
    assert anonymous.get_object(Bucket=bucket, Key="anon")["Body"].read() == b"a"
    anonymous.delete_object(Bucket=bucket, Key="other")
    assert error_of(owner.get_object, Bucket=bucket, Key="other") == ("NoSuchKey", 404)
    # a multipart upload, anonymously
    upload = anonymous.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = anonymous.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1,
                                 Body=b"part")["ETag"]
    anonymous.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                        MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                    "ETag": etag}]})
    assert owner.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"part"


def test_authenticated_read_is_for_every_key_not_anonymous(owner, other, anonymous):
    bucket = new_bucket(owner, ACL="authenticated-read")
    owner.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="authenticated-read")
    assert other.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    assert [o["Key"] for o in other.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    assert error_of(anonymous.get_object, Bucket=bucket, Key="k") == ("AccessDenied", 403)
    assert error_of(anonymous.list_objects_v2, Bucket=bucket) == ("AccessDenied", 403)
    assert grants_of(owner.get_bucket_acl(Bucket=bucket)) == {
        (OWNER, "FULL_CONTROL"), (AUTHENTICATED, "READ")}


def test_grants_in_xml_and_headers_equal_the_canned_forms(owner, other, anonymous):
    bucket = new_bucket(owner)
    acl = owner.get_bucket_acl(Bucket=bucket)
    assert acl["Owner"]["ID"] == OWNER
    assert grants_of(acl) == {(OWNER, "FULL_CONTROL")}
    policy = {"Owner": acl["Owner"], "Grants": [
        *acl["Grants"], {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"}]}
    owner.put_bucket_acl(Bucket=bucket, AccessControlPolicy=policy)
    assert grants_of(owner.get_bucket_acl(Bucket=bucket)) == {
        (OWNER, "FULL_CONTROL"), (ALL_USERS, "READ")}
    assert anonymous.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    # a grant to another key by header: that key may write, nobody else
    owner.put_bucket_acl(Bucket=bucket, GrantWrite=f'id="{OTHER}"', GrantRead=f'id="{OTHER}"')
    other.put_object(Bucket=bucket, Key="granted", Body=b"g")
    assert error_of(anonymous.list_objects_v2, Bucket=bucket) == ("AccessDenied", 403)
    assert error_of(other.get_bucket_acl, Bucket=bucket) == ("AccessDenied", 403)
    # grants sent are the whole ACL, as on S3: the owner's own is gone (it may still do
    # anything to its bucket)
    assert grants_of(owner.get_bucket_acl(Bucket=bucket)) == {(OTHER, "WRITE"), (OTHER, "READ")}
    owner.put_object(Bucket=bucket, Key="owners", Body=b"o")
    # refused: a grant to a key there is not, an e-mail grantee, canned and grants at once,
    # a canned name S3 does not have, a policy naming another owner, malformed XML
    assert error_of(owner.put_bucket_acl, Bucket=bucket, GrantRead='id="NOSUCHKEY"') == \
        ("InvalidArgument", 400)
    assert error_of(owner.put_bucket_acl, Bucket=bucket,
                    GrantRead='emailAddress="a@example.com"') == \
        ("UnresolvableGrantByEmailAddress", 400)
    assert error_of(owner.put_bucket_acl, Bucket=bucket, ACL="private",
                    GrantRead=f'id="{OTHER}"') == ("InvalidRequest", 400)
    assert error_of(owner.put_object, Bucket=bucket, Key="k", Body=b"x",
                    GrantRead='id="NOSUCHKEY"') == ("InvalidArgument", 400)
    assert error_of(owner.get_object, Bucket=bucket, Key="k")[1] == 404
    policy["Owner"] = {"ID": OTHER}
    assert error_of(owner.put_bucket_acl, Bucket=bucket, AccessControlPolicy=policy)[1] == 403
    # what was refused changed nothing
    assert grants_of(owner.get_bucket_acl(Bucket=bucket)) == {(OTHER, "WRITE"), (OTHER, "READ")}
    # revoking every grant leaves none, and the owner its bucket
    owner.put_bucket_acl(Bucket=bucket, AccessControlPolicy={"Owner": acl["Owner"],
                                                             "Grants": []})
    assert owner.get_bucket_acl(Bucket=bucket)["Grants"] == []
    assert error_of(other.put_object, Bucket=bucket, Key="k", Body=b"x") == ("AccessDenied", 403)
    owner.put_bucket_acl(Bucket=bucket, ACL="private")
    assert grants_of(owner.get_bucket_acl(Bucket=bucket)) == {(OWNER, "FULL_CONTROL")}


def test_a_bad_canned_acl_is_refused_before_anything_is_written(owner):
    bucket = new_bucket(owner)
    assert error_of(owner.put_bucket_acl, Bucket=bucket, ACL="everyone") == \
        ("InvalidArgument", 400)
    assert error_of(owner.put_object, Bucket=bucket, Key="k", Body=b"x", ACL="everyone") == \
        ("InvalidArgument", 400)
    assert error_of(owner.get_object, Bucket=bucket, Key="k")[1] == 404
    assert grants_of(owner.get_bucket_acl(Bucket=bucket)) == {(OWNER, "FULL_CONTROL")}


def test_a_native_key_follows_its_buckets_acl(master, owner, anonymous):
    bucket = new_bucket(owner, ACL="public-read")
    assert master.call("PUT", f"/{bucket}/native".encode(), b"from the native face"
                       ).status == 201
    assert anonymous.get_object(Bucket=bucket, Key="native")["Body"].read() == \
        b"from the native face"
    owner.put_bucket_acl(Bucket=bucket, ACL="private")
    assert error_of(anonymous.get_object, Bucket=bucket, Key="native")[1] == 403


def test_an_anonymous_form_posts_only_where_the_bucket_allows(master, owner):
    private, public = new_bucket(owner), new_bucket(owner, ACL="public-read-write")
    for bucket, status in ((private, 403), (public, 204)):
        body = (b"--B\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nposted\r\n"
                b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
                b"\r\nform bytes\r\n--B--\r\n")
        answer = master.call("POST", f"/{bucket}".encode(), body,
                             headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert answer.status == status, answer.body
    assert owner.get_object(Bucket=public, Key="posted")["Body"].read() == b"form bytes"
    assert error_of(owner.get_object, Bucket=private, Key="posted")[1] == 404


def test_without_keys_acls_are_kept_and_everything_stays_open(s3master):
    s3 = client(s3master.port, 1)
    anonymous = client(s3master.port, 1, signature_version=UNSIGNED)
    bucket = new_bucket(s3)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert grants_of(s3.get_bucket_acl(Bucket=bucket)) == {("mkv", "FULL_CONTROL")}
    s3.put_object_acl(Bucket=bucket, Key="k", ACL="public-read")
    assert grants_of(s3.get_object_acl(Bucket=bucket, Key="k")) == {
        ("mkv", "FULL_CONTROL"), (ALL_USERS, "READ")}
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    anonymous.put_object(Bucket=bucket, Key="anon", Body=b"a")
    assert anonymous.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def test_its_owner_makes_a_bucket_again_only_with_the_acl_it_has(owner):
    bucket = new_bucket(owner, ACL="public-read")
    owner.create_bucket(Bucket=bucket, ACL="public-read")
    assert error_of(owner.create_bucket, Bucket=bucket) == ("BucketAlreadyExists", 409)
    plain = new_bucket(owner)
    owner.create_bucket(Bucket=plain)
    assert error_of(owner.create_bucket, Bucket=plain, ACL="public-read") == \
        ("BucketAlreadyExists", 409)
    assert grants_of(owner.get_bucket_acl(Bucket=plain)) == {(OWNER, "FULL_CONTROL")}
    owner.put_object(Bucket=plain, Key="k", Body=b"x")
    listed = owner.list_objects(Bucket=plain)["Contents"]
    assert listed[0]["Owner"]["ID"] == OWNER  # listings name the bucket's owner


def test_anyone_learns_that_a_bucket_is_gone_but_anonymous_cannot_write_into_it(
        master, anonymous, other):
    missing = f"gone-{uuid.uuid4().hex[:8]}"
    for s3 in (anonymous, other):
        assert error_of(s3.get_object, Bucket=missing, Key="k") == ("NoSuchBucket", 404)
        assert error_of(s3.list_objects_v2, Bucket=missing) == ("NoSuchBucket", 404)
    assert error_of(anonymous.put_object, Bucket=missing, Key="k", Body=b"x") == \
        ("AccessDenied", 403)
    assert error_of(anonymous.delete_object, Bucket=missing, Key="k") == ("AccessDenied", 403)
    assert master.call("GET", f"/{missing}/k".encode()).status == 404


def test_bucket_tags_are_the_owners_and_an_expected_owner_must_be_the_owner(owner, other):
    bucket = new_bucket(owner, ACL="public-read-write")
    assert error_of(owner.get_bucket_tagging, Bucket=bucket) == ("NoSuchTagSet", 404)
    owner.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "team",
                                                                 "Value": "ml"}]})
    assert owner.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "team",
                                                                  "Value": "ml"}]
    assert error_of(other.get_bucket_tagging, Bucket=bucket) == ("AccessDenied", 403)
    assert error_of(other.put_bucket_tagging, Bucket=bucket, Tagging={"TagSet": []}) == \
        ("AccessDenied", 403)
    owner.delete_bucket_tagging(Bucket=bucket)
    assert error_of(owner.get_bucket_tagging, Bucket=bucket) == ("NoSuchTagSet", 404)
    # the bucket lets anyone write, but not to a caller who expects another owner
    other.put_object(Bucket=bucket, Key="k", Body=b"x", ExpectedBucketOwner=OWNER)
    assert error_of(other.put_object, Bucket=bucket, Key="k", Body=b"y",
                    ExpectedBucketOwner=OTHER) == ("AccessDenied", 403)
    assert owner.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def test_an_upload_names_who_began_it_and_a_preflight_is_refused(master, owner, other):
    bucket = new_bucket(owner, ACL="public-read-write")
    upload = other.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    (listed,) = owner.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert (listed["Initiator"]["ID"], listed["Owner"]["ID"]) == (OTHER, OTHER)
    parts = other.list_parts(Bucket=bucket, Key="mp", UploadId=upload)
    assert (parts["Initiator"]["ID"], parts["Owner"]["ID"]) == (OTHER, OTHER)
    other.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)
    url = owner.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    path = url[url.index("/", len("http://")):]
    assert request(master.port, "OPTIONS", path).status == 400  # no Origin: not a preflight
    assert request(master.port, "OPTIONS", path, headers={"Origin": "http://a.example"}
                   ).status == 403  # no CORS rules here
