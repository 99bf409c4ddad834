"""The S3 spool: the S3 state (mkv/s3/state.py) on the master's disk beside a LevelDB index,
as small files that outlive a restart. Multipart uploads in progress with the records of their
parts, buckets made by CreateBucket, the `md5-of-md5s-N` ETags of objects that a multipart
upload completed (the index record keeps the md5 of the whole value, as for any other key), and
objects' metadata and tags.

Parts' bytes are on the volumes (mkv/s3/parts.py, which the spool is given), as the PostgreSQL
state keeps them: the master's disk holds records of a few hundred bytes, and a Complete
streams the value volume → master → volumes. Nothing here is in the index, and no part is
where a key's file is, so Go mkv's rebuild and rebalance (which walk every LevelDB key and
every volume's key directories) never meet them. A key's ETag and metadata hold while its
value has the md5 they were saved with: a value written since by anything else (Go mkv, or
mkv's native face, which also drops them through the store) does not inherit them.

    ROOT/uploads/<upload id>/upload.json   {"key": ..., "initiated": ..., "metadata": ...}
    ROOT/uploads/<upload id>/<n>.part      {"md5", "size", "location", "checksum"}: part n,
                                           where its bytes are (PartFile.location)
    ROOT/buckets/<quoted name>             a bucket; its mtime is the creation date; it
                                           holds its settings {"owner", "acl", "lifecycle"}
    ROOT/passes/<name>                     when the background pass `name` last began
    ROOT/completed/<upload id>             {"key": ..., "etag": ...}: a repeated Complete
    ROOT/etags/<sha1 of key>               {"md5": whole-value md5, "etag": "<md5s>-N",
                                            "parts": [size of each part]}
    ROOT/metadata/<sha1 of key>            {"md5": ..., "headers": [[name, value]], "tags": [...]}
"""

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from mkv.s3.parts import PartFiles, located
from mkv.s3.state import ETAG, Kept, Part, Upload, UploadBusy, UploadGone

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_SWEPT = ".swept-"  # an upload's directory a sweep claimed, by renaming it
_PART_RECORD = re.compile(r"^(\d+)\.part$")


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

    def __init__(self, root: Path, files: PartFiles, shared: bool = False) -> None:
        self.root = root
        self.files = files
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
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return found
        for entry in entries:
            m = _PART_RECORD.match(entry.name)
            if m:
                try:
                    record = json.loads(Path(entry.path).read_bytes())
                    modified = entry.stat().st_mtime
                except (OSError, ValueError):
                    continue  # replaced or removed meanwhile
                number = int(m.group(1))
                checksum = record.get("checksum")
                found[number] = Part(number, record["md5"], record["size"], modified,
                                     record["location"], tuple(checksum) if checksum else None)
        return found

    async def write_part(self, upload_id: str, number: int, chunks: AsyncIterator[bytes],
                         length: int | None, checksum: Callable[[], tuple[str, str] | None]
                         ) -> Part:
        """Stream the part to the volumes, then its record (replacing an earlier one, whose
        files then go). Writes of one part number may run together: each streams to files of
        its own, and the last to record its part wins."""
        path = self._upload_dir(upload_id)
        if path is None or not path.is_dir() or _completing(path):
            raise UploadGone(upload_id)
        written = await self.files.write(upload_id, number, chunks, length)
        part = Part(number, written.md5, written.size, time.time(), written.location,
                    checksum())
        try:
            old = self._record_part(path, upload_id, part)
        except BaseException:
            await self.files.delete(written.replicas, written.path)
            raise
        if old is not None:
            for replica, file in located(old):
                await self.files.delete([replica], file)
        return part

    @staticmethod
    def _record_part(path: Path, upload_id: str, part: Part) -> str | None:
        """Write the part's record unless a Complete holds the upload or it went; the location
        of the part it replaced, if any. No await within: a process's writers of one part
        take their turns on the loop, other processes on the record's lock."""
        try:
            held = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise UploadGone(upload_id) from None
        try:
            try:  # shared: parts go on together; a Complete's exclusive hold keeps them out
                fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadGone(upload_id) from None
            record = path / f"{part.number}.part"
            with open(path / f".lock-{part.number}", "ab") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    old = json.loads(record.read_bytes())["location"]
                except (OSError, ValueError, KeyError):
                    old = None
                _write_atomic(record, json.dumps({"md5": part.md5, "size": part.size,
                                                  "location": part.location,
                                                  "checksum": part.checksum}).encode())
            if not (path / "upload.json").exists():  # aborted or swept meanwhile
                raise UploadGone(upload_id)
            return old
        except FileNotFoundError:
            raise UploadGone(upload_id) from None
        finally:
            os.close(held)

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
            completion = SpoolCompletion(self, upload_id)
            yield completion
        finally:
            os.close(held)  # and the lock with it
        await self._remove_files(upload_id, completion.replicas)

    async def remove(self, upload_id: str) -> bool:
        """Drop an upload and its parts (abort); False if unknown."""
        path = self._upload_dir(upload_id)
        if path is not None and _completing(path):
            raise UploadBusy(upload_id)
        replicas = self._replicas_of(upload_id)
        if not self._remove(upload_id):
            return False
        await self._remove_files(upload_id, replicas)
        return True

    def _remove(self, upload_id: str) -> bool:
        path = self._upload_dir(upload_id)
        if path is None or not path.is_dir():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    def _replicas_of(self, upload_id: str) -> set[str]:
        """The replicas any recorded part of the upload is on."""
        path = self._upload_dir(upload_id)
        return set() if path is None else self._replicas_in(path)

    @staticmethod
    def _replicas_in(path: Path) -> set[str]:
        replicas: set[str] = set()
        for record in path.glob("*.part"):
            try:
                replicas.update(r for r, _ in located(json.loads(record.read_bytes())[
                    "location"]))
            except (OSError, ValueError, KeyError):
                continue
        return replicas

    async def _remove_files(self, upload_id: str, replicas: set[str]) -> None:
        if replicas:
            await self.files.remove_upload(upload_id, replicas)

    def finish(self, upload_id: str, key: bytes, etag: str) -> set[str]:
        """Remember the upload as completed into `key` (a repeated Complete answers the same)
        and drop its records; the replicas its parts' files are on, to delete them."""
        self.completed_dir.mkdir(parents=True, exist_ok=True)
        done = {"key": key.decode("utf-8", "surrogateescape"), "etag": etag}
        _write_atomic(self.completed_dir / upload_id, json.dumps(done).encode())
        replicas = self._replicas_of(upload_id)
        self._remove(upload_id)
        return replicas

    async def completed(self, upload_id: str) -> tuple[bytes, str] | None:
        if not _UPLOAD_ID.match(upload_id):
            return None
        try:
            done = json.loads((self.completed_dir / upload_id).read_bytes())
        except (OSError, ValueError):
            return None
        return done["key"].encode("utf-8", "surrogateescape"), done["etag"]

    async def sweep(self, ttl: float, now: float) -> list[str]:
        """Remove uploads with no activity for `ttl` seconds, their parts' files with them,
        the answers of completed ones as old, and directories of parts on the volumes no
        upload here knows (a master stopped between a part's files and its record); the ids
        of the uploads removed."""
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
            left = name.startswith(_SWEPT)  # a sweep that stopped half-way
            if not left and (now - latest <= ttl or _completing(path)):
                continue
            claimed = path if left else self.uploads_dir / f"{_SWEPT}{name}"
            try:  # one sweeper of the -workers claims it
                os.rename(path, claimed)
            except OSError:
                continue
            replicas = self._replicas_in(claimed)
            shutil.rmtree(claimed, ignore_errors=True)
            upload_id = name.removeprefix(_SWEPT)
            await self._remove_files(upload_id, replicas)
            removed.append(upload_id)
        for upload_id, replicas in (await self.files.uploads_older_than(ttl, now)).items():
            if upload_id not in removed and not (self.uploads_dir / upload_id).exists():
                await self._remove_files(upload_id, set(replicas))
                removed.append(upload_id)
        return removed

    def read(self, parts: list[Part]) -> AsyncIterator[bytes]:
        return self.files.read([part.location for part in parts])

    # --- buckets ---
    def _bucket_file(self, name: str) -> Path:
        return self.buckets_dir / quote(name, safe="")

    async def make_bucket(self, name: str, settings: dict) -> bool:
        self.buckets_dir.mkdir(parents=True, exist_ok=True)
        path = self._bucket_file(name)
        tmp = _written(path, json.dumps(settings).encode())
        try:  # made whole (settings and all) or not at all: the first of two makers wins
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

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
                return {unquote(e.name): e.stat().st_mtime for e in entries
                        if not e.name.startswith(".")}
        except FileNotFoundError:
            return {}

    def _settings(self, path: Path) -> dict | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            return json.loads(data) if data else {}
        except ValueError:
            return {}

    async def bucket_settings(self, name: str | None = None) -> dict[str, dict]:
        names = [name] if name is not None else list(await self.buckets())
        found = {n: self._settings(self._bucket_file(n)) for n in names}
        return {n: settings for n, settings in found.items() if settings is not None}

    async def set_bucket_setting(self, name: str, field: str, value: object) -> bool:
        self.buckets_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.buckets_dir / ".lock"):  # -workers: each field set stays
            path = self._bucket_file(name)
            try:
                created = path.stat().st_mtime
            except FileNotFoundError:
                return False
            settings = self._settings(path) or {}
            if value is None:
                settings.pop(field, None)
            else:
                settings[field] = value
            _write_atomic(path, json.dumps(settings).encode(), mtime=created)
        return True

    async def claim_pass(self, name: str, every: float, now: float) -> bool:
        passes = self.root / "passes"
        passes.mkdir(parents=True, exist_ok=True)
        with _locked(passes / ".lock"):
            path = passes / quote(name, safe="")
            try:
                started = float(path.read_text())
            except (OSError, ValueError):
                started = float("-inf")
            if started > now - every:
                return False
            _write_atomic(path, repr(now).encode())
        return True

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
        self.replicas: set[str] = set()  # where its parts' files are, once finished

    async def finish(self, key: bytes, etag: str) -> None:
        self.replicas = self.spool.finish(self.upload_id, key, etag)


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


def _written(path: Path, data: bytes, mtime: float | None = None) -> Path:
    """A temporary file beside `path` holding `data`, to be renamed or linked there."""
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    return tmp


def _write_atomic(path: Path, data: bytes, mtime: float | None = None) -> None:
    os.replace(_written(path, data, mtime), path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (made if missing), for a read-modify-write among
    -workers. Held only over a few file operations."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
