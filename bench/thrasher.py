"""Thrasher: concurrent workers doing PUT, GET (following the redirect, body checked), DELETE.

The same cycle straight against one nginx volume (PUT, GET, DELETE of a file) is the yardstick,
and a run of bare GETs of a missing file on nginx shows what the client alone can do. Any wrong
answer stops the run with a non-zero exit.

    python -m bench.thrasher [--workers 16] [--count 10000] [--size 20]
"""

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a file: python bench/thrasher.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import uvloop

from bench.client import Connection, HTTPFailure, Pool, Reply
from bench.cluster import Target, add_cluster_args, target_from_args
from bench.common import (
    GO,
    BenchFailure,
    Meter,
    fmt,
    fmt_ratio,
    percentile,
    ratio,
    run_id,
    unmetered,
)

OPERATIONS = ("put", "get", "delete")


@dataclass
class Result:
    cycles: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)  # sorted, seconds

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    def p(self, op: str, pct: float) -> float:
        return percentile(self.latencies[op], pct) * 1000  # ms


def _expect(reply: Reply, status: int, what: str) -> None:
    if reply.status != status:
        raise BenchFailure(f"{what}: expected {status}, got {reply.status} {reply.body[:200]!r}")


async def _run(workers: int, first: int, end: int, cycle) -> Result:
    """Cycles `first`..`end - 1` shared by `workers` tasks; the first failure stops them all."""
    latencies: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    next_index = first

    async def worker(w: int) -> None:
        nonlocal next_index
        pool = Pool()
        try:
            while next_index < end:
                i = next_index
                next_index += 1
                await cycle(pool, w, i, latencies)
        finally:
            pool.close()

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(w)) for w in range(workers)]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    seconds = time.perf_counter() - started
    return Result(end - first, seconds, latencies)


def _merge(parts: list[Result]) -> Result:
    return Result(sum(p.cycles for p in parts), sum(p.seconds for p in parts),
                  {op: sorted(x for p in parts for x in p.latencies[op]) for op in OPERATIONS})


def master_cycle(master: str, tag: str, size: int):
    async def cycle(pool: Pool, w: int, i: int, lat: dict[str, list[float]]) -> None:
        key = f"/bench/thrash-{tag}-{i}"
        value = random.randbytes(size)
        conn = pool.get(master)
        t0 = time.perf_counter()
        _expect(await conn.request("PUT", key, value), 201, f"PUT {key}")
        t1 = time.perf_counter()
        reply = await conn.request("GET", key)
        _expect(reply, 302, f"GET {key}")
        location = reply.headers.get("location")
        if not location:
            raise BenchFailure(f"GET {key}: 302 without a Location")
        fetched = await pool.fetch(location)
        _expect(fetched, 200, f"GET {location} (redirect of {key})")
        if fetched.body != value:
            raise BenchFailure(f"GET {key} via {location}: wrong body {fetched.body[:60]!r}, "
                               f"expected {value[:60]!r}")
        t2 = time.perf_counter()
        _expect(await conn.request("DELETE", key), 204, f"DELETE {key}")
        t3 = time.perf_counter()
        lat["put"].append(t1 - t0)
        lat["get"].append(t2 - t1)
        lat["delete"].append(t3 - t2)
    return cycle


def nginx_cycle(volume: str, tag: str, size: int):
    async def cycle(pool: Pool, w: int, i: int, lat: dict[str, list[float]]) -> None:
        path = f"/bench/thrash-{tag}-{i}"
        value = random.randbytes(size)
        conn = pool.get(volume)
        t0 = time.perf_counter()
        _expect(await conn.request("PUT", path, value), 201, f"PUT {volume}{path}")
        t1 = time.perf_counter()
        reply = await conn.request("GET", path)
        _expect(reply, 200, f"GET {volume}{path}")
        if reply.body != value:
            raise BenchFailure(f"GET {volume}{path}: wrong body")
        t2 = time.perf_counter()
        _expect(await conn.request("DELETE", path), 204, f"DELETE {volume}{path}")
        t3 = time.perf_counter()
        lat["put"].append(t1 - t0)
        lat["get"].append(t2 - t1)
        lat["delete"].append(t3 - t2)
    return cycle


async def client_ceiling(volume: str, workers: int, requests: int) -> float:
    """Requests/s of the client alone: GETs of a missing file on nginx, `workers` at a time."""
    host, _, port = volume.rpartition(":")
    per_worker = max(1, requests // workers)

    async def worker() -> None:
        conn = Connection(host, int(port))
        try:
            for _ in range(per_worker):
                reply = await conn.request("GET", "/bench/client-ceiling-missing")
                _expect(reply, 404, "GET of a missing file on nginx")
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return per_worker * workers / (time.perf_counter() - started)


@dataclass
class Report:
    master: Result
    nginx: Result
    ceiling: float  # client req/s
    workers: int
    size: int

    def as_dict(self) -> dict:
        def one(r: Result) -> dict:
            return {"cycles": r.cycles, "seconds": r.seconds, "cycles_per_s": r.rate,
                    **{f"{op}_p50_ms": r.p(op, 50) for op in OPERATIONS},
                    **{f"{op}_p99_ms": r.p(op, 99) for op in OPERATIONS}}
        return {"master": one(self.master), "nginx": one(self.nginx),
                "ratio": ratio(self.master.rate, self.nginx.rate),
                "client_ceiling_req_per_s": self.ceiling, "workers": self.workers,
                "size": self.size}

    def text(self) -> str:
        lines = [f"thrasher: {self.workers} workers, {self.master.cycles:,} cycles of "
                 f"PUT + GET (redirect followed, body checked) + DELETE, {self.size}-byte values, "
                 "nginx and mkv taking turns"]
        for name, r in (("mkv master", self.master), ("nginx direct", self.nginx)):
            lat = "  ".join(f"{op} p50 {r.p(op, 50):.2f} p99 {r.p(op, 99):.2f} ms"
                            for op in OPERATIONS)
            lines.append(f"  {name:13} {fmt(r.rate):>9} cycles/s  ({r.seconds:.2f} s)  {lat}")
        lines.append(f"  mkv/nginx {fmt_ratio(ratio(self.master.rate, self.nginx.rate))}   "
                     f"mkv/Go mkv ({GO['thrasher']:,}/s) "
                     f"{fmt_ratio(ratio(self.master.rate, GO['thrasher']))}")
        needed = self.master.rate * 4  # PUT, GET, the redirect's GET, DELETE
        lines.append(f"  client alone: {fmt(self.ceiling)} req/s (GETs of a missing file on "
                     f"nginx), {fmt_ratio(ratio(self.ceiling, needed))} the "
                     f"{fmt(needed)} req/s of the master run")
        return "\n".join(lines)


async def thrash(target: Target, workers: int = 16, count: int = 10_000, size: int = 20,
                 rounds: int = 4, meter: Meter = unmetered) -> Report:
    """nginx and the master take turns, `rounds` times, so both meet the same noise; `meter`
    wraps each turn, named "nginx" or "master"."""
    tag = run_id()
    rounds = max(1, min(rounds, count // workers))
    bounds = [count * r // rounds for r in range(rounds + 1)]
    nginx, master = [], []
    for first, end in zip(bounds, bounds[1:], strict=False):
        with meter("nginx"):
            nginx.append(await _run(workers, first, end, nginx_cycle(target.volume, tag, size)))
        with meter("master"):
            master.append(await _run(workers, first, end, master_cycle(target.master, tag, size)))
    ceiling = await client_ceiling(target.volume, workers, max(count, 2000))
    return Report(_merge(master), _merge(nginx), ceiling, workers, size)


def run(target: Target, workers: int = 16, count: int = 10_000, size: int = 20,
        rounds: int = 4, meter: Meter = unmetered) -> Report:
    return uvloop.run(thrash(target, workers, count, size, rounds, meter))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--count", type=int, default=10_000, help="cycles in all")
    parser.add_argument("--size", type=int, default=20, help="value size in bytes")
    parser.add_argument("--rounds", type=int, default=4,
                        help="nginx and the master take turns this many times (noise)")
    add_cluster_args(parser)
    args = parser.parse_args(argv)
    if args.size < 1 or args.workers < 1 or args.count < 1:
        parser.error("--size, --workers and --count must be at least 1")
    with target_from_args(args) as target:
        try:
            report = run(target, args.workers, args.count, args.size, args.rounds)
        except (BenchFailure, HTTPFailure) as e:
            print(f"thrasher FAILED: {e}", file=sys.stderr)
            return 1
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
