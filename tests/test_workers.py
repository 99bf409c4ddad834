"""`-workers N` over a LevelDB index (mkv/supervisor.py, mkv/index/owner.py): the owner and
the workers as real processes, both faces through them, the whole master on the admin port,
and the faults: a worker or the owner SIGKILLed under 16 writers, the owner stalled. After each
run the directory is read by goleveldb, as Go mkv would read it.

The figures each test measures are printed (`pytest -s` shows them).
"""

import http.client
import os
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from busy import assert_acknowledged
from cluster import children, free_port
from conftest import Master, fetch, unique_key
from golang import assert_same_through_both
from test_admin import scrape, value, wait_for
from test_postgres_faults import Writers, assert_readable

from mkv.index.owner import SOCKET_NAME

WORKERS = ("-workers", "2")


def roles(master: Master) -> tuple[int, list[int]]:
    """The owner's pid (the child holding the index's LOCK file open) and the workers'."""
    lock = str(Path(master.db).resolve() / "LOCK")
    owner, workers = None, []
    for pid in children(master.process.proc.pid):
        try:
            held = any(os.readlink(fd) == lock for fd in Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            held = False
        if held:
            owner = pid
        else:
            workers.append(pid)
    assert owner is not None, "no child holds the index"
    return owner, workers


def settled(master: Master, workers: int = 2, gone: int = 0) -> tuple[int, list[int]]:
    """The roles once the owner and every worker are running, the process `gone` not among
    them."""
    found: list = []

    def ready() -> bool:
        try:
            found[:] = [roles(master)]
        except (AssertionError, OSError):
            return False
        owner, now = found[0]
        return len(now) == workers and gone not in (owner, *now)
    wait_for(ready, timeout=30)
    return found[0]


def assert_clean_after_stop(master: Master, ldbdump: Path, live: set[bytes],
                            deleted: set[bytes] = frozenset()) -> None:
    supervisor = master.process.proc.pid
    assert master.process.stop() == 0
    assert not children(supervisor)
    assert not (Path(master.db) / SOCKET_NAME).exists()
    assert_acknowledged(assert_same_through_both(ldbdump, Path(master.db)), live, deleted)


def test_both_faces_through_workers_and_a_clean_index_after(make_master, ldbdump):
    master = make_master(*WORKERS)
    owner, workers = settled(master)
    keys = [f"/w/{i}".encode() for i in range(200)]
    for key in keys:  # a connection each: the kernel spreads them over the workers
        assert master.put(key, key * 3).status == 201
    for key in keys[::2]:
        assert master.read(key) == key * 3
    assert master.call("DELETE", keys[0]).status == 204
    listed = master.listing(b"/w/", limit="1000")["keys"]
    assert listed == sorted(k.decode() for k in keys[1:])

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{master.port}",
                      region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s",
                      config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="work")
    s3.put_object(Bucket="work", Key="one", Body=b"one value", Metadata={"m": "v"})
    head = s3.head_object(Bucket="work", Key="one")  # metadata kept by one worker, read by any
    assert head["Metadata"] == {"m": "v"}
    upload = s3.create_multipart_upload(Bucket="work", Key="big")["UploadId"]
    parts = [s3.upload_part(Bucket="work", Key="big", UploadId=upload, PartNumber=n,
                            Body=bytes([n]) * (5 << 20))["ETag"] for n in (1, 2)]
    done = [{"PartNumber": n, "ETag": etag} for n, etag in zip((1, 2), parts, strict=True)]
    s3.complete_multipart_upload(Bucket="work", Key="big", UploadId=upload,
                                 MultipartUpload={"Parts": done})
    for _ in range(6):  # each GET on a connection of its own: both workers answer
        got = s3.get_object(Bucket="work", Key="big")
        assert got["ETag"].endswith('-2"') and got["Body"].read() == b"\1" * (5 << 20) + \
            b"\2" * (5 << 20)
    assert roles(master) == (owner, workers)  # nothing died meanwhile
    assert_clean_after_stop(master, ldbdump, set(keys[1:]) | {b"/work/one", b"/work/big"},
                            {keys[0]})


def test_the_admin_port_shows_the_whole_master(make_master, free_admin_port):
    master = make_master(*WORKERS, "-admin_port", str(free_admin_port))
    settled(master)
    for i in range(40):
        assert master.put(f"/adm/{i}".encode(), b"v").status == 201

    def total(samples: dict) -> float:
        return sum(v for (name, labels), v in samples.items()
                   if name == "mkv_http_requests_total" and
                   dict(labels).get("method") == "PUT" and dict(labels).get("status") == "201")
    wait_for(lambda: total(scrape(free_admin_port)) == 40)  # whichever worker answers
    samples = scrape(free_admin_port)
    assert {dict(labels)["worker"] for (name, labels) in samples
            if name == "mkv_index_info"} == {"1", "2"}
    assert value(samples, "mkv_index_info", engine="leveldb", worker="1") == 1
    page = urllib.request.urlopen(f"http://127.0.0.1:{free_admin_port}/", timeout=10).read()
    assert b"<td>PUT</td><td>201</td><td>40</td>" in page
    assert b"workers<b>2</b>" in page


@pytest.fixture
def free_admin_port() -> int:
    return free_port()


def test_a_worker_killed_under_16_writers_is_replaced(make_master, ldbdump):
    master = make_master(*WORKERS)
    owner, workers = settled(master)
    writers = Writers([master.port], count=16)
    try:
        writers.wait_for(201, after=0)
        time.sleep(0.5)
        os.kill(workers[0], signal.SIGKILL)
        killed = time.monotonic()
        _, now = settled(master, gone=workers[0])
        assert workers[1] in now
        replaced = time.monotonic() - killed
        writers.wait_for(201, after=time.monotonic())
        time.sleep(0.5)
    finally:
        outcomes = writers.finish()
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {201, 0}, statuses  # 0: a connection the killed worker had
    acknowledged = [o.key for o in outcomes if o.status == 201]
    print(f"\n{len(acknowledged)} PUTs acknowledged, {statuses[0]} cut off with the worker; "
          f"replaced after {replaced * 1000:.0f} ms")
    assert_readable(master, acknowledged)
    assert roles(master)[0] == owner
    assert_clean_after_stop(master, ldbdump, set(acknowledged))


def test_the_owner_killed_under_16_writers(make_master, ldbdump):
    """The supervisor held (SIGSTOP) so that no new owner comes: the workers answer 503 at
    once; let go, it starts a new owner and writes are acknowledged again."""
    master = make_master(*WORKERS)
    owner, _ = settled(master)
    held = unique_key()
    assert master.put(held, b"before").status == 201
    writers = Writers([master.port], count=16)
    supervisor = master.process.proc.pid
    try:
        writers.wait_for(201, after=0)
        os.kill(supervisor, signal.SIGSTOP)
        os.kill(owner, signal.SIGKILL)
        killed = time.monotonic()
        writers.wait_for(503, after=killed)
        began = time.monotonic()
        assert master.call("GET", held).status == 503
        assert time.monotonic() - began < 2
        os.kill(supervisor, signal.SIGCONT)
        writers.wait_for(201, after=time.monotonic(), timeout=30)
        recovered = time.monotonic() - killed
        time.sleep(0.5)
    finally:
        os.kill(supervisor, signal.SIGCONT)
        outcomes = writers.finish()
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {201, 503}, statuses
    assert max(o.seconds for o in outcomes) < 15  # nobody hung
    acknowledged = [o.key for o in outcomes if o.status == 201]
    print(f"\nowner killed: {statuses[201]} PUTs acknowledged, {statuses[503]} refused (503); "
          f"writing again {recovered:.2f} s after the kill")
    assert roles(master)[0] != owner
    assert_readable(master, acknowledged)
    assert fetch(master.call("GET", held).header("Location")) == b"before"
    assert_clean_after_stop(master, ldbdump, set(acknowledged) | {held})


def test_a_stalled_owner_is_a_503_within_the_bound(make_master):
    master = make_master(*WORKERS)
    owner, _ = settled(master)
    key = unique_key()
    assert master.put(key, b"v").status == 201
    os.kill(owner, signal.SIGSTOP)
    try:
        began = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", master.port, timeout=60)
        connection.request("GET", key.decode())
        status = connection.getresponse().status
        waited = time.monotonic() - began
        connection.close()
    finally:
        os.kill(owner, signal.SIGCONT)
    print(f"\nstalled owner: {status} after {waited:.1f} s")
    assert status == 503 and waited < 15
    wait_for(lambda: master.call("GET", key).status == 302)  # back once it answers
