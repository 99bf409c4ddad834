"""S3's error answers: the exception a handler raises, the common ones, and 304 Not Modified."""

class S3Error(Exception):
    """An S3 error answer: status, S3's code and message, and elements to add to <Error>."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def no_such_key(key: bytes) -> S3Error:
    return S3Error(404, "NoSuchKey", "The specified key does not exist.",
                   Key=object_name(key))


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error(404, "NoSuchBucket", "The specified bucket does not exist",
                   BucketName=bucket)


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(404, "NoSuchUpload", "The specified multipart upload does not exist. The "
                   "upload ID might be invalid, or it might have been aborted or completed.",
                   UploadId=upload_id)


def precondition_failed(condition: str) -> S3Error:
    return S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you "
                   "specified did not hold", Condition=condition)


def busy(key: bytes) -> S3Error:
    return S3Error(409, "OperationAborted", "A conflicting operation is in progress on this "
                   "key; try again.", Key=object_name(key))




def object_name(key: bytes) -> str:
    """The S3 key of mkv key `/bucket/name`: `name`."""
    return key.split(b"/", 2)[2].decode("utf-8", "replace") if key.count(b"/") >= 2 else ""


class NotModified(Exception):
    def __init__(self, etag: str, modified: float) -> None:
        super().__init__(etag)
        self.etag = etag
        self.modified = modified
