"""Hostile HTTP against a real master over raw sockets (issue 6, item 5).

Each malformed or abusive request must get a 4xx or a close; afterwards the master still
serves, and no index record (`?list`, `?unlinked`, `?writing`) and no volume file has appeared.
The module shares one master (`-idletimeout 2s -readtimeout 2s`) on three private volumes; its
last test stops that master and reads the LevelDB index itself: only the keys put on purpose.
"""

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import (
    Master,
    MasterFactory,
    VolumeFactory,
    data_files,
    files_of,
    key2path,
    read_records,
)
from rawhttp import Raw, raw_status

KNOWN = {f"/known-{i}".encode(): f"value {i}".encode() * (i + 1) for i in range(10)}
IDLE = 2.0  # the master's -idletimeout and -readtimeout
OPEN_FILES = 4096  # 1,000 idle connections and everything else in this process


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Iterator[Master]:
    # the 1,000 idle connections need descriptors here and in the master (which inherits these)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    tmp = tmp_path_factory.mktemp("hostile")
    vols = VolumeFactory(tmp)
    masters = MasterFactory(tmp, [])
    try:
        volumes = vols(3)
        masters.volumes = volumes
        m = masters("-idletimeout", "2s", "-readtimeout", "2s")
        for key, value in KNOWN.items():
            assert m.put(key, value).status == 201
        yield m
    finally:
        masters.stop_all()
        vols.stop_all()


# --- what must not change ---


@dataclass
class Snapshot:
    listings: dict[str, list[str]]
    files: set[str] = field(default_factory=set)


def snapshot(master: Master) -> Snapshot:
    listings = {what: master.listing("/", what)["keys"] for what in ("list", "unlinked", "writing")}
    files = {str(p) for vol in master.volumes for p in data_files(vol)}
    return Snapshot(listings, files)


def assert_still_serving(master: Master) -> None:
    for key, value in list(KNOWN.items())[:2]:
        assert master.read(key) == value
    assert master.call("GET", "/missing-after-hostile").status == 404


# --- the hostile requests ---


def put(target: bytes, body: bytes = b"hello", *headers: bytes, version: bytes = b"HTTP/1.1",
        method: bytes = b"PUT") -> bytes:
    lines = [method + b" " + target + b" " + version, b"Host: x",
             b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(target: bytes, body: bytes) -> bytes:
    return b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body


@dataclass
class Case:
    data: bytes
    statuses: tuple[int, ...] = ()  # the answer required; empty: any 4xx, or a close
    probes: tuple[bytes, ...] = ()  # request targets (raw) that must still answer 404 afterwards
    shut: bool = False  # half-close after sending (a request cut off, then closed)


BIG = b"a" * 100_000
CASES: dict[str, Case] = {
    "tls_client_hello": Case(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))),
    "binary_garbage": Case(bytes(range(256)) * 4),
    "header_without_colon": Case(b"GET /known-0 HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
                                 (400,)),
    "header_line_100k": Case(b"GET /known-0 HTTP/1.1\r\nHost: x\r\nX-Big: " + BIG + b"\r\n\r\n",
                             (431,)),
    "url_100k": Case(b"PUT /" + BIG + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
                     (431, 414)),
    "10000_headers": Case(b"GET /known-0 HTTP/1.1\r\n"
                          + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n",
                          (431,)),
    "content_length_and_transfer_encoding": Case(
        b"PUT /smuggle-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", (400,), (b"/smuggle-1",)),
    "transfer_encoding_and_content_length": Case(
        b"PUT /smuggle-2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", (400,), (b"/smuggle-2",)),
    "smuggled_get_behind_transfer_encoding": Case(
        b"PUT /smuggle-3 HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"PUT /smuggle-4 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        (400,), (b"/smuggle-3", b"/smuggle-4")),
    "two_content_lengths": Case(put(b"/twocl", b"hello!", b"Content-Length: 6"), (400,),
                                (b"/twocl",)),
    "negative_content_length": Case(
        b"PUT /negcl HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello", (400,), (b"/negcl",)),
    "non_numeric_content_length": Case(
        b"PUT /nancl HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello", (400,), (b"/nancl",)),
    "overflowing_content_length": Case(
        b"PUT /bigcl HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
        (400,), (b"/bigcl",)),
    "space_before_colon": Case(
        b"PUT /spcl HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", (400,), (b"/spcl",)),
    "invalid_chunk_size": Case(chunked(b"/chunk-1", b"zz\r\nhello\r\n0\r\n\r\n"),
                               probes=(b"/chunk-1",)),
    "overflowing_chunk_size": Case(
        chunked(b"/chunk-2", b"f" * 21 + b"\r\nhello\r\n0\r\n\r\n"), probes=(b"/chunk-2",)),
    "negative_chunk_size": Case(chunked(b"/chunk-3", b"-5\r\nhello\r\n0\r\n\r\n"),
                                probes=(b"/chunk-3",)),
    "transfer_encoding_not_chunked": Case(
        b"PUT /te-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        probes=(b"/te-gzip",)),
    "http_0.9_request_line_only": Case(b"GET /known-0\r\n"),
    "http_2_preface": Case(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    "unknown_http_version": Case(b"GET /known-0 HTTP/9.9\r\nHost: x\r\n\r\n", (400, 505)),
    "non_ascii_method": Case("GÉT /known-0 HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    "lower_case_method": Case(b"get /known-0 HTTP/1.1\r\nHost: x\r\n\r\n"),
    "method_of_5000_bytes": Case(b"X" * 5000 + b" /known-0 HTTP/1.1\r\nHost: x\r\n\r\n"),
    "unknown_method": Case(b"PROPFIND /known-0 HTTP/1.1\r\nHost: x\r\n\r\n", (405,)),
    "connect_method": Case(b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n"),
    "control_character_in_header": Case(b"GET /known-0 HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
                                        (400,)),
    "nul_in_header_name": Case(b"GET /known-0 HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n", (400,)),
    "bare_lf_line_ends": Case(b"PUT /lf HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello",
                              probes=(b"/lf",)),
    "cut_off_in_the_headers": Case(b"PUT /cut-1 HTTP/1.1\r\nHost: x\r\nContent-Le", shut=True,
                                   probes=(b"/cut-1",)),
    "cut_off_in_the_method": Case(b"REPL", shut=True),
    "dot_dot_segment": Case(put(b"/a/../dotdot"), (400,), (b"/dotdot",)),
    "encoded_dot_dot_segment": Case(put(b"/a/%2e%2E/dotdot2"), (400,), (b"/dotdot2",)),
    "dot_segment": Case(put(b"/a/./dot"), (400,), (b"/a/dot",)),
    "raw_nul_in_key": Case(put(b"/nul\x00key"), (400,), (b"/nul",)),
    "percent_00_in_key": Case(put(b"/pct%00key"), (400,), (b"/pct",)),
    "invalid_percent_encoding": Case(put(b"/pct%zzkey"), (400,), (b"/pct",)),
    "truncated_percent_encoding": Case(put(b"/pct%2"), (400,), (b"/pct",)),
    "invalid_utf8_encoded": Case(put(b"/utf%ff%fe"), (400,)),
    "overlong_utf8_slash": Case(put(b"/utf%c0%afx"), (400,)),
    "invalid_utf8_raw": Case(put(b"/utf\xff\xfe")),
    "empty_key": Case(put(b"/"), (400,)),
    "key_without_leading_slash": Case(put(b"noslash"), probes=(b"/noslash",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request(master: Master, name: str) -> None:
    case = CASES[name]
    before = snapshot(master)
    c = Raw(master.port)
    started = time.monotonic()
    try:
        c.send(case.data)
        if case.shut:
            c.shut()
        answer = c.response()
        took = time.monotonic() - started
        status = answer[0] if answer else None
        if case.statuses:
            assert status in case.statuses, f"{name}: {status} {answer}"
        else:
            assert status is None or 400 <= status < 500, f"{name}: {status} {answer}"
        if status is None or answer[1].get("connection") == "close":
            assert c.closed(), f"{name}: the master said it closes, but did not"
    finally:
        c.close()
    print(f"\n{name}: {status or 'closed'} after {took * 1000:.0f} ms")
    assert_still_serving(master)
    for target in case.probes:
        assert raw_status(master.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 404
    assert snapshot(master) == before


# --- hostile requests the master is known to mishandle (see the marks) ---

ABSOLUTE_FORM = put(b"http://evil.example/absolute")
ASTERISK_FORM = put(b"*")
HTTP09_PUT = b"PUT /http09-put\r\nContent-Length: 5\r\n\r\nhello"


def assert_rejected_without_a_trace(master: Master, data: bytes, key: bytes) -> None:
    """4xx or a close; then no record under any name (checked by the key's own request
    target as well as by the listings) and no file."""
    before = snapshot(master)
    try:
        status = raw_status(master.port, data)
        assert status is None or 400 <= status < 500, f"answered {status}"
        assert snapshot(master) == before
        assert files_of(master.volumes, key) == []
    finally:  # whatever was stored by mistake goes, so later tests see a clean index
        target = data.split(b" ", 2)[1].split(b"\r\n")[0]
        raw_status(master.port, b"DELETE " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_still_serving(master)


def test_absolute_form_target_is_refused(master: Master) -> None:
    assert_rejected_without_a_trace(master, ABSOLUTE_FORM, b"http://evil.example/absolute")


def test_asterisk_form_target_is_refused(master: Master) -> None:
    assert_rejected_without_a_trace(master, ASTERISK_FORM, b"*")


def test_http09_put_is_refused(master: Master) -> None:
    assert_rejected_without_a_trace(master, HTTP09_PUT, b"/http09-put")


def test_http09_get_is_refused(master: Master) -> None:
    status = raw_status(master.port, b"GET /known-0\r\n\r\n")
    assert status is None or 400 <= status < 500, f"answered {status}"


# --- bodies cut off: nothing live, nothing on disk ---


@pytest.mark.parametrize("body", [
    b"5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",  # a good chunk, then an invalid chunk size
    b"5\r\nhello\r\n5\r\nhel",  # cut off inside a chunk, then closed
], ids=["invalid_second_chunk_size", "cut_off_in_the_body"])
def test_body_cut_off_leaves_nothing_live(master: Master, body: bytes) -> None:
    """A write that began, then broke: a 400 (the body broke the protocol) or a close (it was
    cut off), no live key, no file; the record is at most unlinked (SPEC §4 leaves a failed
    write unlinked so a later DELETE cleans up)."""
    key = b"/cut-body-" + str(len(body)).encode()
    before = snapshot(master)
    c = Raw(master.port)
    try:
        c.send(chunked(key, body))
        c.shut()
        answer = c.response()
        assert answer is None or answer[0] == 400, answer
    finally:
        c.close()
    deadline = time.monotonic() + 5
    while master.listing(key, "writing")["keys"]:
        assert time.monotonic() < deadline, "the broken write stays in progress"
        time.sleep(0.01)
    assert master.call("GET", key).status == 404
    assert master.listing(key)["keys"] == []
    assert files_of(master.volumes, key) == []
    leftover = master.listing(key, "unlinked")["keys"]
    assert leftover in ([], [key.decode()])
    print(f"\n{key.decode()}: {'left unlinked' if leftover else 'no record'}")
    if leftover:
        # The broken write holds the key until it has removed its files; that may be a moment
        # after its record became unlinked, and a DELETE meeting it is told 409 meanwhile.
        while (status := master.call("DELETE", key).status) == 409:
            assert time.monotonic() < deadline, "the broken write keeps its key"
            time.sleep(0.01)
        assert status == 204
    assert_still_serving(master)
    assert snapshot(master) == before


def test_stalled_put_body_is_timed_out(master: Master) -> None:
    """Slowloris on the body: -readtimeout applies within a PUT's body too."""
    key = b"/stalled-body"
    c = Raw(master.port, timeout=3 * IDLE + 2)
    started = time.monotonic()
    try:
        c.send(b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" % key
               + b"x" * 10)
        try:
            answer = c.response()
        except TimeoutError:
            answer = "nothing"
        took = time.monotonic() - started
        print(f"\nPUT body stalled: {answer if answer != 'nothing' else 'no answer'} "
              f"after {took:.1f}s (-readtimeout {IDLE}s)")
        assert answer != "nothing", "neither an answer nor a close"
        assert answer is None or answer[0] == 408
    finally:
        c.close()
        deadline = time.monotonic() + 5  # the close ends the write; clean up after it
        while master.listing(key, "writing")["keys"] and time.monotonic() < deadline:
            time.sleep(0.01)
        master.call("DELETE", key)
    assert master.listing(key)["keys"] == []


# --- volume of requests ---


def test_1000_pipelined_requests_answered_in_order(master: Master) -> None:
    known = list(KNOWN)
    expected, requests = [], []
    for i in range(1000):
        key = known[i % len(known)]
        kind = i % 3
        if kind == 0:
            requests.append(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % key)
            expected.append((302, key2path(key)))
        elif kind == 1:
            requests.append(b"HEAD /missing-%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            expected.append((404, ""))
        else:
            requests.append(b"GET %s?list HTTP/1.1\r\nHost: x\r\n\r\n" % key)
            expected.append((200, key.decode()))
    c = Raw(master.port, timeout=30)
    started = time.monotonic()
    try:
        assert c.send(b"".join(requests))
        for i, (status, mark) in enumerate(expected):
            answer = c.response(head_request=i % 3 == 1)
            assert answer is not None, f"closed after {i} answers"
            got, headers, body = answer
            assert got == status, f"answer {i}: {got}, expected {status}"
            if status == 302:
                assert headers["location"].endswith(mark), f"answer {i}: {headers['location']}"
            elif status == 200:
                assert body == b'{"next":"","keys":["%s"]}' % mark.encode(), f"answer {i}"
        took = time.monotonic() - started
        assert c.buf == b""
    finally:
        c.close()
    print(f"\n1,000 pipelined requests answered in order in {took:.2f}s")
    assert_still_serving(master)


def test_1000_idle_connections_are_closed_and_others_served(master: Master) -> None:
    before = snapshot(master)
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", master.port), timeout=10)
            if i % 2:  # slowloris: a request begun, never finished
                s.sendall(b"GET /known-0 HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
        opened = time.monotonic()
        # a normal client is served meanwhile, and quickly
        for _ in range(5):
            started = time.monotonic()
            assert master.read(next(iter(KNOWN))) == next(iter(KNOWN.values()))
            assert time.monotonic() - started < 1.0
        open_now = len(socks)
        closed: dict[socket.socket, float] = {}
        answers: dict[int, int] = {}
        deadline = opened + IDLE + 10
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for sk, _ in sel.select(timeout=0.5):
                s = sk.fileobj
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data.startswith(b"HTTP/1.1 "):
                    status = int(data.split()[1])
                    answers[status] = answers.get(status, 0) + 1
                if not data or b"Connection: close" in data:
                    closed[s] = time.monotonic() - opened
                    sel.unregister(s)
        still_open = len(socks) - len(closed)
        last = max(closed.values(), default=0.0)
    finally:
        sel.close()
        for s in socks:
            s.close()
    print(f"\n1,000 idle connections: {open_now} held, {len(closed)} closed by the master, "
          f"the last {last:.2f}s after they opened (-idletimeout/-readtimeout {IDLE}s); "
          f"answers {answers}")
    assert still_open == 0, f"{still_open} connections still open"
    assert set(answers) <= {408}
    assert_still_serving(master)
    assert snapshot(master) == before


# --- last: the index itself ---


def test_index_holds_only_the_keys_put_on_purpose(master: Master) -> None:
    """Read the LevelDB with the master stopped: every hostile request above left nothing."""
    assert master.stop() == 0
    assert sorted(read_records(master.db)) == sorted(KNOWN)
