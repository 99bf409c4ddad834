"""The pipelined HEAD checker (mkv/http/headcheck.py): answer framing, and real nginx volumes."""

import asyncio
import os
import signal
import time

import pytest
import uvloop
from cluster import free_port, start_volume

from mkv.http.headcheck import MAX_CONNECTIONS, HeadChecker, parse_head_answers

# --- framing, pure ---

NGINX_200 = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\n"
             b"Connection: keep-alive\r\n\r\n")
NGINX_404 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 146\r\nConnection: keep-alive\r\n\r\n"


def test_answers_are_taken_off_the_front_in_order():
    buffer = bytearray(NGINX_200 + NGINX_404 + NGINX_200[:20])
    assert parse_head_answers(buffer) == [(200, False), (404, False)]
    assert bytes(buffer) == NGINX_200[:20]  # the partial answer waits for the rest
    buffer += NGINX_200[20:]
    assert parse_head_answers(buffer) == [(200, False)]
    assert buffer == bytearray()


def test_an_answer_split_anywhere_is_read_once_whole():
    for cut in range(1, len(NGINX_404)):
        buffer = bytearray(NGINX_404[:cut])
        first = parse_head_answers(buffer)
        buffer += NGINX_404[cut:]
        assert first + parse_head_answers(buffer) == [(404, False)]


def test_closing_answers_are_seen():
    closing = NGINX_200.replace(b"keep-alive", b"close")
    assert parse_head_answers(bytearray(closing)) == [(200, True)]
    assert parse_head_answers(bytearray(closing.lower())) == [(200, True)]
    assert parse_head_answers(bytearray(b"HTTP/1.0 200 OK\r\n\r\n")) == [(200, True)]


def test_garbage_is_refused():
    with pytest.raises(ValueError):
        parse_head_answers(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"))


# --- against nginx ---


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    vol = start_volume(tmp_path_factory.mktemp("headcheck") / "vol")
    (vol.dir / "there").write_bytes(b"hello")
    yield vol
    vol.stop()


def ask_all(targets: list[tuple[str, bytes]], timeout: float = 2.0) -> list[bool]:
    """Ask every check at once, as concurrent GETs do; their answers in order."""
    async def main() -> list[bool]:
        checker = HeadChecker()
        loop = asyncio.get_running_loop()
        futures = []
        for hostport, target in targets:
            found = loop.create_future()
            checker.ask(hostport, target, timeout, found.set_result)
            futures.append(found)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            await checker.close()
    return uvloop.run(main())


def test_found_and_missing_files(volume):
    assert ask_all([(volume.addr, b"/there"), (volume.addr, b"/not-there")]) == [True, False]


def test_many_checks_at_once_are_pipelined_and_each_answered_right(volume):
    targets = [(volume.addr, b"/there" if i % 3 else b"/missing-%d" % i) for i in range(600)]
    assert ask_all(targets) == [i % 3 != 0 for i in range(600)]


def test_a_server_closing_every_few_answers_is_asked_again(own_nginx):
    addr = own_nginx("keepalive_requests 5;")
    assert ask_all([(addr, b"/small")] * 200) == [True] * 200


def test_nobody_listening_answers_false_at_once():
    started = time.monotonic()
    assert ask_all([(f"127.0.0.1:{free_port()}", b"/x")] * 3, timeout=5) == [False] * 3
    assert time.monotonic() - started < 2


def test_a_stopped_volume_answers_false_within_the_timeout(tmp_path):
    vol = start_volume(tmp_path / "frozen")
    (vol.dir / "there").write_bytes(b"x")
    pgid = os.getpgid(int((vol.dir / ".mkv" / "nginx.pid").read_text()))
    os.killpg(pgid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert ask_all([(vol.addr, b"/there")] * 10, timeout=0.3) == [False] * 10
        assert time.monotonic() - started < 1.5
    finally:
        os.killpg(pgid, signal.SIGCONT)
        vol.stop()


def test_connections_open_as_checks_pile_up_and_no_more_than_the_cap(volume):
    async def main() -> tuple[int, int]:
        checker = HeadChecker()
        loop = asyncio.get_running_loop()
        counts = []
        for burst in (10, 600):
            futures = []
            for _ in range(burst):
                found = loop.create_future()
                checker.ask(volume.addr, b"/there", 2.0, found.set_result)
                futures.append(found)
            counts.append(len(checker._pipes[volume.addr]))
            assert all(await asyncio.gather(*futures))
        await checker.close()
        return counts[0], counts[1]

    few, many = uvloop.run(main())
    assert few == 1  # a handful of checks share one connection: one write, one read
    assert 1 < many <= MAX_CONNECTIONS
