"""`mkv volume`: stock nginx serving a data directory, driven over loopback HTTP."""

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster import Volume, free_port, mkv_command, start_volume

from mkv.volumes import nginx

NGINX = nginx.find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@pytest.fixture
def volume(tmp_path: Path):
    vol = start_volume(tmp_path / "vol")
    yield vol
    vol.stop()


def request(vol: Volume, method: str, path: str, body=None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", vol.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def key_tree(vol: Volume) -> set[str]:
    """Every file under the data dir outside .mkv, as a URL path."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(vol.dir):
        dirnames[:] = [d for d in dirnames if d != ".mkv"]
        for name in filenames:
            found.add("/" + str((Path(dirpath) / name).relative_to(vol.dir)))
    return found


def body_temp_files(vol: Volume) -> list[str]:
    return os.listdir(vol.dir / ".mkv" / "tmp" / "client_body")


def nginx_pids(vol: Volume) -> list[int]:
    """nginx's master (from its pid file) and its workers (processes whose parent it is)."""
    master = int((vol.dir / ".mkv" / "nginx.pid").read_text())
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(int(p)) == master]
    return [master, *workers]


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its parent's wait is missing


def wait_until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_render_config() -> None:
    text = nginx.render_config(Path("/data/vol1"), 3001)
    for directive in (
        "daemon off;",
        "error_log stderr;",
        "access_log off;",
        "default_type application/octet-stream;",
        "listen 3001 reuseport backlog=4096 default_server;",
        "dav_methods PUT DELETE MOVE;",
        "create_full_put_path on;",
        "client_max_body_size 0;",
        "autoindex_format json;",
        "keepalive_requests 100000;",
        "client_body_temp_path tmp/client_body;",
        "pid nginx.pid;",
    ):
        assert directive in text
    for absent in ("mime.types", "open_file_cache", "user ", "[::]", "/etc/nginx", "/var/"):
        assert absent not in text
    assert '"/data/vol1"' in text  # named in the header comment
    both = nginx.render_config(Path("/data/vol1"), 3002, ipv6=True, user="root")
    assert "user root;" in both
    assert "listen [::]:3002 reuseport backlog=4096 default_server;" in both


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    state = tmp_path / ".mkv"
    for name in nginx.TEMP_DIRS:
        (state / "tmp" / name).mkdir(parents=True)
    conf = state / "nginx.conf"
    user = "root" if os.geteuid() == 0 else None
    conf.write_text(nginx.render_config(tmp_path, free_port(), ipv6=True, user=user))
    result = subprocess.run([NGINX, "-t", "-p", f"{state}/", "-c", str(conf), "-e", "stderr"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr and "emerg" not in result.stderr


def test_put_get_head_delete(volume: Volume) -> None:
    path = "/sv01/5d/41/aGVsbG8="
    assert request(volume, "PUT", path, b"hello")[0] == 201
    assert (volume.dir / "sv01/5d/41/aGVsbG8=").read_bytes() == b"hello"
    status, headers, body = request(volume, "GET", path)
    assert (status, body) == (200, b"hello")
    assert headers["Content-Type"] == "application/octet-stream"
    status, headers, body = request(volume, "HEAD", path)
    assert (status, headers["Content-Length"], body) == (200, "5", b"")
    assert request(volume, "DELETE", path)[0] == 204
    assert request(volume, "HEAD", path)[0] == 404  # at once: no open_file_cache
    assert request(volume, "GET", path)[0] == 404
    assert request(volume, "DELETE", path)[0] == 404


def test_base64_slash_nests_directories(volume: Volume) -> None:
    path = "/27/6f/Lz8/Pw=="  # key /??? : its base64 holds a '/'
    assert request(volume, "PUT", path, b"???")[0] == 201
    assert (volume.dir / "27/6f/Lz8/Pw==").read_bytes() == b"???"
    assert request(volume, "GET", path)[2] == b"???"


def test_put_overwrites(volume: Volume) -> None:
    path = "/fc/5e/aGVsbG93b3JsZA=="
    assert request(volume, "PUT", path, b"first value")[0] == 201
    assert request(volume, "PUT", path, b"second")[0] == 204  # nginx: 204 when it replaced a file
    assert request(volume, "GET", path)[2] == b"second"


def test_empty_put(volume: Volume) -> None:
    assert request(volume, "PUT", "/00/00/ZW1wdHk=", b"")[0] == 201
    status, _, body = request(volume, "GET", "/00/00/ZW1wdHk=")
    assert (status, body) == (200, b"")


def test_large_chunked_put(volume: Volume) -> None:
    chunks = [os.urandom(256 * 1024) for _ in range(32)]  # 8 MiB, no Content-Length
    # An iterator body without a length: http.client sends it with Transfer-Encoding: chunked.
    status, _, _ = request(volume, "PUT", "/ab/cd/YmlnCg==", body=iter(chunks))
    assert status == 201
    status, headers, body = request(volume, "GET", "/ab/cd/YmlnCg==")
    assert status == 200 and headers["Content-Length"] == str(8 * 1024 * 1024)
    assert hashlib.md5(body).digest() == hashlib.md5(b"".join(chunks)).digest()
    assert body_temp_files(volume) == []


def test_json_listing_hides_state_dir(volume: Volume) -> None:
    request(volume, "PUT", "/sv01/5d/41/aGVsbG8=", b"hello")
    request(volume, "PUT", "/27/6f/Lz8/Pw==", b"???")
    status, headers, body = request(volume, "GET", "/")
    assert status == 200 and "json" in headers["Content-Type"]
    assert [(e["name"], e["type"]) for e in json.loads(body)] == [
        ("27", "directory"), ("sv01", "directory")]
    status, _, body = request(volume, "GET", "/27/6f/Lz8/")
    assert [(e["name"], e["type"], e["size"]) for e in json.loads(body)] == [("Pw==", "file", 3)]


def test_state_dir_is_not_reachable(volume: Volume) -> None:
    conf = (volume.dir / ".mkv" / "nginx.conf").read_bytes()
    assert request(volume, "GET", "/.mkv/nginx.conf")[0] == 404
    assert request(volume, "PUT", "/.mkv/nginx.conf", b"oops")[0] == 404
    assert request(volume, "DELETE", "/.mkv/nginx.conf")[0] == 404
    assert request(volume, "GET", "/sv01/../.mkv/nginx.conf")[0] == 404
    assert (volume.dir / ".mkv" / "nginx.conf").read_bytes() == conf


def test_only_put_files_in_key_tree(volume: Volume) -> None:
    paths = {"/sv01/5d/41/aGVsbG8=", "/27/6f/Lz8/Pw==", "/fc/5e/aGVsbG93b3JsZA=="}
    for path in paths:
        assert request(volume, "PUT", path, path.encode())[0] == 201
    request(volume, "PUT", "/fc/5e/aGVsbG93b3JsZA==", b"again")
    request(volume, "PUT", "/00/00/Z29uZQ==", b"gone")
    request(volume, "DELETE", "/00/00/Z29uZQ==")
    assert key_tree(volume) == paths
    assert body_temp_files(volume) == []


def test_interrupted_put_leaves_nothing(volume: Volume) -> None:
    with socket.create_connection(("127.0.0.1", volume.port)) as s:
        s.sendall(b"PUT /aa/bb/Y3V0 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        s.sendall(b"x" * 100_000)
        assert wait_until(lambda: body_temp_files(volume) != [])  # the body is on its way
    assert wait_until(lambda: body_temp_files(volume) == [])
    assert key_tree(volume) == set()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_nginx(tmp_path: Path, sig: int) -> None:
    vol = start_volume(tmp_path / "vol")
    # nginx listens before it forks its workers: under load a moment may pass between
    assert wait_until(lambda: len(nginx_pids(vol)) >= 2)
    pids = nginx_pids(vol)
    assert all(alive(p) for p in pids)
    started = time.monotonic()
    assert vol.stop(sig, timeout=5) == 0
    assert time.monotonic() - started < 3
    assert not any(alive(p) for p in pids)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", vol.port), timeout=1).close()


def test_nginx_stops_when_launcher_is_killed(tmp_path: Path) -> None:
    vol = start_volume(tmp_path / "vol")
    pids = nginx_pids(vol)
    vol.stop(signal.SIGKILL)
    assert wait_until(lambda: not any(alive(p) for p in pids))


def test_port_in_use(volume: Volume, tmp_path: Path) -> None:
    # reuseport alone would let a second nginx share the port and split the requests.
    result = subprocess.run(mkv_command("volume", str(tmp_path / "other"), "-port",
                                        str(volume.port)),
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert f"port {volume.port} is in use" in result.stderr


def test_nginx_missing(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "MKV_NGINX": "nginx"}
    result = subprocess.run([sys.executable, "-m", "mkv", "volume", str(tmp_path / "vol"),
                             "-port", str(free_port())],
                            capture_output=True, text=True, timeout=10, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "nginx is not installed" in lines[0]
    assert "apt-get install -y nginx" in lines[0]
    assert not (tmp_path / "vol").exists()


def test_find_nginx_falls_back_to_sbin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.access(nginx.DEBIAN_NGINX, os.X_OK):
        pytest.skip(f"no {nginx.DEBIAN_NGINX}")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MKV_NGINX", raising=False)
    assert nginx.find_nginx() == nginx.DEBIAN_NGINX


def test_dollar_in_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        nginx.render_config(tmp_path / "a$b", 3001)
    result = subprocess.run(mkv_command("volume", str(tmp_path / "a$b"), "-port", str(free_port())),
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "'$'" in result.stderr
    assert not (tmp_path / "a$b").exists()


def test_odd_characters_in_path(tmp_path: Path) -> None:
    vol = start_volume(tmp_path / 'a b;"c\' {d}')
    try:
        assert request(vol, "PUT", "/5d/41/aGVsbG8=", b"hello")[0] == 201
        assert (vol.dir / "5d/41/aGVsbG8=").read_bytes() == b"hello"
    finally:
        vol.stop()
