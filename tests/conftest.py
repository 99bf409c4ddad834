"""Fixtures for integration tests: real nginx volumes and real masters on loopback, in temp dirs.

`cluster` is one session-wide cluster (3 volumes, a default master); tests on it use unique
keys. `make_master` starts a master with its own flags and a fresh index on those volumes;
`make_volumes` starts volumes a test may stop and restart. Every process is stopped at teardown.
The helpers below talk plain HTTP with http.client and never follow redirects on their own.
"""

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import boto3
import plyvel
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cluster import Process, Volume, free_port, start_master, start_volume, wait_listening
from pgserver import PostgresServer, running_postgres

from bench.gomkv import go_build
from mkv.s3.parts import PARTS
from mkv.volumes.nginx import find_nginx

# --- the contract, written out independently of mkv/ so the tests pin it ---


def key2path(key: bytes) -> str:
    digest = hashlib.md5(key).digest()
    return f"/{digest[0]:02x}/{digest[1]:02x}/{base64.b64encode(key).decode()}"


def key2volume(key: bytes, volumes: list[str], replicas: int = 3,
               subvolumes: int = 10) -> list[str]:
    scored = sorted(((hashlib.md5(key + v.encode()).digest(), v) for v in volumes),
                    key=lambda sv: sv[0], reverse=True)
    chosen = []
    for score, volume in scored[:replicas]:
        sub = int.from_bytes(score[12:16], "big") % subvolumes
        chosen.append(volume if subvolumes == 1 else f"{volume}/sv{sub:02X}")
    return chosen


def md5hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def unique_key(prefix: str = "t") -> bytes:
    return f"/{prefix}-{uuid.uuid4().hex}".encode()


def url_path(key: bytes) -> str:
    """The request path naming `key` (percent-encoded where needed; `/` kept)."""
    return quote(key, safe="/-_.~")


# --- HTTP ---


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(port: int, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
            headers: dict[str, str] | None = None, *, chunked: bool = False,
            host: str = "127.0.0.1", timeout: float = 30) -> Reply:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def fetch(location: str) -> bytes:
    """GET an absolute URL (a volume's), expecting 200."""
    url = urlsplit(location)
    reply = request(url.port, "GET", url.path, host=url.hostname)
    assert reply.status == 200, f"GET {location}: {reply.status}"
    return reply.body


@dataclass
class Master:
    """A running master and the volumes it was given."""

    process: Process
    volumes: list[Volume]
    db: Path | str  # a LevelDB directory or a PostgreSQL URL
    flags: tuple[str, ...] = ()
    addrs: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.process.port

    def call(self, method: str, key: bytes | str, body: bytes | Iterable[bytes] | None = None,
             **kw) -> Reply:
        path = url_path(key) if isinstance(key, bytes) else key
        return request(self.port, method, path, body, **kw)

    def put(self, key: bytes, value: bytes, method: str = "PUT") -> Reply:
        return self.call(method, key, value)

    def read(self, key: bytes) -> bytes:
        reply = self.call("GET", key)
        assert reply.status == 302, f"GET {key!r}: {reply.status}"
        return fetch(reply.header("Location"))

    def listing(self, prefix: bytes | str = b"/", what: str = "list", **params: str) -> dict:
        path = url_path(prefix) if isinstance(prefix, bytes) else prefix
        query = "&".join([what, *(f"{k}={quote(v, safe='')}" for k, v in params.items())])
        reply = request(self.port, "GET", f"{path}?{query}")
        assert reply.status == 200, f"listing {path}?{query}: {reply.status} {reply.body!r}"
        return json.loads(reply.body)

    def stop(self) -> int:
        return self.process.stop()


def files_of(volumes: Iterable[Volume], key: bytes) -> list[Path]:
    """Every file on disk holding `key`, whatever the subvolume."""
    rel = key2path(key).lstrip("/")
    found = []
    for vol in volumes:
        candidates = [vol.dir / rel] + [vol.dir / f"sv{i:02X}" / rel for i in range(256)]
        found += [p for p in candidates if p.is_file()]
    return found


def replica_file(volumes: Iterable[Volume], replica: str, key: bytes) -> Path:
    """Where on disk `replica` (`host:port` or `host:port/svXX`) keeps `key`."""
    hostport, _, sub = replica.partition("/")
    port = int(hostport.rpartition(":")[2])
    vol = next(v for v in volumes if v.port == port)
    base = vol.dir / sub if sub else vol.dir
    return base / key2path(key).lstrip("/")


def data_files(vol: Volume) -> list[Path]:
    """Every file in a volume's data dir, outside nginx's own `.mkv/`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(vol.dir):
        dirnames[:] = [d for d in dirnames if d != ".mkv"]
        found += [Path(dirpath) / name for name in filenames]
    return found


def part_files(volumes: list[Volume], upload_id: str | None = None) -> list[Path]:
    """The files under every volume's `s3-parts/` (any subvolume), of one upload if given."""
    found = []
    for vol in volumes:
        for parts in [vol.dir / PARTS, *vol.dir.glob(f"sv*/{PARTS}")]:
            base = parts / upload_id if upload_id else parts
            found += [p for p in base.rglob("*") if p.is_file()]
    return found


def write_records(db: Path, records: dict[bytes, bytes] | Iterator[tuple[bytes, bytes]]) -> None:
    """Write raw index records straight into a LevelDB (no master may hold it)."""
    items = records.items() if isinstance(records, dict) else records
    ldb = plyvel.DB(str(db), create_if_missing=True)
    try:
        with ldb.write_batch() as batch:
            for key, value in items:
                batch.put(key, value)
    finally:
        ldb.close()


def read_records(db: Path) -> dict[bytes, bytes]:
    ldb = plyvel.DB(str(db))
    try:
        return dict(ldb.iterator())
    finally:
        ldb.close()


def open_put(port: int, key: bytes, length: int, method: str = "PUT") -> socket.socket:
    """A connection that has sent a PUT's headers (Content-Length `length`), body to follow."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"{method} {url_path(key)} HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def finish_put(sock: socket.socket, chunks: list[bytes], delay: float) -> int:
    """Send the body chunk by chunk, `delay` apart, then the status (0: no answer); closes.

    Stops sending as soon as the master answers (it may answer before reading the body).
    """
    try:
        for chunk in chunks:
            sock.settimeout(delay)
            try:
                sock.recv(1, socket.MSG_PEEK)
                break  # an answer (or a close) before the body ended
            except TimeoutError:
                pass
            sock.settimeout(30)
            try:
                sock.sendall(chunk)
            except OSError:
                break
        sock.settimeout(30)
        data = b""
        while b"\r\n" not in data:
            try:
                more = sock.recv(4096)
            except OSError:
                break
            if not more:
                break
            data += more
        return int(data.split(b" ", 2)[1]) if data else 0
    finally:
        sock.close()


def slow_put(port: int, key: bytes, chunks: list[bytes], delay: float,
             method: str = "PUT") -> int:
    """A PUT (or REPLACE) whose body trickles in, `delay` between chunks; the status."""
    sock = open_put(port, key, sum(len(c) for c in chunks), method)
    return finish_put(sock, chunks, delay)


# --- the run's summary: lines tests leave for the end (e.g. test_adversary's counts) ---

SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARIES:
        terminalreporter.section("summaries")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


# --- fixtures ---


@pytest.fixture(scope="session")
def volumes(tmp_path_factory) -> Iterator[list[Volume]]:
    base = tmp_path_factory.mktemp("volumes")
    started: list[Volume] = []
    try:
        for i in range(3):
            started.append(start_volume(base / f"vol{i}"))
        yield started
    finally:
        for vol in started:
            vol.stop()


class MasterFactory:
    """Starts masters on given volumes with a fresh (or given) index; stops them all at the end."""

    def __init__(self, tmp: Path, volumes: list[Volume]) -> None:
        self.tmp = tmp
        self.volumes = volumes
        self.started: list[Master] = []
        self.count = 0

    def new_db(self) -> Path:
        self.count += 1
        return self.tmp / f"db{self.count}"

    def __call__(self, *flags: str, db: Path | str | None = None,
                 volumes: list[Volume] | None = None, addrs: list[str] | None = None,
                 port: int | None = None) -> Master:
        vols = volumes if volumes is not None else self.volumes
        db = db or self.new_db()
        addrs = addrs or [v.addr for v in vols]
        proc = start_master(db, addrs, *flags, port=port)
        master = Master(proc, vols, db, flags, addrs)
        self.started.append(master)
        return master

    def stop_all(self) -> None:
        for master in self.started:
            master.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, volumes) -> Iterator[Master]:
    """The shared default master: -replicas 3 -subvolumes 10 on the three volumes."""
    factory = MasterFactory(tmp_path_factory.mktemp("cluster"), volumes)
    try:
        yield factory()
    finally:
        factory.stop_all()


@pytest.fixture
def make_master(tmp_path, volumes) -> Iterator[MasterFactory]:
    factory = MasterFactory(tmp_path, volumes)
    try:
        yield factory
    finally:
        factory.stop_all()


class GoBuilder:
    """Builds Go programs once per session into a temp dir (one Go build cache for all)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __call__(self, source: Path, name: str) -> Path:
        binary = self.out / name
        return binary if binary.exists() else go_build(source, binary, self.out / "cache")


@pytest.fixture(scope="session")
def go_programs(tmp_path_factory) -> GoBuilder:
    return GoBuilder(tmp_path_factory.mktemp("go"))


@pytest.fixture(scope="session")
def ldbdump(go_programs) -> Path:
    """Our goleveldb reader: prints every record as Go mkv's LevelDB sees it."""
    return go_programs(Path(__file__).parent / "go/ldbdump", "ldbdump")


class VolumeFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Volume] = []

    def __call__(self, count: int) -> list[Volume]:
        vols = [start_volume(self.tmp / f"vol{len(self.started) + i}") for i in range(count)]
        self.started += vols
        return vols

    def restart(self, vol: Volume) -> Volume:
        """The same volume (port and dir) again, after it was stopped."""
        new = start_volume(vol.dir, vol.port)
        self.started.append(new)
        return new

    def stop_all(self) -> None:
        for vol in self.started:
            vol.stop()


@pytest.fixture
def make_volumes(tmp_path) -> Iterator[VolumeFactory]:
    """Private volumes for tests that stop them."""
    factory = VolumeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def nginx_conf(prefix: Path, http: str) -> Path:
    """An nginx.conf of our own in prefix (its temp dirs made), `http` inside its http block."""
    temps = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    for name in temps:
        (prefix / "tmp" / name).mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off; {user}
worker_processes 1;
pid nginx.pid;
error_log stderr;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {" ".join(f"{name}_temp_path tmp/{name};" for name in temps)}
    {http}
}}
""")
    return conf


def nginx_config(prefix: Path, data: Path, port: int, extra: str) -> Path:
    """A config of our own, so a test can set what `mkv volume` would not."""
    return nginx_conf(prefix, f"""{extra}
    server {{
        listen 127.0.0.1:{port};
        root {data};
    }}""")


def start_nginx(prefix: Path, conf: Path, port: int, **popen) -> subprocess.Popen:
    """nginx with prefix and conf, once it listens on port."""
    proc = subprocess.Popen([find_nginx(), "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"],
                            stdin=subprocess.DEVNULL, **popen)
    wait_listening(port, proc)
    return proc


def stop_nginx(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def own_nginx(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start nginx with extra http-level directives; gives its host:port."""
    procs: list[subprocess.Popen] = []

    def start(extra: str) -> str:
        port = free_port()
        prefix, data = tmp_path / f"ngx{len(procs)}", tmp_path / "data"
        prefix.mkdir()
        data.mkdir(exist_ok=True)
        (data / "small").write_bytes(b"hello")
        procs.append(start_nginx(prefix, nginx_config(prefix, data, port, extra), port))
        return f"127.0.0.1:{port}"

    yield start
    for proc in procs:
        stop_nginx(proc)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's own PostgreSQL server; tests that need one skip when it is not installed."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres.new_database()


# --- S3 with boto3 (its default settings): a master per test module, a bucket per test ---


@pytest.fixture(scope="module")
def s3master(tmp_path_factory, volumes):
    factory = MasterFactory(tmp_path_factory.mktemp("s3"), volumes)
    try:
        yield factory()
    finally:
        factory.stop_all()


def keyed_master(tmp_path_factory, volumes, *keys: tuple[str, str]) -> Iterator[Master]:
    """A module fixture's master whose S3 face accepts only `keys` (access, secret), from a
    -s3_keyfile (with a comment line, as operators write them); stopped afterwards."""
    tmp = tmp_path_factory.mktemp("keyed")
    keyfile = tmp / "keys"
    keyfile.write_text("# S3 keys\n" + "".join(f"{access}:{secret}\n" for access, secret in keys))
    factory = MasterFactory(tmp, volumes)
    try:
        yield factory("-s3_keyfile", str(keyfile))
    finally:
        factory.stop_all()


def client(port: int, retries: int | None = None, key: str = "test", secret: str = "test",
           signature_version: str | None = None, **kw):
    """boto3 for the master on `port`, path-style, signing with `key`."""
    config = Config(s3={"addressing_style": "path"},
                    retries={"max_attempts": retries} if retries else None,
                    signature_version=signature_version)
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret, config=config, **kw)


@pytest.fixture(scope="module")
def s3(s3master):
    return client(s3master.port, retries=1)


@pytest.fixture
def bucket(s3):
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def error_of(call, *args, **kw) -> tuple[str, int]:
    with pytest.raises(ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"][
        "HTTPStatusCode"]
