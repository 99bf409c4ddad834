"""The volume client pool (mkv/http/client.py) against real nginx and against tiny in-test servers
that misbehave the ways a volume can: closing kept-alive connections, stalling, refusing."""

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import uvloop
from cluster import Volume, free_port, start_volume

from mkv.http.client import Pool, VolumeError, VolumeTimeout
from mkv.http.flow import Body
from mkv.volumes import nginx

NGINX = nginx.find_nginx()
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

BIG = 8 * 1024 * 1024


def run(coro: Awaitable) -> object:
    return uvloop.run(coro)  # type: ignore[arg-type]


async def read_all(body: bytes | Body) -> bytes:
    if isinstance(body, bytes):
        return body
    parts = []
    while chunk := await body.read():
        parts.append(chunk)
    return b"".join(parts)


# --- a real nginx volume ---


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Iterator[tuple[Volume, bytes]]:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    vol = start_volume(tmp_path_factory.mktemp("client") / "vol")
    big = os.urandom(BIG)
    (vol.dir / "big").write_bytes(big)
    (vol.dir / "small").write_bytes(b"hello")
    yield vol, big
    vol.stop()


@needs_nginx
def test_head_with_length_but_no_body_does_not_hang(volume) -> None:
    vol, _ = volume

    async def main() -> None:
        pool = Pool()
        conn = await pool.connection(vol.addr)
        response = await conn.send(b"HEAD", b"/big", b"", timeout=2)
        assert (response.status, response.body) == (200, b"")
        # the same connection serves the next exchange: the announced 8 MiB never came
        assert await pool.connection(vol.addr) is conn
        response = await conn.send(b"GET", b"/small", b"", timeout=2)
        assert (response.status, response.body) == (200, b"hello")
        for path in (b"/big", b"/missing", b"/small"):
            response = await pool.request(vol.addr, b"HEAD", path, timeout=2)
            assert response.body == b""
        assert response.status == 200
        assert await pool.connection(vol.addr) is conn  # still the one connection
        pool.close()

    run(main())


@needs_nginx
def test_head_answer_keeps_its_headers(volume) -> None:
    vol, _ = volume

    async def main() -> None:
        pool = Pool()
        response = await pool.request(vol.addr, b"HEAD", b"/big", timeout=2)
        pool.close()
        assert response.headers.get(b"content-length") == str(BIG).encode()

    run(main())


@needs_nginx
def test_keep_alive_reuse(volume) -> None:
    vol, _ = volume

    async def main() -> None:
        pool = Pool()
        first = await pool.connection(vol.addr)
        assert (await first.send(b"GET", b"/small", b"", timeout=2)).body == b"hello"
        for _ in range(5):
            assert (await pool.request(vol.addr, b"GET", b"/small", timeout=2)).body == b"hello"
            # nginx sends its JSON directory listing chunked
            listing = await pool.request(vol.addr, b"GET", b"/", timeout=2)
            assert listing.headers.get(b"transfer-encoding") == b"chunked"
            assert {e["name"] for e in json.loads(listing.body)} >= {"big", "small"}
        assert await pool.connection(vol.addr) is first
        pool.close()

    run(main())


@needs_nginx
def test_aborting_a_body_that_arrived_whole_leaves_its_reused_connection_alone(volume) -> None:
    """A streamed 404 whose body came with its head is back in the pool when its reader gives
    up on it: another exchange may already have it (repair's copy after a replica's 404 was
    cut off so, 'closed the connection', under load)."""
    vol, _ = volume

    async def main() -> None:
        pool = Pool()
        missing = await pool.request(vol.addr, b"GET", b"/missing", stream=True, timeout=5)
        assert missing.status == 404
        while not missing.body.arrived:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        reused = await pool.connection(vol.addr)  # the same connection, for the next exchange
        answer = reused.send(b"GET", b"/small", b"", timeout=5)
        missing.body.abort()  # type: ignore[union-attr]
        assert (await answer).body == b"hello"
        pool.close()

    run(main())


@needs_nginx
def test_streamed_get_of_a_large_file(volume) -> None:
    vol, big = volume

    async def main() -> None:
        pool = Pool()
        response = await pool.request(vol.addr, b"GET", b"/big", stream=True, timeout=5)
        assert response.status == 200 and isinstance(response.body, Body)
        digest, size, reads = hashlib.md5(), 0, 0
        while chunk := await response.body.read():
            digest.update(chunk)
            size += len(chunk)
            reads += 1
            if reads % 8 == 0:
                await asyncio.sleep(0.001)  # a slow reader: reading from nginx pauses
        assert size == BIG and digest.digest() == hashlib.md5(big).digest()
        assert (await pool.request(vol.addr, b"GET", b"/small", timeout=2)).body == b"hello"
        whole = await pool.request(vol.addr, b"GET", b"/big", timeout=5)
        assert whole.body == big
        pool.close()

    run(main())


@needs_nginx
def test_server_closing_after_n_answers(own_nginx) -> None:
    addr = own_nginx("keepalive_requests 5;")

    async def main() -> None:
        pool = Pool()
        for i in range(20):
            method = b"HEAD" if i % 3 == 0 else b"GET"
            response = await pool.request(addr, method, b"/small", timeout=2)
            assert response.status == 200
            assert response.body == (b"" if method == b"HEAD" else b"hello")
        pool.close()

    run(main())


@needs_nginx
def test_connection_closed_while_idle(own_nginx) -> None:
    addr = own_nginx("keepalive_timeout 1s;")

    async def main() -> None:
        pool = Pool()
        assert (await pool.request(addr, b"GET", b"/small", timeout=2)).status == 200
        await asyncio.sleep(1.5)  # nginx closes the idle connection meanwhile
        assert (await pool.request(addr, b"GET", b"/small", timeout=2)).body == b"hello"
        pool.close()

    run(main())


# --- tiny servers that misbehave on purpose ---

Behaviour = Callable[[int, int, asyncio.StreamWriter], Awaitable[bool]]


class TinyServer:
    """Reads body-less requests; `behave(connection_no, request_no, writer)` answers one and
    returns whether to keep the connection open."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.connections = 0
        self.requests: list[tuple[int, int]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "TinyServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, count = self.connections, 0
        self.writers.append(writer)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                count += 1
                self.requests.append((number, count))
                if not await self.behave(number, count, writer):
                    return
        finally:
            writer.close()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_connection_close_every_fifth_answer_is_honoured() -> None:
    """A `Connection: close` answer ends the connection, even if the server leaves it open
    (then it never answers again there): 20 requests in a row all succeed, on 4 connections."""

    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if n > 5:
            await asyncio.sleep(30)  # reused after it said close: never answered
        writer.write(ok(b"answer %d.%d" % (conn, n), b"Connection: close\r\n" if n == 5 else b""))
        await writer.drain()
        return True

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            for i in range(20):
                response = await pool.request(server.addr, b"GET", b"/x", timeout=2)
                assert response.body == b"answer %d.%d" % (i // 5 + 1, i % 5 + 1)
            assert server.connections == 4
            pool.close()

    run(main())


def test_reused_connection_closed_by_server_is_retried() -> None:
    """The server closed a kept-alive connection just as the next request went out on it."""

    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            return False  # close without answering
        writer.write(ok(b"from %d" % conn))
        await writer.drain()
        return True

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            assert (await pool.request(server.addr, b"GET", b"/a", timeout=2)).body == b"from 1"
            assert (await pool.request(server.addr, b"GET", b"/b", timeout=2)).body == b"from 2"
            assert server.requests == [(1, 1), (1, 2), (2, 1)]
            pool.close()

    run(main())


def test_fresh_connection_closed_without_answer_is_an_error() -> None:
    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        return False

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            with pytest.raises(VolumeError):
                await pool.request(server.addr, b"GET", b"/a", timeout=2)
            assert server.connections == 1  # not retried: nothing says a retry would help
            pool.close()

    run(main())


def test_answer_cut_off_midway_is_an_error_not_retried() -> None:
    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            writer.write(ok(b"first"))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        return n == 1

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            assert (await pool.request(server.addr, b"GET", b"/a", timeout=2)).body == b"first"
            with pytest.raises(VolumeError):
                await pool.request(server.addr, b"GET", b"/b", timeout=2)
            assert server.connections == 1
            pool.close()

    run(main())


@pytest.mark.parametrize("stall", ["before", "mid-body"])
def test_timeout(stall: str) -> None:
    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if stall == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await asyncio.sleep(30)
        return False

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            started = time.monotonic()
            with pytest.raises(VolumeTimeout):
                await pool.request(server.addr, b"GET", b"/a", timeout=0.3)
            assert 0.25 < time.monotonic() - started < 0.8
            pool.close()

    run(main())


def test_timeout_of_a_streamed_body_that_stalls() -> None:
    """`stream=True` answers at the headers; a body that then stops arriving must still end
    in an error within about the timeout, not hang its reader (rebalance, repair) forever."""

    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await asyncio.sleep(30)
        return False

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            response = await pool.request(server.addr, b"GET", b"/a", timeout=0.3, stream=True)
            started = time.monotonic()
            with pytest.raises(VolumeError):
                await asyncio.wait_for(read_all(response.body), 3)
            assert time.monotonic() - started < 1.5
            pool.close()

    run(main())


def test_unread_streamed_body_does_not_stall_the_next_request() -> None:
    """A streamed answer that arrived whole while its reader was away must not leave its
    connection paused in the pool, where the next request would wait for nothing."""

    async def behave(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            body = b"s" * (600 * 1024)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body[:500 * 1024])
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(body[500 * 1024:])  # crosses the high-water mark and ends the answer
        else:
            writer.write(ok(b"second"))
        await writer.drain()
        return True

    async def main() -> None:
        async with TinyServer(behave) as server:
            pool = Pool()
            first = await pool.request(server.addr, b"GET", b"/a", timeout=2, stream=True)
            await asyncio.sleep(0.5)  # the whole answer arrives; nobody reads it yet
            second = await pool.request(server.addr, b"GET", b"/b", timeout=1)
            assert second.body == b"second"
            assert len(await read_all(first.body)) == 600 * 1024
            pool.close()

    run(main())


def test_connection_refused() -> None:
    async def main() -> None:
        pool = Pool()
        started = time.monotonic()
        with pytest.raises(VolumeError) as caught:
            await pool.request(f"127.0.0.1:{free_port()}", b"GET", b"/", timeout=2)
        assert not isinstance(caught.value, VolumeTimeout)
        assert time.monotonic() - started < 1
        pool.close()

    run(main())


def test_unknown_host() -> None:
    async def main() -> None:
        pool = Pool()
        with pytest.raises(VolumeError):
            await pool.request("no-such-host.invalid:3001", b"GET", b"/", timeout=2)
        pool.close()

    run(main())
