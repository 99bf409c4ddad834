"""Writes that survive a dead volume (issue 13, part 1): real nginx volumes killed, stopped or
frozen under a real master. A PUT goes to the first -replicas volumes up in the key's ranking,
GET does not wait for replicas on volumes down, `rebalance` moves keys home once the volume is
back, and -strict_placement keeps Go mkv's failing writes.

Each test starts its own volumes and masters; the master's log (volume down / up) is read
from the captured stderr. The figures measured are printed (`pytest -s` shows them).
"""

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cluster import mkv_command
from conftest import (
    client,
    error_of,
    fetch,
    files_of,
    key2volume,
    md5hex,
    read_records,
    replica_file,
    request,
    unique_key,
    url_path,
)
from test_faults import parse_record, signal_nginx, volume_addr, wait_gone

WRITERS = 16
BEFORE_KILL = 1.0  # seconds of writing with every volume up
AFTER_KILL = 2.0  # seconds of writing with one volume dead


class Log:
    """The master's stderr as the test goes on (capfd gives only what came since last read)."""

    def __init__(self, capfd) -> None:
        self.capfd = capfd
        self.text = ""

    def show(self, text: str) -> None:
        """A figure for `pytest -s` (printed past capfd, which would swallow it)."""
        with self.capfd.disabled():
            print(text)

    def wait_for(self, line: str, times: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text.count(line) < times:
            assert time.monotonic() < deadline, f"the master never logged {line!r}"
            time.sleep(0.05)
            self.text += self.capfd.readouterr().err


@dataclass
class Put:
    started: float
    key: bytes
    value: bytes
    status: int  # 0: no answer


def writer(port: int, n: int, stop: threading.Event, puts: list[Put]) -> None:
    i = 0
    while not stop.is_set():
        key = f"/health/c{n:02d}/{i:05d}".encode()
        value = os.urandom(random.randint(100, 20_000))
        started = time.monotonic()
        try:
            status = request(port, "PUT", url_path(key), value, timeout=30).status
        except OSError:
            status = 0
        puts.append(Put(started, key, value, status))
        i += 1


def live_records(db) -> dict[bytes, object]:
    return {k: rec for k, raw in read_records(db).items()
            if (rec := parse_record(raw)).state == "live"}


def assert_files_complete(vols, records: dict, values: dict[bytes, bytes]) -> None:
    """Every live key's file is whole on every replica its record names."""
    for key, rec in records.items():
        for replica in rec.replicas:
            data = replica_file(vols, replica, key).read_bytes()
            assert md5hex(data) == rec.md5, f"{key!r} on {replica}"
            if key in values:
                assert data == values[key], f"{key!r} on {replica}"


def test_volume_sigkilled_under_16_writers(make_volumes, make_master, capfd):
    vols = make_volumes(3)
    master = make_master("-replicas", "2", "-writetimeout", "5s", volumes=vols)
    log = Log(capfd)
    victim = vols[1]
    dead = volume_addr(victim)
    stop = threading.Event()
    puts: list[list[Put]] = [[] for _ in range(WRITERS)]
    threads = [threading.Thread(target=writer, args=(master.port, n, stop, puts[n]))
               for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(BEFORE_KILL)
        pids = signal_nginx(victim, signal.SIGKILL)
        wait_gone(pids)
        killed_at = time.monotonic()  # no PUT started from now on can reach the victim
        time.sleep(AFTER_KILL)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    log.wait_for(f"volume {dead} is down")
    every = [p for writer_puts in puts for p in writer_puts]
    after = [p for p in every if p.started >= killed_at]
    failed = [p for p in every if p.status != 201]
    log.show(f"\n{len(every)} PUTs, {len(after)} after the kill; {len(failed)} not 201 "
          f"({sorted({p.status for p in failed})}), the last started "
          f"{max((p.started - killed_at for p in failed), default=0):+.3f}s from nginx's end")
    assert len(after) > 100, "too few writes after the kill to show anything"
    assert len(failed) <= 2 * WRITERS, "more than a few PUTs failed"
    for writer_puts in puts:  # every writer wrote on after its failures
        assert writer_puts[-1].status == 201 and writer_puts[-1].started > killed_at

    acknowledged = {p.key: p.value for p in every if p.status == 201}
    around = [k for k in acknowledged if k in {p.key for p in after}]
    # reads while the volume is down: a replica that answers, never the dead one
    for key in random.sample(sorted(acknowledged), 100):
        reply = master.call("GET", key)
        assert reply.status == 302
        assert urlsplit(reply.header("Location")).netloc != dead
        assert fetch(reply.header("Location")) == acknowledged[key]
        today = key2volume(key, master.addrs, 2, 10)
        volumes_named = reply.header("Key-Volumes").split(",")
        assert (reply.header("Key-Balance") == "balanced") == (volumes_named == today)
    assert master.stop() == 0

    records = live_records(master.db)
    assert set(acknowledged) <= set(records), "an acknowledged key is not live"
    assert_files_complete(vols, records, acknowledged)
    placed_around = [k for k in around if records[k].replicas != key2volume(k, master.addrs,
                                                                               2, 10)]
    assert placed_around, "no write went around the dead volume"
    assert all(not any(r.startswith(dead) for r in records[k].replicas) for k in around)
    log.show(f"{len(acknowledged)} acknowledged, all live and whole; {len(placed_around)} placed "
          f"around the dead volume")

    # the volume back, the master stopped: rebalance moves them home, verify finds it healthy
    make_volumes.restart(victim)
    flags = ["-db", str(master.db), "-volumes", ",".join(master.addrs), "-replicas", "2"]
    for command in ("rebalance", "verify"):
        done = subprocess.run(mkv_command(*flags, command), capture_output=True, text=True,
                              timeout=300)
        log.show(f"{command}: exit {done.returncode}: {done.stdout.strip()}")
        assert done.returncode == 0, done.stdout + done.stderr
    records = live_records(master.db)
    assert all(rec.replicas == key2volume(k, master.addrs, 2, 10) for k, rec in records.items())
    assert_files_complete(vols, records, acknowledged)


def test_get_does_not_wait_for_a_frozen_volume(make_volumes, make_master, capfd):
    """-voltimeout 5s: a GET that asked the frozen volume's replica would take 5 s."""
    vols = make_volumes(3)
    master = make_master("-voltimeout", "5s", volumes=vols)
    log = Log(capfd)
    values = {unique_key("frozen"): os.urandom(1000) for _ in range(10)}
    for key, value in values.items():
        assert master.put(key, value).status == 201
    frozen = vols[0]
    stopped = volume_addr(frozen)
    signal_nginx(frozen, signal.SIGSTOP)
    try:
        log.wait_for(f"volume {stopped} is down")  # the probes went unanswered
        times = []
        for _ in range(3):
            for key, value in values.items():
                started = time.monotonic()
                reply = master.call("GET", key, timeout=30)
                times.append(time.monotonic() - started)
                assert reply.status == 302
                assert stopped in reply.header("Key-Volumes")
                assert urlsplit(reply.header("Location")).netloc != stopped
                assert fetch(reply.header("Location")) == value
        log.show(f"\n{len(times)} GETs of keys with a replica on a frozen volume: slowest "
              f"{max(times) * 1000:.1f} ms, mean {sum(times) / len(times) * 1000:.1f} ms "
              f"(-voltimeout 5s)")
        assert max(times) < 5.0, "a GET waited for the frozen volume"
    finally:
        signal_nginx(frozen, signal.SIGCONT)
    log.wait_for(f"volume {stopped} is up")
    seen = {urlsplit(master.call("GET", key).header("Location")).netloc
            for _ in range(10) for key in values}
    assert stopped in seen, "reads never went back to the volume that recovered"


def test_strict_placement_fails_where_the_default_places_around(make_volumes, make_master,
                                                                 capfd):
    vols = make_volumes(3)
    strict = make_master("-replicas", "2", "-strict_placement", volumes=vols)
    default = make_master("-replicas", "2", volumes=vols)
    log = Log(capfd)
    victim = vols[1]
    dead = volume_addr(victim)
    addrs = default.addrs
    # keys whose placement today includes the volume about to stop
    keys = [k for k in (unique_key("strict") for _ in range(40))
            if any(r.startswith(dead) for r in key2volume(k, addrs, 2, 10))][:4]
    assert victim.stop() == 0
    log.wait_for(f"volume {dead} is down", times=2)  # both masters know

    for key in keys:
        assert 500 <= strict.put(key, b"strict").status < 600  # Go mkv's behaviour
        assert strict.listing(key)["keys"] == []
        assert strict.listing(key, "unlinked")["keys"] == [key.decode()]

        assert default.put(key, b"placed around").status == 201
        reply = default.call("GET", key)
        ranking = key2volume(key, addrs, 3, 10)
        assert reply.header("Key-Volumes").split(",") == [r for r in ranking
                                                          if not r.startswith(dead)]
        assert reply.header("Key-Balance") == "unbalanced"
        assert default.read(key) == b"placed around"
        assert default.call("REBALANCE", key).status == 400  # home is still down
        assert default.call("GET", key).header("Key-Volumes") == reply.header("Key-Volumes")

    make_volumes.restart(victim)
    for key in keys:
        assert default.call("REBALANCE", key).status == 204
        reply = default.call("GET", key)
        assert reply.header("Key-Volumes").split(",") == key2volume(key, addrs, 2, 10)
        assert reply.header("Key-Balance") == "balanced"
        assert default.read(key) == b"placed around"
        assert sorted(p.read_bytes() for p in files_of(vols, key)) == [b"placed around"] * 2


def test_too_few_volumes_up_answers_503_and_writes_nothing(make_volumes, make_master, capfd):
    vols = make_volumes(3)
    master = make_master(volumes=vols)  # -replicas 3: every volume is needed
    log = Log(capfd)
    s3 = client(master.port, retries=1)
    s3.create_bucket(Bucket="health")
    kept = unique_key("kept")
    assert master.put(kept, b"old value").status == 201
    down = vols[2]
    assert down.stop() == 0
    log.wait_for(f"volume {volume_addr(down)} is down")

    key = unique_key("refused")
    reply = master.put(key, b"value")
    assert reply.status == 503
    assert b"2 of 3 volumes are up" in reply.body
    for what in ("list", "unlinked", "writing"):
        assert master.listing(key, what)["keys"] == []
    assert master.call("REPLACE", kept, b"new value").status == 503
    assert master.call("GET", kept).header("Content-Md5") == md5hex(b"old value")
    assert error_of(s3.put_object, Bucket="health", Key="k", Body=b"s3") == (
        "ServiceUnavailable", 503)
    assert master.listing("/health/", "unlinked")["keys"] == []
    assert files_of(vols, key) == []

    # back: the next PUT probes it again rather than wait for the next round of probes
    make_volumes.restart(down)
    assert master.put(key, b"value").status == 201
    assert [p.read_bytes() for p in files_of(vols, key)] == [b"value"] * 3
    s3.put_object(Bucket="health", Key="k", Body=b"s3")
    assert s3.get_object(Bucket="health", Key="k")["Body"].read() == b"s3"
