"""SPEC §4, row by row, against a real master and real nginx volumes over loopback HTTP.

Also the seed README's curl examples verbatim, the flags that change answers or layout, and
records in Go mkv's format written straight into LevelDB (SPEC §3).
"""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from conftest import (
    fetch,
    files_of,
    finish_put,
    key2path,
    key2volume,
    md5hex,
    open_put,
    read_records,
    replica_file,
    request,
    slow_put,
    unique_key,
    url_path,
    write_records,
)

# --- the contract's fixed points (SPEC §2), so the helpers above are trustworthy ---


def test_key2path_and_key2volume_match_spec_tables():
    assert key2path(b"hello") == "/5d/41/aGVsbG8="
    assert key2path(b"helloworld") == "/fc/5e/aGVsbG93b3JsZA=="
    assert key2path(b"/???") == "/27/6f/Lz8/Pw=="
    stooges = ["larry", "moe", "curly"]
    first = {k: key2volume(k.encode(), stooges, 1, 3)[0].split("/")[0]
             for k in ("hello", "helloworld", "world", "blah")}
    assert first == {"hello": "larry", "helloworld": "curly", "world": "moe", "blah": "curly"}


# --- GET / HEAD ---


def test_get_and_head_of_live_key_redirect_to_a_replica(cluster):
    key, value = unique_key(), b"swag " * 1000
    assert cluster.put(key, value).status == 201
    expected = key2volume(key, cluster.addrs)
    locations = {f"http://{replica}{key2path(key)}" for replica in expected}
    for method in ("GET", "HEAD"):
        reply = cluster.call(method, key)
        assert reply.status == 302
        assert reply.header("Content-Length") == "0"
        assert reply.body == b""
        assert reply.header("Content-Md5") == md5hex(value)
        assert reply.header("Key-Volumes") == ",".join(expected)
        assert reply.header("Key-Balance") == "balanced"
        assert reply.header("Location") in locations
        assert fetch(reply.header("Location")) == value
    for replica in expected:
        assert replica_file(cluster.volumes, replica, key).read_bytes() == value
    # replicas are tried in random order: over many GETs, more than one is chosen
    seen = {cluster.call("GET", key).header("Location") for _ in range(40)}
    assert len(seen) > 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_get_missing_or_unlinked_is_404(cluster, method):
    missing = cluster.call(method, unique_key())
    assert (missing.status, missing.header("Content-Length")) == (404, "0")
    key = unique_key()
    assert cluster.put(key, b"v").status == 201
    assert cluster.call("UNLINK", key).status == 204
    unlinked = cluster.call(method, key)
    assert (unlinked.status, unlinked.header("Content-Length")) == (404, "0")


def test_fallback_redirects_missing_and_unlinked_keys(make_master):
    master = make_master("-fallback", "127.0.0.1:9")
    missing, unlinked, live = unique_key(), unique_key(), unique_key()
    assert master.put(unlinked, b"gone").status == 201
    assert master.call("UNLINK", unlinked).status == 204
    assert master.put(live, b"here").status == 201
    for key in (missing, unlinked):
        for method in ("GET", "HEAD"):
            reply = master.call(method, key)
            assert reply.status == 302
            assert reply.header("Location") == f"http://127.0.0.1:9{key.decode()}"
    assert master.read(live) == b"here"


def test_live_key_whose_files_are_all_gone_is_410(cluster):
    key = unique_key()
    assert cluster.put(key, b"value").status == 201
    files = files_of(cluster.volumes, key)
    assert len(files) == 3
    for path in files[:2]:
        path.unlink()
    # one replica left: every GET finds it
    survivor = files[2]
    for _ in range(10):
        reply = cluster.call("GET", key)
        assert reply.status == 302
        assert fetch(reply.header("Location")) == b"value"
        assert str(survivor).endswith(urlsplit(reply.header("Location")).path)
    survivor.unlink()
    for method in ("GET", "HEAD"):
        assert cluster.call(method, key).status == 410


def test_voltimeout_0_skips_the_check(make_master):
    master = make_master("-voltimeout", "0")
    key = unique_key()
    assert master.put(key, b"value").status == 201
    for path in files_of(master.volumes, key):
        path.unlink()
    reply = master.call("GET", key)
    assert reply.status == 302
    assert reply.header("Location").endswith(key2path(key))


# --- PUT / REPLACE ---


def test_put_201_then_403_when_live(cluster):
    key = unique_key()
    assert cluster.put(key, b"first").status == 201
    assert cluster.put(key, b"second").status == 403
    assert cluster.read(key) == b"first"


def test_put_empty_body_is_411_and_leaves_nothing(cluster):
    key = unique_key()
    assert cluster.put(key, b"").status == 411
    assert cluster.call("PUT", key, iter([]), chunked=True).status == 411
    assert cluster.call("GET", key).status == 404
    for what in ("list", "unlinked", "writing"):
        assert cluster.listing(key, what)["keys"] == []


def test_chunked_put_is_accepted(cluster):
    key = unique_key()
    chunks = [os.urandom(1000 + i) for i in range(50)]
    reply = cluster.call("PUT", key, iter(chunks), chunked=True)
    assert reply.status == 201
    value = b"".join(chunks)
    assert cluster.read(key) == value
    assert cluster.call("GET", key).header("Content-Md5") == md5hex(value)


def test_concurrent_puts_of_one_key_one_wins(make_master):
    """20 PUTs of one key whose headers reach the master together: one 201, the rest 409/403.

    To make them arrive together, the master is first kept busy for a moment by a large
    listing (it builds one synchronously), so all 20 requests are parsed in one go.
    """
    db = make_master.new_db()
    write_records(db, ((b"/filler/%06d" % i, b"127.0.0.1:1") for i in range(100_000)))
    master = make_master(db=db)
    key = unique_key()
    bodies = [bytes([65 + i]) * 4096 for i in range(20)]
    blocker = socket.create_connection(("127.0.0.1", master.port), timeout=30)
    socks = []
    try:
        for _ in bodies:
            socks.append(socket.create_connection(("127.0.0.1", master.port), timeout=30))
        time.sleep(0.1)  # every connection accepted
        blocker.sendall(b"GET /filler/?list HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.02)
        for sock, body in zip(socks, bodies, strict=True):
            sock.sendall(f"PUT {key.decode()} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())

        def trickle(i: int) -> int:
            body = bodies[i]
            return finish_put(socks[i], [body[j:j + 1024] for j in range(0, len(body), 1024)], 0.1)

        with ThreadPoolExecutor(len(bodies)) as pool:
            statuses = list(pool.map(trickle, range(len(bodies))))
        assert blocker.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        blocker.close()
        for sock in socks:
            sock.close()
    # whatever the statuses, the replicas must agree with each other and with the record
    stored = {p.read_bytes() for p in files_of(master.volumes, key)}
    assert len(stored) == 1, f"replicas differ: {sorted(v[:1] for v in stored)}"
    assert master.call("GET", key).header("Content-Md5") == md5hex(stored.pop())
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {201, 409, 403}, statuses
    assert master.read(key) == bodies[statuses.index(201)]
    assert master.listing(key, "writing")["keys"] == []


def test_other_changes_during_a_write_are_409(cluster):
    key = unique_key()
    assert cluster.put(key, b"old").status == 201
    chunks = [b"n" * 1024] * 8
    sock = open_put(cluster.port, key, 8 * 1024, "REPLACE")
    result = []
    thread = threading.Thread(target=lambda: result.append(finish_put(sock, chunks, 0.1)))
    thread.start()
    try:
        time.sleep(0.2)  # the REPLACE holds the key while its body trickles in
        for method in ("PUT", "REPLACE"):
            assert cluster.put(key, b"other", method=method).status == 409
        for method in ("DELETE", "UNLINK", "REBALANCE"):
            assert cluster.call(method, key).status == 409, method
        assert cluster.read(key) in (b"old", b"n" * 8192)
    finally:
        thread.join()
    assert result == [201]
    assert cluster.read(key) == b"n" * 8192


def test_replace_overwrites_a_live_key(cluster):
    key = unique_key()
    assert cluster.put(key, b"old").status == 201
    assert cluster.put(key, b"new value", method="REPLACE").status == 201
    assert cluster.read(key) == b"new value"
    assert cluster.call("GET", key).header("Content-Md5") == md5hex(b"new value")
    fresh = unique_key()
    assert cluster.put(fresh, b"x", method="REPLACE").status == 201
    assert cluster.read(fresh) == b"x"


def test_replace_readers_never_see_a_half_written_value(cluster):
    key = unique_key()
    old, new = b"o" * (1 << 20), b"n" * (1 << 20)
    assert cluster.put(key, old).status == 201
    seen, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(cluster.read(key))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        chunks = [new[i:i + (128 << 10)] for i in range(0, len(new), 128 << 10)]
        status = slow_put(cluster.port, key, chunks, 0.1, method="REPLACE")
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert status == 201
    assert seen and all(v in (old, new) for v in seen)
    assert seen[-1] == new
    assert cluster.read(key) == new


def test_put_after_unlink_is_allowed(cluster):
    key = unique_key()
    assert cluster.put(key, b"one").status == 201
    assert cluster.call("UNLINK", key).status == 204
    assert cluster.put(key, b"two").status == 201
    assert cluster.read(key) == b"two"
    assert key.decode() not in cluster.listing(key, "unlinked")["keys"]


# --- DELETE / UNLINK / RELINK ---


def test_delete(cluster):
    key = unique_key()
    assert cluster.call("DELETE", key).status == 404
    assert cluster.put(key, b"value").status == 201
    assert len(files_of(cluster.volumes, key)) == 3
    assert cluster.call("DELETE", key).status == 204
    assert files_of(cluster.volumes, key) == []
    assert cluster.call("GET", key).status == 404
    assert cluster.call("DELETE", key).status == 404
    for what in ("list", "unlinked", "writing"):
        assert cluster.listing(key, what)["keys"] == []


def test_delete_of_an_unlinked_key(cluster):
    key = unique_key()
    assert cluster.put(key, b"value").status == 201
    assert cluster.call("UNLINK", key).status == 204
    assert cluster.call("DELETE", key).status == 204
    assert files_of(cluster.volumes, key) == []
    assert cluster.listing(key, "unlinked")["keys"] == []


def test_protect_needs_unlink_before_delete(make_master):
    master = make_master("-protect")
    key = unique_key()
    assert master.call("DELETE", unique_key()).status == 404
    assert master.put(key, b"value").status == 201
    assert master.call("DELETE", key).status == 403
    assert master.read(key) == b"value"
    assert len(files_of(master.volumes, key)) == 3
    assert master.call("UNLINK", key).status == 204
    assert master.call("DELETE", key).status == 204
    assert files_of(master.volumes, key) == []
    assert master.call("GET", key).status == 404


def test_unlink(cluster):
    key = unique_key()
    assert cluster.call("UNLINK", key).status == 404
    assert cluster.put(key, b"value").status == 201
    assert cluster.call("UNLINK", key).status == 204
    assert cluster.call("UNLINK", key).status == 404
    assert cluster.call("GET", key).status == 404
    assert [p.read_bytes() for p in files_of(cluster.volumes, key)] == [b"value"] * 3
    assert cluster.listing(key, "unlinked")["keys"] == [key.decode()]
    assert cluster.listing(key)["keys"] == []


def test_relink(cluster):
    key = unique_key()
    assert cluster.call("RELINK", key).status == 404
    assert cluster.put(key, b"value").status == 201
    assert cluster.call("RELINK", key).status == 404  # live
    assert cluster.call("UNLINK", key).status == 204
    assert cluster.call("RELINK", key).status == 204
    assert cluster.read(key) == b"value"
    assert cluster.call("GET", key).header("Content-Md5") == md5hex(b"value")
    assert cluster.listing(key)["keys"] == [key.decode()]
    assert cluster.listing(key, "unlinked")["keys"] == []


# --- listings ---


def test_list_unlinked_start_limit(cluster):
    prefix = f"/ls-{uuid.uuid4().hex}/"
    names = ["a", "b", "b0", "c", "d", "e"]
    for name in names:
        assert cluster.put(f"{prefix}{name}".encode(), name.encode()).status == 201
    assert cluster.call("UNLINK", f"{prefix}d".encode()).status == 204
    live = [prefix + n for n in ["a", "b", "b0", "c", "e"]]
    p = prefix.encode()
    assert cluster.listing(p) == {"next": "", "keys": live}
    assert cluster.listing(p, limit="2") == {"next": live[2], "keys": live[:2]}
    assert cluster.listing(p, start=live[2], limit="2") == {"next": live[4], "keys": live[2:4]}
    assert cluster.listing(p, start=live[4], limit="2") == {"next": "", "keys": live[4:]}
    assert cluster.listing(p, start=live[1]) == {"next": "", "keys": live[1:]}
    assert cluster.listing(f"{prefix}b".encode()) == {"next": "", "keys": live[1:3]}
    assert cluster.listing(p, "unlinked") == {"next": "", "keys": [prefix + "d"]}
    assert cluster.listing(p, "unlinked", limit="1") == {"next": "", "keys": [prefix + "d"]}
    assert cluster.listing(p, "writing") == {"next": "", "keys": []}
    reply = request(cluster.port, "GET", f"{prefix}?list")
    assert reply.header("Content-Type") == "application/json"
    for bad in ("abc", "-1", "1.5", "0x10"):
        for what in ("list", "unlinked", "writing"):
            assert request(cluster.port, "GET", f"{prefix}?{what}&limit={bad}").status == 400


def test_writing_lists_a_put_in_progress(cluster):
    key = unique_key()
    chunks = [b"x" * 1024] * 12
    result = []
    thread = threading.Thread(target=lambda: result.append(
        slow_put(cluster.port, key, chunks, 0.1)))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while cluster.listing(key, "writing")["keys"] != [key.decode()]:
            assert time.monotonic() < deadline, "the PUT never showed under ?writing"
            time.sleep(0.02)
        assert cluster.listing(key)["keys"] == []
        assert cluster.call("GET", key).status == 404
    finally:
        thread.join()
    assert result == [201]
    assert cluster.listing(key, "writing")["keys"] == []
    assert cluster.listing(key)["keys"] == [key.decode()]


def test_init_record_is_listed_as_writing_and_not_served(make_master, volumes):
    db_key = b"/init-record"
    db = make_master.new_db()
    write_records(db, {db_key: b"INIT" + f"{volumes[0].addr}/sv01".encode()})
    master = make_master(db=db)
    assert master.listing(b"/", "writing") == {"next": "", "keys": ["/init-record"]}
    assert master.listing(b"/") == {"next": "", "keys": []}
    assert master.call("GET", db_key).status == 404


def test_list_over_a_million_keys_without_limit_is_413(make_master):
    db = make_master.new_db()
    value = b"127.0.0.1:1/sv00,127.0.0.1:2/sv00"
    write_records(db, ((b"/big/%07d" % i, value) for i in range(1_000_001)))
    master = make_master(db=db)
    before = master.process.reset_peak_rss()
    assert request(master.port, "GET", "/?list").status == 413
    streamed = request(master.port, "GET", "/big/0?list")  # a million keys, a page at a time
    grown = master.process.peak_rss_kib() - before
    print(f"?list of 1,000,000 keys: the master's RSS grew {grown} KiB at its peak")
    assert streamed.status == 200
    assert streamed.body == b'{"next":"","keys":[%s]}' % b",".join(
        b'"/big/%07d"' % i for i in range(1_000_000))
    assert grown < 32 * 1024
    page = master.listing(b"/big/", limit="3")
    assert page == {"next": "/big/0000003", "keys": ["/big/0000000", "/big/0000001",
                                                    "/big/0000002"]}
    assert master.listing(b"/big/", start="/big/1000000") == {"next": "",
                                                              "keys": ["/big/1000000"]}
    assert len(master.listing(b"/big/000001")["keys"]) == 10


def test_get_with_another_query_is_403(cluster):
    key = unique_key()
    assert cluster.put(key, b"v").status == 201
    for query in ("other", "foo=bar", "x&y"):
        assert request(cluster.port, "GET", f"{url_path(key)}?{query}").status == 403


# --- REBALANCE, unknown methods ---


def test_rebalance_moves_a_key_to_todays_placement(make_master, volumes):
    addrs = [v.addr for v in volumes]
    key, value = unique_key("rb"), b"misplaced value"
    today = key2volume(key, addrs)
    # the same volumes, each on the subvolume after the right one, in reverse order
    wrong = []
    for replica in reversed(today):
        addr, sub = replica.split("/sv")
        wrong.append(f"{addr}/sv{(int(sub, 16) + 1) % 10:02X}")
    for replica in wrong:
        path = replica_file(volumes, replica, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)
    db = make_master.new_db()
    write_records(db, {key: b"HASH" + md5hex(value).encode() + ",".join(wrong).encode()})
    master = make_master(db=db)
    before = master.call("GET", key)
    assert before.status == 302
    assert before.header("Key-Balance") == "unbalanced"
    assert before.header("Key-Volumes") == ",".join(wrong)

    assert master.call("REBALANCE", key).status == 204
    after = master.call("GET", key)
    assert after.status == 302
    assert after.header("Key-Balance") == "balanced"
    assert after.header("Key-Volumes") == ",".join(today)
    assert after.header("Content-Md5") == md5hex(value)
    assert fetch(after.header("Location")) == value
    for replica in today:
        assert replica_file(volumes, replica, key).read_bytes() == value
    for replica in wrong:
        assert not replica_file(volumes, replica, key).exists()
    assert master.call("REBALANCE", key).status == 204  # already in place
    assert master.call("REBALANCE", unique_key()).status == 404


def test_unknown_method_is_405(cluster):
    key = unique_key()
    for method in ("FOO", "PATCH", "PROPFIND"):
        assert cluster.call(method, key).status == 405
    assert cluster.listing(key, "unlinked")["keys"] == []


# --- keys that cannot be stored ---


@pytest.mark.parametrize("path,status", [
    ("/", None),
    ("/" + "a" * 300, None),
    ("/" + "a" * 189, None),          # base64 of 190 bytes: 256 characters
    ("/%3F%3F", None),                # `/??`: base64 `Lz8/` ends in `/`
    ("/a/./b", 400),
    ("/a/../b", 400),
    ("/./a", 400),
    ("/a/..", 400),
    ("/a%00b", 400),
    ("/a%zzb", 400),
    ("/a%fb", 400),
    ("/a%ff", 400),
])
def test_unstorable_keys_are_refused_and_leave_nothing(make_master, path, status):
    master = make_master()
    for method in ("PUT", "REPLACE"):
        reply = request(master.port, method, path, b"value")
        assert 400 <= reply.status < 500, (method, path, reply.status)
        if status is not None:
            assert reply.status == status
    for what in ("list", "unlinked", "writing"):
        assert master.listing(b"/", what) == {"next": "", "keys": []}


def test_longest_storable_key_is_stored(cluster):
    key = b"/" + uuid.uuid4().hex.encode() + b"a" * (188 - 32)  # 189 bytes: 252 base64 chars
    assert len(key2path(key).rsplit("/", 1)[1]) == 252
    assert cluster.put(key, b"long").status == 201
    assert cluster.read(key) == b"long"


def test_key_whose_base64_has_a_slash_nests_directories(cluster):
    key = b"/???"
    assert cluster.call("PUT", "/%3F%3F%3F", b"question").status == 201
    try:
        reply = cluster.call("GET", "/%3F%3F%3F")
        assert reply.status == 302
        assert reply.header("Location").endswith("/27/6f/Lz8/Pw==")
        assert fetch(reply.header("Location")) == b"question"
        files = files_of(cluster.volumes, key)
        assert len(files) == 3
        for path in files:
            assert path.name == "Pw==" and path.parent.name == "Lz8" and path.parent.is_dir()
        assert "/???" in cluster.listing(b"/???")["keys"]
    finally:
        assert cluster.call("DELETE", "/%3F%3F%3F").status == 204
    assert files_of(cluster.volumes, key) == []


def test_utf8_key(cluster):
    key = f"/ünï-{uuid.uuid4().hex}/日本".encode()
    assert cluster.put(key, b"utf8").status == 201
    assert cluster.read(key) == b"utf8"
    assert cluster.listing(key)["keys"] == [key.decode()]


# --- flags that change answers or layout ---


def test_md5sum_false_stores_no_md5(make_master):
    master = make_master("-md5sum=false")
    key = unique_key()
    assert master.put(key, b"value").status == 201
    reply = master.call("GET", key)
    assert reply.status == 302
    assert reply.header("Content-Md5") is None
    assert fetch(reply.header("Location")) == b"value"
    master.stop()
    assert read_records(master.db)[key] == ",".join(key2volume(key, master.addrs)).encode()


def test_subvolumes_1_puts_files_at_the_volume_root(make_master):
    master = make_master("-subvolumes", "1")
    key = unique_key()
    assert master.put(key, b"value").status == 201
    reply = master.call("GET", key)
    assert reply.header("Key-Volumes") == ",".join(key2volume(key, master.addrs, 3, 1))
    assert reply.header("Location") in {f"http://{a}{key2path(key)}" for a in master.addrs}
    for vol in master.volumes:
        assert (vol.dir / key2path(key).lstrip("/")).read_bytes() == b"value"
    assert files_of(master.volumes, key) == [v.dir / key2path(key).lstrip("/")
                                             for v in master.volumes]


def test_replicas_2(make_master):
    master = make_master("-replicas", "2")
    key = unique_key()
    assert master.put(key, b"two").status == 201
    expected = key2volume(key, master.addrs, 2)
    assert master.call("GET", key).header("Key-Volumes") == ",".join(expected)
    assert sorted(files_of(master.volumes, key)) == sorted(
        replica_file(master.volumes, r, key) for r in expected)
    assert master.call("DELETE", key).status == 204
    assert files_of(master.volumes, key) == []


def test_vdir_colocation_keeps_a_directory_together(make_master):
    master = make_master("-vdir_colocation", "-replicas", "1")
    directory = f"/dir-{uuid.uuid4().hex}/sub"
    keys = [f"{directory}/k{i}".encode() for i in range(12)]
    placement = ",".join(key2volume(directory.encode(), master.addrs, 1))
    for key in keys:
        assert master.put(key, key).status == 201
        reply = master.call("GET", key)
        assert reply.header("Key-Volumes") == placement
        assert reply.header("Key-Balance") == "balanced"
        assert reply.header("Location") == f"http://{placement}{key2path(key)}"
        assert fetch(reply.header("Location")) == key
    # a top-level key is placed by its directory, the empty string
    top = unique_key()
    assert master.put(top, b"top").status == 201
    assert master.call("GET", top).header("Key-Volumes") == ",".join(
        key2volume(b"", master.addrs, 1))


# --- Go mkv's records (SPEC §3) ---


def test_go_records_are_served_and_new_records_decode(make_master, volumes):
    p1, p2, p3 = (v.addr for v in volumes)
    value = b"written by Go mkv"
    md5 = md5hex(value)
    live, nohash = unique_key("go"), unique_key("go")
    deleted, deleted_hash = unique_key("go"), unique_key("go")
    records = {
        live: f"HASH{md5}{p1}/sv02,{p2}/sv05".encode(),
        nohash: f"{p1}/sv01,{p3}/sv03".encode(),
        deleted: f"DELETED{p1}/sv02,{p2}/sv05".encode(),
        deleted_hash: f"DELETEDHASH{md5}{p3}/sv07".encode(),
    }
    for key, raw in records.items():
        for replica in raw.decode().removeprefix("DELETED").removeprefix(f"HASH{md5}").split(","):
            path = replica_file(volumes, replica, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(value)
    db = make_master.new_db()
    write_records(db, records)
    master = make_master(db=db)

    reply = master.call("GET", live)
    assert reply.status == 302
    assert reply.header("Content-Md5") == md5
    assert reply.header("Key-Volumes") == f"{p1}/sv02,{p2}/sv05"
    assert reply.header("Key-Balance") == "unbalanced"
    assert reply.header("Location") in {f"http://{p1}/sv02{key2path(live)}",
                                        f"http://{p2}/sv05{key2path(live)}"}
    assert fetch(reply.header("Location")) == value
    reply = master.call("GET", nohash)
    assert reply.status == 302
    assert reply.header("Content-Md5") is None
    assert fetch(reply.header("Location")) == value
    for key in (deleted, deleted_hash):
        assert master.call("GET", key).status == 404
    assert sorted(master.listing(b"/go-", "unlinked")["keys"]) == sorted(
        [deleted.decode(), deleted_hash.decode()])
    assert master.call("RELINK", deleted_hash).status == 204
    assert master.call("GET", deleted_hash).header("Content-Md5") == md5

    fresh, unlinked = unique_key("new"), unique_key("new")
    assert master.put(fresh, b"fresh").status == 201
    assert master.put(unlinked, b"unlinked").status == 201
    assert master.call("UNLINK", unlinked).status == 204
    assert master.stop() == 0
    after = read_records(db)

    def placement(k: bytes) -> bytes:
        return ",".join(key2volume(k, master.addrs)).encode()

    assert after[fresh] == b"HASH" + md5hex(b"fresh").encode() + placement(fresh)
    assert after[unlinked] == b"DELETEDHASH" + md5hex(b"unlinked").encode() + placement(unlinked)
    assert after[deleted_hash] == f"HASH{md5}{p3}/sv07".encode()
    for key in (live, nohash, deleted):
        assert after[key] == records[key]


# --- the seed README, verbatim ---


def test_readme_curl_examples(make_master, tmp_path):
    vols = make_master.volumes
    master = make_master(addrs=[f"localhost:{v.port}" for v in vols])
    port = master.port
    local = tmp_path / "file.txt"
    local.write_bytes(os.urandom(100_000))
    got = tmp_path / "got.txt"

    def curl(command: str) -> subprocess.CompletedProcess:
        command = command.replace("localhost:3000", f"localhost:{port}")
        command = command.replace("/path/to/local/file.txt", str(local))
        args = command.split()
        if args[-2:-1] == [str(local)] and args[-3] == "-o":
            args[-2] = str(got)
        return subprocess.run(args, capture_output=True, timeout=20)

    def status(result: subprocess.CompletedProcess) -> list[int]:
        """The final statuses curl saw (100 Continue left out)."""
        return [int(line.split()[2]) for line in result.stderr.decode().splitlines()
                if line.startswith("< HTTP/") and not line.split()[2].startswith("1")]

    put = curl("curl -v -L -X PUT -d bigswag localhost:3000/wehave")
    assert (put.returncode, status(put)) == (0, [201])
    get = curl("curl -v -L localhost:3000/wehave")
    assert (get.returncode, status(get), get.stdout) == (0, [302, 200], b"bigswag")
    delete = curl("curl -v -L -X DELETE localhost:3000/wehave")
    assert status(delete) == [204]
    unlink = curl("curl -v -L -X UNLINK localhost:3000/wehave")
    assert status(unlink) == [404]  # deleted just above
    listed = curl("curl -v -L localhost:3000/we?list")
    assert json.loads(listed.stdout) == {"next": "", "keys": []}
    unlinked = curl("curl -v -L localhost:3000/?unlinked")
    assert json.loads(unlinked.stdout) == {"next": "", "keys": []}
    put_file = curl("curl -v -L -X PUT -T /path/to/local/file.txt localhost:3000/file.txt")
    assert (put_file.returncode, status(put_file)) == (0, [201])
    get_file = curl("curl -v -L -o /path/to/local/file.txt localhost:3000/file.txt")
    assert (get_file.returncode, status(get_file)) == (0, [302, 200])
    assert got.read_bytes() == local.read_bytes()
    assert hashlib.md5(got.read_bytes()).hexdigest() == md5hex(local.read_bytes())

    # the virtual delete and the two listings with something in them
    assert status(curl("curl -v -L -X PUT -d bigswag localhost:3000/wehave")) == [201]
    assert json.loads(curl("curl -v -L localhost:3000/we?list").stdout)["keys"] == ["/wehave"]
    assert status(curl("curl -v -L -X UNLINK localhost:3000/wehave")) == [204]
    assert json.loads(curl("curl -v -L localhost:3000/?unlinked").stdout) == {
        "next": "", "keys": ["/wehave"]}
    assert json.loads(curl("curl -v -L localhost:3000/we?list").stdout)["keys"] == []
