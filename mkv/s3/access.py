"""Who may do what through S3: the permission model over the ACLs of mkv/s3/acl.py.

With `-s3_keys`, each access key owns the buckets it creates (the owner kept with the bucket's
settings in the S3 state) and every object in them. The owner may do anything; anyone else,
an access key or an anonymous request, only what the ACLs grant: the bucket's for listing
(READ) and for writing, overwriting and deleting objects (WRITE), the object's for reading it
(READ). An object written through S3 has an ACL (`private` unless the write asked otherwise);
one written through the native face, or before ACLs were kept, follows its bucket's ACL. A
bucket with no owner (made before owners were kept, or only by writing keys) belongs to every
access key, as all did before. Without keys nothing is checked: every request may do anything.

A bucket's settings are cached for CACHE_SECONDS: another master (over PostgreSQL) sees an
ACL changed here within that time.
"""

import time

from mkv.index import Index
from mkv.record import State
from mkv.s3.errors import S3Error
from mkv.s3.grants import ANONYMOUS_OWNER, READ, READ_ACP, Grant, allows, private
from mkv.s3.state import S3State

CACHE_SECONDS = 1.0
OWNER = "OWNER"  # not an ACL permission: what only the bucket's owner may do


def access_denied() -> S3Error:
    return S3Error(403, "AccessDenied", "Access Denied")


class Access:
    """The checks of the permission model, over the S3 state's bucket settings and objects'
    metadata, for the access keys of `-s3_keys` (none: nothing checked)."""

    def __init__(self, index: Index, state: S3State, keys: set[str]) -> None:
        self.index = index
        self.state = state
        self.keys = keys
        self._cached: dict[str, tuple[float, dict | None]] = {}

    @property
    def enforced(self) -> bool:
        return bool(self.keys)

    async def settings(self, bucket: str) -> dict | None:
        """The bucket's settings (None: no marker), at most CACHE_SECONDS old."""
        now = time.monotonic()
        cached = self._cached.get(bucket)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        settings = (await self.state.bucket_settings(bucket)).get(bucket)
        if len(self._cached) > 10_000:
            self._cached.clear()
        self._cached[bucket] = (now, settings)
        return settings

    def changed(self, bucket: str) -> None:
        """The bucket's settings changed here: read them again next time."""
        self._cached.pop(bucket, None)

    @staticmethod
    def owner(settings: dict | None) -> str:
        """The owner to show: the access key that made the bucket."""
        return (settings or {}).get("owner") or ANONYMOUS_OWNER

    def owns(self, caller: str | None, settings: dict | None) -> bool:
        if not self.enforced:
            return True
        owner = (settings or {}).get("owner")
        return caller is not None and (owner is None or owner == caller)

    async def check_bucket(self, caller: str | None, bucket: str, permission: str) -> None:
        """403 unless `caller` may act on the bucket with `permission` (OWNER: as its
        owner)."""
        if not self.enforced:
            return
        settings = await self.settings(bucket)
        if self.owns(caller, settings):
            return
        if permission != OWNER and allows((settings or {}).get("acl", []), caller, permission):
            return
        if permission in (READ, READ_ACP) and settings is None and await self._gone(bucket):
            return  # a read of no bucket at all is told so: NoSuchBucket, as on S3
        raise access_denied()

    async def _gone(self, bucket: str) -> bool:
        """Whether the bucket has no marker (the caller knows) and no live key."""
        async for _, record in self.index.items(f"/{bucket}/".encode()):
            if record.state is State.LIVE:
                return False
        return True

    async def object_grants(self, bucket: str, key: bytes
                            ) -> tuple[dict | None, list[Grant], bool]:
        """The bucket's settings, the grants that rule the object at `key` (its own ACL, or
        its bucket's), and whether the object is there."""
        settings = await self.settings(bucket)
        bucket_grants = (settings or {}).get("acl", private())
        record = await self.index.get(key)
        if record is None or record.state is not State.LIVE:
            return settings, bucket_grants, False
        metadata = (await self.state.kept(key, record.md5)).metadata
        if metadata is None or "acl" not in metadata:
            return settings, bucket_grants, True
        return settings, metadata["acl"], True

    async def check_object(self, caller: str | None, bucket: str, key: bytes,
                           permission: str) -> None:
        """403 unless `caller` may act on the object with `permission`. Of an object not
        there, whoever may list the bucket may learn so (a 404 follows)."""
        if not self.enforced:
            return
        settings = await self.settings(bucket)
        if self.owns(caller, settings):
            return
        if permission in (READ, READ_ACP) and settings is None and await self._gone(bucket):
            return  # NoSuchBucket, as on S3
        settings, grants, there = await self.object_grants(bucket, key)
        if allows(grants, caller, permission):
            return
        if permission == READ and not there \
                and allows((settings or {}).get("acl", []), caller, READ):
            return
        raise access_denied()

    async def visible_buckets(self, caller: str | None, names: list[str]) -> list[str]:
        """Of `names`, the buckets ListBuckets shows the caller: those it owns."""
        if not self.enforced:
            return names
        settings = await self.state.bucket_settings()
        return [name for name in names if self.owns(caller, settings.get(name))]
