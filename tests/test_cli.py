"""The command line (SPEC §6): `python -m mkv ...` as a subprocess, and `parse_args` directly."""

import os
import signal
import subprocess
import time
from pathlib import Path

import plyvel
import pytest
from cluster import free_port, mkv_command, start_volume, wait_listening

from mkv.cli import UsageError, parse_args
from mkv.placement import key2path
from mkv.volumes import nginx


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(mkv_command(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_usage(stderr: str) -> None:
    assert "Usage: mkv" in stderr
    for flag in ("-db", "-volumes", "-replicas", "-voltimeout"):
        assert flag in stderr


# --- exit codes and messages, through the real entry point ---


def test_no_arguments_prints_usage() -> None:
    result = run()
    assert result.returncode == 2
    assert_usage(result.stderr)


def test_unknown_flag() -> None:
    result = run("-db", "/tmp/x", "-volumes", "a", "-nosuchflag", "server")
    assert result.returncode == 2
    assert "-nosuchflag" in result.stderr.splitlines()[0]
    assert_usage(result.stderr)


def test_unknown_command(tmp_path: Path) -> None:
    result = run("-db", str(tmp_path / "db"), "-volumes", "a", "-replicas", "1", "frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("args, missing", [
    (["-volumes", "a,b,c", "server"], "-db"),
    (["-db", "DB", "server"], "-volumes"),
    (["server"], "-db"),
])
def test_missing_required_flag(tmp_path: Path, args: list[str], missing: str) -> None:
    args = [str(tmp_path / "db") if a == "DB" else a for a in args]
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert missing in lines[0] and "required" in lines[0]
    assert not (tmp_path / "db").exists()


def test_more_replicas_than_volumes(tmp_path: Path) -> None:
    result = run("-db", str(tmp_path / "db"), "-volumes", "a,b", "-replicas", "3", "server")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "-replicas" in lines[0]
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("value", ["5", "1x", "soon", "-"])
def test_bad_duration(tmp_path: Path, value: str) -> None:
    result = run("-db", str(tmp_path / "db"), "-volumes", "a", "-replicas", "1",
                 f"-voltimeout={value}", "server")
    assert result.returncode == 2
    assert "-voltimeout" in result.stderr.splitlines()[0]
    assert not (tmp_path / "db").exists()


def test_bad_boolean(tmp_path: Path) -> None:
    result = run("-db", str(tmp_path / "db"), "-volumes", "a", "-replicas", "1",
                 "-protect=maybe", "server")
    assert result.returncode == 2, result.stderr
    assert "-protect" in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr


def test_bad_integer(tmp_path: Path) -> None:
    result = run("-db", str(tmp_path / "db"), "-volumes", "a", "-replicas", "one", "server")
    assert result.returncode == 2
    assert "-replicas" in result.stderr.splitlines()[0]


def test_volume_without_dir() -> None:
    result = run("volume")
    assert result.returncode == 2
    assert "DIR" in result.stderr


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_flag(flag: str) -> None:
    result = run(flag)
    assert result.returncode == 0
    assert_usage(result.stderr + result.stdout)


def test_index_in_use(tmp_path: Path) -> None:
    db = tmp_path / "db"
    holder = plyvel.DB(str(db), create_if_missing=True)
    try:
        started = time.monotonic()
        result = run("-db", str(db), "-volumes", "127.0.0.1:1", "-replicas", "1",
                     "-port", str(free_port()), "server")
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "in use" in lines[0] and str(db) in lines[0]
    assert "Traceback" not in result.stderr


def test_checkpoint_needs_an_existing_index(tmp_path: Path) -> None:
    result = run("checkpoint")
    assert result.returncode == 2 and "-db is required" in result.stderr
    missing = tmp_path / "nothing"
    result = run("-db", str(missing), "checkpoint")
    assert result.returncode == 1 and "no LevelDB index" in result.stderr
    assert not missing.exists()  # not created by the attempt


def test_checkpoint_of_a_held_index(tmp_path: Path) -> None:
    db = tmp_path / "db"
    holder = plyvel.DB(str(db), create_if_missing=True)
    holder.put(b"/k", b"a,b")
    try:
        result = run("-db", str(db), "checkpoint")
    finally:
        holder.close()
    assert result.returncode == 1 and "in use" in result.stderr
    assert "Traceback" not in result.stderr


# --- parse_args ---


def test_defaults() -> None:
    config, positional, given = parse_args(["server"])
    assert positional == ["server"] and given == set()
    assert (config.port, config.replicas, config.subvolumes) == (3000, 3, 10)
    assert (config.protect, config.md5sum, config.verbose, config.vdir_colocation) == (
        False, True, False, False)
    assert config.voltimeout == 1.0 and config.fallback == ""


@pytest.mark.parametrize("argv", [
    ["-db", "/d", "-volumes", "a:1,b:2", "-port", "3005", "server"],
    ["--db", "/d", "--volumes", "a:1,b:2", "--port", "3005", "server"],
    ["-db=/d", "-volumes=a:1,b:2", "-port=3005", "server"],
    ["--db=/d", "--volumes=a:1,b:2", "--port=3005", "server"],
    ["server", "-db", "/d", "--volumes=a:1,b:2", "-port", "3005"],
    ["-db", "/d", "server", "--port=3005", "-volumes", "a:1,b:2"],
])
def test_flag_spellings_and_positions(argv: list[str]) -> None:
    config, positional, given = parse_args(argv)
    assert positional == ["server"]
    assert config.db == "/d" and config.volumes == ("a:1", "b:2") and config.port == 3005
    assert given == {"db", "volumes", "port"}


def test_every_flag() -> None:
    config, positional, _ = parse_args([
        "-db", "/d", "-volumes", "a,b,c,d", "-port", "4000", "-replicas", "2", "-subvolumes",
        "16", "-fallback", "backup:3000", "-protect", "-md5sum=false", "-voltimeout", "500ms",
        "-v", "-vdir_colocation", "rebalance"])
    assert positional == ["rebalance"]
    assert config.volumes == ("a", "b", "c", "d")
    assert (config.port, config.replicas, config.subvolumes) == (4000, 2, 16)
    assert config.fallback == "backup:3000"
    assert config.protect and not config.md5sum and config.verbose and config.vdir_colocation
    assert config.voltimeout == pytest.approx(0.5)


def test_boolean_flag_does_not_take_the_next_word() -> None:
    config, positional, _ = parse_args(["-protect", "server", "-md5sum=0", "-v=true"])
    assert config.protect and not config.md5sum and config.verbose
    assert positional == ["server"]


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("1m30s", 90.0), ("0", 0.0)])
def test_voltimeout(text: str, seconds: float) -> None:
    assert parse_args([f"-voltimeout={text}"])[0].voltimeout == pytest.approx(seconds)
    assert parse_args(["--voltimeout", text])[0].voltimeout == pytest.approx(seconds)


@pytest.mark.parametrize("argv", [
    ["-nosuch"], ["--nosuch=1"], ["-port"], ["-port", "abc"], ["-voltimeout", "5"],
    ["server", "-db"],
])
def test_parse_args_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_bad_boolean_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_args(["-protect=maybe"])


def test_volume_positional() -> None:
    config, positional, given = parse_args(["volume", "/data", "-port", "3002"])
    assert positional == ["volume", "/data"] and config.port == 3002 and given == {"port"}


# --- flags reach the running master ---


def _nginx_processes(vol_dir: Path) -> list[int]:
    master = int((vol_dir / ".mkv" / "nginx.pid").read_text())
    children = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == master:
            children.append(int(pid))
    return [master, *children]


def _get_status(port: int, path: str) -> tuple[int, float]:
    import http.client

    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
    finally:
        conn.close()
    return status, time.monotonic() - started


@pytest.mark.skipif(nginx.find_nginx() is None, reason="nginx is not installed")
def test_voltimeout_and_flags_after_the_command(tmp_path: Path) -> None:
    """`server --db=… -voltimeout 300ms`: a hung volume costs the HEAD check 300 ms, not 1 s."""
    vol = start_volume(tmp_path / "vol")
    key = b"/hung"
    (vol.dir / key2path(key).lstrip("/")).parent.mkdir(parents=True)
    (vol.dir / key2path(key).lstrip("/")).write_bytes(b"value")
    db = tmp_path / "db"
    index = plyvel.DB(str(db), create_if_missing=True)
    index.put(key, vol.addr.encode())
    index.close()
    port = free_port()
    master = subprocess.Popen(
        mkv_command("server", f"--db={db}", "-volumes", vol.addr, "--replicas=1",
                    "-subvolumes", "1", "-voltimeout", "300ms", "--port", str(port)),
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stopped: list[int] = []
    try:
        wait_listening(port, master)
        assert _get_status(port, "/hung")[0] == 302
        stopped = _nginx_processes(vol.dir)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        status, took = _get_status(port, "/hung")
        assert status == 410
        assert 0.25 < took < 0.8
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        master.terminate()
        master.communicate(timeout=15)
        vol.stop()
