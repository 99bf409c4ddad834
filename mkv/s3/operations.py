"""The S3 operation a request asks for, by AWS's name (GetObject, ListObjectsV2, ...): the label
of the S3 metrics. It follows the routing of `face.py`; a request that fits no operation is
named by its method and resource."""


def operation(method: bytes, key: bytes, params: dict[str, str], headers: dict[bytes, bytes],
              ) -> str:
    """The operation of an S3 request on `key` (`/`, `/bucket` or `/bucket/object`)."""
    verb = method.decode("latin-1")
    if key in (b"", b"/"):
        return "ListBuckets" if verb == "GET" else f"{verb} service"
    slash = key.find(b"/", 1)
    if slash < 0 or slash == len(key) - 1:
        return _bucket_operation(verb, params, headers)
    return _object_operation(verb, params, headers)


def _bucket_operation(verb: str, params: dict[str, str], headers: dict[bytes, bytes]) -> str:
    if "acl" in params:
        return {"GET": "GetBucketAcl", "PUT": "PutBucketAcl"}.get(verb, f"{verb} acl")
    if "tagging" in params:
        return {"GET": "GetBucketTagging", "PUT": "PutBucketTagging",
                "DELETE": "DeleteBucketTagging"}.get(verb, f"{verb} bucket tagging")
    if "lifecycle" in params:
        return {"GET": "GetBucketLifecycleConfiguration",
                "PUT": "PutBucketLifecycleConfiguration",
                "DELETE": "DeleteBucketLifecycle"}.get(verb, f"{verb} lifecycle")
    if verb == "GET":
        for param, name in (("uploads", "ListMultipartUploads"),
                            ("location", "GetBucketLocation"),
                            ("versioning", "GetBucketVersioning"),
                            ("versions", "ListObjectVersions")):
            if param in params:
                return name
        return "ListObjectsV2" if params.get("list-type") == "2" else "ListObjects"
    if verb == "POST":
        return "DeleteObjects" if "delete" in params else "PostObject"
    return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
        verb, f"{verb} bucket")


def _object_operation(verb: str, params: dict[str, str], headers: dict[bytes, bytes]) -> str:
    upload = "uploadId" in params
    if "acl" in params:
        return {"GET": "GetObjectAcl", "PUT": "PutObjectAcl"}.get(verb, f"{verb} acl")
    if "tagging" in params:
        return {"GET": "GetObjectTagging", "PUT": "PutObjectTagging",
                "DELETE": "DeleteObjectTagging"}.get(verb, f"{verb} tagging")
    if verb == "GET":
        if "attributes" in params:
            return "GetObjectAttributes"
        return "ListParts" if upload else "GetObject"
    if verb == "HEAD":
        return "HeadObject"
    if verb == "PUT":
        copy = b"x-amz-copy-source" in headers
        if upload or "partNumber" in params:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if verb == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if upload else "POST object"
    if verb == "DELETE":
        return "AbortMultipartUpload" if upload else "DeleteObject"
    return f"{verb} object"
