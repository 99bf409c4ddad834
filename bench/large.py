"""Large values: PUT then GET of 256 MiB and 1 GiB through the master (3 replicas), against the
same bytes PUT and GET straight to one nginx volume as the yardstick.

Values are streamed from a generator of 1 MiB blocks and checked as they come back, so the client
never holds one; the master's peak RSS (VmHWM, reset before each value where Linux allows) shows
whether the master does. Dirty pages are flushed (sync) before each timed PUT so both PUTs start
from the same page cache state.

    python -m bench.large [--sizes 256M,1G]
"""

import argparse
import hashlib
import os
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

if __package__ in (None, ""):  # run as a file: python bench/large.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import uvloop

from bench.client import Connection, HTTPFailure, Pool
from bench.cluster import Target, add_cluster_args, target_from_args
from bench.common import (
    GO,
    BenchFailure,
    Meter,
    fmt,
    fmt_ratio,
    fmt_s,
    ratio,
    run_id,
    unmetered,
)

BLOCK = 1 << 20
TIMEOUT = 1800.0  # s for one request: 1 GiB at under 1 MB/s would be broken anyway


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_name(n: int) -> str:
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


class Value:
    """`size` bytes made on the fly: 1 MiB blocks of one random template, each starting with
    its own index (so a misplaced block shows)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.template = random.Random(seed).randbytes(BLOCK)

    def _prefix(self, i: int) -> bytes:
        return i.to_bytes(8, "big")

    def chunks(self) -> Iterator[bytes]:
        for start in range(0, self.size, BLOCK):
            block = self._prefix(start // BLOCK) + self.template[8:]
            yield block if start + BLOCK <= self.size else block[:self.size - start]

    def md5(self) -> str:
        h = hashlib.md5()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()

    def expected(self, offset: int, n: int) -> bytes:
        """The value's bytes [offset, offset + n)."""
        parts = []
        while n > 0:
            i, within = divmod(offset, BLOCK)
            take = min(n, BLOCK - within)
            if within < 8:
                head = self._prefix(i)[within:min(8, within + take)]
                parts.append(head + self.template[8:within + take] if within + take > 8
                             else head)
            else:
                parts.append(self.template[within:within + take])
            offset += take
            n -= take
        return b"".join(parts)


class Checker:
    """A response sink comparing what arrives with the value (never raises: it notes)."""

    def __init__(self, value: Value) -> None:
        self.value = value
        self.offset = 0
        self.mismatch: int | None = None

    def __call__(self, chunk: bytes) -> None:
        if self.mismatch is None and self.offset + len(chunk) <= self.value.size:
            expected = self.value.expected(self.offset, len(chunk))
            if chunk != expected:  # the slow search only once, on failure
                first = next(i for i, (a, b) in enumerate(zip(chunk, expected, strict=True))
                             if a != b)
                self.mismatch = self.offset + first
        self.offset += len(chunk)

    def verify(self, what: str) -> None:
        if self.mismatch is not None:
            raise BenchFailure(f"{what}: wrong byte at offset {self.mismatch:,} "
                               f"(1 MiB block {self.mismatch // BLOCK})")
        if self.offset != self.value.size:
            raise BenchFailure(f"{what}: {self.offset:,} bytes, expected {self.value.size:,}")


@dataclass
class SizeResult:
    size: int
    direct_put_s: float
    direct_get_s: float
    put_s: float
    get_s: float
    put_peak_rss_mib: float | None
    get_peak_rss_mib: float | None
    base_rss_mib: float | None
    replicas: int

    def mbps(self, seconds: float) -> float:
        return self.size / 1e6 / seconds if seconds else 0.0


def _sync() -> None:
    os.sync()


async def _put(conn: Connection, path: str, value: Value, what: str) -> float:
    started = time.perf_counter()
    reply = await conn.request("PUT", path, value.chunks(), length=value.size, timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    if reply.status != 201:
        raise BenchFailure(f"{what}: expected 201, got {reply.status} {reply.body[:200]!r}")
    return seconds


async def _get(conn: Connection, path: str, value: Value, what: str) -> float:
    checker = Checker(value)
    started = time.perf_counter()
    reply = await conn.request("GET", path, sink=checker, timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    if reply.status != 200:
        raise BenchFailure(f"{what}: expected 200, got {reply.status}")
    checker.verify(what)
    return seconds


def _peak_mib(target: Target) -> float | None:
    proc = target.master_proc
    return None if proc is None else proc.status_kib("VmHWM") / 1024


async def one_size(target: Target, size: int, tag: str, meter: Meter = unmetered) -> SizeResult:
    """The direct PUT and GET, then the master's; `meter` wraps the master's PUT, named
    "master put <size>"."""
    value = Value(size, seed=size)
    md5 = value.md5()  # before any timing
    pool = Pool()
    try:
        # the yardstick: the same bytes to and from one nginx volume
        vol = pool.get(target.volume)
        path = f"/bench/large-{tag}-{size}"
        _sync()
        direct_put = await _put(vol, path, value, f"PUT {target.volume}{path}")
        direct_get = await _get(vol, path, value, f"GET {target.volume}{path}")
        await vol.request("DELETE", path)

        master = pool.get(target.master)
        key = f"/bench/large-{tag}-{size}"
        _sync()
        proc = target.master_proc
        base = proc.status_kib("VmRSS") / 1024 if proc else None
        if proc:
            proc.reset_peak_rss()
        with meter(f"master put {size}"):
            put = await _put(master, key, value, f"PUT {key} (master)")
        put_peak = _peak_mib(target)
        if proc:
            proc.reset_peak_rss()
        started = time.perf_counter()
        reply = await master.request("GET", key)
        location = reply.headers.get("location")
        if reply.status != 302 or not location:
            raise BenchFailure(f"GET {key}: expected 302 with a Location, got {reply.status}")
        if reply.headers.get("content-md5", md5) != md5:
            raise BenchFailure(f"GET {key}: Content-Md5 {reply.headers['content-md5']}, "
                               f"expected {md5}")
        replicas = len(reply.headers.get("key-volumes", "").split(","))
        checker = Checker(value)
        fetched = await pool.fetch(location, sink=checker, timeout=TIMEOUT)
        get = time.perf_counter() - started
        if fetched.status != 200:
            raise BenchFailure(f"GET {location}: expected 200, got {fetched.status}")
        checker.verify(f"GET {key} via {location}")
        get_peak = _peak_mib(target)
        deleted = await master.request("DELETE", key)
        if deleted.status != 204:
            raise BenchFailure(f"DELETE {key}: expected 204, got {deleted.status}")
    finally:
        pool.close()
    return SizeResult(size, direct_put, direct_get, put, get, put_peak, get_peak, base,
                      replicas)


@dataclass
class Report:
    results: list[SizeResult]
    client_peak_rss_mib: float  # this process: shows the values were streamed, not held

    @property
    def replicas(self) -> int:
        return self.results[0].replicas if self.results else 0

    def as_dict(self) -> dict:
        return {"replicas": self.replicas, "client_peak_rss_mib": self.client_peak_rss_mib,
                "sizes": [
            {**asdict(r), "put_mb_per_s": r.mbps(r.put_s), "get_mb_per_s": r.mbps(r.get_s),
             "direct_put_mb_per_s": r.mbps(r.direct_put_s),
             "put_ratio": ratio(r.put_s, r.direct_put_s),
             "get_ratio": ratio(r.get_s, r.direct_get_s)} for r in self.results]}

    def text(self) -> str:
        lines = [f"large values: {self.replicas} replicas through the master vs one nginx volume "
                 f"direct (time ratio: mkv/nginx, lower is better); the client's own peak RSS "
                 f"{fmt(self.client_peak_rss_mib)} MiB"]
        for r in self.results:
            name = size_name(r.size)
            lines.append(
                f"  {name:8} PUT {fmt_s(r.put_s):>7} s {fmt(r.mbps(r.put_s)):>6} MB/s"
                f"  direct {fmt_s(r.direct_put_s):>6} s {fmt(r.mbps(r.direct_put_s)):>6} MB/s"
                f"  ratio {fmt_ratio(ratio(r.put_s, r.direct_put_s))}"
                f"  master peak RSS {fmt(r.put_peak_rss_mib)} MiB (at rest "
                f"{fmt(r.base_rss_mib)} MiB)")
            lines.append(
                f"  {name:8} GET {fmt_s(r.get_s):>7} s {fmt(r.mbps(r.get_s)):>6} MB/s"
                f"  direct {fmt_s(r.direct_get_s):>6} s {fmt(r.mbps(r.direct_get_s)):>6} MB/s"
                f"  ratio {fmt_ratio(ratio(r.get_s, r.direct_get_s))}"
                f"  master peak RSS {fmt(r.get_peak_rss_mib)} MiB")
            if r.size == 256 << 20:
                lines.append(f"  {name:8} Go mkv: PUT {GO['put_256m_s']} s at "
                             f"{GO['put_256m_rss_mb']} MB peak RSS; mkv/Go "
                             f"{fmt_ratio(ratio(r.put_s, GO['put_256m_s']))} time")
        return "\n".join(lines)


async def large(target: Target, sizes: list[int], meter: Meter = unmetered) -> Report:
    tag = run_id()
    results = [await one_size(target, size, tag, meter) for size in sizes]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return Report(results, peak)


def run(target: Target, sizes: list[int], meter: Meter = unmetered) -> Report:
    return uvloop.run(large(target, sizes, meter))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256M,1G",
                        help="comma-separated sizes (K, M, G suffixes: binary)")
    add_cluster_args(parser)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) < 1:
        parser.error("--sizes must be positive")
    with target_from_args(args) as target:
        try:
            report = run(target, sizes)
        except (BenchFailure, HTTPFailure) as e:
            print(f"large FAILED: {e}", file=sys.stderr)
            return 1
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

