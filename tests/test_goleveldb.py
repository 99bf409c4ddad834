"""After any stop of ours, goleveldb (Go mkv's LevelDB) reads the index exactly as plyvel does.

C++ LevelDB leaves journal records older than the MANIFEST's last sequence after a background
memtable flush, and goleveldb drops them (google/leveldb#750). Each test runs enough writes for
at least one flush, stops the way users stop things, and compares the two readings record by
record, and both against what the clients were told.
"""

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from busy import KEY_FILLER, assert_acknowledged, busy_writes
from cluster import Volume, mkv_command, start_master
from conftest import replica_file
from golang import assert_same_through_both, memtable_flushed

from mkv.index.owner import SOCKET_NAME


@pytest.fixture
def busy_master(make_master) -> Iterator:
    """A master that has taken a busy run (at least one memtable flush); its acknowledgements."""
    master = make_master()
    live, deleted = busy_writes(master.port, puts=12_000)
    assert memtable_flushed(master.db), "the run never flushed a memtable: the test proves nothing"
    yield master, live, deleted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop_of_the_master(busy_master, ldbdump, sig):
    master, live, deleted = busy_master
    started = time.monotonic()
    assert master.process.stop(sig) == 0
    print(f"stop took {time.monotonic() - started:.2f}s")
    records = assert_same_through_both(ldbdump, master.db)
    assert_acknowledged(records, live, deleted)


def test_crash_then_one_command(busy_master, ldbdump, tmp_path):
    """SIGKILL, then any one mkv command on the index: afterwards goleveldb reads it all."""
    master, live, deleted = busy_master
    master.process.stop(signal.SIGKILL)
    crashed = tmp_path / "crashed"
    # the killed master's socket (mkv.sock) is left behind; it is no index data, and
    # shutil cannot copy a socket
    shutil.copytree(master.db, crashed, ignore=shutil.ignore_patterns(SOCKET_NAME))
    volumes = ",".join(master.addrs)
    commands = {
        "checkpoint": ["-db", "{db}", "checkpoint"],
        "verify": ["-db", "{db}", "-volumes", volumes, "verify"],
    }
    for name, args in commands.items():
        db = tmp_path / name
        shutil.copytree(crashed, db)
        done = subprocess.run(mkv_command(*(a.format(db=db) for a in args)),
                              capture_output=True, timeout=120)
        assert done.returncode in (0, 1), f"{name}: {done.stderr.decode()}"
        records = assert_same_through_both(ldbdump, db)
        assert_acknowledged(records, live, deleted)
    # and the master itself: restart on the crashed index, stop it cleanly
    db = tmp_path / "server"
    shutil.copytree(crashed, db)
    assert start_master(db, master.addrs).stop() == 0
    assert_acknowledged(assert_same_through_both(ldbdump, db), live, deleted)


def write_volume_files(volume: Volume, keys: list[bytes]) -> None:
    """Files straight into a volume's directory, laid out as key2path says (no subvolumes)."""
    for key in keys:
        path = replica_file([volume], volume.addr, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"v")


def table_files(db: Path) -> set[str]:
    return {p.name for p in db.glob("*.ldb")}


def test_offline_commands_stop_clean(make_volumes, ldbdump, tmp_path):
    """rebuild (success), verify (failure), rebalance cut by Ctrl-C and by SIGTERM."""
    vols = make_volumes(3)
    addrs = ",".join(v.addr for v in vols)
    keys = [f"/offline/{i:06d}-{KEY_FILLER}".encode() for i in range(30_000)]
    for n, vol in enumerate(vols):
        write_volume_files(vol, keys[n::3])
    db = tmp_path / "db"

    def mkv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(mkv_command("-db", str(db), "-volumes", addrs, "-subvolumes", "1",
                                          *args), capture_output=True, timeout=timeout)

    done = mkv("rebuild")
    assert done.returncode == 0, done.stderr.decode()
    assert len(table_files(db)) > 1, "rebuild never flushed a memtable before its stop"
    records = assert_same_through_both(ldbdump, db)
    assert [k for k, _ in records] == sorted(keys)

    replica_file(vols, vols[0].addr, keys[0]).unlink()
    done = mkv("verify")
    assert done.returncode == 1, done.stdout.decode()
    assert_same_through_both(ldbdump, db)

    # each run moves every key again (one more replica), so each writes a memtable's worth
    for sig, replicas in ((signal.SIGINT, "2"), (signal.SIGTERM, "3")):
        before = table_files(db)
        proc = subprocess.Popen(mkv_command("-db", str(db), "-volumes", addrs, "-subvolumes", "1",
                                            "-replicas", replicas, "rebalance"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while table_files(db) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "rebalance ended before it could be interrupted"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, (stdout.decode()[-3000:], stderr.decode())
        assert b"(interrupted)" in stdout
        records = assert_same_through_both(ldbdump, db)
        assert len(records) == len(keys)
