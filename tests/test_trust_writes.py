"""Writes that do not finish (issue 19, items 4 and 5): over a live key the old value stays live
and readable, on both faces; a value unlinked never comes back through a cut-off write and
`repair`; a client that hangs up on a new key leaves no trace.

Real volumes and masters; the failures are real too: a client closing mid-body, a volume's
nginx stopped (SIGSTOP) so its replica's write times out, a master SIGKILLed mid-PUT.
"""

import os
import signal
import socket
import time
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from cluster import start_master
from conftest import (
    Master,
    client,
    files_of,
    finish_put,
    key2volume,
    md5hex,
    open_put,
    read_records,
    unique_key,
    url_path,
)
from test_faults import offline, signal_nginx, wait_for_uploads_to_settle

DEADLINE = 15.0  # seconds any awaited condition may take on a loaded machine
STOPPABLE = ("-writetimeout", "1s", "-voltimeout", "300ms")
BIG = 24 << 20  # more than the loopback sockets between master and a stopped nginx buffer


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.02)


def md5_header(master: Master, key: bytes) -> str | None:
    reply = master.call("GET", key)
    assert reply.status == 302, f"GET {key!r}: {reply.status}"
    return reply.header("Content-Md5")


def assert_old_value_live(master: Master, key: bytes, value: bytes) -> None:
    """Live, readable from every replica, its md5 in the record, nothing unlinked."""
    assert md5_header(master, key) == md5hex(value)
    for _ in range(6):  # the redirect picks a replica at random
        assert master.read(key) == value
    replicas = master.call("GET", key).header("Key-Volumes").split(",")
    assert [p.read_bytes() for p in files_of(master.volumes, key)] == [value] * len(replicas)
    assert master.listing(key)["keys"] == [key.decode()]
    assert master.listing(key, "unlinked")["keys"] == []
    assert master.listing(key, "writing")["keys"] == []


def open_chunked(port: int, key: bytes, method: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"{method} {url_path(key)} HTTP/1.1\r\nHost: x\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    return sock


# --- the native face ---


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_replace_cut_off_by_the_client_keeps_the_old_value_live(cluster, framing):
    key = unique_key("cut-replace")
    old = os.urandom(300_000)
    assert cluster.put(key, old).status == 201
    if framing == "chunked":
        sock = open_chunked(cluster.port, key, "REPLACE")
        sock.sendall(b"%x\r\n%s\r\n" % (100_000, b"n" * 100_000))
    else:
        sock = open_put(cluster.port, key, 1 << 20, "REPLACE")
        sock.sendall(b"n" * 100_000)
    # the write has begun once the record lost its md5 (SPEC: live, md5 dropped meanwhile)
    wait_until(lambda: md5_header(cluster, key) is None, "the REPLACE to begin")
    sock.close()
    wait_until(lambda: md5_header(cluster, key) is not None, "the old record to come back")
    assert_old_value_live(cluster, key, old)
    # and the key takes a new value as before
    assert cluster.put(key, b"next", method="REPLACE").status == 201
    assert cluster.read(key) == b"next"


def test_put_of_a_new_key_cut_off_leaves_no_trace(cluster):
    key = unique_key("cut-new")
    sock = open_put(cluster.port, key, 1 << 20)
    sock.sendall(b"x" * 100_000)
    wait_until(lambda: cluster.listing(key, "writing")["keys"] == [key.decode()],
               "the PUT to begin")
    sock.close()
    # undone: unlinked while its files are deleted, then no record at all
    wait_until(lambda: all(cluster.listing(key, what)["keys"] == []
                           for what in ("list", "unlinked", "writing")), "the PUT to be undone")
    assert cluster.call("GET", key).status == 404
    assert files_of(cluster.volumes, key) == []


@pytest.fixture
def stoppable(make_volumes, make_master) -> tuple[list, Master]:
    """Three volumes of the test's own, a master that gives up on a replica after 1 s."""
    vols = make_volumes(3)
    return vols, make_master(*STOPPABLE, volumes=vols)


def test_replace_with_a_replica_failing_keeps_the_old_value_live(stoppable, tmp_path):
    vols, master = stoppable
    key = unique_key("fail-replace")
    old = os.urandom(200_000)
    assert master.put(key, old).status == 201
    signal_nginx(vols[1], signal.SIGSTOP)
    try:
        new = os.urandom(1 << 20)
        status = finish_put(open_put(master.port, key, BIG, "REPLACE"), [new] * (BIG >> 20),
                            0.001)
        assert 500 <= status < 600
        # readers meanwhile: the old value, from a replica that answers
        assert master.read(key) == old
    finally:
        signal_nginx(vols[1], signal.SIGCONT)
    wait_for_uploads_to_settle(vols)
    assert_old_value_live(master, key, old)
    master.stop()
    checked = offline("verify", vols, master.db, "-checksum")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_put_over_an_unlinked_key_with_a_volume_down_is_refused(stoppable):
    vols, master = stoppable
    key = unique_key("unlinked-down")
    assert master.put(key, b"first").status == 201
    assert master.call("UNLINK", key).status == 204
    signal_nginx(vols[0], signal.SIGSTOP)
    try:
        # the unlinked value's file on the stopped volume cannot be deleted: nothing written
        assert 500 <= master.put(key, b"second").status < 600
        assert master.listing(key, "unlinked")["keys"] == [key.decode()]
        assert master.listing(key, "writing")["keys"] == []
    finally:
        signal_nginx(vols[0], signal.SIGCONT)
    wait_until(lambda: master.put(key, b"second").status == 201, "the PUT to succeed")
    assert master.read(key) == b"second"
    assert [p.read_bytes() for p in files_of(vols, key)] == [b"second"] * 3


def test_unlinked_value_never_revives_through_a_cut_off_put_and_repair(stoppable,
                                                                      make_master):
    vols, master = stoppable
    key = unique_key("no-revival")
    old = b"deleted value " * 1000
    assert master.put(key, old).status == 201
    assert master.call("UNLINK", key).status == 204
    sock = open_put(master.port, key, 1 << 20)
    sock.sendall(b"n" * 1000)
    wait_until(lambda: master.listing(key, "writing")["keys"] == [key.decode()],
               "the PUT to write its INIT record")
    master.process.proc.send_signal(signal.SIGKILL)
    assert master.process.proc.wait(10) == -signal.SIGKILL
    sock.close()
    wait_for_uploads_to_settle(vols)
    assert b"INIT" in read_records(master.db)[key]
    for flags in ((), ("-checksum",)):
        repaired = offline("repair", vols, master.db, "-grace", "0s", *flags)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    record = read_records(master.db).get(key)
    assert record is None or record.startswith(b"DELETED"), record
    assert all(p.read_bytes() != old for p in files_of(vols, key)), "the old value's file"
    again = make_master(*STOPPABLE, db=master.db, volumes=vols)
    assert again.call("GET", key).status == 404
    assert again.listing(key)["keys"] == []
    assert again.call("RELINK", key).status in (404, 409)  # its files are gone
    assert again.call("GET", key).status == 404


def test_a_write_still_in_flight_when_the_master_stops_is_undone(make_volumes, make_master,
                                                                tmp_path):
    """SIGTERM lets requests finish for 10 s; a REPLACE still stuck on a frozen volume then is
    stopped (its handler cancelled, its volume connections closed), and the store puts the old
    record back before the index closes."""
    vols = make_volumes(3)
    log = tmp_path / "master.log"
    with open(log, "wb") as err:
        process = start_master(tmp_path / "db", [v.addr for v in vols], "-writetimeout", "60s",
                               stderr=err)
    master = Master(process, vols, tmp_path / "db")
    key = unique_key("stopped-replace")
    assert master.put(key, b"old value").status == 201
    signal_nginx(vols[0], signal.SIGSTOP)
    sock = open_put(master.port, key, BIG, "REPLACE")
    try:
        sock.sendall(b"n" * 100_000)
        wait_until(lambda: md5_header(master, key) is None, "the REPLACE to begin")
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(30) == 0, log.read_text()
    finally:
        signal_nginx(vols[0], signal.SIGCONT)
        sock.close()
    assert "Traceback" not in log.read_text(), log.read_text()
    # undone before the index closed: the old record, md5 and all
    assert read_records(master.db)[key].startswith(b"HASH" + md5hex(b"old value").encode())
    wait_for_uploads_to_settle(vols)
    again = make_master(db=master.db, volumes=vols)
    assert_old_value_live(again, key, b"old value")


# --- the S3 face: the same path through the store ---


@pytest.fixture
def s3_pair(make_volumes, make_master):
    """Two volumes, one replica, a master that gives up on a replica after 1 s; keys placed
    on the second volume are written there alone (strictly: not elsewhere while it is down),
    so stopping it fails their writes."""
    vols = make_volumes(2)
    master = make_master("-replicas", "1", "-strict_placement", *STOPPABLE, volumes=vols)
    s3 = client(master.port, retries=1)
    s3.create_bucket(Bucket="trust")
    return vols, master, s3


def key_on(vols, index: int, stem: str) -> str:
    """An object name in bucket `trust` whose one replica is on `vols[index]`."""
    addrs = [v.addr for v in vols]
    for n in range(1000):
        name = f"{stem}-{n}"
        if key2volume(f"/trust/{name}".encode(), addrs, 1)[0].startswith(addrs[index]):
            return name
    raise AssertionError("no such key")


def s3_value(s3, name: str) -> tuple[bytes, str]:
    got = s3.get_object(Bucket="trust", Key=name)
    return got["Body"].read(), got["ETag"]


def test_s3_put_cut_off_keeps_the_old_value(s3_pair):
    vols, master, s3 = s3_pair
    name = key_on(vols, 1, "cut")
    s3.put_object(Bucket="trust", Key=name, Body=b"old value")
    sock = socket.create_connection(("127.0.0.1", master.port), timeout=30)
    sock.sendall(f"PUT /trust/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 20}\r\n"
                 "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\n".encode())  # anonymous S3
    for _ in range(8):  # more than the last block S3 holds back until the body checks out
        sock.sendall(b"n" * 65536)
    key = f"/trust/{name}".encode()
    # the value streams to a staged file, the key's record untouched (md5 and all) until
    # its commit: the upload is seen on the replica's volume
    uploads = vols[1].dir / ".mkv" / "tmp" / "client_body"
    wait_until(lambda: any(uploads.iterdir()), "the PUT to reach the replica")
    assert md5_header(master, key) == md5hex(b"old value")
    sock.close()
    wait_until(lambda: not any(uploads.iterdir()), "the cut-off upload to be dropped")
    assert md5_header(master, key) == md5hex(b"old value")
    assert s3_value(s3, name) == (b"old value", f'"{md5hex(b"old value")}"')


def test_s3_put_with_a_wrong_payload_hash_keeps_the_old_value(s3_pair):
    vols, master, s3 = s3_pair
    name = key_on(vols, 1, "badhash")
    s3.put_object(Bucket="trust", Key=name, Body=b"old value")
    reply = master.call("PUT", f"/trust/{name}", b"new value",
                        headers={"x-amz-content-sha256": "0" * 64})
    assert reply.status == 400 and b"XAmzContentSHA256Mismatch" in reply.body
    assert s3_value(s3, name) == (b"old value", f'"{md5hex(b"old value")}"')


def test_s3_copy_failing_midway_keeps_the_old_value(s3_pair):
    vols, master, s3 = s3_pair
    source, target = key_on(vols, 0, "source"), key_on(vols, 1, "target")
    s3.put_object(Bucket="trust", Key=source, Body=os.urandom(BIG))
    s3.put_object(Bucket="trust", Key=target, Body=b"old value")
    signal_nginx(vols[1], signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as e:
            s3.copy_object(Bucket="trust", Key=target, CopySource=f"trust/{source}")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    finally:
        signal_nginx(vols[1], signal.SIGCONT)
    wait_for_uploads_to_settle(vols)
    assert s3_value(s3, target) == (b"old value", f'"{md5hex(b"old value")}"')


def test_s3_complete_failing_midway_keeps_the_old_value(s3_pair):
    vols, master, s3 = s3_pair
    name = key_on(vols, 1, "complete")
    s3.put_object(Bucket="trust", Key=name, Body=b"old value")
    upload = s3.create_multipart_upload(Bucket="trust", Key=name)["UploadId"]
    parts = []
    for number in (1, 2, 3):
        etag = s3.upload_part(Bucket="trust", Key=name, UploadId=upload, PartNumber=number,
                              Body=os.urandom(8 << 20))["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    signal_nginx(vols[1], signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as e:
            s3.complete_multipart_upload(Bucket="trust", Key=name, UploadId=upload,
                                         MultipartUpload={"Parts": parts})
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    finally:
        signal_nginx(vols[1], signal.SIGCONT)
    wait_for_uploads_to_settle(vols)
    assert s3_value(s3, name) == (b"old value", f'"{md5hex(b"old value")}"')
