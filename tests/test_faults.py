"""Faults injected into real processes (issue 6, items 1-4): the master SIGKILLed while clients
PUT (and REPLACE), a volume's nginx SIGKILLed mid-PUT, volumes frozen with SIGSTOP, a volume's
disk full (a 2 MiB tmpfs).

Each test starts its own volumes and masters (conftest stops them at teardown) and undoes the
faults it injects in `finally` (SIGCONT, unmount), so a failure leaves nothing behind. Every
wait has a timeout. The figures each test measures are printed (`pytest -s` shows them).
"""

import base64
import hashlib
import http.client
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cluster import Volume, mkv_command, start_volume
from conftest import (
    data_files,
    fetch,
    files_of,
    finish_put,
    md5hex,
    open_put,
    read_records,
    replica_file,
    request,
    unique_key,
    url_path,
)

# --- nginx processes of a volume ---


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process; None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2])


def nginx_pid(vol: Volume, timeout: float = 10.0) -> int:
    """The volume's nginx master (DIR/.mkv/nginx.pid), once it is the one `mkv volume` runs."""
    pidfile = vol.dir / ".mkv" / "nginx.pid"
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and (_stat(pid) or (0, 0))[0] == vol.proc.pid:
            return pid
        assert time.monotonic() < deadline, f"no nginx of {vol.dir} in {pidfile}"
        time.sleep(0.02)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (nginx's master and its workers)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid:
                members.append(int(entry.name))
    return members


def signal_nginx(vol: Volume, sig: int) -> list[int]:
    """Send `sig` to the volume's nginx master and every worker; the pids signalled.

    `mkv volume` runs nginx in a process group of its own (mkv/volumes/nginx.py), so the group is
    exactly nginx's processes.
    """
    pid = nginx_pid(vol)
    assert os.getpgid(pid) == pid, "nginx is expected to lead its own process group"
    members = group_members(pid)
    assert len(members) >= 2, f"nginx master and workers expected, found {members}"
    os.killpg(pid, sig)
    return members


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_stat(p) is not None for p in pids):
        assert time.monotonic() < deadline, f"still running: {pids}"
        time.sleep(0.02)


def volume_addr(vol: Volume) -> str:
    return f"127.0.0.1:{vol.port}"


def wait_listing(master, key: bytes, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while master.listing(key, what)["keys"] != [key.decode()]:
        assert time.monotonic() < deadline, f"{key!r} never appeared under ?{what}"
        time.sleep(0.01)


def put_in_background(port: int, key: bytes, chunks: list[bytes],
                      delay: float) -> tuple[threading.Thread, list]:
    """A PUT whose body trickles in from a thread; the list gets (status, seconds taken)."""
    sock = open_put(port, key, sum(map(len, chunks)))
    started = time.monotonic()
    result: list = []

    def run() -> None:
        status = finish_put(sock, chunks, delay)
        result.append((status, time.monotonic() - started))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


# --- index records, read straight from LevelDB (the SPEC §3 format, parsed independently) ---


@dataclass
class Rec:
    state: str  # "live", "unlinked", "writing"
    md5: str | None
    replicas: list[str]


def parse_record(raw: bytes) -> Rec:
    state = "live"
    for prefix, name in ((b"DELETED", "unlinked"), (b"INIT", "writing")):
        if raw.startswith(prefix):
            state, raw = name, raw[len(prefix):]
    md5 = None
    if raw.startswith(b"HASH"):
        md5, raw = raw[4:36].decode(), raw[36:]
    return Rec(state, md5, raw.decode().split(",") if raw else [])


def files_by_key(vols: list[Volume]) -> dict[bytes, dict[str, Path]]:
    """Every data file on the volumes, by the key its name decodes to, then by replica."""
    found: dict[bytes, dict[str, Path]] = {}
    for vol in vols:
        for path in data_files(vol):
            parts = path.relative_to(vol.dir).parts
            sub = parts[0] if parts[0].startswith("sv") else ""
            rest = parts[1:] if sub else parts
            key = base64.b64decode("/".join(rest[2:]))
            replica = volume_addr(vol) + (f"/{sub}" if sub else "")
            found.setdefault(key, {})[replica] = path
    return found


# --- 1. the master killed while 16 clients write ---

ROUNDS = 5
CLIENTS = 16
ROUND_SECONDS = (1.0, 2.0)  # each round's writers run this long (uniform) before the kill


def random_value(rng: random.Random) -> bytes:
    """Mostly small values; one in eight big enough to be cut off mid-body by the kill."""
    size = rng.randrange(256 << 10, 1 << 20) if rng.random() < 0.125 else rng.randrange(1, 16 << 10)
    return rng.randbytes(size)


def writers(port: int, round_no: int, sent: dict[bytes, bytes],
            answers: dict[bytes, int | None], stop: threading.Event) -> list[threading.Thread]:
    """CLIENTS threads PUTting distinct keys until `stop` or until the master is gone."""

    def client(n: int) -> None:
        rng = random.Random(round_no * 1000 + n)
        for i in range(1_000_000):
            if stop.is_set():
                return
            key = f"/kill{round_no}/c{n:02d}/{i:05d}".encode()
            value = random_value(rng)
            sent[key] = value
            try:
                status: int | None = request(port, "PUT", url_path(key), value, timeout=20).status
            except (OSError, http.client.HTTPException):
                status = None  # cut off: the master died under it (or before it)
            answers[key] = status
            if status is None:
                return

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads


def read_back(port: int, keys: list[bytes], sent: dict[bytes, bytes]) -> None:
    def one(key: bytes) -> bytes | None:
        reply = request(port, "GET", url_path(key), timeout=20)
        if reply.status != 302:
            return None
        return fetch(reply.header("Location"))

    with ThreadPoolExecutor(8) as pool:
        for key, got in zip(keys, pool.map(one, keys), strict=True):
            assert got == sent[key], f"{key!r}: acknowledged (201) but reads back wrong"


def check_disk(vols: list[Volume], db: Path, sent: dict[bytes, bytes],
               answers: dict[bytes, int | None]) -> dict[str, int]:
    """With no master running: the index and the files on disk against what was sent.

    Every acknowledged key is live; every live record's replicas are complete (byte-exact)
    and its md5 is right; every file at a final path is complete and claimed by its key's
    record; a key with no record has no file. Returns how many records are in each state.
    """
    records = {k: parse_record(v) for k, v in read_records(db).items()}
    on_disk = files_by_key(vols)
    assert set(records) <= set(sent), "a record for a key nobody wrote"
    for key, status in answers.items():
        if status == 201:
            assert key in records and records[key].state == "live", f"{key!r} was acknowledged"
        else:
            assert status is None, f"{key!r}: unexpected answer {status}"
    for key, rec in records.items():
        if rec.state == "live":
            assert rec.md5 == md5hex(sent[key]), f"{key!r}: md5 in the record"
            for replica in rec.replicas:
                path = replica_file(vols, replica, key)
                assert path.is_file(), f"live {key!r}: replica {replica} missing"
        for replica in on_disk.get(key, {}):
            assert replica in rec.replicas, f"{key!r}: a file on {replica}, not in its record"
    for key, files in on_disk.items():
        assert key in records, f"{key!r}: files on disk {list(files)} but no record"
        for replica, path in files.items():
            data = path.read_bytes()
            assert data == sent[key], (f"{key!r} on {replica}: {len(data)} bytes at the final "
                                       f"path, {len(sent[key])} sent")
    counts: dict[str, int] = {}
    for rec in records.values():
        counts[rec.state] = counts.get(rec.state, 0) + 1
    return counts


def offline(command: str, vols: list[Volume], db: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        mkv_command("-volumes", ",".join(volume_addr(v) for v in vols), "-db", str(db),
                    *flags, command),
        capture_output=True, text=True, timeout=120)


def wait_for_uploads_to_settle(vols: list[Volume], timeout: float = 15.0) -> None:
    """Wait until no volume holds a PUT body in nginx's temp dir: bytes a killed master had
    already sent are still being received, and land (or not) only then."""
    deadline = time.monotonic() + timeout
    temps = [v.dir / ".mkv" / "tmp" / "client_body" for v in vols]
    while any(any(d.rglob("*")) for d in temps if d.is_dir()):
        assert time.monotonic() < deadline, "uploads still in flight on the volumes"
        time.sleep(0.05)


def test_master_sigkilled_while_16_clients_write(make_volumes, make_master, tmp_path):
    vols = make_volumes(3)
    db = tmp_path / "killed-db"
    flags = ("-replicas", "2", "-subvolumes", "4")
    sent: dict[bytes, bytes] = {}
    answers: dict[bytes, int | None] = {}
    rng = random.Random(6)
    cut_off_listed = 0
    master = make_master(*flags, db=db, volumes=vols)
    for round_no in range(ROUNDS):
        stop = threading.Event()
        threads = writers(master.port, round_no, sent, answers, stop)
        try:
            time.sleep(rng.uniform(*ROUND_SECONDS))
            killed_at = time.monotonic()
            master.process.proc.send_signal(signal.SIGKILL)
            assert master.process.proc.wait(10) == -signal.SIGKILL
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads), "a writer hung after the kill"
        cut_seconds = time.monotonic() - killed_at
        master = make_master(*flags, db=db, volumes=vols)  # the same index again
        this_round = [k for k in answers if k.startswith(f"/kill{round_no}/".encode())]
        acked = [k for k in this_round if answers[k] == 201]
        cut = [k for k in this_round if answers[k] is None]
        read_back(master.port, acked, sent)
        live = set(master.listing(f"/kill{round_no}/")["keys"])
        writing = set(master.listing(f"/kill{round_no}/", "writing")["keys"])
        unlinked = set(master.listing(f"/kill{round_no}/", "unlinked")["keys"])
        assert {k.decode() for k in acked} <= live
        cut_off_listed += len(writing | unlinked)
        for key in cut:  # cut off: finished (live), or listed as cut off, or never begun
            name = key.decode()
            if name not in live | writing | unlinked:
                assert files_of(vols, key) == [], f"{key!r}: files but no record"
        print(f"\nround {round_no}: {len(acked)} PUTs acknowledged, {len(cut)} cut off "
              f"(writers all stopped {cut_seconds:.2f}s after the kill); after restart "
              f"{len(live)} live, {len(writing)} writing, {len(unlinked)} unlinked")
    assert cut_off_listed > 0, "no kill landed mid-write: the test proved nothing"
    master.stop()
    counts = check_disk(vols, db, sent, answers)
    print(f"after {ROUNDS} kills: {sum(1 for s in answers.values() if s == 201)} acknowledged, "
          f"records {counts}")

    started = time.monotonic()
    repaired = offline("repair", vols, db, *flags, "-grace", "0s")
    print(f"repair: exit {repaired.returncode} in {time.monotonic() - started:.1f}s\n"
          f"{repaired.stdout}{repaired.stderr}")
    assert repaired.returncode == 0
    counts = check_disk(vols, db, sent, answers)
    assert "writing" not in counts, f"repair left records being written: {counts}"
    verified = offline("verify", vols, db, *flags)
    print(f"verify: exit {verified.returncode}\n{verified.stdout}{verified.stderr}")
    assert verified.returncode == 0
    master = make_master(*flags, db=db, volumes=vols)
    assert master.listing("/", "writing")["keys"] == []
    read_back(master.port, [k for k, s in answers.items() if s == 201], sent)


# --- 1b. the master killed while 16 clients REPLACE live keys ---

REPLACE_KEYS_PER_CLIENT = 2


def check_replaced(vols: list[Volume], db: Path, sent: dict[bytes, list[bytes]],
                   acked: dict[bytes, int]) -> list[str]:
    """With no master running: what is wrong with each key after REPLACEs were cut off.

    `sent[key]` lists the values sent for a key in order; `acked[key]` is the position of
    the last one acknowledged. A key must be live, read the same from every replica, hold the
    last acknowledged value or a later one, and its record's md5 (the Content-Md5 readers
    are given), if it has one, must be that value's.
    """
    problems = []
    for key, raw in read_records(db).items():
        rec = parse_record(raw)
        assert rec.state == "live", f"{key!r}: {rec.state} after REPLACEs of a live key"
        md5s = {replica: md5hex(replica_file(vols, replica, key).read_bytes())
                for replica in rec.replicas}
        order = {md5hex(v): i for i, v in enumerate(sent[key])}  # which value sent, in order
        allowed = [md5hex(v) for v in sent[key][acked[key]:]]
        held = set(md5s.values())
        if len(held) > 1 or (rec.md5 is not None and rec.md5 not in held):
            on = ", ".join(f"{r}: #{order.get(m)}" for r, m in md5s.items())
            problems.append(f"{key.decode()}: the record has value #{order.get(rec.md5)}, "
                            f"replicas {on}; #{acked[key]} was the last acknowledged, "
                            f"#{len(sent[key]) - 1} the last sent")
        elif held.pop() not in allowed:
            problems.append(f"{key.decode()}: holds a value older than the last acknowledged")
    return problems


def test_master_sigkilled_while_16_clients_replace(make_volumes, make_master, tmp_path):
    vols = make_volumes(3)
    db = tmp_path / "replaced-db"
    flags = ("-replicas", "2", "-subvolumes", "4")
    master = make_master(*flags, db=db, volumes=vols)
    keys = [f"/replace/{i:03d}".encode() for i in range(CLIENTS * REPLACE_KEYS_PER_CLIENT)]
    sent: dict[bytes, list[bytes]] = {}
    acked: dict[bytes, int] = {}
    for key in keys:
        sent[key], acked[key] = [os.urandom(200_000)], 0
        assert master.put(key, sent[key][0]).status == 201

    def client(n: int, port: int, stop: threading.Event) -> None:
        rng = random.Random(f"{port} {n}")
        mine = keys[n * REPLACE_KEYS_PER_CLIENT:(n + 1) * REPLACE_KEYS_PER_CLIENT]
        while not stop.is_set():
            key = rng.choice(mine)
            value = rng.randbytes(rng.randrange(100_000, 400_000))
            sent[key].append(value)
            try:
                status = request(port, "REPLACE", url_path(key), value, timeout=20).status
            except (OSError, http.client.HTTPException):
                return
            assert status == 201
            acked[key] = len(sent[key]) - 1

    rng = random.Random(7)
    for round_no in range(3):
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(n, master.port, stop), daemon=True)
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            time.sleep(rng.uniform(*ROUND_SECONDS))
            master.process.proc.send_signal(signal.SIGKILL)
            assert master.process.proc.wait(10) == -signal.SIGKILL
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        # a REPLACE cut off may leave whole values that differ, under a record without md5:
        # that is what repair settles (README, "How a write stays safe")
        wait_for_uploads_to_settle(vols)
        repaired = offline("repair", vols, db, *flags, "-checksum", "-grace", "0s")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        problems = check_replaced(vols, db, sent, acked)
        print(f"\nround {round_no}: {len(problems)} keys inconsistent after the kill")
        assert problems == [], "\n".join(problems[:5])
        master = make_master(*flags, db=db, volumes=vols)
    master.stop()
    for command in ("repair", "verify"):
        done = offline(command, vols, db, *flags, "-checksum", "-grace", "0s")
        assert done.returncode == 0, done.stdout + done.stderr


# --- 2. a volume's nginx SIGKILLed mid-PUT ---


def test_volume_nginx_sigkilled_mid_put(make_volumes, make_master):
    vols = make_volumes(3)
    master = make_master("-writetimeout", "5s", volumes=vols)
    key = unique_key("vkill")
    chunks = [os.urandom(64 << 10) for _ in range(32)]
    value = b"".join(chunks)
    victim, survivors = vols[1], [vols[0], vols[2]]
    thread, result = put_in_background(master.port, key, chunks, 0.05)
    try:
        wait_listing(master, key, "writing")
        time.sleep(0.3)  # some of the body is on every volume by now
        killed_at = time.monotonic()
        pids = signal_nginx(victim, signal.SIGKILL)
    finally:
        thread.join(30)
    assert result, "the PUT never got an answer"
    status, _ = result[0]
    answered = time.monotonic() - killed_at
    wait_gone(pids)
    assert victim.proc.wait(10) != 0  # `mkv volume` exits when its nginx dies
    print(f"\nnginx killed ({len(pids)} processes): the PUT got {status} within "
          f"{answered:.2f}s of the kill")
    assert 500 <= status < 600
    # not live, left for cleanup
    assert master.call("GET", key).status == 404
    assert master.listing(key)["keys"] == []
    assert master.listing(key, "writing")["keys"] == []
    assert master.listing(key, "unlinked")["keys"] == [key.decode()]
    assert files_of(survivors, key) == [], "a partial file at the final path"
    temp = [p for p in (victim.dir / ".mkv" / "tmp").rglob("*") if p.is_file()]
    print(f"the killed nginx left {len(temp)} temp files in its .mkv/tmp")
    # cleanup while the volume is down fails and keeps the key unlinked
    assert 500 <= master.call("DELETE", key, timeout=30).status < 600
    assert master.listing(key, "unlinked")["keys"] == [key.decode()]
    # the volume restarted: cleanup, then the same PUT succeeds
    make_volumes.restart(victim)
    assert master.call("DELETE", key).status == 204
    assert files_of(vols, key) == []
    assert master.listing(key, "unlinked")["keys"] == []
    assert master.put(key, value).status == 201
    assert master.read(key) == value
    assert [p.read_bytes() == value for p in files_of(vols, key)] == [True] * 3


def test_failed_write_logs_no_stray_tracebacks(make_volumes, make_master, capfd):
    """A failed upload's other replicas' answers are retrieved: no 'Future exception was
    never retrieved' traceback per replica in the master's log (seen before c86da5b)."""
    vols = make_volumes(3)
    master = make_master(volumes=vols)  # started inside the test: its stderr goes to capfd
    key = unique_key("noisy")
    thread, result = put_in_background(master.port, key, [b"x" * (64 << 10)] * 16, 0.05)
    try:
        wait_listing(master, key, "writing")
        signal_nginx(vols[0], signal.SIGKILL)
    finally:
        thread.join(30)
    assert result and 500 <= result[0][0] < 600
    assert master.call("GET", key).status == 404  # the master is done with the write
    time.sleep(0.2)
    err = capfd.readouterr().err
    assert "PUT " + key.decode() in err  # the one warning that belongs there
    assert "never retrieved" not in err, err


# --- 3. a volume frozen with SIGSTOP ---


def test_volume_stopped_with_sigstop(make_volumes, make_master):
    vols = make_volumes(3)
    # strict: the writes below go to the frozen volume and must fail in bounded time (by
    # default they would be refused with 503 once the master knows it is down)
    master = make_master("-voltimeout", "300ms", "-writetimeout", "2s", "-strict_placement",
                         volumes=vols)
    values = {unique_key("slow"): os.urandom(1000) for _ in range(8)}
    for key, value in values.items():
        assert master.put(key, value).status == 201
    frozen = vols[0]
    stopped = volume_addr(frozen)
    doomed = unique_key("slow-del")
    assert master.put(doomed, b"to be deleted").status == 201
    small, big = unique_key("slow-small"), unique_key("slow-big")
    for _ in range(5):  # a master that has been serving: HEAD checks have gone to every volume
        for key in values:
            assert master.call("GET", key).status == 302
    signal_nginx(frozen, signal.SIGSTOP)
    try:
        # reads pick another replica
        times = []
        for _ in range(4):
            for key, value in values.items():
                started = time.monotonic()
                reply = master.call("GET", key, timeout=10)
                times.append(time.monotonic() - started)
                assert reply.status == 302
                location = reply.header("Location")
                assert urlsplit(location).netloc != stopped
                assert fetch(location) == value
        print(f"\nGETs with a volume stopped: {len(times)}, slowest {max(times):.3f}s, "
              f"mean {sum(times) / len(times):.3f}s (-voltimeout 300ms)")
        assert max(times) < 2.0

        # writes fail in bounded time: a small value waits for the answer, a big one to drain
        started = time.monotonic()
        status = master.put(small, b"x" * 1000).status
        small_took = time.monotonic() - started
        chunks = [os.urandom(256 << 10)] * 64  # 16 MiB: more than the sockets buffer
        started = time.monotonic()
        big_status = finish_put(open_put(master.port, big, 16 << 20), chunks, 0.001)
        big_took = time.monotonic() - started
        started = time.monotonic()
        delete_status = master.call("DELETE", doomed, timeout=30).status
        delete_took = time.monotonic() - started
        print(f"PUT 1 KB: {status} in {small_took:.2f}s; PUT 16 MiB: {big_status} in "
              f"{big_took:.2f}s; DELETE: {delete_status} in {delete_took:.2f}s "
              "(-writetimeout 2s)")
        assert 500 <= status < 600 and small_took < 10
        assert 500 <= big_status < 600 and big_took < 10
        assert 500 <= delete_status < 600 and delete_took < 10
        for key in (small, big, doomed):
            assert master.listing(key)["keys"] == []
            assert master.listing(key, "unlinked")["keys"] == [key.decode()]
    finally:
        signal_nginx(frozen, signal.SIGCONT)
    time.sleep(0.5)  # let nginx work off what queued up while it was stopped
    for key, value in values.items():
        assert master.read(key) == value
    for key in (small, big, doomed):
        assert master.call("DELETE", key).status == 204
        assert files_of(vols, key) == []
    assert master.put(small, b"y" * 1000).status == 201
    assert [p.read_bytes() for p in files_of(vols, small)] == [b"y" * 1000] * 3


def test_gets_with_every_volume_stopped_answer_410_in_bounded_time(make_volumes, make_master):
    """A fresh master whose volumes all hang: each GET tries every replica, then 410."""
    vols = make_volumes(3)
    master = make_master("-voltimeout", "300ms", volumes=vols)
    key = unique_key("allstopped")
    assert master.put(key, b"unreachable").status == 201
    for vol in vols:
        signal_nginx(vol, signal.SIGSTOP)
    try:
        times = []
        for _ in range(3):
            started = time.monotonic()
            try:
                status: int | None = master.call("GET", key, timeout=5).status
            except TimeoutError:
                status = None
            times.append(time.monotonic() - started)
            print(f"\nGET with every volume stopped: {status} after {times[-1]:.2f}s")
            assert status == 410
        assert max(times) < 5.0
    finally:
        for vol in vols:
            signal_nginx(vol, signal.SIGCONT)
    time.sleep(0.5)
    assert master.read(key) == b"unreachable"


# --- 4. a volume's disk full ---


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test; skips when mounting is not allowed."""
    where = tmp_path / "tiny"
    where.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=10).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def test_volume_disk_full(tiny_disk, make_volumes, make_master):
    vols = make_volumes(2)
    tiny = start_volume(tiny_disk)
    make_volumes.started.append(tiny)  # stopped at teardown, before the unmount
    vols.append(tiny)
    master = make_master("-writetimeout", "5s", volumes=vols)
    before = {unique_key("full-before"): os.urandom(10_000) for _ in range(4)}
    for key, value in before.items():
        assert master.put(key, value).status == 201
    free = os.statvfs(tiny_disk)
    print(f"\ntmpfs: {free.f_bavail * free.f_frsize} bytes free")
    key = unique_key("full")
    value = os.urandom(4 << 20)
    started = time.monotonic()
    status = finish_put(open_put(master.port, key, len(value)),
                        [value[i:i + (256 << 10)] for i in range(0, len(value), 256 << 10)], 0.001)
    took = time.monotonic() - started
    print(f"PUT 4 MiB onto a 2 MiB disk: {status} in {took:.2f}s")
    assert 500 <= status < 600
    assert master.call("GET", key).status == 404
    assert master.listing(key)["keys"] == []
    assert master.listing(key, "unlinked")["keys"] == [key.decode()]
    # a replica that took the whole value before the full disk failed may keep it (its
    # rename can land after the master's cleanup DELETE), never a part of it
    assert all(p.read_bytes() == value for p in files_of(vols, key)), "a partial file"
    for other, data in before.items():
        assert master.read(other) == data
        assert [p.read_bytes() for p in files_of(vols, other)] == [data] * 3
    left = os.statvfs(tiny_disk)
    assert left.f_bavail >= free.f_bavail, "the failed write's space was not given back"
    # the volume still takes values that fit
    after = unique_key("full-after")
    assert master.put(after, b"fits").status == 201
    assert [p.read_bytes() for p in files_of(vols, after)] == [b"fits"] * 3
    assert master.call("DELETE", key).status == 204
    assert master.listing(key, "unlinked")["keys"] == []


def test_disk_full_logs_no_stray_tracebacks(tiny_disk, make_volumes, make_master, capfd):
    vols = make_volumes(2)
    tiny = start_volume(tiny_disk)
    make_volumes.started.append(tiny)
    master = make_master(volumes=[*vols, tiny])  # started inside the test: stderr to capfd
    key = unique_key("noisy-full")
    value = os.urandom(4 << 20)
    status = finish_put(open_put(master.port, key, len(value)),
                        [value[i:i + (256 << 10)] for i in range(0, len(value), 256 << 10)], 0.001)
    assert 500 <= status < 600
    assert master.call("GET", key).status == 404
    time.sleep(0.2)
    err = capfd.readouterr().err
    assert "PUT " + key.decode() in err
    assert "never retrieved" not in err, err


def test_parse_record_reads_the_spec_examples():
    """The test's own record parser against SPEC §3's table."""
    h = "5d41402abc4b2a76b9719d911017c592"
    assert parse_record(b"a,b") == Rec("live", None, ["a", "b"])
    assert parse_record(b"DELETEDa,b") == Rec("unlinked", None, ["a", "b"])
    assert parse_record(f"HASH{h}a,b".encode()) == Rec("live", h, ["a", "b"])
    assert parse_record(f"DELETEDHASH{h}a".encode()) == Rec("unlinked", h, ["a"])
    assert parse_record(b"INITa,b") == Rec("writing", None, ["a", "b"])
    assert hashlib.md5(b"hello").hexdigest() == h
