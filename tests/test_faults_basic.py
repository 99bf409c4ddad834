"""Volumes that stop, a master that is stopped, and a value too big to hold in memory.

Each test here has its own volumes (it stops them) or its own master (it measures or stops it).
"""

import hashlib
import http.client
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from cluster import free_port, mkv_command
from conftest import (
    data_files,
    fetch,
    files_of,
    finish_put,
    key2path,
    md5hex,
    open_put,
    unique_key,
    url_path,
)


def kill_volume(vol) -> None:
    """Stop a volume at once: a second SIGTERM makes nginx drop requests in flight."""
    vol.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    vol.proc.send_signal(signal.SIGTERM)
    vol.proc.wait(10)


def test_gets_survive_a_stopped_volume(make_volumes, make_master):
    vols = make_volumes(3)
    master = make_master("-voltimeout", "200ms", volumes=vols)
    values = {unique_key(): os.urandom(100) for _ in range(10)}
    for key, value in values.items():
        assert master.put(key, value).status == 201
    statuses, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for key in values:
                statuses.append(master.call("GET", key).status)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.3)
        assert vols[0].stop() == 0
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {302}
    dead = f"127.0.0.1:{vols[0].port}"
    for key, value in values.items():
        for _ in range(5):
            reply = master.call("GET", key)
            assert reply.status == 302
            assert urlsplit(reply.header("Location")).netloc != dead
            assert dead in reply.header("Key-Volumes")
            assert fetch(reply.header("Location")) == value


def assert_failed_write_cleans_up(master, vols, key, make_volumes, down) -> None:
    assert master.listing(key)["keys"] == []
    assert master.listing(key, "unlinked")["keys"] == [key.decode()]
    assert master.call("GET", key).status == 404
    make_volumes.restart(down)
    assert master.call("DELETE", key).status == 204
    assert master.listing(key, "unlinked")["keys"] == []
    assert files_of(vols, key) == []
    assert all(data_files(v) == [] for v in vols)


def test_put_with_a_volume_down_fails_and_delete_cleans_up(make_volumes, make_master):
    vols = make_volumes(3)
    # strict: the PUT is tried on the stopped volume whether or not the master has noticed
    # (tests/test_volume_health.py covers the default)
    master = make_master("-strict_placement", volumes=vols)
    assert vols[1].stop() == 0
    key = unique_key()
    reply = master.put(key, b"value")
    assert 500 <= reply.status < 600
    assert_failed_write_cleans_up(master, vols, key, make_volumes, vols[1])


def test_put_after_a_failed_put_succeeds(make_volumes, make_master):
    vols = make_volumes(3)
    master = make_master(volumes=vols)
    assert vols[2].stop() == 0
    key = unique_key()
    assert 500 <= master.put(key, b"first try").status < 600
    make_volumes.restart(vols[2])
    assert master.put(key, b"second try").status == 201
    assert master.read(key) == b"second try"
    assert master.listing(key, "unlinked")["keys"] == []
    assert [p.read_bytes() for p in files_of(vols, key)] == [b"second try"] * 3


def test_volume_dies_during_a_put(make_volumes, make_master):
    vols = make_volumes(3)
    master = make_master(volumes=vols)
    key = unique_key()
    chunks = [os.urandom(32 << 10) for _ in range(16)]
    sock = open_put(master.port, key, sum(map(len, chunks)))
    result = []
    thread = threading.Thread(target=lambda: result.append(finish_put(sock, chunks, 0.1)))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while master.listing(key, "writing")["keys"] != [key.decode()]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        kill_volume(vols[0])
    finally:
        thread.join()
    assert len(result) == 1 and 500 <= result[0] < 600, result
    assert master.listing(key, "writing")["keys"] == []
    assert_failed_write_cleans_up(master, vols, key, make_volumes, vols[0])


def test_delete_with_a_volume_down_fails_and_keeps_the_key_unlinked(make_volumes, make_master):
    vols = make_volumes(3)
    master = make_master(volumes=vols)
    key = unique_key()
    assert master.put(key, b"value").status == 201
    assert vols[0].stop() == 0
    assert 500 <= master.call("DELETE", key).status < 600
    assert master.listing(key)["keys"] == []
    assert master.listing(key, "unlinked")["keys"] == [key.decode()]
    make_volumes.restart(vols[0])
    assert master.call("DELETE", key).status == 204
    assert files_of(vols, key) == []
    assert master.listing(key, "unlinked")["keys"] == []


# --- a value bigger than the master's memory budget ---

BIG = 256 << 20
CHUNK = 1 << 20
RSS_LIMIT_KIB = 100_000_000 // 1024  # 100 MB


def test_256_mib_put_streams(make_master):
    master = make_master()
    key = unique_key("big")
    base = os.urandom(CHUNK)
    sent = hashlib.md5()

    def body() -> Iterator[bytes]:
        for i in range(BIG // CHUNK):
            chunk = i.to_bytes(4, "big") + base[4:]
            sent.update(chunk)
            yield chunk

    before = master.process.peak_rss_kib()
    conn = http.client.HTTPConnection("127.0.0.1", master.port, timeout=120)
    try:
        conn.request("PUT", url_path(key), body=body(), headers={"Content-Length": str(BIG)})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201
    finally:
        conn.close()
    peak = master.process.peak_rss_kib()
    print(f"\nmaster peak RSS: {before} KiB before, {peak} KiB after a 256 MiB PUT")

    reply = master.call("GET", key)
    assert reply.status == 302
    assert reply.header("Content-Md5") == sent.hexdigest()
    url = urlsplit(reply.header("Location"))
    assert url.path.endswith(key2path(key))
    got, size = hashlib.md5(), 0
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request("GET", url.path)
        resp = conn.getresponse()
        assert resp.status == 200
        while data := resp.read(CHUNK):
            got.update(data)
            size += len(data)
    finally:
        conn.close()
    assert (size, got.hexdigest()) == (BIG, sent.hexdigest())
    assert peak < RSS_LIMIT_KIB, f"master peak RSS {peak} KiB"
    assert master.call("DELETE", key).status == 204


# --- stopping the master ---


def test_sigterm_stops_the_master_and_releases_the_index(make_master):
    first = make_master()
    key = unique_key()
    assert first.put(key, b"kept").status == 201
    # a second master on the same index is refused while the first holds it
    other = subprocess.run(
        mkv_command("-db", str(first.db), "-volumes", ",".join(first.addrs),
                    "-port", str(free_port()), "server"),
        capture_output=True, timeout=20)
    assert other.returncode != 0
    started = time.monotonic()
    first.process.proc.send_signal(signal.SIGTERM)
    assert first.process.proc.wait(5) == 0
    print(f"\nmaster stopped {time.monotonic() - started:.2f}s after SIGTERM")
    second = make_master(db=first.db)
    assert second.read(key) == b"kept"
    assert second.call("GET", key).header("Content-Md5") == md5hex(b"kept")


def test_sigterm_lets_a_put_in_flight_finish(make_master):
    master = make_master()
    key = unique_key()
    chunks = [b"x" * 4096] * 8
    sock = open_put(master.port, key, sum(map(len, chunks)))
    result = []
    thread = threading.Thread(target=lambda: result.append(finish_put(sock, chunks, 0.1)))
    thread.start()
    try:
        time.sleep(0.3)
        master.process.proc.send_signal(signal.SIGTERM)
    finally:
        thread.join()
    assert master.process.proc.wait(5) == 0
    assert result == [201]
    second = make_master(db=master.db)
    assert second.read(key) == b"x" * 4096 * 8
