"""`mkv://`: an fsspec filesystem over a cluster, so that pandas, pyarrow, dask, zarr and
anything else that opens files through fsspec reads and writes mkv keys. Registered through the
`fsspec.specs` entry point: `fsspec.filesystem("mkv", masters="host:3000,backup:3000")`, or URLs
`mkv://host:3000/some/key` (the masters from the URL).

Reads go to the volumes, not through the master: the master's redirect names the replicas
(`Location`, `Key-Volumes`), and the bytes come straight from nginx with HTTP `Range`, a replica
that fails mid-read left for the next one from where it stopped (mkv.client's `stream`). A key's
redirect is kept REDIRECT_SECONDS, so the many ranged reads of one parquet file cost one master
request; a read the replicas refuse (404 or 410: the value moved or went) drops it and asks the
master again once.

Directories are derived from `/` as object stores do: `ls` pages the master's `?list`, and jumps
over a subdirectory's keys once it has seen one (never the whole listing in memory); `mkdir` is a
no-op. A path is the key without its leading `/`. Writes are PUTs (`FileExistsError` when the key
exists) or REPLACEs with `replace=True`; `open(…, "wb")` gathers the file in a spooled temporary
file (memory up to 8 MiB, then disk) and PUTs it on close.
"""

import asyncio
import tempfile
import time
from typing import Any

import httpx
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.spec import AbstractBufferedFile

from mkv.client.aio import AsyncClient
from mkv.client.errors import KeyExists, NotFound, Unavailable
from mkv.client.sync import Client

REDIRECT_SECONDS = 5.0  # how long a key's redirect is reused before the master is asked again
LIST_PAGE = 1000
SPOOL_BYTES = 8 << 20  # `open(…, "wb")` keeps this much in memory before a temporary file


class MkvFileSystem(AsyncFileSystem):
    """fsspec's async filesystem over one mkv cluster's masters."""

    protocol = "mkv"
    root_marker = ""
    async_impl = True

    def __init__(self, masters: str = "localhost:3000", replace: bool = False,
                 timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.masters = masters
        self.replace = replace
        self.timeout = timeout
        self._client: AsyncClient | None = None
        self._reader: Client | None = None
        self._redirects: dict[str, tuple[float, httpx.Response]] = {}
        self._sizes: dict[str, int] = {}  # of keys whose redirect is kept: their volume's HEAD

    @property
    def client(self) -> AsyncClient:
        """Made on first use, on the loop fsspec runs this filesystem's calls on."""
        if self._client is None:
            self._client = AsyncClient(self.masters, timeout=self.timeout)
        return self._client

    # --- paths ---
    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        if path.startswith("mkv://"):
            path = path[len("mkv://"):].partition("/")[2]  # the netloc names the masters
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, str]:
        if path.startswith("mkv://"):
            netloc = path[len("mkv://"):].partition("/")[0]
            if netloc:
                return {"masters": netloc}
        return {}

    @staticmethod
    def _key(path: str) -> str:
        return "/" + path

    # --- reads ---
    async def _redirect(self, path: str, fresh: bool = False) -> httpx.Response:
        now = time.monotonic()
        cached = self._redirects.get(path)
        if cached is not None and not fresh and now - cached[0] < REDIRECT_SECONDS:
            return cached[1]
        try:
            redirect = await self.client.locate(self._key(path))
        except NotFound:
            self._forget(path)
            raise FileNotFoundError(path) from None
        self._sizes.pop(path, None)
        self._redirects[path] = (now, redirect)
        return redirect

    def _forget(self, path: str) -> None:
        self._redirects.pop(path, None)
        self._sizes.pop(path, None)

    @property
    def reader(self) -> Client:
        """The blocking client the volume reads run on, in threads: a read's bytes then pass
        through recv in C beside the other reads, not through this loop (measured: ranged
        reads 0.65x the floor on the loop, 1.0x in threads)."""
        if self._reader is None:
            self._reader = Client(self.masters, timeout=self.timeout)
        return self._reader

    async def _read(self, path: str, start: int, end: int | None) -> bytes:
        """Bytes `start`..`end` (inclusive); once more from a fresh redirect when the one kept
        no longer holds (the value moved or went)."""
        for fresh in (False, True):
            redirect = await self._redirect(path, fresh)
            try:
                return await asyncio.to_thread(self._read_blocking, path, start, end, redirect)
            except Unavailable:
                self._forget(path)
                if fresh:
                    raise
        raise AssertionError("unreachable")

    def _read_blocking(self, path: str, start: int, end: int | None,
                       redirect: httpx.Response) -> bytes:
        return b"".join(self.reader.stream(self._key(path), start, end, redirect))

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                        **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = (await self._info(path))["size"]
            start = size + start if start is not None and start < 0 else start
            end = size + end if end is not None and end < 0 else end
        start = start or 0
        if end is not None and end <= start:
            return b""
        last = None if end is None else end - 1  # fsspec's end is exclusive, Range's inclusive
        try:
            return await self._read(path, start, last)
        except Unavailable as e:
            if e.status == 416:  # every replica: the range starts at or past the end
                return b""
            raise

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path:
            try:
                redirect = await self._redirect(path)
            except FileNotFoundError:
                pass
            else:
                size = self._sizes.get(path)
                if size is None:
                    head = await self.client.http.head(redirect.headers["location"])
                    if head.status_code == 200:
                        size = self._sizes[path] = int(head.headers["content-length"])
                if size is not None:
                    return {"name": path, "size": size, "type": "file",
                            "md5": redirect.headers.get("content-md5"),
                            "volumes": redirect.headers.get("key-volumes", "").split(",")}
                self._forget(path)
        page = await self.client.list(self._key(path + "/" if path else ""), limit=1)
        if page.keys or not path:
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        prefix = path + "/" if path else ""
        entries: dict[str, dict[str, Any]] = {}
        start: bytes | None = b""
        while start is not None:
            page = await self.client.list(self._key(prefix), start, LIST_PAGE)
            start = page.next
            for key in page.keys:
                name = key.decode()[1:]
                child, slash, _ = name[len(prefix):].partition("/")
                if slash:
                    directory = prefix + child
                    entries.setdefault(directory, {"name": directory, "size": 0,
                                                   "type": "directory"})
                    # the rest of that directory's keys are of no more use here: skip them
                    start = ("/" + directory + "0").encode()  # "0" follows "/" in byte order
                    break
                entries[name] = {"name": name, "type": "file", "size": None}
        if not entries and path:
            await self._info(path)  # a file, or FileNotFoundError
            return [await self._info(path)] if detail else [path]
        files = [e for e in entries.values() if e["type"] == "file"]
        sizes = await asyncio.gather(*(self._info(e["name"]) for e in files)) if detail else []
        for entry, info in zip(files, sizes, strict=False):
            entry.update(info)
        listed = sorted(entries.values(), key=lambda e: e["name"])
        return listed if detail else [e["name"] for e in listed]

    async def _find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
                    detail: bool = False, **kwargs: Any) -> Any:
        if maxdepth is not None or withdirs:
            return await super()._find(path, maxdepth=maxdepth, withdirs=withdirs,
                                       detail=detail, **kwargs)
        path = self._strip_protocol(path)
        prefix = path + "/" if path else ""
        names = [key.decode()[1:] async for key in self.client.iter_keys(self._key(prefix),
                                                                         page_size=LIST_PAGE)]
        if not names and path:
            try:
                if (await self._info(path))["type"] == "file":
                    names = [path]
            except FileNotFoundError:
                pass
        if not detail:
            return names
        infos = await asyncio.gather(*(self._info(name) for name in names))
        return {info["name"]: info for info in infos}

    # --- writes ---
    async def _pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                         **kwargs: Any) -> None:
        """A PUT; a REPLACE when asked (`replace=True`, or the filesystem's `replace`) unless
        `mode="create"`, which fsspec means exclusive."""
        replace = False if mode == "create" else kwargs.get("replace")
        await self._put(self._strip_protocol(path), value, replace)

    async def _put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        with open(lpath, "rb") as f:
            await self._put(self._strip_protocol(rpath), f, kwargs.get("replace"))

    def upload(self, path: str, value: Any, replace: bool | None = None) -> None:
        """PUT (or REPLACE) `value`, bytes or a file, at `path`, from blocking code."""
        sync(self.loop, self._put, self._strip_protocol(path), value, replace)

    async def _put(self, path: str, value: Any, replace: bool | None) -> None:
        self._forget(path)
        try:
            await self.client.put(self._key(path), value,
                                  replace=self.replace if replace is None else replace)
        except KeyExists:
            raise FileExistsError(path) from None

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        self._forget(path)
        try:
            await self.client.delete(self._key(path))
        except NotFound:
            raise FileNotFoundError(path) from None

    async def _rm(self, path: str | list[str], recursive: bool = False, **kwargs: Any) -> None:
        paths = await self._expand_path(path, recursive=recursive)
        for name in paths:
            if (await self._info(name))["type"] == "file":
                await self._rm_file(name)

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Directories are the keys' `/`: nothing to make."""

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Directories are the keys' `/`: nothing to make."""

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict | None = None,
              **kwargs: Any) -> "MkvFile":
        path = self._strip_protocol(path)
        if "x" in mode:  # exclusive: the PUT at close fails too if the key comes meanwhile
            if self.exists(path):
                raise FileExistsError(path)
            mode, kwargs["replace"] = mode.replace("x", "w"), False
        return MkvFile(self, path, mode, block_size or "default", autocommit,
                       cache_options=cache_options, **kwargs)


class MkvFile(AbstractBufferedFile):
    """A key as a file: random-access reads by ranges (fsspec's block cache, `readahead` by
    default), or, written, a PUT of what was written when it is closed."""

    def __init__(self, fs: MkvFileSystem, path: str, mode: str = "rb", *args: Any,
                 **kwargs: Any) -> None:
        self.replace = kwargs.pop("replace", None)
        super().__init__(fs, path, mode, *args, **kwargs)
        self.spool = tempfile.SpooledTemporaryFile(SPOOL_BYTES) if "w" in mode else None

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start, end)

    def _initiate_upload(self) -> None:
        """Nothing to start: the PUT goes at close."""

    def _upload_chunk(self, final: bool = False) -> bool:
        self.spool.write(self.buffer.getvalue())  # type: ignore[union-attr]
        if final:
            self.spool.seek(0)  # type: ignore[union-attr]
            self.fs.upload(self.path, self.spool, self.replace)
            self.spool.close()  # type: ignore[union-attr]
        return True
