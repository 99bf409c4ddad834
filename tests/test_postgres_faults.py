"""Faults around the PostgreSQL index: PostgreSQL restarted under writers (503 at once,
reconnected by itself, nothing acknowledged lost), on a server of the test's own; two masters
over one database given PUTs of one key (one 201), one of them SIGKILLed under 16 writers
(every acknowledged key readable through the other, its locks released); `rebalance` online
while a master writes; a synchronous standby promoted after the primary crashed.

The figures each test measures are printed (`pytest -s` shows them).
"""

import http.client
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from cluster import mkv_command
from conftest import Master, fetch, files_of, finish_put, open_put, unique_key, url_path
from pgserver import PostgresServer, running_postgres


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server this test may stop and start."""
    with running_postgres() as server:
        yield server


@dataclass
class Outcome:
    key: bytes
    value: bytes
    status: int  # 0: no answer (the connection failed)
    sent: float  # time.monotonic() when sent
    seconds: float  # until answered


@dataclass
class Writers:
    """Threads PUTting new keys through the given masters in turn until stopped; with `pairs`,
    writers 2n and 2n+1 PUT the same keys (each its own value) through different masters."""

    ports: list[int]
    count: int = 16
    pairs: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.threads = [threading.Thread(target=self._write, args=(n,)) for n in
                        range(self.count)]
        for thread in self.threads:
            thread.start()

    def _write(self, writer: int) -> None:
        i = 0
        while not self.stop.is_set():
            if self.pairs:
                key = f"/pgpair/{writer // 2}/{i}".encode()
                value = b"value of %s from %d" % (key, writer)
            else:
                key = f"/pgfault/{writer}/{i}".encode()
                value = b"value of " + key
            port = self.ports[(writer + i) % len(self.ports)]
            sent = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("PUT", url_path(key), body=value)
                status = conn.getresponse().status
                conn.close()
            except OSError:
                status = 0
            self.outcomes.append(Outcome(key, value, status, sent, time.monotonic() - sent))
            i += 1

    def finish(self) -> list[Outcome]:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        return self.outcomes

    def wait_for(self, status: int, after: float, timeout: float = 30.0) -> None:
        """Until some PUT sent after `after` was answered `status`."""
        deadline = time.monotonic() + timeout
        while not any(o.status == status and o.sent > after for o in list(self.outcomes)):
            assert time.monotonic() < deadline, f"no {status} after {timeout}s"
            time.sleep(0.05)


def assert_readable(master: Master, keys: list[bytes]) -> None:
    for key in keys:
        assert fetch(master.call("GET", key).header("Location")) == b"value of " + key, key


def test_postgres_restarted_under_writers(own_postgres: PostgresServer, make_master) -> None:
    master = make_master(db=own_postgres.new_database())
    writers = Writers([master.port], count=4)
    try:
        writers.wait_for(201, after=0)
        stopped = time.monotonic()
        own_postgres.stop()
        writers.wait_for(503, after=stopped)
        reply = master.call("GET", b"/pgfault/0/0")
        assert reply.status == 503 and b"PostgreSQL" in reply.body
        time.sleep(0.5)  # writers keep meeting a database that is down
        started = time.monotonic()
        own_postgres.start()
        writers.wait_for(201, after=started)
    finally:
        outcomes = writers.finish()
    assert {o.status for o in outcomes} <= {201, 503}
    refused = [o for o in outcomes if o.status == 503]
    acknowledged = [o.key for o in outcomes if o.status == 201]
    window = max(o.sent + o.seconds for o in refused) - min(o.sent for o in refused)
    print(f"\n{len(acknowledged)} PUTs acknowledged, {len(refused)} refused with 503 over "
          f"{window:.2f}s (down {started - stopped:.2f}s); slowest 503 "
          f"{max(o.seconds for o in refused) * 1000:.0f} ms")
    assert_readable(master, acknowledged)


def test_puts_of_one_key_through_two_masters_one_wins(pg_url: str, make_master) -> None:
    """20 PUTs of one key, their headers sent to two masters at once, bodies trickling in:
    the first to take the key holds it while its body arrives, across both masters."""
    masters = [make_master(db=pg_url), make_master(db=pg_url)]
    key = unique_key()
    bodies = [bytes([65 + i]) * 4096 for i in range(20)]
    socks = [open_put(masters[i % 2].port, key, len(body)) for i, body in enumerate(bodies)]

    def trickle(i: int) -> int:
        body = bodies[i]
        return finish_put(socks[i], [body[j:j + 1024] for j in range(0, len(body), 1024)], 0.1)

    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(trickle, range(len(bodies))))
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {201, 409, 403}, statuses
    stored = {p.read_bytes() for p in files_of(masters[0].volumes, key)}
    assert stored == {bodies[statuses.index(201)]}
    for master in masters:
        assert master.read(key) == bodies[statuses.index(201)]


def test_a_master_killed_under_writers_loses_nothing_and_lets_its_keys_go(
        pg_url: str, make_master) -> None:
    doomed, survivor = make_master(db=pg_url), make_master(db=pg_url)
    held = unique_key()
    sock = open_put(doomed.port, held, 4096)  # the doomed master holds this key while it dies
    sock.sendall(b"x" * 1024)  # a first part of the body: the write begins
    deadline = time.monotonic() + 10
    while doomed.listing(held, "writing")["keys"] != [held.decode()]:  # it took the key
        assert time.monotonic() < deadline, "the doomed master never began its PUT"
        time.sleep(0.02)
    assert survivor.put(held, b"other").status == 409
    writers = Writers([doomed.port, survivor.port], count=16)
    try:
        writers.wait_for(201, after=0)
        time.sleep(1.0)  # writes through both for a while
        doomed.process.stop(signal.SIGKILL)
        killed = time.monotonic()
        while (status := survivor.put(held, b"after")).status == 409:
            assert time.monotonic() - killed < 60, "the dead master's lock was never released"
        released = time.monotonic() - killed
        assert status.status == 201
        writers.wait_for(201, after=killed)
        time.sleep(1.0)
    finally:
        outcomes = writers.finish()
        sock.close()
    assert {o.status for o in outcomes} <= {201, 0}, {o.status for o in outcomes}
    acknowledged = [o.key for o in outcomes if o.status == 201]
    print(f"\n{len(acknowledged)} PUTs acknowledged through two masters, one SIGKILLed; its "
          f"lock released after {released * 1000:.0f} ms")
    assert_readable(survivor, acknowledged)
    assert survivor.read(held) == b"after"


def test_online_rebalance_while_masters_write(pg_url: str, make_volumes, make_master) -> None:
    """Keys written on three volumes, then a fourth added: `rebalance` runs while a master
    (on four) takes new keys and REPLACEs old ones (409 while rebalance holds one)."""
    vols = make_volumes(4)
    flags = ("-replicas", "2", "-subvolumes", "3")
    first = make_master(*flags, db=pg_url, volumes=vols[:3])
    old = {f"/online/{i}".encode(): b"first %d" % i for i in range(120)}
    for key, value in old.items():
        assert first.put(key, value).status == 201
    first.stop()
    master = make_master(*flags, db=pg_url, volumes=vols)
    latest = dict(old)
    replaced: list[int] = []

    def replace(part: int) -> None:
        for key in list(old)[part::4]:
            value = key + b" replaced"
            status = master.put(key, value, method="REPLACE").status
            assert status in (204, 201, 409), status
            if status == 201:
                latest[key] = value
                replaced.append(1)

    addrs = ",".join(v.addr for v in vols)
    writers = Writers([master.port], count=4)
    try:
        rebalance = subprocess.Popen(mkv_command("-db", pg_url, "-volumes", addrs, *flags,
                                                 "rebalance"), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        with ThreadPoolExecutor(2) as pool:  # half the old keys: the rest are rebalance's
            list(pool.map(replace, range(2)))
        out, err = rebalance.communicate(timeout=120)
    finally:
        outcomes = writers.finish()
    assert rebalance.returncode == 0, out + err
    assert "moved" in out
    assert {o.status for o in outcomes} == {201}
    acknowledged = [o.key for o in outcomes]
    print(f"\nrebalance online: {len(acknowledged)} new keys and {len(replaced)} REPLACEs "
          f"acknowledged meanwhile; {out.strip().splitlines()[-1]}")
    assert_readable(master, acknowledged)
    for key, value in latest.items():
        assert master.read(key) == value, key
    verify = subprocess.run(mkv_command("-db", pg_url, "-volumes", addrs, *flags, "verify"),
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_lock_sessions_terminated_under_writers(postgres: PostgresServer, make_volumes,
                                               make_master) -> None:
    """The masters' lock sessions terminated (PostgreSQL stays up) while 16 writers, two to a
    key, PUT through two masters: a write whose lock went with its session fails (503) rather
    than write its record; one 201 a key, each reads back its own value, `verify` exits 0,
    and the masters take PUTs again at once."""
    url = postgres.new_database()
    database = url.rsplit("/", 1)[1]
    vols = make_volumes(3)  # of this test alone: verify finds no other test's files
    masters = [make_master(db=url, volumes=vols), make_master(db=url, volumes=vols)]
    writers = Writers([m.port for m in masters], count=16, pairs=True)
    terminate = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                 f"application_name = 'mkv master locks' AND datname = '{database}'")
    kills = []
    try:
        writers.wait_for(201, after=0)
        for _ in range(5):
            time.sleep(0.4)
            kills.append(time.monotonic())
            postgres.sql(terminate)
        writers.wait_for(201, after=kills[-1])
        time.sleep(0.5)
    finally:
        outcomes = writers.finish()
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {201, 403, 409, 503}, statuses
    won = Counter(o.key for o in outcomes if o.status == 201)
    assert max(won.values()) == 1, [k for k, n in won.items() if n > 1]
    acknowledged = [o for o in outcomes if o.status == 201]
    for o in acknowledged:
        assert masters[0].read(o.key) == o.value, o.key
    back = min(o.sent + o.seconds for o in acknowledged if o.sent > kills[-1]) - kills[-1]
    print(f"\nlock sessions terminated 5 times: {len(outcomes)} PUTs of "
          f"{len({o.key for o in outcomes})} keys, {statuses[201]} acknowledged (all read "
          f"back), {statuses[503]} refused 503, {statuses[409]} 409, {statuses[403]} 403; "
          f"a 201 {back * 1000:.0f} ms after the last termination")
    addrs = ",".join(v.addr for v in vols)
    verify = subprocess.run(mkv_command("-db", url, "-volumes", addrs, "verify"),
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_masters_follow_a_promoted_standby(own_postgres: PostgresServer, make_master) -> None:
    """A synchronous standby (a commit is acknowledged once both hold it); the primary crashes
    (`immediate`) and the standby is promoted: a master given both hosts continues on it."""
    primary = own_postgres
    database = primary.new_database().rsplit("/", 1)[1]
    with running_postgres(primary) as standby:
        primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        primary.sql("SELECT pg_reload_conf()")
        url = (f"postgresql://mkv@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{database}"
               "?target_session_attrs=read-write")
        master = make_master(db=url)
        writers = Writers([master.port], count=4)
        try:
            writers.wait_for(201, after=0)
            time.sleep(0.5)
            crashed = time.monotonic()
            primary.stop("immediate")
            writers.wait_for(503, after=crashed)
            standby.promote()
            promoted = time.monotonic()
            writers.wait_for(201, after=promoted)
            time.sleep(0.5)
        finally:
            outcomes = writers.finish()
        assert {o.status for o in outcomes} <= {201, 503}
        acknowledged = [o.key for o in outcomes if o.status == 201]
        refused = [o for o in outcomes if o.status == 503]
        back = min(o.sent + o.seconds for o in outcomes if o.status == 201 and o.sent > promoted)
        print(f"\nfailover: {len(acknowledged)} PUTs acknowledged, {len(refused)} refused with "
              f"503; the first 201 {back - crashed:.2f}s after the crash "
              f"({back - promoted:.2f}s after the promotion)")
        assert_readable(master, acknowledged)
