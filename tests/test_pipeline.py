"""Pipelined GETs (mkv/http/pipeline.py) against a real nginx volume, an nginx that closes
keep-alive connections every few answers, a port nobody listens on and a listener that never
answers."""

import asyncio
import socket

import pytest
import uvloop
from cluster import free_port, start_volume

from mkv.http.client import VolumeError, VolumeTimeout
from mkv.http.pipeline import PIPE_DEPTH, Pipeline


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    vol = start_volume(tmp_path_factory.mktemp("pipeline") / "vol")
    for i in range(50):
        (vol.dir / f"d{i}").mkdir()
        (vol.dir / f"d{i}" / f"file{i}").write_bytes(b"x" * i)
    yield vol
    vol.stop()


def test_many_gets_of_one_turn_each_get_their_own_answer(volume):
    async def check() -> None:
        pipeline = Pipeline()
        targets = [f"/d{i % 50}/".encode() for i in range(2000)] + [b"/none/"]
        answers = await asyncio.gather(*(pipeline.get(volume.addr, t, 10) for t in targets))
        for target, (status, body) in zip(targets[:-1], answers, strict=False):
            i = int(target[2:-1])
            assert status == 200 and f'"name":"file{i}"'.encode() in body, (target, body)
        assert answers[-1][0] == 404
        # few connections carried them: most GETs shared a write
        assert 1 <= len(pipeline._pipes[volume.addr]) <= 2000 // PIPE_DEPTH
        await pipeline.close()

    uvloop.run(check())


def test_gets_left_unanswered_when_nginx_closes_are_asked_again(own_nginx):
    addr = own_nginx("keepalive_requests 5;")

    async def check() -> None:
        pipeline = Pipeline()
        answers = await asyncio.gather(*(pipeline.get(addr, b"/small", 10) for _ in range(300)))
        assert answers == [(200, b"hello")] * 300
        await pipeline.close()

    uvloop.run(check())


def test_an_unreachable_volume_fails_every_get():
    async def check() -> None:
        pipeline = Pipeline()
        results = await asyncio.gather(
            *(pipeline.get(f"127.0.0.1:{free_port()}", b"/", 5) for _ in range(3)),
            return_exceptions=True)
        assert all(isinstance(r, VolumeError) for r in results), results
        await pipeline.close()

    uvloop.run(check())


def test_a_silent_volume_times_out():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def check() -> None:
        pipeline = Pipeline()
        with pytest.raises(VolumeTimeout):
            await pipeline.get(f"127.0.0.1:{port}", b"/", 0.3)
        await pipeline.close()

    try:
        uvloop.run(check())
    finally:
        listener.close()
