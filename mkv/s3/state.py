"""What the S3 face keeps beside the index, behind one interface: multipart uploads with their
parts, bucket markers, the answers of completed uploads, and per-key documents (the
`md5-of-md5s-N` ETag of a value a multipart upload completed, an object's metadata and tags).

Two engines, picked by the index's (mkv/s3/face.py): the spool, files in a directory on the
master's disk (mkv/s3/spool.py, beside a LevelDB index), and PostgreSQL tables beside a
PostgreSQL index, their parts' bytes on the volumes (mkv/s3/pgstate.py), which every master
over that database shares. Awaitable throughout, as the index is. A per-key document holds
while the key's value has the md5 it was saved with.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple, Protocol

ETAG, METADATA = "etag", "metadata"  # the kinds of per-key document


class Upload(NamedTuple):
    id: str
    key: bytes
    initiated: float
    metadata: dict  # what CreateMultipartUpload asked for: applied at Complete


class Part(NamedTuple):
    number: int
    md5: str
    size: int
    modified: float
    location: str  # where its bytes are, as the engine that wrote it names it
    checksum: tuple[str, str] | None = None  # the x-amz-checksum-* it was sent with, checked


class Kept(NamedTuple):
    """A key's documents, valid for its value now (None: it has none)."""

    multipart: dict | None  # {"etag": "<md5s>-N", "parts": [size of each part]}
    metadata: dict | None  # {"headers": [[name, value]], "tags": [[key, value]], and a
    #                         "checksum": {"algorithm", "type", "value", "parts"} if sent}


class UploadGone(Exception):
    """The upload was aborted, completed or swept (or is completing) while a part was being
    written: NoSuchUpload."""


class UploadBusy(Exception):
    """Another Complete of the upload is running: the caller answers 409."""


class Completion(Protocol):
    async def finish(self, key: bytes, etag: str) -> None:
        """The upload completed into `key`: its parts go, its answer stays for a repeat."""


class S3State(Protocol):
    # --- multipart uploads ---
    async def create(self, key: bytes, metadata: dict) -> Upload: ...

    async def get(self, upload_id: str) -> Upload | None: ...

    async def uploads(self, prefix: bytes) -> list[Upload]:
        """The uploads in progress whose key starts with `prefix`."""

    async def parts(self, upload_id: str) -> dict[int, Part]: ...

    async def write_part(self, upload_id: str, number: int, chunks: AsyncIterator[bytes],
                         length: int | None, checksum: Callable[[], tuple[str, str] | None]
                         ) -> Part:
        """Receive a part (streamed; `length` when known); a part sent again replaces the
        earlier one: writes of one part number may run together, the last to finish wins.
        `checksum` gives the (algorithm, value) the body was checked against, once read.
        Raises UploadGone."""

    def completing(self, upload_id: str) -> AbstractAsyncContextManager[Completion]:
        """Hold the upload while its Complete runs (across masters where shared): no part
        is written and no abort runs meanwhile. Raises UploadBusy, or UploadGone."""

    async def remove(self, upload_id: str) -> bool:
        """Abort: drop an upload and its parts; False if unknown. Raises UploadBusy."""

    async def completed(self, upload_id: str) -> tuple[bytes, str] | None:
        """The key and ETag of an upload completed within -s3_upload_ttl."""

    def read(self, parts: list[Part]) -> AsyncIterator[bytes]:
        """The parts' bytes in order, streamed."""

    async def sweep(self, ttl: float, now: float) -> list[str]:
        """Remove uploads idle for `ttl` seconds, and completed answers as old; the ids of
        the uploads removed."""

    # --- buckets ---
    async def make_bucket(self, name: str, settings: dict) -> bool:
        """Make the bucket's marker with its settings; False (nothing changed) if there."""

    async def bucket_created(self, name: str) -> float | None: ...

    async def remove_bucket(self, name: str) -> bool: ...

    async def buckets(self) -> dict[str, float]: ...

    async def bucket_settings(self, name: str | None = None) -> dict[str, dict]:
        """The settings of each bucket made by CreateBucket (`name`: of that one alone), by
        field: "owner", "acl", "lifecycle"."""

    async def set_bucket_setting(self, name: str, field: str, value: object) -> bool:
        """Set one field of a bucket's settings (None removes it); False if no marker."""

    async def claim_pass(self, name: str, every: float, now: float) -> bool:
        """Whether this master runs the background pass `name` now: True for one caller
        (across masters where shared) when the last claimed pass began `every` seconds ago."""

    # --- per-key documents ---
    async def kept(self, key: bytes, md5: str | None) -> Kept:
        """The key's documents valid for a value of `md5` (the S3 GET's one look-up)."""

    async def multipart_etags(self, records: dict[bytes, str | None]) -> dict[bytes, str]:
        """Of the keys (key → md5 of its value), the multipart ETags of those with one."""

    async def keep(self, kind: str, key: bytes, md5: str | None, document: dict) -> None: ...

    async def drop(self, kind: str, key: bytes) -> None: ...

    def forget(self, key: bytes) -> Awaitable[None] | None:
        """The key's value is being replaced or removed (Store.on_change): its documents go.
        What to await, if anything, started already."""

    async def close(self) -> None: ...
