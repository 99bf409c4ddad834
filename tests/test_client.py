"""mkv.client (blocking and asyncio) and the `mkv put|get|ls|rm` verbs against a real cluster:
real nginx volumes, the real master; failover between masters, a volume killed mid-read."""

import asyncio
import io
import os
import signal
import subprocess

import httpx
import pytest
from cluster import free_port, mkv_command

import mkv.client.core as core
from mkv.client import AsyncClient, Client, KeyExists, NotFound, Refused, Unavailable


def test_a_keys_life_through_the_client(make_master):
    master = make_master()
    with Client(f"localhost:{master.port}") as mkv:
        mkv.put("/life/a", b"first")
        with pytest.raises(KeyExists):
            mkv.put("/life/a", b"again")
        mkv.put("/life/a", b"second", replace=True)
        assert mkv.get("/life/a") == b"second"
        assert mkv.get("/life/a", 1, 3) == b"eco"
        assert mkv.get("/life/a", 4) == b"nd"
        info = mkv.head("/life/a")
        assert len(info.volumes) == 3 and info.md5 and info.balanced
        mkv.unlink("/life/a")
        assert not mkv.exists("/life/a")
        mkv.relink("/life/a")
        assert mkv.exists("/life/a")
        mkv.delete("/life/a")
        with pytest.raises(NotFound):
            mkv.get("/life/a")
        with pytest.raises(NotFound):
            mkv.delete("/life/a")
        with pytest.raises(Refused):
            mkv.put("/life/empty", b"")
        mkv.put("life/no-slash?and spaces", b"odd")  # a key is stored with its leading /
        assert mkv.get(b"/life/no-slash?and spaces") == b"odd"


def test_values_stream_from_files_and_iterators_and_listings_page(make_master):
    master = make_master()
    with Client(f"localhost:{master.port}") as mkv:
        mkv.put("/stream/file", io.BytesIO(b"x" * 3_000_000))
        mkv.put("/stream/chunks", (bytes([i]) * 100_000 for i in range(30)))
        assert mkv.get("/stream/file") == b"x" * 3_000_000
        assert mkv.get("/stream/chunks") == b"".join(bytes([i]) * 100_000 for i in range(30))
        keys = [f"/page/{i:03d}".encode() for i in range(25)]
        for key in keys:
            mkv.put(key, b"v")
        first = mkv.list("/page/", limit=10)
        assert first.keys == keys[:10] and first.next == keys[10]
        assert list(mkv.iter_keys("/page/", page_size=7)) == keys
        mkv.unlink(keys[3])
        assert list(mkv.iter_keys("/page/", kind="unlinked")) == [keys[3]]


def test_the_next_master_answers_when_one_is_down(make_master):
    master = make_master()
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, f"127.0.0.1:{master.port}"]) as mkv:
        mkv.put("/failover/k", io.BytesIO(b"value"))  # a file is sent again to the next one
        assert mkv.get("/failover/k") == b"value"
        assert mkv.masters[0].endswith(f":{master.port}")  # the one that answered goes first
    with Client(dead) as mkv, pytest.raises(Unavailable):
        mkv.get("/failover/k")


def nginx_group(volume) -> int:
    return os.getpgid(int((volume.dir / ".mkv" / "nginx.pid").read_text()))


def test_a_read_goes_on_from_another_replica_when_its_volume_dies(make_volumes, make_master):
    reading, other = make_volumes(2)
    master = make_master("-replicas", "2", "-subvolumes", "1", "-voltimeout", "200ms",
                         volumes=[reading, other])
    value = os.urandom(48 << 20)  # more than loopback buffers hold: the kill cuts the read
    with Client(f"localhost:{master.port}", chunk_size=1 << 16) as mkv:
        mkv.put("/big", value)
        # the master redirects to the replica whose HEAD check answers: `reading`, while
        # `other` is stopped; the client still knows `other` from Key-Volumes
        os.killpg(nginx_group(other), signal.SIGSTOP)
        chunks = mkv.stream("/big")
        try:
            received = [next(chunks)]
        finally:
            os.killpg(nginx_group(other), signal.SIGCONT)
        os.killpg(nginx_group(reading), signal.SIGKILL)
        received += list(chunks)
        assert len(received) > 2 and b"".join(received) == value


def test_the_asyncio_client_has_the_same_calls(make_master):
    master = make_master()

    async def check() -> None:
        async with AsyncClient(f"localhost:{master.port}") as mkv:
            await mkv.put("/async/a", b"one")
            await mkv.put("/async/b", io.BytesIO(b"two"))
            await mkv.put("/async/c", iter([b"thr", b"ee"]))
            with pytest.raises(KeyExists):
                await mkv.put("/async/a", b"again")
            assert await mkv.get("/async/a") == b"one"
            assert b"".join([c async for c in mkv.stream("/async/c")]) == b"three"
            assert await mkv.get("/async/b", 1) == b"wo"
            assert [k async for k in mkv.iter_keys("/async/", page_size=2)] == [
                b"/async/a", b"/async/b", b"/async/c"]
            await mkv.delete("/async/a")
            assert not await mkv.exists("/async/a")

    asyncio.run(check())


def test_the_shell_verbs(make_master, tmp_path):
    master = make_master()
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(10_000))

    def mkv(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(mkv_command(*args, "--master", f"localhost:{master.port}"),
                              input=stdin, capture_output=True, timeout=60)

    assert mkv("put", "/shell/file", str(source)).returncode == 0
    assert mkv("put", "/shell/stdin", "-", stdin=b"from stdin").returncode == 0
    exists = mkv("put", "/shell/file", str(source))
    assert exists.returncode == 1 and b"403" in exists.stderr
    assert mkv("put", "/shell/file", str(source), "--replace").returncode == 0
    assert mkv("get", "/shell/file", str(tmp_path / "out.bin")).returncode == 0
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert mkv("get", "/shell/stdin").stdout == b"from stdin"
    assert mkv("ls", "/shell/").stdout == b"/shell/file\n/shell/stdin\n"
    assert mkv("rm", "/shell/stdin").returncode == 0
    missing = mkv("get", "/shell/stdin")
    assert missing.returncode == 1 and b"404" in missing.stderr


def test_the_core_decides_what_both_clients_ask_next():
    """Failover and ReplicaRead without a network: what `Client` and `AsyncClient` both do."""
    masters = ["http://a", "http://b", "http://c"]
    call = core.Failover(masters, "PUT", "k", content=b"v")
    tried = []
    for request in call.requests():
        tried.append(request.url)
        if request.url == "http://a/k":
            call.failed(httpx.ConnectError("refused"))
        elif call.answered(httpx.Response(503 if request.url == "http://b/k" else 201)):
            break
    assert tried == ["http://a/k", "http://b/k", "http://c/k"]
    assert masters == ["http://c", "http://a", "http://b"]  # the one that answered goes first

    once = core.Failover(masters, "PUT", "k", content=iter([b"v"]))  # cannot be sent twice
    next(once.requests())
    with pytest.raises(Unavailable, match="no master answered"):
        once.failed(httpx.ReadError("cut"))

    redirect = httpx.Response(302, headers={"Location": "http://v1/x", "Key-Volumes": "v1,v2"})
    read = core.ReplicaRead(b"/k", 0, None, redirect)
    requests = read.requests()
    assert next(requests).headers == {} and read.answered(200)
    read.got(b"abc")
    read.failed(httpx.ReadError("cut"))
    following = next(requests)
    assert following.url.startswith("http://v2/") and following.headers == {"Range": "bytes=3-"}
    assert not read.answered(200)  # a whole value where the rest was asked for
    with pytest.raises(StopIteration):
        next(requests)
    assert "no replica gave the value" in str(read.unavailable())
    assert read.unavailable().status == 0

    def refused(*statuses: int) -> int:
        """The status of a read every replica refused with `statuses`, in turn."""
        past = core.ReplicaRead(b"/416", 10, None, redirect)
        for _request, status in zip(past.requests(), statuses, strict=True):
            assert not past.answered(status)
        return past.unavailable().status
    assert refused(416, 416) == 416  # the range starts past the value's end
    assert refused(416, 404) == 0  # one replica lost it: no telling, whatever the key's name
