"""What the master asks of nginx volumes, per replica: does it have a key, write it, read it,
delete it, list a directory. A replica is `host:port` or `host:port/svXX`. A request that
cannot reach a volume tells `health` (mkv/volumes/health.py).
"""

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from functools import lru_cache

from mkv.config import Config
from mkv.http.client import ClientResponse, Connection, Pool, VolumeError
from mkv.http.headcheck import HeadChecker
from mkv.http.pipeline import Pipeline
from mkv.placement import key2path
from mkv.volumes.health import PROBE_TIMEOUT, Health
from mkv.volumes.security import SECRET_HEADER


@lru_cache(maxsize=4096)
def split_replica(replica: str) -> tuple[str, str]:
    """`host:port/sv01` → (`host:port`, `/sv01`)."""
    hostport, slash, subvolume = replica.partition("/")
    return hostport, slash + subvolume


def _target(replica: str, path: str) -> tuple[str, bytes]:
    """Where a key2path `path` lives on `replica`: its host:port and the request target."""
    hostport, subvolume = split_replica(replica)
    return hostport, (subvolume + path).encode()


class Volumes:
    """Calls to volumes over one keep-alive pool."""

    def __init__(self, write_timeout: float = 30.0, secret: str = "") -> None:
        # every request to a volume carries the secret when there is one
        headers = f"{SECRET_HEADER}: {secret}\r\n".encode() if secret else b""
        self.pool = Pool(headers)
        self._moves: dict[str, bool] = {}  # host:port → renames files (can_move)
        self.health = Health(self.probe)
        self.heads = HeadChecker(headers, self._unreachable_by_head)
        self.listings = Pipeline(headers)
        self.write_timeout = write_timeout

    @classmethod
    def for_config(cls, config: Config) -> "Volumes":
        return cls(config.writetimeout, config.secret)

    async def probe(self, hostport: str) -> bool:
        """Whether the volume answers a HEAD of its root within PROBE_TIMEOUT, whatever the
        status: a volume that answers is up."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self.pool.request(hostport, b"HEAD", b"/", timeout=PROBE_TIMEOUT)
        except (VolumeError, TimeoutError):
            return False
        return True

    def _unreachable_by_head(self, hostport: str) -> None:
        self.health.unreachable(hostport, "HEAD checks unanswered")

    def _failed(self, error: BaseException) -> None:
        """Tell health of a request that could not reach its volume."""
        if isinstance(error, VolumeError) and error.unreachable:
            self.health.unreachable(error.unreachable, str(error))

    def ask_exists(self, replica: str, path: str, timeout: float,
                   callback: Callable[[bool], None]) -> None:
        """Call `callback(True)` when the replica answers a HEAD for `path` (a key2path)
        with 200 within `timeout`, else `callback(False)`."""
        hostport, subvolume = split_replica(replica)
        self.heads.ask(hostport, (subvolume + path).encode(), timeout, callback)

    async def exists(self, replica: str, key: bytes, timeout: float) -> bool:
        """True when the replica has the key's file (a HEAD answers 200 within `timeout`)."""
        found = asyncio.get_running_loop().create_future()
        self.ask_exists(replica, key2path(key), timeout, found.set_result)
        return await found

    async def delete(self, replica: str, key: bytes) -> None:
        """Remove the key's file; a file already gone counts as removed."""
        _check_deleted(replica, await self._request(replica, b"DELETE", key2path(key)))

    async def delete_all(self, replicas: list[str] | tuple[str, ...], key: bytes) -> list[str]:
        """Remove the key's file from every replica at once; the replicas that failed.

        The requests go out together on idle connections without a task each (a DELETE is
        3 of them); any that fails is tried once more the ordinary way.
        """
        path = key2path(key)
        sent = []
        for replica in replicas:
            hostport, target = _target(replica, path)
            conn = self.pool.idle(hostport)
            answer = conn.send(b"DELETE", target, b"", timeout=self.write_timeout) if conn else None
            sent.append((replica, answer))
        failed = []
        for replica, answer in sent:
            try:
                if answer is None:
                    raise VolumeError("no idle connection")
                _check_deleted(replica, await answer)
            except VolumeError:
                try:
                    await self.delete(replica, key)
                except VolumeError:
                    failed.append(replica)
        return failed

    async def modified(self, replica: str, key: bytes) -> str | None:
        """The key's file's Last-Modified (an HTTP date, "" when not told) as a HEAD finds it
        now; None when the file is gone."""
        response = await self._request(replica, b"HEAD", key2path(key))
        if response.status == 404:
            return None
        if response.status != 200:
            raise VolumeError(f"HEAD {replica}: status {response.status}")
        return response.headers.get(b"last-modified", b"").decode("latin-1")

    async def get(self, replica: str, key: bytes, headers: bytes = b"",
                  stream: bool = True) -> ClientResponse:
        """GET the key's file from one replica, whatever the status; the body streamed
        when `stream` (a caller that will not read it must `abort()` it)."""
        return await self.get_at(replica, key2path(key), headers, stream)

    async def get_at(self, replica: str, path: str, headers: bytes = b"",
                     stream: bool = True) -> ClientResponse:
        """GET the file at `path` (a key2path, or S3's parts') from one replica, as `get`."""
        return await self._request(replica, b"GET", path, headers, stream)

    async def _request(self, replica: str, method: bytes, path: str, headers: bytes = b"",
                       stream: bool = False) -> ClientResponse:
        """One exchange about the file at `path`; health is told of a volume not reached."""
        hostport, target = _target(replica, path)
        try:
            return await self.pool.request(hostport, method, target, headers, stream=stream,
                                           timeout=self.write_timeout)
        except VolumeError as e:
            self._failed(e)
            raise

    async def open(self, replica: str, key: bytes) -> ClientResponse:
        """GET the key's file, its body streamed; raises unless the status is 200."""
        response = await self.get(replica, key)
        if response.status != 200:
            response.body.abort()  # type: ignore[union-attr]  # an error page nobody reads
            raise VolumeError(f"GET {replica}: status {response.status}")
        return response

    async def list_dir(self, hostport: str, path: str) -> list[dict]:
        """nginx's JSON autoindex of a directory; [] when it does not exist."""
        status, body = await self.listings.get(hostport, path.encode(), self.write_timeout)
        if status == 404:
            return []
        if status != 200:
            raise VolumeError(f"listing {hostport}{path}: status {status}")
        # nginx writes a file name's bytes as they are, which need not be UTF-8
        return json.loads(body.decode("utf-8", "surrogateescape"))

    async def can_move(self, hostport: str) -> bool:
        """Whether the volume renames files (WebDAV MOVE: `mkv volume`'s nginx does, Go mkv's
        launcher does not), asked once: a MOVE of a file that is not there is 404 where MOVE
        is allowed, 405 where it is not."""
        known = self._moves.get(hostport)
        if known is None:
            response = await self.pool.request(  # no key's path (SPEC §2), never a file
                hostport, b"MOVE", b"/mkv-move-probe", b"Destination: /mkv-move-probe-2\r\n",
                timeout=self.write_timeout)
            if response.status not in (404, 405):
                raise VolumeError(f"MOVE probe of {hostport}: status {response.status}")
            known = self._moves[hostport] = response.status == 404
        return known

    async def move(self, replica: str, path: str, to: str) -> None:
        """Rename the file at `path` to `to` on the replica (nginx makes the directories and
        replaces a file there: a reader gets the old file or the new one, whole)."""
        hostport, subvolume = split_replica(replica)
        response = await self.pool.request(
            hostport, b"MOVE", (subvolume + path).encode(),
            b"Destination: %s\r\nOverwrite: T\r\n" % (subvolume + to).encode(),
            timeout=self.write_timeout)
        if response.status not in (201, 204):
            if response.status == 405:  # the volume was restarted without MOVE: ask again
                self._moves.pop(hostport, None)
            raise VolumeError(f"MOVE {replica}{path}: status {response.status}")

    async def delete_path(self, replica: str, path: str) -> None:
        """Remove the file at `path` (percent-encoded) under the replica; gone already is fine.

        For files that are not at a key's path, such as orphans with undecodable names, and
        S3's parts (a `path` ending in `/` removes a directory and all below it).
        """
        hostport, subvolume = split_replica(replica)
        response = await self.pool.request(hostport, b"DELETE", (subvolume + path).encode(),
                                           timeout=self.write_timeout)
        if response.status not in (200, 204, 404):
            raise VolumeError(f"DELETE {replica}{path}: status {response.status}")

    async def chunks(self, response: ClientResponse) -> AsyncIterator[bytes]:
        """The body of a response from `open`, chunk by chunk, each within the write timeout.

        Left unfinished (a failure, a reader that stops early) it closes the connection,
        which cannot be reused with a body half read. Use it under `contextlib.aclosing`.
        """
        body = response.body
        try:
            while True:
                async with asyncio.timeout(self.write_timeout):
                    chunk = await body.read()  # type: ignore[union-attr]
                if not chunk:
                    return
                yield chunk
        except TimeoutError:
            raise VolumeError(f"a volume stalled for {self.write_timeout}s mid-body") from None
        finally:
            if not body.complete:  # type: ignore[union-attr]
                body.abort()  # type: ignore[union-attr]

    async def write(self, replicas: list[str], path: str, body: AsyncIterator[bytes],
                    length: int | None, md5: bool) -> str | None:
        """Stream `body` to every replica at once, into the file at `path` (a key's key2path,
        or S3's parts'); the md5 hex of what was written, if asked.

        The slowest replica sets the pace: each chunk waits until every connection
        has drained, so memory stays bounded. Any failure closes every upload (nginx
        then drops its temp file) and raises VolumeError.
        """
        conns: list[Connection] = []
        answers: list[asyncio.Future] = []
        try:
            for replica in replicas:  # idle connections almost always: no task to gather
                conns.append(await self.pool.connection(split_replica(replica)[0]))
            framing = (b"Content-Length: %d\r\n" % length if length is not None
                       else b"Transfer-Encoding: chunked\r\n")
            answers = [conn.send(b"PUT", _target(r, path)[1], framing, upload=True)
                       for conn, r in zip(conns, replicas, strict=True)]
            digest = hashlib.md5() if md5 else None
            async for chunk in body:
                if digest is not None:
                    digest.update(chunk)
                data = chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                for conn in conns:
                    conn.write(data)
                for conn, answer in zip(conns, answers, strict=True):
                    if answer.done():  # answered (or broke) before the body ended
                        _check_written(conn, answer.result())
                        raise VolumeError(f"{conn.hostport} stopped the upload")
                    if conn.write_blocked:
                        try:
                            await asyncio.wait_for(conn.drain(), self.write_timeout)
                        except TimeoutError:
                            raise VolumeError(f"{conn.hostport} took no part of the write "
                                              f"for {self.write_timeout}s",
                                              conn.hostport) from None
            for conn in conns:
                if length is None:
                    conn.write(b"0\r\n\r\n")
                conn.upload_done(self.write_timeout)
            for conn, answer in zip(conns, answers, strict=True):
                _check_written(conn, await answer)
        except BaseException as e:
            self._failed(e)
            for answer in answers:  # nobody will wait for these now
                if not answer.done():
                    answer.cancel()
                elif not answer.cancelled():
                    answer.exception()
            for conn in conns:
                conn.close()
            if isinstance(e, TimeoutError):
                raise VolumeError(f"a volume did not take the write within "
                                  f"{self.write_timeout}s") from None
            raise
        return digest.hexdigest() if digest is not None else None

    async def close(self) -> None:
        """Stop probing and close every connection; nothing of ours runs on after this."""
        await self.health.close()
        self.pool.close()
        await self.heads.close()
        await self.listings.close()


def _check_deleted(replica: str, response: ClientResponse) -> None:
    if response.status not in (200, 204, 404):
        raise VolumeError(f"DELETE {replica}: status {response.status}")


def _check_written(conn: Connection, response: ClientResponse) -> None:
    if response.status not in (200, 201, 204):
        raise VolumeError(f"PUT {conn.hostport}: status {response.status}")
