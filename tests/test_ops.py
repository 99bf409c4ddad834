"""rebuild, rebalance, verify and repair (SPEC §6) on real nginx volumes, run as
`python -m mkv ...` with the master stopped, and the failures each must survive.
"""

import asyncio
import io
import os
import shutil
import subprocess
from pathlib import Path

import plyvel
from cluster import mkv_command, start_master, start_volume
from conftest import (
    data_files,
    fetch,
    key2path,
    key2volume,
    md5hex,
    read_records,
    replica_file,
    request,
    url_path,
    write_records,
)

from mkv.ops.progress import Progress
from mkv.ops.walk import GROUPS_AHEAD, VolumeFile, Walk
from mkv.record import Record
from mkv.volumes.replicas import Volumes

NESTED = [b"/???", b"/??????", b"/a?b?c?d??"]  # base64 with `/`: the files nest in directories


def mkv(db: Path, volumes: list, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    addrs = ",".join(v if isinstance(v, str) else v.addr for v in volumes)
    return subprocess.run(mkv_command("-db", str(db), "-volumes", addrs, *args),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def write_values(master, values: dict[bytes, bytes]) -> None:
    for key, value in values.items():
        assert master.put(key, value).status == 201, key


def values_of(n: int, prefix: str = "k") -> dict[bytes, bytes]:
    return {f"/{prefix}{i}".encode(): os.urandom(100 + i) for i in range(n)} | {
        key: key * 50 for key in NESTED}


def assert_readable(db: Path, values: dict[bytes, bytes]) -> None:
    """Every replica each record names serves the value (volumes fetched directly)."""
    records = read_records(db)
    for key, value in values.items():
        for replica in Record.decode(records[key]).replicas:
            assert fetch(f"http://{replica}{key2path(key)}") == value, (key, replica)


def lines(result: subprocess.CompletedProcess, kind: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(f"{kind}:")]


# --- rebuild ---


def test_rebuild_equals_the_live_index(make_volumes, make_master, tmp_path):
    vols = make_volumes(3)
    master = make_master("-replicas", "2", "-subvolumes", "4", volumes=vols)
    values = values_of(40)
    write_values(master, values)
    master.stop()
    live = read_records(master.db)
    flags = ("-replicas", "2", "-subvolumes", "4")

    with_md5 = mkv(tmp_path / "md5", vols, *flags, "-checksum", "rebuild")
    assert with_md5.returncode == 0, with_md5.stdout + with_md5.stderr
    assert read_records(tmp_path / "md5") == live
    assert f"keys {len(values)}" in with_md5.stdout

    plain = mkv(tmp_path / "plain", vols, *flags, "rebuild")
    assert plain.returncode == 0
    assert read_records(tmp_path / "plain") == {k: v[36:] for k, v in live.items()}  # no HASH

    # an existing index is emptied first
    write_records(tmp_path / "plain", {b"/stale": b"127.0.0.1:1"})
    assert mkv(tmp_path / "plain", vols, *flags, "rebuild").returncode == 0
    assert b"/stale" not in read_records(tmp_path / "plain")


def test_rebuild_skips_files_that_are_not_keys(make_volumes, make_master, tmp_path):
    vols = make_volumes(2)
    master = make_master("-replicas", "1", "-subvolumes", "1", volumes=vols)
    values = values_of(5)
    write_values(master, values)
    master.stop()
    live = read_records(master.db)
    key = b"/k1"
    placed = key2volume(key, [v.addr for v in vols], 1, 1)[0]
    source = replica_file(vols, placed, key)
    # undecodable, misplaced (valid base64 under the wrong hex dirs), and a second copy of
    # /k1 on the other volume, which placement does not choose: an unknown replica, last
    junk = vols[0].dir / "ab" / "cd" / "not base64!"
    misplaced = vols[0].dir / "00" / "00" / "aGVsbG8="
    other = next(v for v in vols if v.addr != placed)
    extra = other.dir / key2path(key).lstrip("/")
    for path in (junk, misplaced, extra):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, path)

    result = mkv(tmp_path / "db", vols, "-replicas", "1", "-subvolumes", "1", "rebuild")
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = lines(result, "skipped")
    assert len(skipped) == 2
    assert any("not%20base64%21" in s and "not base64" in s for s in skipped)
    assert any("aGVsbG8=" in s and "/5d/41/aGVsbG8=" in s for s in skipped)
    rebuilt = read_records(tmp_path / "db")
    assert b"hello" not in rebuilt and set(rebuilt) == set(values)
    assert rebuilt[key] == live[key][36:] + b"," + other.addr.encode()


def test_rebuild_reads_subvolume_directories(make_volumes, make_master, tmp_path):
    """Replicas are named as the directories are: `host:port/svXX` with upper-case hex."""
    vols = make_volumes(1)
    master = make_master("-replicas", "1", "-subvolumes", "16", volumes=vols)
    values = values_of(30)
    write_values(master, values)
    master.stop()
    assert {p.relative_to(vols[0].dir).parts[0][:2] for p in data_files(vols[0])} == {"sv"}
    result = mkv(tmp_path / "db", vols, "-replicas", "1", "-subvolumes", "16", "-checksum",
                 "rebuild")
    assert result.returncode == 0
    assert read_records(tmp_path / "db") == read_records(master.db)


def test_walk_goes_in_step_over_first_level_directories(make_volumes, make_master):
    """Rebuild writes a key's record once, when the walk says its first-level directory is
    done on every volume: no file of it may come later, and a volume runs at most
    GROUPS_AHEAD directories ahead of the slowest."""
    vols = make_volumes(3)
    master = make_master("-replicas", "2", "-subvolumes", "4", volumes=vols)
    values = values_of(600) | {key: b"nested" for key in NESTED}
    write_values(master, values)
    master.stop()
    events: list[tuple[str, str]] = []

    async def walk() -> None:
        volumes = Volumes()
        found = Walk(volumes, [v.addr for v in vols], 8, Progress("test", io.StringIO(),
                                                                   io.StringIO()))

        async def on_file(file: VolumeFile) -> None:
            events.append(("file", file.path[:4]))
            await asyncio.sleep(0)  # let the other volumes' walkers run between files

        async def on_group(path: str) -> None:
            events.append(("done", path))

        await found.run(on_file, on_group)
        await volumes.close()

    asyncio.run(walk())
    files = [path for kind, path in events if kind == "file"]
    assert len(files) == 2 * len(values)
    done = [path for kind, path in events if kind == "done"]
    assert set(done) == set(files) and len(done) == len(set(done))
    begun: set[str] = set()
    finished: set[str] = set()
    most_open = 0
    for kind, path in events:
        if kind == "done":
            finished.add(path)
        else:
            assert path not in finished, f"a file of {path} came after it was done"
            begun.add(path)
            most_open = max(most_open, len(begun - finished))
    assert most_open <= GROUPS_AHEAD


# --- verify and repair ---


def test_verify_finds_and_repair_fixes(make_volumes, make_master):
    vols = make_volumes(3)
    master = make_master("-replicas", "2", "-subvolumes", "3", volumes=vols)
    values = values_of(20)
    write_values(master, values)
    master.stop()
    db, flags = master.db, ("-replicas", "2", "-subvolumes", "3")
    addrs = [v.addr for v in vols]
    healthy = mkv(db, vols, *flags, "-checksum", "verify")
    assert healthy.returncode == 0, healthy.stdout
    assert "verify ok" in healthy.stdout

    gone, bad = b"/k3", NESTED[1]
    gone_replica = key2volume(gone, addrs, 2, 3)[1]
    replica_file(vols, gone_replica, gone).unlink()
    bad_replica = key2volume(bad, addrs, 2, 3)[0]
    bad_file = replica_file(vols, bad_replica, bad)
    bad_file.write_bytes(b"X" * bad_file.stat().st_size)  # same size: only an md5 tells
    orphan_key = b"/nobody-claims-me"
    orphan = replica_file(vols, key2volume(orphan_key, addrs, 2, 3)[0], orphan_key)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    junk = vols[2].dir / "ff" / "ff" / "junk%name"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"junk")

    quick = mkv(db, vols, *flags, "verify")
    assert quick.returncode == 1, quick.stdout
    assert lines(quick, "missing") == [f"missing: /k3 on {gone_replica}"]
    assert lines(quick, "corrupt") == []  # a HEAD cannot see it
    orphans = lines(quick, "orphan")
    assert len(orphans) == 2
    assert any("key /nobody-claims-me" in line for line in orphans)
    assert any("junk%25name" in line and "not base64" in line for line in orphans)
    assert "verify failed" in quick.stdout

    deep = mkv(db, vols, *flags, "-checksum", "verify")
    assert deep.returncode == 1
    [corrupt] = lines(deep, "corrupt")
    assert corrupt.startswith(f"corrupt: {bad.decode()} on {bad_replica} (md5 ")
    assert lines(deep, "missing")[0].startswith(f"missing: /k3 on {gone_replica}")

    # within the grace period orphans stay; the missing and the corrupt replica come back
    fixed = mkv(db, vols, *flags, "-checksum", "-orphans", "delete", "repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert len(lines(fixed, "fixed")) == 2
    assert len(lines(fixed, "orphan")) == 2 and orphan.exists() and junk.exists()
    assert bad_file.read_bytes() == values[bad]
    assert replica_file(vols, gone_replica, gone).read_bytes() == values[gone]

    cleaned = mkv(db, vols, *flags, "-orphans", "delete", "-grace", "0s", "repair")
    assert cleaned.returncode == 0
    assert len(lines(cleaned, "deleted orphan")) == 2
    assert not orphan.exists() and not junk.exists()
    after = mkv(db, vols, *flags, "-checksum", "verify")
    assert after.returncode == 0, after.stdout
    assert_readable(db, values)


def test_repair_fails_cleanly_without_a_good_replica(make_volumes, make_master):
    vols = make_volumes(2)
    master = make_master("-replicas", "2", "-subvolumes", "1", volumes=vols)
    write_values(master, {b"/only": b"value", b"/fine": b"other"})
    master.stop()
    for vol in vols:
        (vol.dir / key2path(b"/only").lstrip("/")).write_bytes(b"bad!!")
    result = mkv(master.db, vols, "-replicas", "2", "-subvolumes", "1", "-checksum", "repair")
    assert result.returncode == 1
    [failed] = lines(result, "failed")
    assert "/only" in failed and "no good replica" in failed
    assert "healthy 1" in result.stdout


def test_repair_settles_replicas_that_differ_without_an_md5(make_volumes, make_master):
    """A REPLACE cut off leaves whole values that differ under a record without md5: repair
    gives every replica the first replica's value, and verify is then content."""
    vols = make_volumes(2)
    master = make_master("-replicas", "2", "-subvolumes", "1", volumes=vols)
    write_values(master, {b"/replaced": b"old value"})
    master.stop()
    record = Record.decode(read_records(master.db)[b"/replaced"])
    write_records(master.db, {b"/replaced": Record(record.replicas).encode()})  # md5 dropped
    first, second = (replica_file(vols, r, b"/replaced") for r in record.replicas)
    first.write_bytes(b"new value")
    flags = ("-replicas", "2", "-subvolumes", "1", "-checksum")
    assert mkv(master.db, vols, *flags, "verify").returncode == 1
    result = mkv(master.db, vols, *flags, "repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert second.read_bytes() == first.read_bytes() == b"new value"
    assert mkv(master.db, vols, *flags, "verify").returncode == 0


def test_repair_settles_old_writes_and_leaves_recent_ones(make_volumes, tmp_path):
    vols = make_volumes(2)
    addrs = [v.addr for v in vols]
    db = tmp_path / "db"
    complete, partial, empty = b"/complete", b"/partial", b"/nofile"
    for key in (complete, partial):
        for replica in addrs[: 2 if key == complete else 1]:
            path = replica_file(vols, replica, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"value of " + key)
    init = {k: b"INIT" + ",".join(addrs).encode() for k in (complete, partial, empty)}
    write_records(db, init)
    flags = ("-replicas", "2", "-subvolumes", "1")

    recent = mkv(db, vols, *flags, "repair")  # default grace 1h: the files are new
    assert recent.returncode == 0
    assert "writing (recent) 2" in recent.stdout
    records = read_records(db)
    assert records[complete] == init[complete] and records[partial] == init[partial]
    assert records[empty].startswith(b"DELETED")  # no file at all: nothing can be in flight

    settled = mkv(db, vols, *flags, "-grace", "0", "repair")
    assert settled.returncode == 0, settled.stdout
    records = read_records(db)
    md5 = md5hex(b"value of " + complete)
    assert records[complete] == f"HASH{md5}{','.join(addrs)}".encode()
    assert records[partial] == b"DELETED" + ",".join(addrs).encode()
    assert mkv(db, vols, *flags, "-checksum", "verify").returncode == 0


def test_repair_refuses_to_delete_orphans_with_an_empty_index(make_volumes, make_master,
                                                              tmp_path):
    vols = make_volumes(1)
    master = make_master("-replicas", "1", "-subvolumes", "1", volumes=vols)
    write_values(master, {b"/keep": b"me"})
    master.stop()
    result = mkv(tmp_path / "typo", vols, "-replicas", "1", "-subvolumes", "1",
                 "-orphans", "delete", "-grace", "0", "repair")
    assert result.returncode == 1
    assert lines(result, "refused")
    assert len(data_files(vols[0])) == 1


# --- rebalance ---


def test_rebalance_5_to_3_to_5(make_volumes, make_master):
    vols = make_volumes(5)
    flags = ("-replicas", "2", "-subvolumes", "3")
    master = make_master(*flags, volumes=vols)
    values = values_of(40)
    write_values(master, values)
    master.call("UNLINK", b"/k7")
    master.stop()
    db, original = master.db, read_records(master.db)
    three = [v.addr for v in vols[:3]]

    shrink = mkv(db, three, *flags, "rebalance")
    assert shrink.returncode == 0, shrink.stdout + shrink.stderr
    records = read_records(db)
    for key, raw in records.items():
        record, old = Record.decode(raw), Record.decode(original[key])
        assert list(record.replicas) == key2volume(key, three, 2, 3)
        assert (record.state, record.md5) == (old.state, old.md5)
    assert records[b"/k7"].startswith(b"DELETEDHASH")
    assert_readable(db, values)
    assert data_files(vols[3]) == [] and data_files(vols[4]) == []
    assert "moved" in shrink.stdout

    again = mkv(db, three, *flags, "rebalance")
    assert again.returncode == 0
    assert "moved" not in again.stdout and f"in place {len(values)}" in again.stdout
    assert read_records(db) == records

    grow = mkv(db, vols, *flags, "rebalance")
    assert grow.returncode == 0
    assert read_records(db) == original
    assert_readable(db, values)
    assert sum(len(data_files(v)) for v in vols) == 2 * len(values)


def test_rebalance_with_a_volume_down(make_volumes, make_master):
    """Keys on the stopped volume fail and stay as they were; the others move."""
    vols = make_volumes(3)
    flags = ("-replicas", "1", "-subvolumes", "1")
    down, grown = vols[1], [v.addr for v in vols]

    def moves(key: bytes) -> tuple[str, str]:
        return key2volume(key, grown[:2], 1, 1)[0], key2volume(key, grown, 1, 1)[0]

    # the free ports decide placement: pick keys that surely cover both cases
    candidates = values_of(400)
    stuck = sorted(k for k in candidates if moves(k)[0] == down.addr != moves(k)[1])[:5]
    moved = sorted(k for k in candidates if down.addr != moves(k)[0] != moves(k)[1])[:5]
    values = {k: candidates[k] for k in [*stuck, *moved]} | values_of(0)
    master = make_master(*flags, volumes=vols[:2])
    write_values(master, values)
    master.stop()
    db, before = master.db, read_records(master.db)
    assert down.stop() == 0

    result = mkv(db, vols, *flags, "rebalance")
    assert result.returncode == 1
    assert all(before[k].endswith(down.addr.encode()) for k in stuck)
    stuck, moved = set(stuck), set(moved)
    assert len(stuck) == 5 and len(moved) == 5
    failed = lines(result, "failed")
    assert {line.split()[1].rstrip(":").encode() for line in failed} == stuck
    after = read_records(db)
    assert all(after[k] == before[k] for k in stuck)
    assert all(after[k].endswith(vols[2].addr.encode()) for k in moved)

    make_volumes.restart(down)
    retry = mkv(db, vols, *flags, "rebalance")
    assert retry.returncode == 0, retry.stdout
    assert_readable(db, values)


def test_operations_carry_the_volumes_secret(tmp_path, monkeypatch):
    """Volumes that only the master may write take the operations' writes too."""
    secret = "ops-secret-0123456789abcdef"
    vols = [start_volume(tmp_path / f"vol{i}", None, "-secret", secret) for i in range(3)]
    flags = ("-replicas", "1", "-subvolumes", "1")
    monkeypatch.setenv("MKV_SECRET", secret)
    master = start_master(tmp_path / "db", [v.addr for v in vols[:2]], *flags)
    try:
        values = values_of(40)  # odds that no key moves to the third volume: (2/3)**43
        for key, value in values.items():
            assert request(master.port, "PUT", url_path(key), value).status == 201
        master.stop()
        grown = mkv(tmp_path / "db", vols, *flags, "rebalance")
        assert grown.returncode == 0 and "moved" in grown.stdout, grown.stdout
        assert mkv(tmp_path / "db", vols, *flags, "-checksum", "verify").returncode == 0
        monkeypatch.delenv("MKV_SECRET")
        refused = mkv(tmp_path / "db", vols[:2], *flags, "rebalance")
        assert refused.returncode == 1 and lines(refused, "failed")
    finally:
        for proc in [master, *vols]:
            proc.stop()


# --- the command line ---


def test_an_index_held_by_another_program_is_a_clear_error(make_volumes, tmp_path):
    """Held by what serves no socket of ours (Go mkv's master, or any other LevelDB user)."""
    vols = make_volumes(1)
    held = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        for command in ("rebuild", "rebalance", "verify", "repair"):
            result = mkv(tmp_path / "db", vols, "-replicas", "1", command)
            assert result.returncode == 1
            assert "in use" in result.stderr and "stop it first" in result.stderr
    finally:
        held.close()


def test_bad_operation_flags(tmp_path):
    for flag in (["-concurrency", "0"], ["-orphans", "maybe"], ["-grace", "soon"]):
        result = mkv(tmp_path / "db", ["127.0.0.1:1"], "-replicas", "1", *flag, "verify")
        assert result.returncode == 2
        assert flag[0] in result.stderr.splitlines()[0]


def test_progress_line_and_redraw():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, err = io.StringIO(), Tty()
    progress = Progress("verify", out=out, err=err)
    progress.phase("verify: checking keys", "keys", total=400)
    progress.advance(100)
    progress.count("live", 100)
    line = progress.line()
    assert line.startswith("verify: checking keys: 100/400 keys, 25%, ")
    assert "keys/s" in line and "ETA 0:00:0" in line and "live 100" in line

    async def show() -> None:
        progress.start()
        await asyncio.sleep(0.5)
        progress.problem("missing", "/k on a:1")
        await progress.stop()

    asyncio.run(show())
    assert "\r\x1b[K" in err.getvalue() and "25%" in err.getvalue()
    assert out.getvalue() == "missing: /k on a:1\n"
    assert progress.problems == 1 and progress.summary().startswith("verify failed: ")


def test_progress_without_a_terminal_writes_plain_lines(monkeypatch):
    monkeypatch.setattr("mkv.ops.progress.PLAIN_LINE_SECONDS", 0.1)
    out, err = io.StringIO(), io.StringIO()
    progress = Progress("rebuild", out=out, err=err)
    progress.phase("rebuild: walking volumes", "files", fraction=lambda: 0.5)
    progress.advance(10)

    async def show() -> None:
        progress.start()
        await asyncio.sleep(0.35)
        await progress.stop()

    asyncio.run(show())
    plain = err.getvalue().splitlines()
    assert len(plain) >= 2 and "\r" not in err.getvalue() and "\x1b" not in err.getvalue()
    assert plain[0].startswith("rebuild: walking volumes: 10 files, 50%, ") and "ETA" in plain[0]
    assert out.getvalue() == "" and progress.summary().startswith("rebuild ok: nothing to do")
