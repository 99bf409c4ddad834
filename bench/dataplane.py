"""The data path against its floors, in one run: MB/s of one large value (512 MiB, `--size`) through
each way in and out of mkv, native and S3, beside what stock nginx does with the same bytes.

Three nginx volumes (`mkv volume`) and a master with default flags (replicas 3, LevelDB, so S3
multipart parts are spooled in the work dir), all on a tmpfs (/dev/shm) unless `--dir` names a
disk. The value is random bytes made once; it is sent from memory (the native and nginx PUTs)
or from a file beside the cluster (boto3's put_object and upload_file).

Rows and their floors (measured in the same round, right before or after the row, so that both
meet the same noise; the order flips every round):

- fan-out floor: the value PUT straight to the 3 volumes at once, a thread each;
- nginx GET, and nginx ranged GET (4 threads, 8 MiB ranges) of the value from one volume;
- native PUT through the master (floor: fan-out) with the fan-out's code, one target instead of
  three; native GET, following the 302 (floor: nginx GET);
- S3 put_object, upload_file with boto3's default TransferConfig and with 4 threads, timed to
  the end of Complete (floor: fan-out);
- S3 get_object read whole (floor: nginx GET) and download_file with 4 threads, ranged GETs
  (floors: that S3 stream and nginx ranged GET);
- S3 CopyObject, and boto3's copy (UploadPartCopy, default TransferConfig) of the value written
  by the native PUT (floor: fan-out).

Each row gives the value's MB/s (median and range over `--rounds`), the median of the per-round
ratios to its floor, CPU seconds per GiB of the value (utime + stime from /proc/PID/stat over
the timed interval) of the master, of the volumes' nginx processes together and of this client,
and the master's peak RSS (VmHWM, reset before each measurement). hashlib's md5 and sha256 and
zlib.crc32 are timed once on this machine, to be read beside the master's CPU. Every GET is
compared byte for byte with the value, every object written has the value's md5 in its record.

    python -m bench.dataplane                      # 512 MiB, 3 rounds (~3 minutes)
    python -m bench.dataplane --quick              # 20 MiB, 1 round: checks that it runs
"""

import argparse
import ctypes
import datetime
import hashlib
import http.client
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a file: python bench/dataplane.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bench.cluster import LocalCluster
from bench.common import BenchFailure, fmt, fmt_ratio, markdown_table, run_id
from bench.large import parse_size, size_name
from bench.vs_go import CpuMeter, describe, nginx_pids

GIB = 1 << 30
SPAN = 8 << 20  # bytes of a ranged GET
THREADS = 4  # of the ranged GETs and the second upload_file
CHUNK = 1 << 20  # bytes hashed at a time
HASHED = 256 << 20  # bytes each hash is timed over, at least
TIMEOUT = 900.0  # s for one request
BUCKET = "dataplane"
TMPFS = Path("/dev/shm")
RSS_BOUND_MB = 100
FULL = {"size": "512M", "rounds": 3}
QUICK = {"size": "20M", "rounds": 1}  # three parts and three ranges, the last one short


@dataclass(frozen=True)
class Measure:
    label: str
    floors: tuple[str, ...] = ()  # rows this one is a ratio of


MEASURES = {  # in the table's order: each floor, then what it is the floor of
    "fanout": Measure("fan-out floor: 3 PUTs at once straight to the 3 volumes"),
    "native_put": Measure("native PUT through the master", ("fanout",)),
    "s3_put": Measure("S3 put_object", ("fanout",)),
    "s3_multipart": Measure("S3 upload_file, default TransferConfig (8 MiB parts, 10 threads)",
                            ("fanout",)),
    "s3_multipart_4": Measure("S3 upload_file, 8 MiB parts, 4 threads", ("fanout",)),
    "s3_copy": Measure("S3 CopyObject", ("fanout",)),
    "s3_part_copy": Measure("S3 UploadPartCopy (boto3 copy, default TransferConfig)",
                            ("fanout",)),
    "nginx_get": Measure("nginx GET from one volume"),
    "native_get": Measure("native GET, 302 followed", ("nginx_get",)),
    "s3_get": Measure("S3 get_object read whole (one stream)", ("nginx_get",)),
    "nginx_ranged": Measure("nginx ranged GET, 4 threads, 8 MiB ranges"),
    "s3_ranged": Measure("S3 download_file, 4 threads (ranged GETs)", ("s3_get", "nginx_ranged")),
}
# a round: each pair in turn, the floor first in rounds 1, 3, ... and second in rounds 2, 4, ...
SCHEDULE = [("fanout", "native_put"), ("nginx_get", "native_get"), ("nginx_get", "s3_get"),
            ("nginx_ranged", "s3_ranged"), ("fanout", "s3_put"), ("fanout", "s3_multipart"),
            ("fanout", "s3_multipart_4"), ("fanout", "s3_copy"), ("fanout", "s3_part_copy")]


# --- a plain HTTP client with threads: the floors and the native paths ---


def _connection(addr: str) -> http.client.HTTPConnection:
    host, _, port = addr.rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def call(addr: str, method: str, path: str,
         body: memoryview | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a connection of its own: status, headers and the (small) answer."""
    conn = _connection(addr)
    try:
        conn.request(method, path, body=body)
        reply = conn.getresponse()
        return reply.status, reply.headers, reply.read()
    except OSError as e:
        raise BenchFailure(f"{method} {addr}{path}: {e}") from None
    finally:
        conn.close()


def put_to(targets: list[str], path: str, body: memoryview) -> None:
    """`body` PUT to every target at once, a thread each: the fan-out floor to the volumes, the
    native PUT to the master alone."""
    with ThreadPoolExecutor(len(targets)) as pool:
        for addr, (status, _, answer) in zip(
                targets, pool.map(lambda addr: call(addr, "PUT", path, body), targets),
                strict=True):
            if status not in (201, 204):
                raise BenchFailure(f"PUT {addr}{path}: expected 201, got {status} {answer[:200]!r}")


def read_into(conn: http.client.HTTPConnection, path: str, into: memoryview,
              headers: dict[str, str] | None = None, expect: int = 200) -> None:
    """A GET whose body fills `into` exactly."""
    where = f"GET {conn.host}:{conn.port}{path} {headers or ''}"
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        if reply.status != expect:
            raise BenchFailure(f"{where}: expected {expect}, got {reply.status} "
                               f"{reply.read()[:200]!r}")
        done = 0
        while done < len(into):
            got = reply.readinto(into[done:])
            if not got:
                break
            done += got
        if done != len(into) or reply.read(1):
            raise BenchFailure(f"{where}: a body of {len(into):,} bytes expected, got "
                               f"{done:,} or more")
    except OSError as e:
        raise BenchFailure(f"{where}: {e}") from None


def get_into(addr: str, path: str, into: memoryview) -> None:
    conn = _connection(addr)
    try:
        read_into(conn, path, into)
    finally:
        conn.close()


def ranged_get(addr: str, path: str, into: memoryview, threads: int = THREADS,
               span: int = SPAN) -> None:
    """`into` filled by GETs of `span` bytes, `threads` at a time, each thread on one
    keep-alive connection, as boto3's download_file reads."""
    local, opened = threading.local(), []

    def one(start: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = _connection(addr)
            opened.append(conn)
        end = min(start + span, len(into))
        read_into(conn, path, into[start:end], {"Range": f"bytes={start}-{end - 1}"}, 206)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(0, len(into), span)))
    finally:
        for conn in opened:
            conn.close()


def hashing_costs(value: bytes, at_least: int = HASHED) -> dict[str, float]:
    """CPU seconds per GiB of hashlib's md5 and sha256 and of zlib.crc32 on this machine,
    over the value in 1 MiB chunks (again and again up to `at_least` bytes)."""
    view = memoryview(value)
    chunks = [view[i:i + CHUNK] for i in range(0, len(view), CHUNK)] * -(-at_least // len(view))
    hashed = sum(len(c) for c in chunks)

    def crc32() -> None:
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)

    def digest(make: Callable[[], "hashlib._Hash"]) -> Callable[[], None]:
        def run() -> None:
            h = make()
            for chunk in chunks:
                h.update(chunk)
        return run

    costs = {}
    for name, run in (("md5", digest(hashlib.md5)), ("sha256", digest(hashlib.sha256)),
                      ("crc32", crc32)):
        started = time.thread_time()
        run()
        costs[name] = (time.thread_time() - started) / (hashed / GIB)
    return costs


def _client_cpu() -> float:
    """This process's CPU seconds, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def s3_client(addr: str) -> BaseClient:
    """boto3 as the README shows it, but never retrying (a retry would hide in the time)."""
    return boto3.client("s3", endpoint_url=f"http://{addr}", region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1},
                                      read_timeout=TIMEOUT, connect_timeout=30))


# --- the figures ---


@dataclass
class Sample:
    round: int
    seconds: float
    mb_per_s: float
    master_cpu_s: float
    nginx_cpu_s: float
    client_cpu_s: float
    master_peak_rss_mib: float
    ratios: dict[str, float] = field(default_factory=dict)  # to each floor, same round


@dataclass
class Row:
    name: str
    size: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def measure(self) -> Measure:
        return MEASURES[self.name]

    def median(self, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.samples)

    def per_gib(self, what: str) -> float:
        """Median CPU seconds per GiB of the value."""
        return self.median(what) / (self.size / GIB)

    def ratio(self, floor: str) -> float:
        return statistics.median(s.ratios[floor] for s in self.samples)

    def peak_rss(self) -> float:
        return max(s.master_peak_rss_mib for s in self.samples)

    def as_dict(self) -> dict:
        return {"label": self.measure.label, "floors": list(self.measure.floors),
                "mb_per_s": self.median("mb_per_s"),
                "ratios": {f: self.ratio(f) for f in self.measure.floors},
                "master_cpu_s_per_gib": self.per_gib("master_cpu_s"),
                "nginx_cpu_s_per_gib": self.per_gib("nginx_cpu_s"),
                "client_cpu_s_per_gib": self.per_gib("client_cpu_s"),
                "master_peak_rss_mib": self.peak_rss(),
                "rounds": [asdict(s) for s in self.samples]}


# --- the measurements ---


class Dataplane:
    """The cluster, the value and the clients; `round(r)` measures every row once."""

    def __init__(self, cluster: LocalCluster, value: bytes, file: Path) -> None:
        assert cluster.master is not None
        self.cluster, self.master = cluster, cluster.master
        self.volumes = [v.addr for v in cluster.volumes]
        self.value, self.view, self.file = value, memoryview(value), file
        self.size = len(value)
        self.md5 = hashlib.md5(value).hexdigest()
        self.buffer = bytearray(self.size)  # every GET lands here
        self._zero()  # and its pages are there before the first one
        self.s3 = s3_client(self.master.addr)
        nginx = [pid for data in cluster.volume_dirs for pid in nginx_pids(data / ".mkv")]
        self.meter = CpuMeter({"master": [self.master.pid], "nginx": nginx})
        self.rows = {name: Row(name, self.size) for name in MEASURES}
        self.tag = run_id()
        self.static: str | None = None  # this round's file on volume 0, for nginx's GETs
        self.source = ""  # this round's object written by the native PUT
        self.rss_reset = True  # whether Linux let every peak RSS be reset (else: since start)

    # a measurement: work() is timed and returns what to do after (checks, cleanup)
    def measure(self, r: int, name: str, work: Callable[[], Callable[[], None] | None]) -> Sample:
        row = self.rows[name]
        interval = f"{name} {len(row.samples)}"
        os.sync()  # both PUTs start from the same page cache state (with --dir on a disk)
        self.rss_reset &= self.master.reset_peak_rss()
        client = _client_cpu()
        with self.meter(interval):
            started = time.perf_counter()
            after = work()
            seconds = time.perf_counter() - started
        client = _client_cpu() - client
        rss = self.master.status_kib("VmHWM") / 1024
        if after is not None:
            after()
        spent = self.meter.spent[interval]
        sample = Sample(r, seconds, self.size / 1e6 / seconds, spent["master"], spent["nginx"],
                        client, rss)
        row.samples.append(sample)
        print(f"  round {r} {name:15} {fmt(sample.mb_per_s):>7} MB/s  master "
              f"{sample.master_cpu_s / (self.size / GIB):5.2f} s/GiB  nginx "
              f"{sample.nginx_cpu_s / (self.size / GIB):5.2f} s/GiB  RSS {rss:5.1f} MiB",
              flush=True)
        return sample

    def round(self, r: int) -> None:
        for pair in SCHEDULE:
            latest = {name: self.measure(r, name, getattr(self, name))
                      for name in (pair if r % 2 else pair[::-1])}
            path = latest[pair[1]]
            for floor in MEASURES[pair[1]].floors:
                # the adjacent floor, else (the S3 stream under the ranged reads) this round's
                path.ratios[floor] = path.mb_per_s / (latest.get(floor)
                                                      or self.rows[floor].samples[-1]).mb_per_s
        self._delete(self.source, self.master.addr)
        if self.static is not None:
            self._delete(self.static, self.volumes[0])
            self.static = None

    def _path(self, what: str) -> str:
        return f"/{BUCKET}/{what}-{self.tag}-{len(self.rows[what].samples)}"

    def _delete(self, path: str, *addrs: str) -> None:
        """`path` deleted from each of `addrs` (the master or volumes)."""
        for addr in addrs:
            status, _, _ = call(addr, "DELETE", path)
            if status != 204:
                raise BenchFailure(f"DELETE {addr}{path}: expected 204, got {status}")

    def _stored(self, key: str, keep: bool = False) -> None:
        """`key`'s record has the value's md5 (its 302 says so); deleted unless `keep`."""
        status, headers, _ = call(self.master.addr, "GET", key)
        if status != 302 or headers.get("Content-Md5") != self.md5:
            raise BenchFailure(f"GET {key}: expected 302 with Content-Md5 {self.md5}, got "
                               f"{status} {headers.get('Content-Md5')}")
        if not keep:
            self._delete(key, self.master.addr)

    def _zero(self) -> None:
        ctypes.memset((ctypes.c_char * self.size).from_buffer(self.buffer), 0, self.size)

    def _got(self, what: str) -> Callable[[], None]:
        """The check after a GET into the buffer, which it leaves zeroed for the next one."""
        def check() -> None:
            if self.buffer != self.value:
                raise BenchFailure(f"{what}: the bytes read differ from the value")
            self._zero()
        return check

    # the floors
    def fanout(self) -> Callable[[], None]:
        path = self._path("fanout")
        put_to(self.volumes, path, self.view)

        def after() -> None:  # the round's first copy on volume 0 stays for nginx's GETs
            keep = self.static is None
            self._delete(path, *(self.volumes[1:] if keep else self.volumes))
            if keep:
                self.static = path
        return after

    def nginx_get(self) -> Callable[[], None]:
        assert self.static is not None
        get_into(self.volumes[0], self.static, memoryview(self.buffer))
        return self._got(f"GET {self.volumes[0]}{self.static}")

    def nginx_ranged(self) -> Callable[[], None]:
        assert self.static is not None
        ranged_get(self.volumes[0], self.static, memoryview(self.buffer))
        return self._got(f"ranged GET {self.volumes[0]}{self.static}")

    # native
    def native_put(self) -> Callable[[], None]:
        self.source = self._path("native_put")
        put_to([self.master.addr], self.source, self.view)
        return lambda: self._stored(self.source, keep=True)

    def native_get(self) -> Callable[[], None]:
        into = memoryview(self.buffer)
        status, headers, _ = call(self.master.addr, "GET", self.source)
        location = headers.get("Location")
        if status != 302 or not location:
            raise BenchFailure(f"GET {self.source}: expected 302 with a Location, got {status}")
        parts = urlsplit(location)
        get_into(parts.netloc, parts.path, into)
        return self._got(f"GET {self.source} via {location}")

    # S3
    @property
    def source_key(self) -> str:
        """The native PUT's object, as S3 names it in BUCKET."""
        return self.source.split("/", 2)[2]

    def _object(self, what: str) -> str:
        return self._path(what).split("/", 2)[2]

    def s3_put(self) -> Callable[[], None]:
        key = self._object("s3_put")
        with open(self.file, "rb") as body:
            self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return lambda: self._stored(f"/{BUCKET}/{key}")

    def _upload(self, what: str, config: TransferConfig) -> Callable[[], None]:
        key = self._object(what)
        self.s3.upload_file(str(self.file), BUCKET, key, Config=config)
        return lambda: self._stored(f"/{BUCKET}/{key}")

    def s3_multipart(self) -> Callable[[], None]:
        return self._upload("s3_multipart", TransferConfig())

    def s3_multipart_4(self) -> Callable[[], None]:
        return self._upload("s3_multipart_4", TransferConfig(max_concurrency=THREADS))

    def s3_get(self) -> Callable[[], None]:
        got = self.s3.get_object(Bucket=BUCKET, Key=self.source_key)["Body"].read()

        def check() -> None:
            if got != self.value:
                raise BenchFailure(f"S3 GetObject {self.source}: the bytes differ from the value")
        return check

    def s3_ranged(self) -> Callable[[], None]:
        target = self.file.with_name("download.bin")
        self.s3.download_file(BUCKET, self.source_key, str(target),
                              Config=TransferConfig(max_concurrency=THREADS))

        def check() -> None:
            same = target.read_bytes() == self.value
            target.unlink()
            if not same:
                raise BenchFailure(f"S3 download_file {self.source}: the bytes differ")
        return check

    def s3_copy(self) -> Callable[[], None]:
        key = self._object("s3_copy")
        self.s3.copy_object(Bucket=BUCKET, Key=key,
                            CopySource={"Bucket": BUCKET, "Key": self.source_key})
        return lambda: self._stored(f"/{BUCKET}/{key}")

    def s3_part_copy(self) -> Callable[[], None]:
        key = self._object("s3_part_copy")
        self.s3.copy({"Bucket": BUCKET, "Key": self.source_key}, BUCKET, key)
        return lambda: self._stored(f"/{BUCKET}/{key}")


# --- the run ---


def table(rows: dict[str, Row]) -> str:
    header = ["path", "MB/s (median; range)", "ratio to floor (median of rounds)",
              "master CPU s/GiB", "nginx CPU s/GiB", "client CPU s/GiB", "master peak RSS MiB"]
    lines = []
    for row in rows.values():
        if not row.samples:
            continue
        rates = [s.mb_per_s for s in row.samples]
        ratios = "; ".join(f"{fmt_ratio(row.ratio(f))} of {f}" for f in row.measure.floors)
        lines.append([f"{row.measure.label} ({row.name})",
                      f"{fmt(row.median('mb_per_s'))} ({fmt(min(rates))}–{fmt(max(rates))})",
                      ratios or "—", f"{row.per_gib('master_cpu_s'):.2f}",
                      f"{row.per_gib('nginx_cpu_s'):.2f}", f"{row.per_gib('client_cpu_s'):.2f}",
                      fmt(row.peak_rss(), 1)])
    return markdown_table(header, lines)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['size']}, {QUICK['rounds']} round: only checks that it runs")
    parser.add_argument("--size", help=f"the value (K, M, G: binary; {FULL['size']})")
    parser.add_argument("--rounds", type=int, help=f"rounds of every row ({FULL['rounds']})")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--dir", type=Path,
                        help=f"work dir: the volumes, the index, the S3 spool and the value's "
                             f"file (default: a temp dir on {TMPFS}, removed after)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.size = parse_size(args.size)
    if args.size < 1 or args.rounds < 1:
        parser.error("--size and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    version, load = describe(), loadavg()
    value = os.urandom(args.size)
    hashing = hashing_costs(value)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="mkv-dataplane-",
                                                dir=TMPFS if TMPFS.is_dir() else None))
    cluster = LocalCluster(workdir)
    cluster.own_dir = args.dir is None  # removed with the cluster, also on Ctrl-C
    title = (f"data path, {date}, mkv {version}: a {size_name(args.size)} value, 3 volumes, "
             f"replicas 3, {args.rounds} round(s), in {workdir}; load average {load} at the "
             f"start, {os.cpu_count()} cpus")
    print(title, flush=True)
    failure, rows = None, {}
    with cluster:
        file = workdir / "value.bin"
        file.write_bytes(value)
        try:
            bench = Dataplane(cluster, value, file)
            rows = bench.rows
            for r in range(1, args.rounds + 1):
                bench.round(r)
        except (BenchFailure, BotoCoreError, ClientError) as e:
            failure = f"{type(e).__name__}: {e}"
    hashes = ", ".join(f"{name} {cost:.2f}" for name, cost in hashing.items())
    rows = {name: row for name, row in rows.items() if row.samples}
    over = [row.name for row in rows.values() if row.peak_rss() * 1.048576 >= RSS_BOUND_MB]
    reset = "" if not rows or bench.rss_reset else " (not reset between rows: peaks since start)"
    print(f"\n{title}; {loadavg()} at the end\n\n{table(rows)}\n\n"
          f"CPU s/GiB of hashing here (one thread, 1 MiB chunks): {hashes}\n"
          f"master peak RSS < {RSS_BOUND_MB} MB in every row{reset}: "
          f"{'yes' if not over else 'NO: ' + ', '.join(over)}")
    if failure:
        print(f"\nFAILED: {failure}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "date": date, "mkv": version, "load_start": load, "load_end": loadavg(),
            "size": args.size, "rounds": args.rounds, "dir": str(workdir), "quick": args.quick,
            "failure": failure, "hashing_cpu_s_per_gib": hashing,
            "rows": {name: row.as_dict() for name, row in rows.items()}}, indent=2) + "\n")
    print(f"({time.monotonic() - started:.0f} s in all)", flush=True)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
