"""Go mkv itself against ours: the original minikeyvalue CI on our cluster, and one index served by
both masters in turn.

The original's files run unmodified but for the host/port and the commands' paths: its
`tools/test.py` and `tools/thrasher.go` against our master and five `mkv volume`s (as its CI has
them), then the steps of its `tools/rtest.sh` with our rebuild and rebalance and its own
`tools/leveldb_compare.go` (goleveldb) reading the indexes we leave.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from busy import assert_acknowledged, busy_writes
from cluster import Process, free_port, start_master, wait_listening
from conftest import fetch, read_records, request, url_path
from golang import assert_same_through_both

from bench.gomkv import peer_source

PEER = peer_source()
pytestmark = pytest.mark.skipif(PEER is None, reason="no copy of Go mkv's source on this machine "
                                "(shared/peer/minikeyvalue beside the checkout, or $MKV_GO_PEER)")


def ported(text: str, ports: dict[int, int]) -> str:
    """The original's text with its fixed ports 3000-3005 moved to ours."""
    return re.sub(r"localhost:(300[0-5])\b", lambda m: f"localhost:{ports[int(m[1])]}", text)


@pytest.fixture(scope="module")
def go_mkv(go_programs) -> Path:
    return go_programs(PEER / "src", "mkv-go")


def start_go_mkv(binary: Path, db: Path, volumes: list[str]) -> Process:
    port = free_port()
    proc = subprocess.Popen([str(binary), "-port", str(port), "-volumes", ",".join(volumes),
                             "-db", str(db), "server"], stdout=subprocess.DEVNULL)
    wait_listening(port, proc)
    return Process(port, proc)


def test_the_original_ci(make_volumes, make_master, go_programs, tmp_path):
    vols = make_volumes(5)
    master = make_master(volumes=vols)
    ports = {3000: master.port, **{3001 + n: v.port for n, v in enumerate(vols)}}
    tools = PEER / "tools"

    # tools/test.py: the wait loop and every URL name localhost:3000-3005
    test_py = tmp_path / "test.py"
    text = (tools / "test.py").read_text()
    wait_loop = "for port in range(3000,3006):"
    assert wait_loop in text
    text = text.replace(wait_loop, f"for port in {sorted(ports.values())}:")
    test_py.write_text(ported(text, ports))
    done = subprocess.run([sys.executable, str(test_py)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^Ran 15 tests", done.stderr, re.M), done.stderr[-3000:]
    assert re.search(r"^OK$", done.stderr, re.M)

    # tools/thrasher.go: 16 workers, 10,000 PUT/GET/DELETE cycles
    thrasher_go = tmp_path / "thrasher" / "thrasher.go"
    thrasher_go.parent.mkdir()
    thrasher_go.write_text(ported((tools / "thrasher.go").read_text(), ports))
    thrasher = go_programs(thrasher_go, f"thrasher-{master.port}")
    done = subprocess.run([str(thrasher)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "10000 write/read/delete in" in done.stdout
    print(done.stdout.strip().splitlines()[-1])

    # tools/rtest.sh: its first step stops the master. Its steps pass with ours serving too
    # (goleveldb reads the served index read-only), and then as written, ours stopped
    compare = go_programs(tools / "leveldb_compare.go", "leveldb_compare")
    wait_flushed(master.db)  # an idle master's journal is empty within IDLE_FLUSH
    run_rtest(tools, master.db, ports, tmp_path / "serving", compare)
    assert master.stop() == 0
    run_rtest(tools, master.db, ports, tmp_path / "stopped", compare)


def wait_flushed(db: Path, timeout: float = 30.0) -> None:
    """Until the newest journal of the LevelDB at `db` is empty (the memtable in a table)."""
    deadline = time.monotonic() + timeout
    while True:
        journals = sorted(db.glob("[0-9]*.log"), key=lambda p: int(p.stem))
        if journals and journals[-1].stat().st_size == 0:
            return
        assert time.monotonic() < deadline, f"{db}: the journal is still being written"
        time.sleep(0.1)


def run_rtest(tools: Path, db: Path, ports: dict[int, int], work: Path, compare: Path) -> None:
    """The steps of the original's tools/rtest.sh on our index at `db` and volumes at `ports`,
    but for its first (stopping the master, which the caller does or not)."""
    work.mkdir()
    script = (tools / "rtest.sh").read_text()
    kill = 'kill $(pgrep -f "indexdb")\n'
    assert kill in script
    script = script.replace(kill, "")
    script = script.replace("/tmp/indexdb/", f"{db}/")
    script = script.replace("ALTDB=/tmp/indexdbalt/", f"ALTDB={work}/indexdbalt/")
    script = script.replace("ALTDB2=/tmp/indexdbalt2/", f"ALTDB2={work}/indexdbalt2/")
    script = script.replace("./mkv ", f"{sys.executable} -m mkv ")
    script = script.replace("go run tools/leveldb_compare.go ", f"{compare} ")
    script = re.sub(r"localhost:(300[1-5])\b", lambda m: f"127.0.0.1:{ports[int(m[1])]}", script)
    assert "/tmp/indexdb" not in script and "./mkv" not in script and "go run" not in script
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.count("panic") == 0
    assert len(read_records(work / "indexdbalt2")) > 100


def assert_serves(port: int, live: set[bytes], deleted: set[bytes]) -> None:
    """The master at `port` redirects every live key to its value and knows no deleted one."""
    for key in live:
        reply = request(port, "GET", url_path(key))
        assert reply.status == 302, f"GET {key!r}: {reply.status}"
        number = int(key.split(b"/")[2].split(b"-")[0])
        assert fetch(reply.header("Location")) == f"value {number}".encode()
    for key in list(deleted)[:500]:
        assert request(port, "GET", url_path(key)).status == 404
    reply = request(port, "GET", "/busy/?list")
    assert reply.status == 200
    assert json.loads(reply.body)["keys"] == sorted(k.decode() for k in live)


def test_go_mkv_serves_what_we_wrote(make_master, go_mkv, ldbdump):
    master = make_master()
    live, deleted = busy_writes(master.port, puts=12_000)
    assert master.stop() == 0
    assert_same_through_both(ldbdump, master.db)
    go = start_go_mkv(go_mkv, master.db, master.addrs)
    try:
        assert_serves(go.port, live, deleted)
    finally:
        go.stop()


def test_we_serve_what_go_mkv_wrote(volumes, go_mkv, tmp_path):
    addrs = [v.addr for v in volumes]
    db = tmp_path / "db"
    go = start_go_mkv(go_mkv, db, addrs)
    try:
        live, deleted = busy_writes(go.port, puts=12_000)
    finally:
        go.stop()
    master = start_master(db, addrs)
    try:
        assert_serves(master.port, live, deleted)
    finally:
        master.stop()
    assert_acknowledged(read_records(db), live, deleted)
