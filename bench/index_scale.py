"""Index scale: list every key of a 1,000,000-key index, `?list&limit=1000` page after page.

The keys are written straight into a fresh LevelDB with plyvel in one write batch before a
master is started on it (no files behind them: a listing reads only the index). Every page is
checked (order, continuity, count). The yardstick is nginx serving the same number of GETs of a
static file the size of one page, from one volume, one after another as the listing does.

    python -m bench.index_scale [--keys 1000000] [--limit 1000]
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

if __package__ in (None, ""):  # run as a file: python bench/index_scale.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import plyvel
import uvloop

from bench.client import Connection, HTTPFailure
from bench.cluster import LocalCluster, add_cluster_args
from bench.common import BenchFailure, fmt, fmt_ratio, ratio, run_id

PREFIX = "/bench/index/"


def key_of(i: int) -> bytes:
    return f"{PREFIX}{i:08d}".encode()


def fill(db: Path, keys: int, volumes: list[str]) -> float:
    """Write `keys` live records into a new LevelDB at `db`; the seconds it took."""
    record = b"HASH" + b"0" * 32 + ",".join(f"{v}/sv00" for v in volumes).encode()
    started = time.perf_counter()
    ldb = plyvel.DB(str(db), create_if_missing=True, error_if_exists=True)
    try:
        with ldb.write_batch() as batch:
            for i in range(keys):
                batch.put(key_of(i), record)
    finally:
        ldb.close()
    return time.perf_counter() - started


@dataclass
class Report:
    keys: int
    limit: int
    pages: int
    fill_s: float
    list_s: float
    page_bytes: int
    nginx_s: float

    @property
    def rate(self) -> float:
        return self.keys / self.list_s if self.list_s else 0.0

    @property
    def nginx_rate(self) -> float:
        """Keys/s nginx would list if each page cost what a GET of a page-sized file does."""
        return self.keys / self.nginx_s if self.nginx_s else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "keys_per_s": self.rate, "nginx_keys_per_s": self.nginx_rate,
                "ratio": ratio(self.rate, self.nginx_rate)}

    def text(self) -> str:
        return "\n".join([
            f"index scale: {self.keys:,} keys listed with ?list&limit={self.limit} "
            f"({self.pages:,} pages of ~{self.page_bytes:,} bytes; index filled in "
            f"{self.fill_s:.1f} s)",
            f"  mkv master   {fmt(self.rate):>10} keys/s  ({self.list_s:.2f} s)",
            f"  nginx        {fmt(self.nginx_rate):>10} keys/s  ({self.nginx_s:.2f} s for "
            f"{self.pages:,} GETs of a {self.page_bytes:,}-byte file)",
            f"  mkv/nginx {fmt_ratio(ratio(self.rate, self.nginx_rate))}",
        ])


async def list_all(master: str, keys: int, limit: int) -> tuple[float, int, bytes]:
    """Page through every key; the seconds, the page count and the first page's body."""
    host, _, port = master.rpartition(":")
    conn = Connection(host, int(port))
    seen, pages, start, first_page = 0, 0, "", b""
    started = time.perf_counter()
    try:
        while True:
            path = f"{PREFIX}?list&limit={limit}" + (f"&start={quote(start, safe='')}"
                                                     if start else "")
            reply = await conn.request("GET", path)
            if reply.status != 200:
                raise BenchFailure(f"GET {path}: {reply.status} {reply.body[:200]!r}")
            page = json.loads(reply.body)
            pages += 1
            first_page = first_page or reply.body
            for k in page["keys"]:
                if k.encode() != key_of(seen):
                    raise BenchFailure(f"listing: key {k!r} where {key_of(seen)!r} was due")
                seen += 1
            start = page["next"]
            if not start:
                break
            if len(page["keys"]) != limit:
                raise BenchFailure(f"a page of {len(page['keys'])} keys with a next")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    if seen != keys:
        raise BenchFailure(f"listing returned {seen:,} keys, expected {keys:,}")
    return seconds, pages, first_page


async def nginx_pages(volume: str, body: bytes, pages: int) -> float:
    host, _, port = volume.rpartition(":")
    conn = Connection(host, int(port))
    path = f"/bench/index-page-{run_id()}.json"
    try:
        put = await conn.request("PUT", path, body)
        if put.status != 201:
            raise BenchFailure(f"PUT {volume}{path}: {put.status}")
        started = time.perf_counter()
        for _ in range(pages):
            reply = await conn.request("GET", path)
            if reply.status != 200 or len(reply.body) != len(body):
                raise BenchFailure(f"GET {volume}{path}: {reply.status}")
        seconds = time.perf_counter() - started
        await conn.request("DELETE", path)
    finally:
        conn.close()
    return seconds


def run(cluster: LocalCluster, keys: int = 1_000_000, limit: int = 1000) -> Report:
    """Fill a fresh index, start a master of its own on it, list, stop that master."""
    db = cluster.dir / f"index-scale-{run_id()}"
    fill_s = fill(db, keys, [v.addr for v in cluster.volumes])
    with cluster.own_master(db) as master:
        list_s, pages, first = uvloop.run(list_all(master.addr, keys, limit))
    nginx_s = uvloop.run(nginx_pages(cluster.volumes[0].addr, first, pages))
    return Report(keys, limit, pages, fill_s, list_s, len(first), nginx_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=1000, help="keys per page")
    add_cluster_args(parser, external=False)
    args = parser.parse_args(argv)
    if args.keys < 1 or args.limit < 1:
        parser.error("--keys and --limit must be at least 1")
    with LocalCluster(args.dir, with_master=False) as cluster:
        try:
            report = run(cluster, args.keys, args.limit)
        except (BenchFailure, HTTPFailure) as e:
            print(f"index_scale FAILED: {e}", file=sys.stderr)
            return 1
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
