"""Our master against Go mkv's on the same machine and the same nginx volumes, in alternating
rounds: one table of both masters' figures, their ratio and each one's CPU per operation.

Go mkv is built from its source (`$MKV_GO_PEER`, else `shared/peer/minikeyvalue` beside this
checkout) with Debian's Go packages into a cache dir, again only when the source is newer. Four
nginx volumes are started with Go mkv's own `volume` launcher, so that only the master differs;
both masters serve the first three with default flags (3 replicas, 10 subvolumes), each with its
own index. Every measurement runs ours, Go, ours, Go, ... (`--rounds` each) and reports medians:

- GET of a missing and of an existing key, and nginx's own 404, with wrk (bench/redirect.py);
- the thrasher's PUT, GET, DELETE cycles (bench/thrasher.py);
- large PUTs, 3 replicas: wall time and peak RSS (bench/large.py);
- the offline commands on keys written straight into the volumes (bench/ops.py's fill):
  rebuild and rebalance 3 -> 4 -> 3 volumes for both, our verify and repair beside them.

CPU per operation is utime + stime from /proc/PID/stat over exactly the measured interval (for
an offline command, its own rusage), divided by the operations done in it: for each master and
for the volumes' nginx processes together.

    python -m bench.vs_go                         # full: 3 rounds; 100,000 and 1,000,000 keys
    python -m bench.vs_go --quick                 # tiny sizes, 1 round: checks that it runs
    python -m bench.vs_go --only get,thrasher     # a subset
"""

import argparse
import contextlib
import datetime
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/vs_go.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import plyvel

from bench import large, ops, redirect, thrasher
from bench.client import HTTPFailure
from bench.cluster import LocalCluster, Proc, Target, mkv_command, processes, stat_fields
from bench.common import BenchFailure, fmt, fmt_s, markdown_table
from bench.gomkv import GoUnavailable, go_build, peer_candidate, peer_source

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("get", "thrasher", "large", "ops")
OPS_COMMANDS = ("rebuild", "rebalance", "verify", "repair")  # rebuild always runs: the rest need it
FULL = {"rounds": 3, "duration": 10.0, "count": 10_000, "sizes": "256M,1G",
        "ops_keys": "100000,1000000"}
QUICK = {"rounds": 1, "duration": 1.0, "count": 200, "sizes": "1M,3M", "ops_keys": "2000"}
SIDES = {"ours": "mkv", "go": "Go mkv"}
SERVED = 3  # the masters serve the first three volumes; the fourth joins in the rebalance
TICK = os.sysconf("SC_CLK_TCK")
# what Go mkv's rebuild and rebalance print when a key or listing fails (they exit 0 anyway)
GO_TROUBLE = ("error", "impossible", "panic", "ugh", "issue")


# --- Go mkv, built once into a cache dir ---


def build_go(source: Path, cache: Path) -> Path:
    """`cache/mkv-go`, built again only when a source file is newer than it."""
    binary = cache / "mkv-go"
    newest = max(f.stat().st_mtime for f in (source / "src").glob("*.go"))
    if binary.is_file() and binary.stat().st_mtime >= newest:
        return binary
    print(f"building Go mkv from {source} into {binary}", flush=True)
    return go_build(source / "src", binary, cache / "gocache")


# --- CPU of processes over an interval ---


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def nginx_pids(volume_dir: Path, timeout: float = 10.0) -> list[int]:
    """A volume's nginx: the master from its pid file, and its worker processes."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            master = int((volume_dir / "nginx.pid").read_text())
            workers = [pid for pid, f in processes() if int(f[1]) == master]
            if workers:
                return [master, *workers]
        if time.monotonic() > deadline:
            raise BenchFailure(f"no nginx workers found for {volume_dir}")
        time.sleep(0.05)


class CpuMeter:
    """CPU seconds of groups of processes over named intervals, summed when a name comes
    back: a benchmark's `meter`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.spent: dict[str, dict[str, float]] = {}

    def _read(self) -> dict[str, float]:
        return {g: sum(cpu_seconds(pid) for pid in pids) for g, pids in self.groups.items()}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        before = self._read()
        yield
        after = self._read()
        spent = self.spent.setdefault(name, dict.fromkeys(self.groups, 0.0))
        for group in self.groups:
            spent[group] += after[group] - before[group]


# --- the figures ---


@dataclass
class Row:
    """One measure, round by round: for each side its figure, its own CPU seconds per
    operation, and the nginx volumes' CPU seconds per operation during its runs."""
    measure: str
    kind: str  # "rate" (higher is better), "time" or "memory" (lower is better)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, side: str, figure: float, spent: dict[str, float] | None = None,
            ops_done: int = 1) -> None:
        series = self.samples.setdefault(side, {"figure": [], "cpu": [], "nginx": []})
        series["figure"].append(figure)
        if spent is not None:
            series["cpu"].append(spent[side] / ops_done)
            series["nginx"].append(spent["nginx"] / ops_done)

    def median(self, side: str, series: str = "figure") -> float | None:
        values = self.samples.get(side, {}).get(series)
        return statistics.median(values) if values else None

    def advantage(self) -> float | None:
        """How many times better ours is than Go's: ours/Go for rates, Go/ours otherwise."""
        ours, go = self.median("ours"), self.median("go")
        if not ours or not go:
            return None
        return ours / go if self.kind == "rate" else go / ours

    def as_dict(self) -> dict:
        return {"measure": self.measure, "kind": self.kind, "advantage": self.advantage(),
                "sides": {side: {**series, "median": self.median(side),
                                 "cpu_per_op_s": self.median(side, "cpu"),
                                 "nginx_cpu_per_op_s": self.median(side, "nginx")}
                          for side, series in self.samples.items()}}


def fmt_cpu(seconds: float | None) -> str:
    """CPU time per operation: µs under a millisecond, then ms, then s."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs" if seconds < 1e-5 else f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_figure(row: Row, value: float | None) -> str:
    if value is None:
        return "—"
    return fmt_s(value) if row.kind == "time" else fmt(value)


def targets(rows: dict[str, Row]) -> dict[str, list[tuple[str, bool | None]]]:
    """Issue 10's targets, each with whether it is met (None: a figure is missing)."""

    def at_least(x: float | None, bound: float) -> bool | None:
        return None if x is None else x >= bound

    def at_most(x: float | None, bound: float | None) -> bool | None:
        return None if x is None or bound is None else x <= bound

    def scaled(x: float | None, by: float) -> float | None:
        return None if x is None else x * by

    found: dict[str, list[tuple[str, bool | None]]] = {}
    for name, row in rows.items():
        if name == "missing":
            nginx_404 = rows["nginx 404"].samples
            per_404 = [x for series in nginx_404.values() for x in series["nginx"]]
            found[name] = [("≥ 1.0× Go", at_least(row.advantage(), 1.0)),
                           ("CPU/req ≤ 1.3× nginx's per 404",
                            at_most(row.median("ours", "cpu"),
                                    scaled(statistics.median(per_404), 1.3) if per_404 else None))]
        elif name == "existing":
            found[name] = [("≥ 1.5× Go", at_least(row.advantage(), 1.5))]
        elif name == "thrasher":
            found[name] = [("≥ 1.2× Go", at_least(row.advantage(), 1.2)),
                           ("CPU/cycle ≤ 0.7× Go's", at_most(row.median("ours", "cpu"),
                                                             scaled(row.median("go", "cpu"), 0.7)))]
        elif name == f"put {1 << 30}":
            found[name] = [("≤ 0.5× Go's time", at_least(row.advantage(), 2.0))]
        elif name == f"rss {1 << 30}":
            rss = row.median("ours")
            found[name] = [("< 100 MB", None if rss is None else rss * 1.048576 < 100)]
        elif name.startswith(("rebuild", "rebalance")):
            found[name] = [("≥ 1.5× Go", at_least(row.advantage(), 1.5))]
    return found


def table(rows: dict[str, Row], verdicts: bool) -> str:
    header = ["measure", "mkv", "Go mkv", "mkv vs Go (>1: mkv better)", "mkv CPU/op",
              "Go CPU/op", "nginx CPU/op (mkv / Go runs)", "target"]
    goals = targets(rows)
    lines = []
    for name, row in rows.items():
        advantage = row.advantage()
        direction = "mkv/Go" if row.kind == "rate" else f"Go/mkv {row.kind}"
        nginx = " / ".join(fmt_cpu(row.median(side, "nginx")) for side in SIDES
                           if side in row.samples)
        goal = "; ".join(text if met is None or not verdicts
                         else f"{text} ({'met' if met else 'NOT met'})"
                         for text, met in goals.get(name, []))
        lines.append([row.measure, fmt_figure(row, row.median("ours")),
                      fmt_figure(row, row.median("go")),
                      "—" if advantage is None else f"{advantage:.2f}× ({direction})",
                      fmt_cpu(row.median("ours", "cpu")), fmt_cpu(row.median("go", "cpu")),
                      nginx or "—", goal or "—"])
    return markdown_table(header, lines)


# --- the measurements ---


@dataclass
class Bench:
    """What every measurement needs: the cluster, each side's program and running master, the
    options, the volumes' nginx processes, the rows so far."""
    cluster: LocalCluster
    programs: dict[str, list[str]]  # side -> the command before the flags
    args: argparse.Namespace
    nginx: list[int]
    masters: dict[str, Proc] = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)

    def start_master(self, side: str) -> Proc:
        """A master of that side, with a fresh index, on the first three volumes."""
        return self.cluster.start_master(program=self.programs[side], serving=SERVED)

    def master(self, side: str, fresh: bool) -> contextlib.AbstractContextManager[Proc]:
        """That side's running master, or, when `fresh`, one started as `start_master` does
        and stopped after."""
        if fresh:
            return self.cluster.own_master(program=self.programs[side], serving=SERVED)
        return contextlib.nullcontext(self.masters[side])

    def row(self, name: str, measure: str, kind: str = "rate") -> Row:
        return self.rows.setdefault(name, Row(measure, kind))

    def meter(self, masters: dict[str, Proc] | None = None) -> CpuMeter:
        """A meter of each master's CPU and of the volumes' nginx."""
        return CpuMeter({**{side: [m.pid] for side, m in (masters or {}).items()},
                         "nginx": self.nginx})

    def alternate(self, what: str, one: Callable[[str, Target, CpuMeter], str],
                  fresh: bool = False) -> None:
        """`one(side, target, meter)` for ours, Go, ours, Go, ... (each time on a master just
        started when `fresh`); it returns a line to print."""
        for r in range(self.args.rounds):
            for side in SIDES:
                with self.master(side, fresh) as master:
                    line = one(side, self.cluster.target(master), self.meter({side: master}))
                print(f"  {what} round {r + 1} {SIDES[side]:7} {line}", flush=True)


def measure_get(bench: Bench) -> None:
    missing = bench.row("missing", "GET missing key (404), req/s")
    nginx = bench.row("nginx 404", "nginx's own 404 on a volume (same runs), req/s")
    existing = bench.row("existing", "GET existing key (302 after HEAD check), req/s")

    def one(side: str, target: Target, meter: CpuMeter) -> str:
        report = redirect.run(target, bench.args.duration, 2, 100, meter=meter)
        for row, run in ((missing, report.master_missing), (nginx, report.nginx_missing),
                         (existing, report.master_existing)):
            row.add(side, run.rate, meter.spent[run.name], run.requests)
        return (f"missing {fmt(report.master_missing.rate)} req/s, existing "
                f"{fmt(report.master_existing.rate)} req/s, nginx 404 "
                f"{fmt(report.nginx_missing.rate)} req/s")

    bench.alternate("GET", one)


def measure_thrasher(bench: Bench) -> None:
    row = bench.row("thrasher", "thrasher, 16 workers × (PUT, GET + redirect, DELETE), cycles/s")

    def one(side: str, target: Target, meter: CpuMeter) -> str:
        report = thrasher.run(target, 16, bench.args.count, meter=meter)
        row.add(side, report.master.rate, meter.spent["master"], report.master.cycles)
        return f"{fmt(report.master.rate)} cycles/s"

    bench.alternate("thrasher", one)


def measure_large(bench: Bench) -> None:
    """Each PUT on a master just started: Go's keeps the memory of an earlier value."""
    for size in (large.parse_size(s) for s in bench.args.sizes.split(",") if s):
        bench.alternate(f"large {large.size_name(size)}",
                        functools.partial(_large_put, bench, size), fresh=True)


def _large_put(bench: Bench, size: int, side: str, target: Target, meter: CpuMeter) -> str:
    name = large.size_name(size)
    [s] = large.run(target, [size], meter).results
    bench.row(f"put {size}", f"{name} PUT (3 replicas), s", "time").add(
        side, s.put_s, meter.spent[f"master put {size}"])
    bench.row(f"rss {size}", f"{name} PUT, master peak RSS, MiB", "memory").add(
        side, s.put_peak_rss_mib)
    return f"PUT {fmt_s(s.put_s)} s, peak RSS {fmt(s.put_peak_rss_mib)} MiB"


def measure_ops(bench: Bench, keys: int) -> None:
    """The offline commands at `keys` keys; each side rebalances 3 -> 4 and back to 3, so
    every round starts from the files as written."""
    cluster, work = bench.cluster, bench.cluster.dir / f"ops-{keys}"
    three = ",".join(v.addr for v in cluster.volumes[:3])
    four = ",".join(v.addr for v in cluster.volumes)
    for data in cluster.volume_dirs:  # what an earlier size left
        for sub in data.glob("sv*"):
            shutil.rmtree(sub)
    work.mkdir()
    size = bench.args.ops_size
    seconds = ops.fill(cluster, work / "written", keys, size, 3, 10)
    print(f"  ops: {keys:,} keys of {size:,} bytes written onto 3 volumes in {seconds:.1f} s",
          flush=True)
    label = f"{keys:,} keys" + (f" of {size:,} B" if size != 1024 else "")

    def command(side: str, db: Path, volumes: str, step: str, measure: str) -> None:
        """`step` is the command, with what tells its runs apart after a dash."""
        meter, log = bench.meter(), work / f"{side}-{step}.log"
        with meter(step):
            ran = ops.run_command([*bench.programs[side], "-db", str(db), "-volumes", volumes,
                                   step.split("-")[0]], log)
        if side == "go" and any(word in line for line in log.read_text().splitlines()
                                for word in GO_TROUBLE):
            raise BenchFailure(f"Go mkv {step} reported errors: see {log}")
        row = bench.row(f"{step} {keys}", f"{measure} ({label}), keys/s")
        row.add(side, keys / ran.seconds, {side: ran.cpu_s, **meter.spent[step]}, keys)
        print(f"  ops {label} {SIDES[side]:7} {step:15} {ran.seconds:7.2f} s "
              f"{fmt(keys / ran.seconds):>8} keys/s   {ran.line[:100]}", flush=True)

    for r in range(bench.args.ops_rounds):
        print(f"  ops {label} round {r + 1}", flush=True)
        rebuilt = {side: work / f"{side}-rebuilt-{r}" for side in SIDES}
        for side, db in rebuilt.items():
            command(side, db, three, "rebuild", "rebuild")
        ours, go = ops.records(rebuilt["ours"]), ops.records(rebuilt["go"])
        if len(ours) != keys or ours != go:
            raise BenchFailure(f"rebuilt indexes differ: ours {len(ours):,} keys, Go's "
                               f"{len(go):,}, {sum(ours.get(k) != v for k, v in go.items()):,} "
                               f"records unlike")
        if "rebalance" in bench.args.ops_commands:
            for side, db in rebuilt.items():
                command(side, db, four, "rebalance-3-4", "rebalance 3 → 4 volumes")
                command(side, db, three, "rebalance-4-3", "rebalance 4 → 3 volumes")
        # ours only: Go mkv has neither; verify also checks Go's rebalance put every file back
        for step in ("verify", "repair"):
            if step in bench.args.ops_commands:
                command("ours", rebuilt["ours"], three, step, f"{step} (mkv only)")
        for db in rebuilt.values():
            shutil.rmtree(db)


# --- the run ---


def describe() -> str:
    """`git describe --always --dirty` of this checkout."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mkv-bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vs_go",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, 1 round: only checks that everything runs")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    parser.add_argument("--rounds", type=int, help="rounds of each side (3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (10; quick 1)")
    parser.add_argument("--count", type=int, help="thrasher cycles a round (10,000; quick 200)")
    parser.add_argument("--sizes", help="large values (256M,1G; quick 1M,3M)")
    parser.add_argument("--ops-keys", help="keys for the offline commands, comma-separated "
                                           "(100000,1000000; quick 2000)")
    parser.add_argument("--ops-size", type=int, default=1024,
                        help="bytes of each value the offline commands move (%(default)s; 0 "
                             "keeps a million keys' files to their inodes, for a tmpfs --dir)")
    parser.add_argument("--ops-commands", default=",".join(OPS_COMMANDS),
                        help="which offline commands to time after rebuild (%(default)s)")
    parser.add_argument("--ops-rounds", type=int,
                        help="rounds of the offline commands at each size (default --rounds)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--dir", type=Path,
                        help="work dir for the cluster (default: a temp dir, removed after)")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="where Go mkv is built (default: %(default)s)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = _subset(parser, args.only, MEASUREMENTS, "measurement(s)")
    args.ops_commands = _subset(parser, args.ops_commands, OPS_COMMANDS, "offline command(s)")
    if args.ops_rounds is None:
        args.ops_rounds = args.rounds
    if min(args.rounds, args.ops_rounds) < 1:
        parser.error("--rounds and --ops-rounds must be at least 1")
    return args


def _subset(parser: argparse.ArgumentParser, text: str, allowed: tuple[str, ...],
            what: str) -> list[str]:
    """The names of a comma-separated option, each one of `allowed`."""
    chosen = [name for name in text.split(",") if name]
    unknown = set(chosen) - set(allowed)
    if unknown:
        parser.error(f"unknown {what}: {', '.join(sorted(unknown))}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = peer_source()
    if source is None:
        print(f"vs_go: no Go mkv source (src/main.go and volume) at {peer_candidate()}: set "
              "$MKV_GO_PEER to a minikeyvalue checkout", file=sys.stderr)
        return 2
    try:
        go = build_go(source, args.cache)
        if "get" in args.only:
            redirect.find_wrk()
    except (GoUnavailable, redirect.WrkMissing) as e:
        print(f"vs_go: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    version = describe()
    title = (f"mkv {version} vs Go mkv ({source}), {date}, {'quick' if args.quick else 'full'}, "
             f"{args.rounds} round(s) each ({args.ops_rounds} of the offline commands), medians; "
             f"load average "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cpus")
    print(title, flush=True)
    try:
        cluster = LocalCluster(args.dir, volumes=4, with_master=False,
                               volume_script=source / "volume")
    except ValueError as e:
        print(f"vs_go: {e}", file=sys.stderr)
        return 2
    with cluster:
        nginx = [pid for data in cluster.volume_dirs for pid in nginx_pids(data)]
        bench = Bench(cluster, {"ours": mkv_command(), "go": [str(go)]}, args, nginx)
        bench.masters = {side: bench.start_master(side) for side in SIDES}
        print(f"volumes {', '.join(v.addr for v in cluster.volumes)} (Go mkv's launcher); "
              f"masters: mkv {bench.masters['ours'].addr}, Go mkv {bench.masters['go'].addr}; "
              f"in {cluster.dir}", flush=True)
        steps: list[tuple[str, Callable[[Bench], None]]] = [
            (name, step) for name, step in (("get", measure_get), ("thrasher", measure_thrasher),
                                            ("large", measure_large)) if name in args.only]
        if "ops" in args.only:
            steps += [(f"ops {n}", lambda b, n=int(n): measure_ops(b, n))
                      for n in args.ops_keys.split(",") if n]
        failures: dict[str, str] = {}
        for name, step in steps:
            t0 = time.monotonic()
            try:
                step(bench)
            except (BenchFailure, HTTPFailure, plyvel.Error) as e:
                failures[name] = str(e)
                print(f"{name} FAILED: {e}", file=sys.stderr, flush=True)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
        report(args, bench.rows, failures, title=title, date=date, mkv=version,
               go_source=str(source))
        print(f"\n({time.monotonic() - started:.0f} s in all; stopping and cleaning up)",
              flush=True)
    return 1 if failures else 0


def report(args: argparse.Namespace, rows: dict[str, Row], failures: dict[str, str],
           **about: str) -> None:
    """The table, the failures, and with --json every figure."""
    print(f"\n{about['title']}\n\n{table(rows, verdicts=not args.quick)}")
    for name, why in failures.items():
        print(f"\nFAILED {name}: {why}")
    if args.json:
        goals = targets(rows)
        args.json.write_text(json.dumps({
            **about, "quick": args.quick, "rounds": args.rounds, "ops_rounds": args.ops_rounds,
            "ops_size": args.ops_size, "failures": failures,
            "rows": {name: {**row.as_dict(), "targets": [{"target": text, "met": met}
                                                         for text, met in goals.get(name, [])]}
                     for name, row in rows.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
