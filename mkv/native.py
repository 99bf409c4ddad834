"""The native HTTP API: SPEC §4's table as code, each request translated into a call on the
store. Go mkv's clients and the original's tools talk to this face."""

import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import parse_qs

from mkv.http.client import VolumeError
from mkv.http.flow import Body
from mkv.http.headers import valid_value
from mkv.http.messages import INTERNAL_ERROR, Pending, Request, Response, refusal
from mkv.http.target import parse_key
from mkv.placement import storable
from mkv.record import Record, State
from mkv.store import REFUSED, MoveError, Store, TooFewVolumesUp
from mkv.volumes.health import asked_last
from mkv.volumes.security import signed_location

log = logging.getLogger("mkv")

LIST_MAX = 1_000_000  # keys in one listing without a limit
LIST_PAGE = 4096  # keys read from the index at a time for a listing without a limit
EXTRA_METHODS = (b"REPLACE", b"RELINK", b"REBALANCE")  # mkv's own, unknown to llhttp
_LISTINGS = {b"list": State.LIVE, b"unlinked": State.UNLINKED, b"writing": State.WRITING}

JSON = ("Content-Type", "application/json")
NOT_FOUND = Response(404, [("Content-Length", "0")])
GONE = Response(410, [("Content-Length", "0")])


def text(status: int, reason: str = "") -> Response:
    """A short plain answer; the body says why when the status alone does not."""
    body = f"{reason}\n".encode() if reason else b""
    return Response(status, [("Content-Type", "text/plain")] if body else [], body)


def _keys_json(keys: list[bytes]) -> bytes:
    """The keys as the items of a JSON array, without its brackets."""
    return json.dumps([k.decode(errors="replace") for k in keys], ensure_ascii=False,
                      separators=(",", ":"))[1:-1].encode()


def _listing_json(keys: list[bytes], following: bytes | None) -> bytes:
    """`{"next":…,"keys":[…]}`, the answer to `?list` (SPEC §4)."""
    after = json.dumps(following.decode(errors="replace") if following else "",
                       ensure_ascii=False)
    return b'{"next":%s,"keys":[%s]}' % (after.encode(), _keys_json(keys))


async def _chain(first: bytes, body: Body) -> AsyncIterator[bytes]:
    yield first
    async for chunk in body:
        yield chunk


class _Read:
    """One GET: the key's record from the index, then replicas asked in turn whether they
    have the file; resolves to the redirect to the first that does, a 404 or a 410.
    Callbacks rather than a coroutine: a task per GET cost ~5% of the master's CPU in the
    existing-key benchmark (bench/)."""

    __slots__ = ("api", "key", "req", "path", "order", "headers", "replica", "answer")

    def __init__(self, api: "NativeAPI", key: bytes, req: Request) -> None:
        self.api = api
        self.key = key
        self.req = req
        self.answer = Pending()

    def found(self, record: Record | None) -> None:
        api = self.api
        if record is None or record.state is not State.LIVE:
            if api.config.fallback:
                location = f"http://{api.config.fallback}{self.req.path.decode()}"
                self.answer.resolve(
                    Response(302, [("Location", location), ("Content-Length", "0")])
                    if valid_value(location) else text(400, "the path holds a control character"))
            else:
                self.answer.resolve(NOT_FOUND)
            return
        replicas = record.replicas
        balanced = replicas == api.placement(self.key)
        self.headers = [("Key-Volumes", ",".join(replicas)),
                        ("Key-Balance", "balanced" if balanced else "unbalanced"),
                        ("Content-Length", "0")]
        if record.md5:
            self.headers.append(("Content-Md5", record.md5))
        self.path = api.key2path(self.key)
        # a random first choice spreads reads; the rest follow in turn (cheaper than a shuffle).
        # Asked from the end of `order`.
        first = int(random.random() * len(replicas))
        order = list(replicas[first + 1:] + replicas[:first + 1])
        if api.down:  # replicas on volumes down are asked last: never waited for -voltimeout
            order = asked_last(order[::-1], api.down)[::-1]
        if api.config.voltimeout == 0:  # the operator chose to skip the check
            self.answer.resolve(api.redirect(order[-1], self.path, self.headers))
            return
        self.order = order
        self.ask()

    def failed(self, error: Exception) -> None:
        self.answer.resolve(refusal(error, REFUSED) or INTERNAL_ERROR)

    def ask(self) -> None:
        self.replica = self.order.pop()
        self.api.volumes.ask_exists(self.replica, self.path, self.api.config.voltimeout,
                                    self.answered)

    def answered(self, exists: bool) -> None:
        try:
            if exists:
                self.answer.resolve(self.api.redirect(self.replica, self.path, self.headers))
            elif self.order:
                self.ask()
            else:
                self.answer.resolve(GONE)
        except Exception:  # called by the HEAD checker, which cannot answer for this request
            log.exception("GET %r failed", self.key)
            self.answer.resolve(INTERNAL_ERROR)


class NativeAPI:
    """The request handler of the native API, over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.locks = store.locks
        self.config = store.config
        self.index = store.index
        self.volumes = store.volumes
        self.placement = store.placement
        self.key2path = store.key2path
        self.down = store.volumes.health.down
        self.routes = {
            b"GET": self.get, b"HEAD": self.get,
            b"PUT": self.put, b"REPLACE": self.replace,
            b"DELETE": self.delete, b"UNLINK": self.unlink, b"RELINK": self.relink,
            b"REBALANCE": self.rebalance,
        }

    def handle(self, req: Request) -> Response | Awaitable[Response]:
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
    def get(self, key: bytes, req: Request) -> Pending:
        read = _Read(self, key, req)
        self.index.lookup(key, read.found, read.failed)
        return read.answer

    def redirect(self, replica: str, path: str, headers: list[tuple[str, str]]) -> Response:
        """The 302 to `path` on `replica`, signed when volumes want signed reads."""
        config = self.config
        if config.signedreads:
            location = signed_location(replica, path, config.secret, config.signexpiry)
        else:
            location = f"http://{replica}{path}"
        headers.append(("Location", location))
        return Response(302, headers)

    async def listing(self, prefix: bytes, req: Request, state: State) -> Response:
        params = parse_qs(req.query.decode(errors="replace"))
        start = params.get("start", [""])[0].encode()
        try:
            limit = int(params.get("limit", ["0"])[0])
            if limit < 0:
                raise ValueError
        except ValueError:
            return text(400, "limit must be a non-negative integer")
        keys, following = await self.index.page(prefix, state, start, limit or LIST_PAGE)
        if limit or following is None:
            return Response(200, [JSON], _listing_json(keys, following))
        # more than a page and no limit: count on a page at a time, then stream, so that a
        # million keys are never held at once
        counted, after = len(keys), following
        while after is not None and counted <= LIST_MAX:
            more, after = await self.index.page(prefix, state, after, LIST_PAGE)
            counted += len(more)
        if counted > LIST_MAX:
            return text(413, f"more than {LIST_MAX} keys: page with &limit=N")
        return Response(200, [JSON], self._stream_listing(prefix, state, keys, following))

    async def _stream_listing(self, prefix: bytes, state: State, keys: list[bytes],
                              following: bytes | None) -> AsyncIterator[bytes]:
        """The bytes `_listing_json` would give for every key from `keys` on, a page at a
        time; keys written or removed meanwhile may or may not be among them."""
        yield b'{"next":"","keys":[' + _keys_json(keys)
        while following is not None:
            keys, following = await self.index.page(prefix, state, following, LIST_PAGE)
            if keys:
                yield b"," + _keys_json(keys)
        yield b"]}"

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
        return self._write(key, req, replace)

    # Each change takes the key's lock first (KeyBusy: a 409), then reads its record, so that
    # what it decides on is still the record when it acts, whatever the engine's latency.
    async def _write(self, key: bytes, req: Request, replace: bool) -> Response:
        async with self.locks.hold(key):
            old = await self.index.get(key)
            if old is not None and old.state is State.LIVE and not replace:
                return text(403, "key exists: DELETE it first, or use REPLACE")
            first = await req.body.read()
            if not first:
                return text(411, "empty body: a value needs at least one byte")
            try:
                await self.store.write(key, _chain(first, req.body), req.body.length, old)
            except TooFewVolumesUp as e:
                return text(503, str(e))
            except VolumeError as e:
                return text(500, f"writing a replica failed: {e}")
            return Response(201)

    async def delete(self, key: bytes, req: Request) -> Response:
        async with self.locks.hold(key):
            record = await self.index.get(key)
            if record is None:
                return Response(404)
            if self.config.protect and record.state is State.LIVE:
                return text(403, "protected: UNLINK the key before DELETE")
            failed = await self.store.remove(key, record)
            if failed:
                return text(500, f"deleting from {', '.join(failed)} failed; the key stays "
                            "unlinked")
            return Response(204)

    async def unlink(self, key: bytes, req: Request) -> Response:
        async with self.locks.hold(key):
            record = await self.index.get(key)
            if record is None or record.state is not State.LIVE:
                return Response(404)
            await self.store.unlink(key, record)
            return Response(204)

    async def relink(self, key: bytes, req: Request) -> Response:
        async with self.locks.hold(key):
            record = await self.index.get(key)
            if record is None or record.state is not State.UNLINKED:
                return Response(404)
            if not await self.store.relink(key, record):
                return text(409, "a replica's file is missing: this value cannot be relinked")
            return Response(204)

    async def rebalance(self, key: bytes, req: Request) -> Response:
        async with self.locks.hold(key):
            record = await self.index.get(key)
            if record is None:
                return Response(404)
            try:
                await self.store.move(key, record)
            except (MoveError, VolumeError) as e:
                return text(400, f"rebalance failed: {e}")
            return Response(204)
