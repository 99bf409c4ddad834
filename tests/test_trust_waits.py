"""No request waits forever (issue 19, item 6): every index lookup and record write is answered,
or refused with a 503, within the bound (ANSWER_SECONDS, mkv/index/base.py), whatever the
database or another request's callback does; and every background task has an owner that
cancels and awaits it on close, so a master stops clean on SIGTERM or SIGINT.

A stalled database is a real PostgreSQL of the test's own whose processes are all stopped
(SIGSTOP): its connections stay open and nothing answers, as with a hung server or a vanished
machine. The bound is set to 1 s there so that the test is quick.
"""

import asyncio
import gc
import http.client
import io
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
from cluster import children, exchange, free_port, mkv_command, wait_listening
from conftest import client, unique_key
from pgserver import PostgresServer, running_postgres

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.http.flow import EMPTY
from mkv.http.headcheck import HeadChecker
from mkv.http.messages import Request
from mkv.http.server import HTTPServer
from mkv.index import IndexUnavailable, open_index
from mkv.index import pglock as pglock_module
from mkv.index import postgres as engine
from mkv.native import EXTRA_METHODS, NativeAPI
from mkv.ops.progress import Progress
from mkv.record import Record
from mkv.s3 import pgstate
from mkv.s3.face import S3
from mkv.store import REFUSED, Store
from mkv.volumes.replicas import Volumes

BOUND = 1.0  # the bound the stalled-database tests set, seconds
SLACK = 1.5  # what a loaded 2-core machine may add to it
STOP_MESSAGES = ("Task was destroyed but it is pending", "Task exception was never retrieved",
                 "Traceback")


@contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """Every process of the server stopped: its sockets stay open, nothing answers."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    stopped = [postmaster, *children(postmaster)]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def _watch_loop() -> list[dict]:
    """What the loop reports (a task destroyed pending, an exception never retrieved...)."""
    reported: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(
        context))
    return reported


@pytest.fixture
def bounded(monkeypatch) -> float:
    """ANSWER_SECONDS at BOUND wherever it is read (raising=False: the tests say what happens
    without it too)."""
    for module in (engine, pglock_module, pgstate):
        monkeypatch.setattr(module, "ANSWER_SECONDS", BOUND, raising=False)
    return BOUND


# --- one waiter's callback does not hold up the others ---

def test_a_raising_callback_leaves_the_rest_of_its_batch_answered(pg_url: str) -> None:
    record = Record(("127.0.0.1:1",))

    async def check() -> None:
        reported = _watch_loop()
        index = await open_index(pg_url)
        assert isinstance(index, engine.PostgresIndex)
        await index.put(b"/there", record)
        loop = asyncio.get_running_loop()
        answered: dict[int, Record | None] = {}
        all_answered = loop.create_future()
        failures: list[Exception] = []

        def answer(n: int, found: Record | None) -> None:
            answered[n] = found
            if len(answered) == 20 and not all_answered.done():
                all_answered.set_result(None)

        def broken(found: Record | None) -> None:
            raise RuntimeError("a bug in one GET's callback")

        batches = index.batches
        # a GET whose requester gives up: its future is cancelled before the answer comes
        gave_up = loop.create_task(index.get(b"/there"))
        await asyncio.sleep(0)  # its lookup starts the batch the ones below join
        index.lookup(b"/there", broken, failures.append)  # first of the batch
        for n in range(20):
            index.lookup(b"/there" if n % 2 else b"/missing",
                         lambda found, n=n: answer(n, found))
        gave_up.cancel()
        async with asyncio.timeout(5):
            await all_answered
        assert index.batches - batches == 1  # all of them in one query
        assert answered == {n: record if n % 2 else None for n in range(20)}
        assert [str(e) for e in failures] == ["a bug in one GET's callback"]  # its own 500
        assert await index.get(b"/there") == record  # the index goes on
        await index.close()
        gc.collect()
        assert reported == []

    asyncio.run(check())


def test_a_raising_head_check_callback_leaves_the_others_answered() -> None:
    """Checks of a volume that never answers, timed out together: one GET's callback raises,
    the others still get their False (and their GETs a 410 or the next replica)."""
    silent = socket.create_server(("127.0.0.1", 0))
    quiet = f"127.0.0.1:{silent.getsockname()[1]}"

    async def check() -> None:
        reported = _watch_loop()
        checker = HeadChecker()
        answered: list[bool] = []

        def broken(found: bool) -> None:
            raise RuntimeError("a bug in one GET's callback")

        checker.ask(quiet, b"/first", 0.2, broken)
        for n in range(9):
            checker.ask(quiet, b"/%d" % n, 0.2, answered.append)
        async with asyncio.timeout(5):
            while len(answered) < 9:
                await asyncio.sleep(0.01)
        assert answered == [False] * 9
        await checker.close()
        assert reported == []

    try:
        asyncio.run(check())
    finally:
        silent.close()


def test_a_get_whose_own_check_answer_breaks_is_answered_500(tmp_path: Path, volumes,
                                                             monkeypatch) -> None:
    """The HEAD checker can only log a callback that raises: the GET it was for answers 500
    itself rather than wait forever."""
    config = Config(db=str(tmp_path / "db"), volumes=tuple(v.addr for v in volumes),
                    replicas=1, subvolumes=1)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in building the redirect")

    async def check() -> None:
        index = await open_index(config.db)
        vols = Volumes.for_config(config)
        store = Store(config, index, vols)
        api = NativeAPI(store)

        async def value() -> AsyncIterator[bytes]:
            yield b"value"

        await store.write(b"/k", value(), 5, None)
        monkeypatch.setattr(api, "redirect", broken)
        answered = asyncio.get_running_loop().create_future()
        api.handle(Request(b"GET", b"/k", b"", {}, EMPTY)).then(answered.set_result)
        async with asyncio.timeout(5):
            assert (await answered).status == 500
        await vols.close()
        await index.close()

    asyncio.run(check())


# --- a stalled database: a 503 within the bound, and a close that does not hang ---

def test_a_stalled_database_fails_lookups_and_writes_within_the_bound(bounded: float) -> None:
    record = Record(("127.0.0.1:1",))
    with running_postgres() as server:
        url = server.new_database()

        async def check() -> None:
            reported = _watch_loop()
            loop = asyncio.get_running_loop()
            index = await open_index(url)
            assert isinstance(index, engine.PostgresIndex)
            await index.put(b"/there", record)
            assert await index.locks.acquire(b"/held")
            told: list[Exception] = []

            def broken_failure(error: Exception) -> None:
                raise RuntimeError("a bug in one GET's failure callback")

            with frozen(server):
                started = loop.time()
                index.lookup(b"/there", lambda found: None, broken_failure)
                index.lookup(b"/there", lambda found: None, told.append)
                outcomes = await asyncio.gather(
                    index.get(b"/there"), index.put(b"/new", record),
                    index.locks.acquire(b"/other"), index.locks.write(b"/held", b"x"),
                    return_exceptions=True)
                took = loop.time() - started
                assert all(isinstance(o, IndexUnavailable) for o in outcomes), outcomes
                assert len(told) == 1 and isinstance(told[0], IndexUnavailable)
                assert took < bounded + SLACK, f"refused after {took:.1f}s"
            # the database back: the index answers again, by itself
            async with asyncio.timeout(30):
                while True:
                    try:
                        assert await index.get(b"/there") == record
                        break
                    except IndexUnavailable:
                        await asyncio.sleep(0.1)
            await index.close()
            gc.collect()
            assert reported == []

        asyncio.run(check())


def test_a_stalled_database_answers_gets_and_puts_503_within_the_bound(bounded: float) -> None:
    with running_postgres() as server:
        url = server.new_database()
        config = Config(db=url, volumes=("127.0.0.1:1",), replicas=1, subvolumes=1)

        async def check() -> None:
            index = await open_index(url)
            volumes = Volumes.for_config(config)
            http_server = HTTPServer(NativeAPI(Store(config, index, volumes)).handle,
                                 extra_methods=EXTRA_METHODS, refusals=REFUSED)
            port = free_port()
            await http_server.start("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            with frozen(server):
                started = loop.time()
                async with asyncio.timeout(30):
                    statuses = await exchange(port, [
                        b"GET /k HTTP/1.1\r\n\r\n",
                        b"PUT /k HTTP/1.1\r\nContent-Length: 5\r\n\r\nvalue"])
                took = loop.time() - started
            assert statuses == [b"503", b"503"]
            assert took < bounded + SLACK, f"answered after {took:.1f}s"
            await http_server.shutdown(grace=1.0)
            await volumes.close()
            await index.close()

        asyncio.run(check())


def test_closing_over_a_stalled_database_does_not_hang() -> None:
    with running_postgres() as server:
        url = server.new_database()

        async def check() -> None:
            reported = _watch_loop()
            index = await open_index(url)
            assert isinstance(index, engine.PostgresIndex)
            await index.put(b"/there", Record(("127.0.0.1:1",)))
            assert await index.locks.acquire(b"/held")
            loop = asyncio.get_running_loop()
            with frozen(server):
                lookup = loop.create_task(index.get(b"/there"))
                await asyncio.sleep(0)
                started = loop.time()
                async with asyncio.timeout(60):
                    await index.close()
                    with pytest.raises(IndexUnavailable):
                        await lookup
                took = loop.time() - started
            # the lock session and the pool closed at once, each cut after CLOSE_TIMEOUT
            assert took < engine.CLOSE_TIMEOUT + SLACK, f"closed after {took:.1f}s"
            gc.collect()
            assert reported == []

        asyncio.run(check())


# --- every background task has an owner that cancels and awaits it ---

def test_closing_leaves_no_task_behind(tmp_path: Path, volumes) -> None:
    """Probes, HEAD checks and listings in flight to a volume that never answers, S3's sweep,
    a progress ticker: after close, nothing of theirs runs."""
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, answers nothing
    quiet = f"127.0.0.1:{silent.getsockname()[1]}"
    config = Config(db=str(tmp_path / "db"), volumes=(*(v.addr for v in volumes), quiet),
                    replicas=1, subvolumes=1, s3_upload_ttl=1.0)

    async def check() -> None:
        reported = _watch_loop()
        index = await open_index(config.db)
        vols = Volumes.for_config(config)
        vols.health.watch(config.volumes)
        s3 = S3(Store(config, index, vols))  # its first sweep starts at once
        progress = Progress("test", out=io.StringIO(), err=io.StringIO())
        progress.start()
        checked: list[bool] = []
        vols.heads.ask(quiet, b"/x", 30.0, checked.append)
        listing = asyncio.ensure_future(vols.listings.get(quiet, b"/", 30.0))
        async with asyncio.timeout(10):
            while quiet not in vols.health._probing:  # a probe of it is in flight
                await asyncio.sleep(0.01)
        await progress.stop()
        await s3.close()
        await vols.close()
        await index.close()
        assert checked == [False]
        with pytest.raises(VolumeError, match="closed"):
            await listing
        assert asyncio.all_tasks() == {asyncio.current_task()}
        gc.collect()
        assert reported == []

    try:
        asyncio.run(check())
    finally:
        silent.close()


# --- a master stops clean ---

def _drive(port: int) -> None:
    """Native and S3 requests of every kind the master answers."""
    def call(method: str, path: str, body: bytes | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    keys = [unique_key("stop").decode() for _ in range(10)]
    assert [call("PUT", k, b"value") for k in keys] == [201] * 10
    assert [call("GET", k) for k in keys] == [302] * 10
    assert call("GET", keys[0] + "-missing") == 404
    assert call("UNLINK", keys[0]) == 204 and call("DELETE", keys[0]) == 204
    assert call("GET", "/stop?list") == 200
    s3 = client(port, retries=1)
    bucket = f"stop-{keys[1][-8:]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"o{i}", Body=b"object")
        assert s3.get_object(Bucket=bucket, Key=f"o{i}")["Body"].read() == b"object"
    upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload, PartNumber=1,
                          Body=b"part")
    s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1,
                                                             "ETag": part["ETag"]}]})
    s3.list_objects_v2(Bucket=bucket)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "o0"}, {"Key": "multi"}]})


def _hammer(port: int, stop: threading.Event) -> None:
    """GETs and PUTs until told to stop: some are in flight when the master is stopped."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("PUT" if n % 2 else "GET", f"/hammer-{port}-{n // 2}", body=b"v")
            conn.getresponse().read()
            conn.close()
        except OSError:
            pass  # the master has stopped listening


def _stops_clean(db: str, volumes, tmp_path: Path, sig: signal.Signals,
                 stalled: PostgresServer | None = None) -> float:
    """Start a master, drive it, stop it with `sig` while GETs and PUTs go on (with `stalled`,
    once they are over and the database is frozen): it exits 0 and says nothing of tasks.
    How long it took to stop."""
    port = free_port()
    log = tmp_path / f"master-{port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            mkv_command("-db", db, "-volumes", ",".join(v.addr for v in volumes), "-port",
                        str(port), "-s3_upload_ttl", "1s", "server"),
            stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop = threading.Event()
    hammers = [threading.Thread(target=_hammer, args=(port, stop)) for _ in range(4)]
    try:
        wait_listening(port, proc)
        _drive(port)
        for hammer in hammers:
            hammer.start()
        if stalled is not None:  # requests in flight would wait for the bound: none here
            stop.set()
            for hammer in hammers:
                hammer.join()
        with frozen(stalled) if stalled is not None else nullcontext():
            started = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(60)
            took = time.monotonic() - started
    finally:
        stop.set()
        for hammer in hammers:
            if hammer.is_alive():
                hammer.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert code == 0, text
    for message in STOP_MESSAGES:
        assert message not in text, text
    return took


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)


@SIGNALS
def test_a_leveldb_master_stops_clean(sig: signal.Signals, volumes, tmp_path: Path) -> None:
    _stops_clean(str(tmp_path / "db"), volumes, tmp_path, sig)


@SIGNALS
def test_a_postgres_master_stops_clean(sig: signal.Signals, pg_url: str, volumes,
                                       tmp_path: Path) -> None:
    _stops_clean(pg_url, volumes, tmp_path, sig)


def test_a_master_over_a_stalled_database_still_stops_clean(volumes, tmp_path: Path) -> None:
    with running_postgres() as server:
        took = _stops_clean(server.new_database(), volumes, tmp_path, signal.SIGTERM,
                            stalled=server)
    # S3's state, then the index (its lock session and pool at once): each cut at CLOSE_TIMEOUT
    assert took < 2 * engine.CLOSE_TIMEOUT + 2 * SLACK, f"stopped after {took:.1f}s"
