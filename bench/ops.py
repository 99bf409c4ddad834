"""Offline operations at scale: `mkv rebuild`, `verify` and `rebalance` of N keys, in keys/s.

N keys (default 100,000) of --size bytes are written straight into the data directories of
three nginx volumes (as `-replicas`/`-subvolumes` place them) and into a LevelDB index, with
no master: setting up takes seconds, not a PUT per key. Then, each run as the command line
runs it (`python -m mkv ...`, timed from start to exit):

1. rebuild: a new index from the volumes, with a check that it equals the written one;
2. verify: the written index against the volumes (one HEAD per replica, then the walk that
   looks for orphans); it must find the cluster healthy;
3. rebalance: a fourth volume joins; the keys that now rank it among their replicas are
   copied to it and deleted from the volume they leave. Run again, it must find all in place.

    python -m bench.ops                       # 100,000 keys
    python -m bench.ops --quick               # 2,000 keys: checks the benchmark runs
    python -m bench.ops --keys 20000 --replicas 2 --subvolumes 1 --concurrency 32
"""

import argparse
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/ops.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import plyvel

from bench.cluster import LocalCluster, add_cluster_args, mkv_command, track, untrack
from bench.common import BenchFailure, fmt
from mkv.placement import key2path, key2volume
from mkv.record import Record


def key_of(i: int) -> bytes:
    return f"/bench/ops/{i:08d}".encode()


def fill(cluster: LocalCluster, db: Path, keys: int | list[bytes], size: int, replicas: int,
         subvolumes: int) -> float:
    """Write the keys' files onto the first three volumes and their records; the seconds.
    `keys`: how many of this benchmark's (`key_of`), or the keys themselves.

    The directories are made writable by all (umask 0), as Go mkv's `volume` makes the volume's
    own: run by root, its nginx workers are `nobody` and must be able to delete the files."""
    started = time.perf_counter()
    names = [v.addr for v in cluster.volumes[:3]]
    dirs = {v.addr: data for v, data in zip(cluster.volumes, cluster.volume_dirs, strict=True)}
    ldb = plyvel.DB(str(db), create_if_missing=True, error_if_exists=True)
    made: set[Path] = set()
    umask = os.umask(0)
    try:
        with ldb.write_batch() as batch:
            for key in map(key_of, range(keys)) if isinstance(keys, int) else keys:
                value = (hashlib.sha256(key).digest() * (size // 32 + 1))[:size]
                placed = key2volume(key, names, replicas, subvolumes)
                for replica in placed:
                    hostport, _, sub = replica.partition("/")
                    path = dirs[hostport] / sub / key2path(key).lstrip("/")
                    if path.parent not in made:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        made.add(path.parent)
                    path.write_bytes(value)
                md5 = hashlib.md5(value).hexdigest()
                batch.put(key, Record(tuple(placed), md5=md5).encode())
    finally:
        os.umask(umask)
        ldb.close()
    return time.perf_counter() - started


@dataclass
class Ran:
    """A command run to its exit: wall seconds, its own CPU seconds (user + system), its
    output's last line."""
    seconds: float
    cpu_s: float
    line: str


def run_command(cmd: list[str], log: Path) -> Ran:
    """Run `cmd` with its output in `log`; a non-zero exit fails the bench."""
    started = time.perf_counter()
    with open(log, "w") as out:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        track(popen)
        try:
            _, status, usage = os.wait4(popen.pid, 0)
        finally:
            untrack(popen)
    seconds = time.perf_counter() - started
    popen.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if popen.returncode != 0:
        raise BenchFailure(f"{' '.join(cmd)} exited {popen.returncode}:\n{text[-2000:]}")
    lines = text.strip().splitlines()
    return Ran(seconds, usage.ru_utime + usage.ru_stime, lines[-1] if lines else "")


def run(db: Path, volumes: list[str], flags: list[str], command: str,
        log: Path) -> tuple[float, str]:
    """`mkv ... command`; its seconds and its summary line. A non-zero exit fails the bench."""
    ran = run_command(mkv_command("-db", str(db), "-volumes", ",".join(volumes), *flags,
                                  command), log)
    return ran.seconds, ran.line


def records(db: Path) -> dict[bytes, bytes]:
    ldb = plyvel.DB(str(db))
    try:
        return dict(ldb.iterator())
    finally:
        ldb.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="2,000 keys")
    parser.add_argument("--size", type=int, default=1024, help="bytes per value (default 1024)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--subvolumes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    add_cluster_args(parser, external=False)
    args = parser.parse_args(argv)
    keys = 2_000 if args.quick else args.keys
    flags = ["-replicas", str(args.replicas), "-subvolumes", str(args.subvolumes),
             "-concurrency", str(args.concurrency)]
    with LocalCluster(args.dir, volumes=4, with_master=False) as cluster:
        three = [v.addr for v in cluster.volumes[:3]]
        four = [v.addr for v in cluster.volumes]
        db = cluster.dir / "index"
        setup = fill(cluster, db, keys, args.size, args.replicas, args.subvolumes)
        files = keys * args.replicas
        print(f"{keys:,} keys ({files:,} files of {args.size} B) on 3 volumes, "
              f"-replicas {args.replicas} -subvolumes {args.subvolumes} "
              f"-concurrency {args.concurrency}; written in {setup:.1f}s")
        written = records(db)
        results = []

        seconds, line = run(cluster.dir / "rebuilt", three, flags + ["-checksum"], "rebuild",
                            cluster.dir / "rebuild.log")
        if records(cluster.dir / "rebuilt") != written:
            raise BenchFailure("the rebuilt index differs from the written one")
        results.append(("rebuild -checksum", seconds, line))
        seconds, line = run(cluster.dir / "rebuilt-plain", three, flags, "rebuild",
                            cluster.dir / "rebuild-plain.log")
        results.append(("rebuild", seconds, line))
        seconds, line = run(db, three, flags, "verify", cluster.dir / "verify.log")
        results.append(("verify", seconds, line))
        seconds, line = run(db, four, flags, "rebalance", cluster.dir / "rebalance.log")
        results.append(("rebalance 3 → 4 volumes", seconds, line))
        again, line = run(db, four, flags, "rebalance", cluster.dir / "rebalance2.log")
        if "moved" in line:
            raise BenchFailure(f"a second rebalance moved keys: {line}")
        results.append(("rebalance again (nothing to move)", again, line))

        width = max(len(name) for name, _, _ in results)
        for name, seconds, line in results:
            print(f"{name:<{width}}  {seconds:7.2f}s  {fmt(keys / seconds):>8} keys/s   {line}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
