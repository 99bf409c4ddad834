"""What each request to the master means: SPEC §4's table as code, and the server's lifecycle."""

import asyncio
import json
import logging
import random
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from functools import lru_cache
from urllib.parse import parse_qs, unquote_to_bytes

import uvloop

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.http.flow import Body, ClientGone
from mkv.http.server import HTTPServer, Pending, Request, Response
from mkv.index import Index
from mkv.ops.rebalance import RebalanceError, rebalance_key
from mkv.placement import key2path, storable
from mkv.record import Record, State
from mkv.s3.face import S3, is_s3
from mkv.security import signed_location
from mkv.volumes import Volumes

log = logging.getLogger("mkv")

LIST_MAX = 1_000_000  # keys in one listing without a limit
PLACEMENT_CACHE = 1 << 16  # keys whose placement and path a GET remembers
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
EXTRA_METHODS = (b"REPLACE", b"RELINK", b"REBALANCE")  # mkv's own, unknown to llhttp
_LISTINGS = {b"list": State.LIVE, b"unlinked": State.UNLINKED, b"writing": State.WRITING}


NOT_FOUND = Response(404, [("Content-Length", "0")])
GONE = Response(410, [("Content-Length", "0")])


def text(status: int, reason: str = "") -> Response:
    """A short plain answer; the body says why when the status alone does not."""
    body = f"{reason}\n".encode() if reason else b""
    return Response(status, [("Content-Type", "text/plain")] if body else [], body)


def parse_key(path: bytes) -> bytes | str:
    """The key a request path names, or why it names none."""
    if path[:1] != b"/":  # absolute-form (http://host/k) and asterisk-form (*) targets
        return "the request target must be a path"
    if path.isascii() and b"%" not in path and b"/." not in path and b"\x00" not in path:
        return path  # the common case, checked in one pass each
    if b"%" in path:
        if _BAD_PERCENT.search(path):
            return "invalid percent-encoding in the key"
        path = unquote_to_bytes(path)
    if b"\x00" in path:
        return "NUL byte in the key"
    try:
        path.decode()
    except UnicodeDecodeError:
        return "the key is not valid UTF-8"
    if any(part in (b".", b"..") for part in path.split(b"/")):
        return "'.' and '..' are not allowed as key segments"
    return path


async def _chain(first: bytes, body: Body) -> AsyncIterator[bytes]:
    yield first
    async for chunk in body:
        yield chunk


class _CheckedRedirect:
    """Asks replicas in turn whether they have the file; resolves to the redirect to the
    first that does, or 410. Callbacks rather than a coroutine: a task per GET cost ~5%
    of the master's CPU in the existing-key benchmark (bench/)."""

    __slots__ = ("master", "path", "order", "headers", "replica", "answer")

    def __init__(self, master: "Master", path: str, order: list[str],
                 headers: list[tuple[str, str]]) -> None:
        self.master = master
        self.path = path
        self.order = order
        self.headers = headers
        self.replica = ""
        self.answer = Pending()

    def ask(self) -> None:
        self.replica = self.order.pop()
        self.master.volumes.ask_exists(self.replica, self.path, self.master.config.voltimeout,
                                       self.answered)

    def answered(self, found: bool) -> None:
        if found:
            self.answer.resolve(self.master.redirect(self.replica, self.path, self.headers))
        elif self.order:
            self.ask()
        else:
            self.answer.resolve(GONE)


class Master:
    """The request handler: one index, one pool of volume connections, a lock per busy key."""

    def __init__(self, config: Config, index: Index, volumes: Volumes) -> None:
        self.config = config
        self.index = index
        self.volumes = volumes
        self.busy: set[bytes] = set()  # keys with a write, delete or move in flight
        # pure functions of the key: remembered, as a hot key is read over and over
        self.placement = lru_cache(PLACEMENT_CACHE)(lambda key: tuple(config.placement(key)))
        self.key2path = lru_cache(PLACEMENT_CACHE)(key2path)
        self.routes = {
            b"GET": self.get, b"HEAD": self.get,
            b"PUT": self.put, b"REPLACE": self.replace,
            b"DELETE": self.delete, b"UNLINK": self.unlink, b"RELINK": self.relink,
            b"REBALANCE": self.rebalance,
        }
        self.s3 = S3(self)

    def handle(self, req: Request) -> Response | Awaitable[Response]:
        if is_s3(req):  # before the routes: S3 also POSTs
            return self.s3.handle(req)
        route = self.routes.get(req.method)
        if route is None:
            return text(405, f"method {req.method.decode(errors='replace')} not allowed")
        key = parse_key(req.path)
        if isinstance(key, str):
            return text(400, key)
        if req.query and req.method == b"GET":
            operation = req.query.split(b"&", 1)[0]
            state = _LISTINGS.get(operation)
            if state is None:
                return text(403, "unknown query")
            return self.listing(key, req, state)
        return route(key, req)

    # --- reads ---
    def get(self, key: bytes, req: Request) -> Response | Pending:
        record = self.index.get(key)
        if record is None or record.state is not State.LIVE:
            if self.config.fallback:
                location = f"http://{self.config.fallback}{req.path.decode()}"
                return Response(302, [("Location", location), ("Content-Length", "0")])
            return NOT_FOUND
        balanced = record.replicas == self.placement(key)
        headers = [("Key-Volumes", ",".join(record.replicas)),
                   ("Key-Balance", "balanced" if balanced else "unbalanced"),
                   ("Content-Length", "0")]
        if record.md5:
            headers.append(("Content-Md5", record.md5))
        path = self.key2path(key)
        if self.config.voltimeout == 0:  # the operator chose to skip the check
            return self.redirect(random.choice(record.replicas), path, headers)
        return self._checked_redirect(path, record.replicas, headers)

    def _checked_redirect(self, path: str, replicas: tuple[str, ...],
                          headers: list[tuple[str, str]]) -> Pending:
        """Redirect to the first replica, in random order, whose HEAD finds the file; else 410."""
        # a random first choice spreads reads; the rest follow in turn (cheaper than a shuffle)
        first = int(random.random() * len(replicas))
        order = list(replicas[first + 1:] + replicas[:first + 1])
        check = _CheckedRedirect(self, path, order, headers)
        check.ask()
        return check.answer


    def redirect(self, replica: str, path: str, headers: list[tuple[str, str]]) -> Response:
        """The 302 to `path` on `replica`, signed when volumes want signed reads."""
        config = self.config
        if config.signedreads:
            location = signed_location(replica, path, config.secret, config.signexpiry)
        else:
            location = f"http://{replica}{path}"
        headers.append(("Location", location))
        return Response(302, headers)

    def listing(self, prefix: bytes, req: Request, state: State) -> Response:
        params = parse_qs(req.query.decode(errors="replace"))
        start = params.get("start", [""])[0].encode()
        try:
            limit = int(params.get("limit", ["0"])[0])
            if limit < 0:
                raise ValueError
        except ValueError:
            return text(400, "limit must be a non-negative integer")
        keys, following = self.index.page(prefix, state, start, limit or LIST_MAX)
        if not limit and following is not None:
            return text(413, f"more than {LIST_MAX} keys: page with &limit=N")
        body = json.dumps({
            "next": following.decode(errors="replace") if following else "",
            "keys": [k.decode(errors="replace") for k in keys],
        }, ensure_ascii=False, separators=(",", ":")).encode()
        return Response(200, [("Content-Type", "application/json")], body)

    # --- writes ---
    def put(self, key: bytes, req: Request) -> Response | Awaitable[Response]:
        return self._start_write(key, req, replace=False)

    def replace(self, key: bytes, req: Request) -> Response | Awaitable[Response]:
        return self._start_write(key, req, replace=True)

    def _start_write(self, key: bytes, req: Request,
                     replace: bool) -> Response | Awaitable[Response]:
        if req.body.length == 0:
            return text(411, "empty body: a value needs at least one byte")
        problem = storable(key)
        if problem:
            return text(400, problem)
        if key in self.busy:
            return text(409, "another write or delete of this key is in progress")
        return self.locked(key, self._write(key, req, replace))

    def locked(self, key: bytes, work: Awaitable[Response]) -> Awaitable[Response]:
        """Run `work` holding the key's lock; callers answer 409 when `key in self.busy`.

        The lock is taken now, not when the coroutine first runs: requests parsed in the
        same event-loop turn would otherwise all pass the check.
        """
        self.busy.add(key)
        return self._release_after(key, work)

    async def _release_after(self, key: bytes, work: Awaitable[Response]) -> Response:
        try:
            return await work
        finally:
            self.busy.discard(key)

    async def _write(self, key: bytes, req: Request, replace: bool) -> Response:
        old = self.index.get(key)
        if old is not None and old.state is State.LIVE and not replace:
            return text(403, "key exists: DELETE it first, or use REPLACE")
        first = await req.body.read()
        if not first:
            return text(411, "empty body: a value needs at least one byte")
        try:
            await self.store(key, _chain(first, req.body), req.body.length, old)
        except VolumeError as e:
            return text(500, f"writing a replica failed: {e}")
        return Response(201)

    async def store(self, key: bytes, chunks: AsyncIterator[bytes], length: int | None,
                    old: Record | None) -> str | None:
        """Write a value to today's replicas, in SPEC order; its md5 when -md5sum is on.

        The caller holds the key's lock and has read `old`, the key's record. On a failed
        replica (VolumeError) or a vanished client (ClientGone) the key is left unlinked.
        """
        replicas = self.config.placement(key)
        stale = [r for r in old.replicas if r not in replicas] if old else []
        # crash safety: INIT first, so a cut-off write is never live. A live key being
        # replaced stays live (nginx renames each replica into place whole, so a reader gets
        # the old or the new value) but loses its md5 meanwhile: cut off, its replicas may
        # hold different whole values, which `repair -checksum` settles.
        if old is None or old.state is not State.LIVE:
            self.index.put(key, Record(tuple(replicas), State.WRITING))
        elif old.md5:
            self.index.put(key, Record(old.replicas, State.LIVE))
        try:
            md5 = await self.volumes.write(replicas, key, chunks, length, self.config.md5sum)
        except (VolumeError, ClientGone) as e:
            # unlinked with every replica that may hold a file, so a later DELETE cleans up
            self.index.put(key, Record(tuple(replicas + stale), State.UNLINKED))
            log.warning("PUT %s failed: %s", key.decode(errors="replace"), e)
            raise
        self.index.put(key, Record(tuple(replicas), State.LIVE, md5))
        if stale:
            await self._delete_files(stale, key)
        return md5

    def delete(self, key: bytes, req: Request) -> Response | Awaitable[Response]:
        record = self.index.get(key)
        if record is None:
            return Response(404)
        if self.config.protect and record.state is State.LIVE:
            return text(403, "protected: UNLINK the key before DELETE")
        if key in self.busy:
            return text(409, "another write or delete of this key is in progress")
        return self.locked(key, self.remove(key, record))

    async def remove(self, key: bytes, record: Record) -> Response:
        """DELETE's work, under the key's lock: unlink, delete every replica, drop the record."""
        if record.state is not State.UNLINKED:
            self.index.put(key, record.with_state(State.UNLINKED))
        failed = await self._delete_files(record.replicas, key)
        if failed:
            return text(500, f"deleting from {', '.join(failed)} failed; the key stays unlinked")
        self.index.delete(key)
        return Response(204)

    async def _delete_files(self, replicas: list[str] | tuple[str, ...], key: bytes) -> list[str]:
        """Delete the key's file from each replica at once; the replicas that failed."""
        failed = await self.volumes.delete_all(replicas, key)
        for replica in failed:
            log.warning("DELETE %s from %s failed", key.decode(errors="replace"), replica)
        return failed

    def unlink(self, key: bytes, req: Request) -> Response:
        record = self.index.get(key)
        if record is None or record.state is not State.LIVE:
            return Response(404)
        if key in self.busy:
            return text(409, "another write or delete of this key is in progress")
        self.index.put(key, record.with_state(State.UNLINKED))
        return Response(204)

    def relink(self, key: bytes, req: Request) -> Response | Awaitable[Response]:
        record = self.index.get(key)
        if record is None or record.state is not State.UNLINKED:
            return Response(404)
        if key in self.busy:
            return text(409, "another write or delete of this key is in progress")
        return self.locked(key, self._relink(key, record))

    async def _relink(self, key: bytes, record: Record) -> Response:
        # an unlinked record may be a failed write: only a complete one may come back
        present = await asyncio.gather(
            *(self.volumes.exists(r, key, self.config.voltimeout) for r in record.replicas))
        if not record.replicas or not all(present):
            return text(409, "a replica's file is missing: this value cannot be relinked")
        self.index.put(key, record.with_state(State.LIVE))
        return Response(204)

    def rebalance(self, key: bytes, req: Request) -> Response | Awaitable[Response]:
        record = self.index.get(key)
        if record is None:
            return Response(404)
        if key in self.busy:
            return text(409, "another write or delete of this key is in progress")
        return self.locked(key, self._rebalance(key, record))

    async def _rebalance(self, key: bytes, record: Record) -> Response:
        try:
            await rebalance_key(self.index, self.volumes, self.config, key, record)
        except (RebalanceError, VolumeError) as e:
            return text(400, f"rebalance failed: {e}")
        return Response(204)


def serve(config: Config) -> int:
    """Run the master until SIGTERM or SIGINT; the index is closed on the way out."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s",
                        level=logging.INFO if config.verbose else logging.WARNING)
    index = Index(config.db)
    try:
        uvloop.run(_serve(config, index))
    finally:
        index.close()
    return 0


async def _serve(config: Config, index: Index) -> None:
    volumes = Volumes.for_config(config)
    master = Master(config, index, volumes)
    server = HTTPServer(master.handle, extra_methods=EXTRA_METHODS, access_log=config.verbose,
                        idle_timeout=config.idletimeout, read_timeout=config.readtimeout)
    await server.start(None, config.port)
    print(f"mkv master listening on :{config.port}, volumes {','.join(config.volumes)}, "
          f"{config.replicas} replicas, {config.subvolumes} subvolumes", file=sys.stderr,
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(grace=10.0)
    volumes.close()
