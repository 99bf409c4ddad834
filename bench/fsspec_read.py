"""Reading datasets through `mkv://` (mkv/client/filesystem.py) against the S3 road and the
floor, in one run: a directory of parquet files read whole with pyarrow, and ranged reads (8 MiB,
4 at a time) of one large file, each three ways:

- `mkv://`: the master redirects, the bytes come from the volumes;
- the S3 face through pyarrow's S3 filesystem (every byte through the master). s3fs is not
  used: its aiobotocore pins an older botocore than the boto3 the tests run;
- straight from nginx (the floor): the same bytes GET from the replica the master names.

Each with MB/s, the ratio to the floor and the master's CPU per GiB read (/proc/PID/stat).
Rounds alternate the three (`--rounds`).

    python -m bench.fsspec_read [--files 64] [--file-mib 16] [--big-mib 1024] [--rounds 3]
    python -m bench.fsspec_read --quick
"""

import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import httpx
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bench.cluster import LocalCluster, stat_fields
from bench.common import fmt, fmt_ratio, markdown_table, ratio

TICK = os.sysconf("SC_CLK_TCK")
RANGE = 8 << 20
THREADS = 4


def cpu(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def parquet_file(mib: int, seed: int) -> bytes:
    """A parquet file of about `mib` MiB of incompressible rows."""
    import io

    import pyarrow as pa
    rows = mib * 1024 * 1024 // 64
    table = pa.table({"n": pa.array(range(rows), pa.int64()),
                      "blob": pa.array([os.urandom(56) for _ in range(rows)], pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="none", row_group_size=rows // 4 or 1)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--file-mib", type=int, default=16)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 files of 1 MiB, 16 MiB, 1 round")
    parser.add_argument("--dir", type=Path, help="work dir (default: one on /dev/shm, tmpfs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.file_mib, args.big_mib, args.rounds = 4, 1, 16, 1
    shm = Path("/dev/shm")
    workdir = args.dir or (Path(tempfile.mkdtemp(prefix="mkv-fsspec-", dir=shm))
                           if shm.is_dir() else None)
    with LocalCluster(workdir) as cluster:
        master = cluster.master
        assert master is not None
        fs = fsspec.filesystem("mkv", masters=master.addr, skip_instance_cache=True)
        s3 = pafs.S3FileSystem(endpoint_override=master.addr, scheme="http", anonymous=True,
                               region="us-east-1", allow_bucket_creation=True)
        http = httpx.Client(timeout=60)
        files = [f"ds/part-{n:03d}.parquet" for n in range(args.files)]
        for n, name in enumerate(files):
            fs.pipe_file(name, parquet_file(args.file_mib, n))
        big = os.urandom(args.big_mib << 20)
        fs.pipe_file("big/big.bin", big)
        del big
        total_files = sum(fs.info(name)["size"] for name in files)
        big_size = fs.info("big/big.bin")["size"]
        ranges = [(start, min(start + RANGE, big_size)) for start in range(0, big_size, RANGE)]

        def nginx_url(name: str) -> str:
            redirect = http.get(f"http://{master.addr}/{name}", follow_redirects=False)
            return redirect.headers["location"]

        def read_dataset(way: str) -> None:
            if way == "mkv://":
                table = pq.read_table("ds", filesystem=fs)
            elif way == "S3 face":
                table = pq.read_table("s3road/ds", filesystem=s3)
            else:
                with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                    list(pool.map(lambda name: http.get(nginx_url(name)).content, files))
                return
            assert table.num_rows > 0

        def read_ranges(way: str) -> None:
            if way == "mkv://":
                got = fs.cat_ranges(["big/big.bin"] * len(ranges), [s for s, _ in ranges],
                                    [e for _, e in ranges], batch_size=THREADS)
                assert sum(map(len, got)) == big_size
                return
            if way == "S3 face":
                handle = s3.open_input_file("s3road/big.bin")

                def one(span: tuple[int, int]) -> int:
                    return len(handle.read_at(span[1] - span[0], span[0]))
            else:
                url = nginx_url("big/big.bin")

                def one(span: tuple[int, int]) -> int:
                    return len(http.get(url, headers={"Range": f"bytes={span[0]}-{span[1] - 1}"}
                                        ).content)
            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                assert sum(pool.map(one, ranges)) == big_size

        # the S3 road: bucket "s3road" holds the same values, copied once
        s3.create_dir("s3road")
        for name in files:
            with s3.open_output_stream(f"s3road/{name}") as out:
                out.write(fs.cat_file(name))
        with s3.open_output_stream("s3road/big.bin") as out:
            out.write(fs.cat_file("big/big.bin"))
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        readings: dict[str, tuple[Callable[[str], None], int]] = {
            f"{args.files} parquet files of {args.file_mib} MiB, read whole":
                (read_dataset, total_files),
            f"ranged reads of a {args.big_mib} MiB file ({RANGE >> 20} MiB, {THREADS} at once)":
                (read_ranges, big_size)}
        ways = ["nginx (floor)", "mkv://", "S3 face"]
        for r in range(args.rounds):
            for what, (read, size) in readings.items():
                for way in ways if r % 2 == 0 else list(reversed(ways)):
                    before, began = cpu(master.pid), time.monotonic()
                    read(way)
                    seconds = time.monotonic() - began
                    spent = cpu(master.pid) - before
                    results.setdefault((what, way), []).append(
                        (size / seconds / 1e6, spent / (size / (1 << 30))))
                    print(f"round {r + 1} {what}: {way} {size / seconds / 1e6:,.0f} MB/s",
                          file=sys.stderr, flush=True)
        http.close()
    if workdir is not None and args.dir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for what in readings:
        floor = statistics.median(mb for mb, _ in results[(what, "nginx (floor)")])
        s3_rate = statistics.median(mb for mb, _ in results[(what, "S3 face")])
        for way in ways:
            rate = statistics.median(mb for mb, _ in results[(what, way)])
            spent = statistics.median(c for _, c in results[(what, way)])
            rows.append([what, way, fmt(rate), fmt_ratio(ratio(rate, floor)),
                         fmt_ratio(ratio(rate, s3_rate)), f"{spent:.2f}"])
    print(markdown_table(["read", "through", "MB/s", "vs floor", "vs S3 face",
                          "master CPU s/GiB"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
