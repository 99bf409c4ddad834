"""S3 lifecycle expiry at scale: what one `mkv … expire` pass costs per million keys.

N keys (default 100,000) of --size bytes (16) are written as bench/ops.py writes them: their
files straight into the data directories of three nginx volumes (as `-replicas 3 -subvolumes
10` place them) and their records into a LevelDB index, in seconds instead of a PUT per key.
Every --logs-every'th key (10%) is under bucket `logs`, the rest under `data` and `media`.
A master is then started on that index with `-s3_lifecycle_every 0` (it never runs a pass by
itself) and `logs` is given one rule through boto3 (unsigned, on the master's port):
Expiration Days=1, Filter Prefix "". Then, each run as the command line runs it (`python -m mkv
-db DB -volumes V1,V2,V3 expire`, beside the serving master, which serves it the index):

1. walk: the yardstick. The same walk of the volumes' JSON listings every pass makes
   (mkv/ops/walk.py: listing, base64 and key2path of every name), its callback only counting;
   a process of its own (`python bench/lifecycle.py --walk-only …`), so that its wall time, its
   CPU and nginx's compare with a pass's. What a pass costs beyond it is the lifecycle's own.
2. expire, no rules yet: nothing is walked (a cluster without rules is not): the command's
   fixed cost (interpreter, imports, reaching the index, the S3 state).
3. expire, pass 1, real days: the rule has expired nothing (the files are seconds old), so
   this is the scan alone: every file listed, the `logs` ones' mtimes compared. It must
   expire nothing.
4. walk again (the yardstick on either side of the scan, for the noise).
5. expire, pass 2, `-s3_lifecycle_day 1s`, ~2 s later: every `logs` key has expired and is
   deleted (its record read, a replica asked again, the replicas deleted). It must report
   exactly that many expired; then every `logs` key must be 404 on the master, 1,000 others
   (sampled) 302, and a last walk must find only the other keys' files.

For each: wall time, the command's CPU (user + system, rusage from wait4), the master's and the
volumes' nginx processes' CPU over the run (/proc/PID/stat), and per million keys (× 1e6 / N).

    python -m bench.lifecycle                 # 100,000 keys (a few minutes on 2 cores)
    python -m bench.lifecycle --quick         # 2,000 keys: checks the benchmark runs
    python bench/lifecycle.py --keys 300000 --json lifecycle.json
"""

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/lifecycle.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

BUCKET = "logs"  # the bucket with the rule
OTHERS = ("data", "media")  # buckets without rules
SAMPLE = 1_000  # other keys checked after pass 2
CHECK_CONNECTIONS = 32
QUICK_KEYS = 2_000


def key_of(i: int, logs_every: int) -> bytes:
    bucket = BUCKET if i % logs_every == 0 else OTHERS[i % 2]
    return f"/{bucket}/obj/{i:08d}".encode()


def is_logs(key: bytes) -> bool:
    return key.startswith(f"/{BUCKET}/".encode())


# --- the yardstick: the walk alone, in a process of its own ---


def walk_only(argv: list[str]) -> int:
    """`--walk-only MKV_FLAGS`: walk the volumes as a pass does, counting files; prints
    `walk ok: N files (K keys); walk S s, CPU C s` (the walk itself, startup excluded)."""
    import uvloop

    from mkv.cli import parse_args
    from mkv.ops.progress import Progress
    from mkv.ops.walk import VolumeFile, Walk
    from mkv.volumes.replicas import Volumes

    config, _, _ = parse_args(argv)
    progress = Progress("walk")
    keyed = 0

    async def main() -> None:
        nonlocal keyed
        volumes = Volumes.for_config(config)

        async def on_file(file: VolumeFile) -> None:
            nonlocal keyed
            progress.advance()
            keyed += file.key is not None

        try:
            await Walk(volumes, config.volumes, config.concurrency, progress).run(on_file)
        finally:
            await volumes.close()

    started, cpu = time.perf_counter(), time.process_time()
    uvloop.run(main())
    print(f"walk {'failed' if progress.problems else 'ok'}: {progress.done} files "
          f"({keyed} keys); walk {time.perf_counter() - started:.3f} s, "
          f"CPU {time.process_time() - cpu:.3f} s", flush=True)
    return 1 if progress.problems else 0


# --- the cluster's contents ---


def set_rule(master: str) -> None:
    """Expiration Days=1 on everything in `logs`, through boto3 unsigned."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=f"http://{master}", region_name="us-east-1",
                      config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [
        {"ID": "expire-logs", "Status": "Enabled", "Filter": {"Prefix": ""},
         "Expiration": {"Days": 1}}]})
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    if len(rules) != 1 or rules[0].get("Expiration", {}).get("Days") != 1:
        from bench.common import BenchFailure

        raise BenchFailure(f"the lifecycle configuration read back is {rules}")


def statuses(master: str, keys: list[bytes]) -> dict[bytes, int]:
    """GET of each key on the master (redirects not followed): its status."""
    import uvloop

    from bench.client import Connection

    host, _, port = master.rpartition(":")
    found: dict[bytes, int] = {}

    async def main() -> None:
        async def worker(part: list[bytes]) -> None:
            conn = Connection(host, int(port))
            try:
                for key in part:
                    found[key] = (await conn.request("GET", key.decode())).status
            finally:
                conn.close()

        await asyncio.gather(*(worker(keys[i::CHECK_CONNECTIONS])
                               for i in range(CHECK_CONNECTIONS)))

    uvloop.run(main())
    return found


# --- the measured runs ---


@dataclass
class Row:
    name: str
    command: str  # what ran
    seconds: float
    command_cpu_s: float
    master_cpu_s: float
    nginx_cpu_s: float
    files: int  # files listed (0: nothing walked)
    line: str  # the command's last line
    scaled: bool = True  # per-million figures make sense (not a fixed cost)
    per_million: dict[str, float] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--walk-only"]:
        return walk_only(argv[1:])

    from bench.cluster import LocalCluster, add_cluster_args, mkv_command
    from bench.common import BenchFailure, fmt, markdown_table
    from bench.ops import fill, run_command
    from bench.vs_go import CpuMeter, describe, nginx_pids

    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_KEYS:,} keys")
    parser.add_argument("--size", type=int, default=16, help="bytes per value (default 16)")
    parser.add_argument("--logs-every", type=int, default=10,
                        help=f"every Nth key is under `{BUCKET}` (default 10: 10%%)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="-concurrency of the commands: listings at a time per volume")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    add_cluster_args(parser, external=False)
    args = parser.parse_args(argv)
    keys = QUICK_KEYS if args.quick else args.keys
    if keys < 1 or args.logs_every < 1:
        parser.error("--keys and --logs-every must be positive")
    replicas, subvolumes = 3, 10
    flags = ["-replicas", str(replicas), "-subvolumes", str(subvolumes),
             "-concurrency", str(args.concurrency)]
    started = time.monotonic()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    version = describe()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    all_keys = [key_of(i, args.logs_every) for i in range(keys)]
    logs_keys = [k for k in all_keys if is_logs(k)]
    files = keys * replicas
    rows: list[Row] = []
    checks: dict[str, object] = {}

    with LocalCluster(args.dir, volumes=3, with_master=False) as cluster:
        volumes = [v.addr for v in cluster.volumes]
        db = cluster.dir / "index"
        setup = fill(cluster, db, [key_of(i, args.logs_every) for i in range(keys)],
                     args.size, replicas, subvolumes)
        title = (f"S3 lifecycle expiry, {date}, mkv {version}: {keys:,} keys ({files:,} files "
                 f"of {args.size} B; {len(logs_keys):,} under `{BUCKET}`, with the rule), "
                 f"3 volumes, -replicas {replicas} -subvolumes {subvolumes} -concurrency "
                 f"{args.concurrency}; written in {setup:.1f} s; load average {load} at the "
                 f"start, {os.cpu_count()} cpus")
        print(title, flush=True)
        master = cluster.start_master(db, *flags, "-s3_lifecycle_every", "0")
        nginx = [pid for data in cluster.volume_dirs for pid in nginx_pids(data / ".mkv")]
        meter = CpuMeter({"master": [master.pid], "nginx": nginx})
        base = ["-db", str(db), "-volumes", ",".join(volumes), *flags]

        def measure(name: str, cmd: list[str], walked: int, scaled: bool = True) -> Row:
            log = cluster.dir / f"{len(rows)}-{name.split()[0].strip(',')}.log"
            with meter(name):
                ran = run_command(cmd, log)
            spent = meter.spent[name]
            row = Row(name, " ".join(cmd[cmd.index("-m") + 1:] if "-m" in cmd else cmd[1:]),
                      ran.seconds, ran.cpu_s, spent["master"], spent["nginx"], walked,
                      ran.line, scaled)
            if scaled:
                scale = 1e6 / keys
                row.per_million = {"seconds": ran.seconds * scale,
                                   "command_cpu_s": ran.cpu_s * scale,
                                   "master_cpu_s": spent["master"] * scale,
                                   "nginx_cpu_s": spent["nginx"] * scale}
            rows.append(row)
            print(f"  {name}: {ran.seconds:.2f} s, command CPU {ran.cpu_s:.2f} s, master "
                  f"{spent['master']:.2f} s, nginx {spent['nginx']:.2f} s — {ran.line}",
                  flush=True)
            return row

        def walk(name: str, expected_files: int) -> Row:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--walk-only", *base]
            row = measure(name, cmd, expected_files)
            listed = int(row.line.split()[2])
            if listed != expected_files:
                raise BenchFailure(f"{name}: {listed:,} files listed, {expected_files:,} "
                                   f"expected: {row.line}")
            return row

        def expire(name: str, *more: str, walked: int, scaled: bool = True) -> Row:
            return measure(name, mkv_command(*base, *more, "expire"), walked, scaled)

        try:
            walk("walk (yardstick)", files)
            none = expire("expire, no rules yet (startup)", walked=0, scaled=False)
            if "nothing to do" not in none.line:
                raise BenchFailure(f"expire without rules did something: {none.line}")
            set_rule(master.addr)
            scan = expire("expire pass 1 (real days: scan only)", walked=files)
            if "expired" in scan.line or " ok:" not in scan.line:
                raise BenchFailure(f"pass 1 expired something or failed: {scan.line}")
            walk("walk again (yardstick)", files)
            time.sleep(2.0)  # every file is now older than a 1 s "day" past its second
            gone = expire("expire pass 2 (-s3_lifecycle_day 1s: 10% expire)",
                          "-s3_lifecycle_day", "1s", walked=files)
            wanted = f"expired {len(logs_keys):,}"
            if f"{wanted};" not in gone.line and f"{wanted}," not in gone.line:
                raise BenchFailure(f"pass 2 should report {wanted}: {gone.line}")
            # the result: every logs key gone, the others there
            sample = random.Random(1).sample([k for k in all_keys if not is_logs(k)],
                                             min(SAMPLE, keys - len(logs_keys)))
            found = statuses(master.addr, logs_keys + sample)
            left = [k for k in logs_keys if found[k] != 404]
            lost = [k for k in sample if found[k] != 302]
            checks = {"logs_keys": len(logs_keys), "logs_not_404": len(left),
                      "others_sampled": len(sample), "others_not_302": len(lost)}
            if left or lost:
                raise BenchFailure(
                    f"after pass 2: {len(left)} of {len(logs_keys)} `{BUCKET}` keys not 404 "
                    f"(e.g. {left[:3]}), {len(lost)} of {len(sample)} others not 302 "
                    f"(e.g. {[(k, found[k]) for k in lost[:3]]})")
            after = walk("walk after pass 2 (check)", (keys - len(logs_keys)) * replicas)
            rows.remove(after)  # a check, not a figure
            checks["files_after"] = after.files
        except BenchFailure:
            print(f"(logs in {cluster.dir}: kept only with --dir)", file=sys.stderr)
            raise

    walks = [r for r in rows if r.name.startswith("walk")]
    walk_s = sum(r.seconds for r in walks) / len(walks)
    walk_cpu = sum(r.command_cpu_s for r in walks) / len(walks)
    header = ["run", "wall s", "command CPU s", "master CPU s", "nginx CPU s", "files/s",
              "wall s /1M keys", "command CPU s /1M", "master CPU s /1M", "nginx CPU s /1M",
              "vs walk (wall, CPU)"]
    lines = []
    for r in rows:
        pm = r.per_million
        lines.append([
            r.name, f"{r.seconds:.2f}", f"{r.command_cpu_s:.2f}", f"{r.master_cpu_s:.2f}",
            f"{r.nginx_cpu_s:.2f}", fmt(r.files / r.seconds) if r.files else "—",
            *((f"{pm['seconds']:.1f}", f"{pm['command_cpu_s']:.1f}",
               f"{pm['master_cpu_s']:.1f}", f"{pm['nginx_cpu_s']:.1f}") if r.scaled
              else ("—",) * 4),
            "—" if r in walks or not r.scaled else
            f"{r.seconds / walk_s:.2f}×, {r.command_cpu_s / walk_cpu:.2f}×"])
    print(f"\n{title}\n\n{markdown_table(header, lines)}\n")
    print(f"yardstick: `walk` is the same walk of the listings (mkv/ops/walk.py) in a process "
          f"of its own, its callback only counting; its own wall and CPU over the walk alone, "
          f"startup excluded: {'; '.join(r.line.split('; ', 1)[1] for r in walks)}.\n"
          f"'vs walk' divides by the two walks' mean. The startup row is a fixed cost, not "
          f"scaled. Checks: pass 1 expired nothing; pass 2 expired {len(logs_keys):,}; all "
          f"{checks['logs_keys']:,} `{BUCKET}` keys 404 afterwards, {checks['others_sampled']:,} "
          f"sampled others 302; {checks['files_after']:,} files left on the volumes.")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; "
          f"{time.monotonic() - started:.0f} s in all", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "date": date, "mkv": version, "load_start": load, "keys": keys, "files": files,
            "size": args.size, "logs_keys": len(logs_keys), "replicas": replicas,
            "subvolumes": subvolumes, "concurrency": args.concurrency, "fill_s": setup,
            "quick": args.quick, "checks": checks,
            "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from bench.common import BenchFailure

    try:
        sys.exit(main())
    except BenchFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
