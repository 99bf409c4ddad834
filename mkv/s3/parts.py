"""Multipart parts' bytes on the volumes, for the S3 state every master shares
(mkv/s3/pgstate.py keeps their rows; this module keeps their files).

A part is at `http://<replica>/s3-parts/<upload id>/<n>.<token>` on -replicas volumes, placed
as a key named `s3-parts/<upload id>/<n>` would be (around volumes down), streamed as a key's
value is. No key's path is there (a key's is `[/svXX]/<2 hex>/<2 hex>/<base64>`), and rebuild,
verify, repair and rebalance, ours and Go mkv's, walk only those directories. A file that
cannot be deleted now (its volume down) is left to the sweep, which finds upload directories
by listing the volumes.

An S3 write's value is staged here too, in the directory `staged`, until the store renames it
into its key's place (`stage`, `Store.commit`).
"""

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import NamedTuple

from mkv.http.client import VolumeError
from mkv.s3.request import parse_http_date
from mkv.store import Store
from mkv.volumes.health import asked_last, volume_of

log = logging.getLogger("mkv")

PARTS = "s3-parts"  # the volumes' directory of parts, beside the layout's
STAGED = "staged"  # the directory, beside the uploads', of S3 writes' values to be committed
STAGED_GRACE = 3600.0  # seconds before the sweep takes a staged value a crash left behind


class PartFile(NamedTuple):
    """A part's bytes, written whole on each of `replicas` as `file` in its upload's
    directory."""

    upload_id: str
    replicas: list[str]
    file: str
    md5: str
    size: int

    @property
    def path(self) -> str:
        return part_path(self.upload_id, self.file)

    @property
    def location(self) -> str:
        return location(self.replicas, self.path)


def part_path(upload_id: str, file: str = "") -> str:
    """Where a part's file (or, without `file`, an upload's directory) is on a replica."""
    return f"/{PARTS}/{upload_id}/{file}"


def location(replicas: list[str], path: str) -> str:
    """A part's copies as one string: each replica's URL, space-separated."""
    return " ".join(replica + path for replica in replicas)


def located(where: str) -> list[tuple[str, str]]:
    """(replica, path) of each copy `location` named."""
    found = []
    for url in where.split(" "):
        replica, _, rest = url.partition(f"/{PARTS}/")
        found.append((replica, f"/{PARTS}/{rest}"))
    return found


class PartFiles:
    """Writes, reads and deletes parts' files on the store's volumes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.volumes = store.volumes

    async def write(self, upload_id: str, number: int, chunks: AsyncIterator[bytes],
                    length: int | None) -> PartFile:
        """Stream a part to its replicas under a name of its own (so a part sent again does
        not overwrite the one a reader may be reading); on any failure its files go."""
        replicas = await self.store.write_placement(f"{PARTS}/{upload_id}/{number}".encode())
        return await self._write(replicas, upload_id, f"{number}.{secrets.token_hex(8)}",
                                 chunks, length)

    async def stage(self, replicas: list[str], chunks: AsyncIterator[bytes],
                    length: int | None) -> PartFile:
        """A value streamed whole to `replicas` under a name of its own in the directory
        STAGED, for the store to rename into a key's place (`Store.commit`); on any failure
        its files go. One a crash left behind goes with the directory, which the sweep takes
        once nothing has come or gone there for STAGED_GRACE."""
        return await self._write(replicas, STAGED, secrets.token_hex(16), chunks, length)

    async def _write(self, replicas: list[str], directory: str, file: str,
                     chunks: AsyncIterator[bytes], length: int | None) -> PartFile:
        path = part_path(directory, file)
        counted = _Counted(chunks)
        try:
            md5 = await self.volumes.write(replicas, path, counted, length, md5=True)
        except BaseException:
            await self.delete(replicas, path)
            raise
        return PartFile(directory, replicas, file, md5 or "", counted.size)

    async def read(self, locations: list[str]) -> AsyncIterator[bytes]:
        """Each part's bytes in turn, from the first of its replicas that answers (those on
        volumes down last); a replica that fails before its first byte gives way to the next."""
        for where in locations:
            async with aclosing(self._read_one(where)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _read_one(self, where: str) -> AsyncIterator[bytes]:
        copies = dict(located(where))
        problems = []
        for replica in asked_last(list(copies), self.volumes.health.down):
            try:
                response = await self.volumes.get_at(replica, copies[replica])
            except VolumeError as e:
                problems.append(str(e))
                continue
            if response.status != 200:
                response.body.abort()  # type: ignore[union-attr]
                problems.append(f"{replica}: status {response.status}")
                continue
            async with aclosing(self.volumes.chunks(response)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        raise VolumeError(f"no replica gave {where}: {'; '.join(problems)}")

    async def delete(self, replicas: list[str], path: str) -> None:
        """One part's files; those on volumes down or failing are left to the sweep."""
        down = self.volumes.health.down
        for replica in replicas:
            if volume_of(replica) in down:
                continue
            try:
                await self.volumes.delete_path(replica, path)
            except VolumeError as e:
                log.warning("S3: deleting the part %s from %s failed: %s", path, replica, e)

    async def remove_upload(self, upload_id: str, replicas: set[str]) -> None:
        """The upload's directory of parts on each replica (a directory's DELETE takes all
        below it); one that fails is left to the sweep."""
        for replica in replicas:
            try:
                await self.volumes.delete_path(replica, part_path(upload_id))
            except VolumeError as e:
                log.warning("S3: deleting the parts of upload %s from %s failed: %s",
                            upload_id, replica, e)

    async def uploads_older_than(self, ttl: float, now: float) -> dict[str, list[str]]:
        """Upload directories untouched for `ttl` seconds, with the replicas each is on."""
        found: dict[str, list[str]] = {}
        for replica in await self._replicas():
            hostport, _, subvolume = replica.partition("/")
            prefix = f"/{subvolume}" if subvolume else ""
            for entry in await self.volumes.list_dir(hostport, f"{prefix}/{PARTS}/"):
                modified = parse_http_date(entry.get("mtime")) or now
                # a staged value may wait its turn at its key for longer than a short ttl
                age = max(ttl, STAGED_GRACE) if entry["name"] == STAGED else ttl
                if entry.get("type") == "directory" and now - modified > age:
                    found.setdefault(entry["name"], []).append(replica)
        return found

    async def _replicas(self) -> list[str]:
        """Every volume and subvolume directory there is (parts may be in any)."""
        replicas = []
        for volume in self.store.config.volumes:
            if volume in self.volumes.health.down:
                continue
            replicas.append(volume)
            try:
                top = await self.volumes.list_dir(volume, "/")
            except VolumeError:
                continue
            replicas += [f"{volume}/{e['name']}" for e in top if e.get("type") == "directory"
                         and e["name"].startswith("sv")]
        return replicas


class _Counted:
    """The chunks passed through, their bytes counted."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.size += len(chunk)
            yield chunk
