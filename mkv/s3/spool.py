"""The S3 spool: the S3 state (mkv/s3/state.py) on the master's disk beside a LevelDB index,
as plain files that outlive a restart. Multipart uploads in progress with their parts, buckets
made by CreateBucket, the `md5-of-md5s-N` ETags of objects that a multipart upload completed
(the index record keeps the md5 of the whole value, as for any other key), and objects'
metadata and tags.

Nothing here is in the index or on the volumes, so Go mkv's rebuild and rebalance (which walk
every LevelDB key and every volume file) never meet it. A key's ETag and metadata hold while
its value has the md5 they were saved with: a value written since by anything else (Go mkv,
or mkv's native face, which also drops them through the store) does not inherit them.

    ROOT/uploads/<upload id>/upload.json   {"key": ..., "initiated": ..., "metadata": ...}
    ROOT/uploads/<upload id>/<n>.<md5>     part n, named by its md5 so data and ETag land as one
    ROOT/uploads/<upload id>/.tmp-*        a part being received
    ROOT/buckets/<quoted name>             a bucket; its mtime is the creation date
    ROOT/completed/<upload id>             {"key": ..., "etag": ...}: a repeated Complete
    ROOT/etags/<sha1 of key>               {"md5": whole-value md5, "etag": "<md5s>-N",
                                            "parts": [size of each part]}
    ROOT/metadata/<sha1 of key>            {"md5": ..., "headers": [[name, value]], "tags": [...]}
"""

import asyncio
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from mkv.s3.state import ETAG, Kept, Part, Upload, UploadBusy, UploadGone

READ_SIZE = 1 << 20  # bytes read from a part file at a time when completing an upload
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_PART_FILE = re.compile(r"^(\d+)\.([0-9a-f]{32})$")


class PerKey:
    """Small JSON documents, one per key, each valid while the key's value has the md5 it was
    saved with. In a master of one process, which keys have one is read once, so a key without
    costs a set lookup; among -workers, who may each write one, every load opens its file."""

    def __init__(self, root: Path, shared: bool) -> None:
        self.root = root
        self.shared = shared
        self._names: set[str] | None = None

    @staticmethod
    def _name(key: bytes) -> str:
        return hashlib.sha1(key).hexdigest()

    def _known(self) -> set[str]:
        if self._names is None:
            try:
                self._names = set(os.listdir(self.root))
            except FileNotFoundError:
                self._names = set()
        return self._names

    def save(self, key: bytes, md5: str | None, document: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = self._name(key)
        _write_atomic(self.root / name, json.dumps({**document, "md5": md5}).encode())
        self._known().add(name)

    def load(self, key: bytes, md5: str | None) -> dict | None:
        """The key's document, if its value is still the one it was saved with."""
        name = self._name(key)
        if not self.shared and name not in self._known():
            return None
        try:
            saved = json.loads((self.root / name).read_bytes())
        except (OSError, ValueError):
            return None
        return saved if saved.get("md5") == md5 else None

    def forget(self, key: bytes) -> None:
        name = self._name(key)
        if self.shared or name in self._known():
            (self.root / name).unlink(missing_ok=True)
            self._known().discard(name)


class Spool:
    """The S3 state in a directory: one master's, shared by its -workers (`shared`). A
    Complete holds its upload's directory locked (flock), which parts and aborts check."""

    def __init__(self, root: Path, shared: bool = False) -> None:
        self.root = root
        self.uploads_dir = root / "uploads"
        self.buckets_dir = root / "buckets"
        self.completed_dir = root / "completed"
        self.etags = PerKey(root / "etags", shared)
        self.metadata = PerKey(root / "metadata", shared)

    # --- multipart uploads ---
    def _upload_dir(self, upload_id: str) -> Path | None:
        return self.uploads_dir / upload_id if _UPLOAD_ID.match(upload_id) else None

    async def create(self, key: bytes, metadata: dict) -> Upload:
        upload = Upload(secrets.token_hex(16), key, time.time(), metadata)
        path = self.uploads_dir / upload.id
        path.mkdir(parents=True)
        meta = {"key": key.decode("utf-8", "surrogateescape"), "initiated": upload.initiated,
                "metadata": metadata}
        _write_atomic(path / "upload.json", json.dumps(meta).encode())
        return upload

    async def get(self, upload_id: str) -> Upload | None:
        return self._get(upload_id)

    def _get(self, upload_id: str) -> Upload | None:
        path = self._upload_dir(upload_id)
        if path is None:
            return None
        try:
            meta = json.loads((path / "upload.json").read_bytes())
        except (OSError, ValueError):
            return None
        return Upload(upload_id, meta["key"].encode("utf-8", "surrogateescape"),
                      meta["initiated"], meta.get("metadata", {}))

    async def uploads(self, prefix: bytes) -> list[Upload]:
        try:
            names = os.listdir(self.uploads_dir)
        except FileNotFoundError:
            return []
        return [u for u in map(self._get, names) if u is not None and u.key.startswith(prefix)]

    async def parts(self, upload_id: str) -> dict[int, Part]:
        path = self._upload_dir(upload_id)
        found: dict[int, Part] = {}
        if path is None:
            return found
        with os.scandir(path) as entries:
            for entry in entries:
                m = _PART_FILE.match(entry.name)
                if m:
                    st = entry.stat()
                    found[int(m.group(1))] = Part(int(m.group(1)), m.group(2), st.st_size,
                                                  st.st_mtime, entry.path)
        return found

    async def write_part(self, upload_id: str, number: int, chunks: AsyncIterator[bytes],
                         length: int | None) -> Part:
        """Receive a part into a temp file, then rename it into place with its md5 in the
        name; a part sent again replaces the earlier one. The caller serialises writes of
        one part number."""
        path = self._upload_dir(upload_id)
        if path is None or not path.is_dir() or _completing(path):
            raise UploadGone(upload_id)
        tmp = path / f".tmp-{number}-{secrets.token_hex(4)}"
        digest = hashlib.md5()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            final = path / f"{number}.{digest.hexdigest()}"
            os.replace(tmp, final)
        except FileNotFoundError:
            raise UploadGone(upload_id) from None
        finally:
            tmp.unlink(missing_ok=True)
        for other in path.glob(f"{number}.*"):
            if other != final:
                other.unlink(missing_ok=True)
        return Part(number, digest.hexdigest(), size, time.time(), str(final))

    @asynccontextmanager
    async def completing(self, upload_id: str) -> AsyncIterator["SpoolCompletion"]:
        path = self._upload_dir(upload_id)
        if path is None or self._get(upload_id) is None:
            raise UploadGone(upload_id)
        try:
            held = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise UploadGone(upload_id) from None
        try:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadBusy(upload_id) from None
            yield SpoolCompletion(self, upload_id)
        finally:
            os.close(held)  # and the lock with it

    async def remove(self, upload_id: str) -> bool:
        """Drop an upload and its parts (abort); False if unknown."""
        path = self._upload_dir(upload_id)
        if path is not None and _completing(path):
            raise UploadBusy(upload_id)
        return self._remove(upload_id)

    def _remove(self, upload_id: str) -> bool:
        path = self._upload_dir(upload_id)
        if path is None or not path.is_dir():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    def finish(self, upload_id: str, key: bytes, etag: str) -> None:
        """Remember the upload as completed into `key` (a repeated Complete answers the same)
        and drop its parts."""
        self.completed_dir.mkdir(parents=True, exist_ok=True)
        done = {"key": key.decode("utf-8", "surrogateescape"), "etag": etag}
        _write_atomic(self.completed_dir / upload_id, json.dumps(done).encode())
        self._remove(upload_id)

    async def completed(self, upload_id: str) -> tuple[bytes, str] | None:
        if not _UPLOAD_ID.match(upload_id):
            return None
        try:
            done = json.loads((self.completed_dir / upload_id).read_bytes())
        except (OSError, ValueError):
            return None
        return done["key"].encode("utf-8", "surrogateescape"), done["etag"]

    async def sweep(self, ttl: float, now: float) -> list[str]:
        """Remove uploads with no activity for `ttl` seconds, and the answers of completed
        ones as old; the ids of the uploads removed."""
        removed = []
        try:
            names = os.listdir(self.uploads_dir)
        except FileNotFoundError:
            names = []
        for done in self.completed_dir.glob("*"):
            try:
                if now - done.stat().st_mtime > ttl:
                    done.unlink()
            except OSError:
                continue
        for name in names:
            path = self.uploads_dir / name
            try:
                latest = max([path.stat().st_mtime] +
                             [e.stat().st_mtime for e in os.scandir(path)])
            except OSError:
                continue
            if now - latest > ttl:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        return removed

    @staticmethod
    async def read(parts: list[Part]) -> AsyncIterator[bytes]:
        """The parts' bytes in order, read off the event loop a block at a time."""
        for part in parts:
            with open(part.location, "rb") as f:
                while block := await asyncio.to_thread(f.read, READ_SIZE):
                    yield block

    # --- buckets ---
    def _bucket_file(self, name: str) -> Path:
        return self.buckets_dir / quote(name, safe="")

    async def make_bucket(self, name: str) -> None:
        self.buckets_dir.mkdir(parents=True, exist_ok=True)
        self._bucket_file(name).touch(exist_ok=True)

    async def bucket_created(self, name: str) -> float | None:
        try:
            return self._bucket_file(name).stat().st_mtime
        except OSError:
            return None

    async def remove_bucket(self, name: str) -> bool:
        try:
            self._bucket_file(name).unlink()
        except FileNotFoundError:
            return False
        return True

    async def buckets(self) -> dict[str, float]:
        try:
            with os.scandir(self.buckets_dir) as entries:
                return {unquote(e.name): e.stat().st_mtime for e in entries}
        except FileNotFoundError:
            return {}

    # --- per-key documents ---
    def _documents(self, kind: str) -> PerKey:
        return self.etags if kind == ETAG else self.metadata

    async def kept(self, key: bytes, md5: str | None) -> Kept:
        return Kept(self.etags.load(key, md5) if md5 else None, self.metadata.load(key, md5))

    async def multipart_etags(self, records: dict[bytes, str | None]) -> dict[bytes, str]:
        found = {key: self.etags.load(key, md5) for key, md5 in records.items() if md5}
        return {key: document["etag"] for key, document in found.items() if document}

    async def keep(self, kind: str, key: bytes, md5: str | None, document: dict) -> None:
        self._documents(kind).save(key, md5, document)

    async def drop(self, kind: str, key: bytes) -> None:
        self._documents(kind).forget(key)

    def forget(self, key: bytes) -> None:
        """The key's value is being replaced or removed: its ETag and metadata go with it."""
        self.etags.forget(key)
        self.metadata.forget(key)

    async def close(self) -> None:
        pass


class SpoolCompletion:
    def __init__(self, spool: Spool, upload_id: str) -> None:
        self.spool, self.upload_id = spool, upload_id

    async def finish(self, key: bytes, etag: str) -> None:
        self.spool.finish(self.upload_id, key, etag)


def _completing(upload: Path) -> bool:
    """Whether a Complete (of any process) holds the upload's directory."""
    try:
        fd = os.open(upload, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
