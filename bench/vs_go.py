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

`--workers 1,2` makes ours a side per count for the GETs and the thrasher: `mkv` (one process)
and `mkv -workers 2` (a supervisor forking the LevelDB index's owner and two HTTP workers),
each a master of its own, in turn with Go's in every round (mkv, mkv -workers 2, Go, mkv, ...),
each with its own ratio to Go. The large PUTs and the offline commands are ours with one
process only (`-workers` does not change them: a PUT is one worker's, an offline command is a
process of its own).

CPU per operation is utime + stime from /proc/PID/stat over exactly the measured interval (for
an offline command, its own rusage), divided by the operations done in it: for each process of
each master (a `-workers N` master's supervisor, owner and each worker apart, and all of them
together) and for the volumes' nginx processes together.

    python -m bench.vs_go                         # full: 3 rounds; 100,000 and 1,000,000 keys
    python -m bench.vs_go --quick                 # tiny sizes, 1 round: checks that it runs
    python -m bench.vs_go --only get,thrasher     # a subset
    python -m bench.vs_go --only get,thrasher --workers 1,2   # ours with 1 and with 2 workers
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/vs_go.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import plyvel

from bench import large, ops, redirect, thrasher
from bench.client import HTTPFailure
from bench.cluster import (
    LocalCluster,
    Proc,
    Target,
    children,
    mkv_command,
    processes,
    stat_fields,
)
from bench.common import BenchFailure, fmt, fmt_s, markdown_table
from bench.gomkv import GoUnavailable, go_build, peer_candidate, peer_source

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("get", "thrasher", "large", "ops")
OPS_COMMANDS = ("rebuild", "rebalance", "verify", "repair")  # rebuild always runs: the rest need it
FULL = {"rounds": 3, "duration": 10.0, "count": 10_000, "sizes": "256M,1G",
        "ops_keys": "100000,1000000"}
QUICK = {"rounds": 1, "duration": 1.0, "count": 200, "sizes": "1M,3M", "ops_keys": "2000"}
PAIR = ("ours", "go")  # the sides of the large PUTs and the offline commands: one process each
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


# --- the sides ---


@dataclass(frozen=True)
class Side:
    """A master measured: its name in the table, the command before its flags, its -workers."""
    label: str
    program: list[str]
    workers: int = 1


def make_sides(workers: Sequence[int], go: Path) -> dict[str, Side]:
    """Ours with one process ("ours", which the large PUTs and the offline commands use), ours
    with each other count of `workers` ("ours-wN"), and Go's ("go"), in that order."""
    ours = {"ours": Side("mkv", mkv_command())}
    ours |= {side_name(n): Side(f"mkv -workers {n}", mkv_command("-workers", str(n)), n)
             for n in workers if n > 1}
    return {**ours, "go": Side("Go mkv", [str(go)])}


def side_name(workers: int) -> str:
    return "ours" if workers == 1 else f"ours-w{workers}"


def holds(pid: int, path: str) -> bool:
    """Whether a process has `path` open."""
    try:
        return any(os.readlink(fd) == path for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def roles(master: Proc, db: Path, workers: int, timeout: float = 30.0) -> dict[str, list[int]]:
    """A master's processes by role, each a group of one: the master alone ("master"), or for
    `-workers N` the supervisor, the index's owner (the child holding `db/LOCK` open) and each
    worker ("worker 1", ...), once all are running."""
    if workers == 1:
        return {"master": [master.pid]}
    lock = str(db.resolve() / "LOCK")
    deadline = time.monotonic() + timeout
    while True:
        found = children(master.pid)
        owners = [pid for pid in found if holds(pid, lock)]
        if len(found) == workers + 1 and len(owners) == 1:
            rest = [pid for pid in found if pid not in owners]
            return {"supervisor": [master.pid], "owner": owners,
                    **{f"worker {i}": [pid] for i, pid in enumerate(rest, 1)}}
        if time.monotonic() > deadline:
            raise BenchFailure(f"{master.name}: no owner and {workers} workers after "
                               f"{timeout:g} s (children {found}, holding the index {owners})")
        time.sleep(0.05)


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
        try:
            return {g: sum(cpu_seconds(pid) for pid in pids) for g, pids in self.groups.items()}
        except OSError as e:  # a worker replaced meanwhile: the master lost a process
            raise BenchFailure(f"a measured process is gone: {e}") from None

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
    """One measure, round by round: for each side its figure and, per operation, the CPU
    seconds of its master ("cpu": all the master's processes together), of each of the
    master's processes when it has more than one (by role: "supervisor", "owner", "worker 1",
    ...) and of the nginx volumes ("nginx") during its runs."""
    measure: str
    kind: str  # "rate" (higher is better), "time" or "memory" (lower is better)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, side: str, figure: float, spent: dict[str, float] | None = None,
            ops_done: int = 1) -> None:
        """`spent`: CPU seconds over the run by group of processes, "nginx" and the master's
        (a CpuMeter's, or "master" alone)."""
        series = self.samples.setdefault(side, {"figure": []})
        series["figure"].append(figure)
        if spent is not None:
            own = {group: s / ops_done for group, s in spent.items() if group != "nginx"}
            per_op = {"cpu": sum(own.values()), "nginx": spent["nginx"] / ops_done,
                      **(own if len(own) > 1 else {})}
            for name, value in per_op.items():
                series.setdefault(name, []).append(value)

    def median(self, side: str, series: str = "figure") -> float | None:
        values = self.samples.get(side, {}).get(series)
        return statistics.median(values) if values else None

    def processes(self, side: str) -> list[str]:
        """The roles of a master of more than one process measured apart (else none)."""
        return [name for name in self.samples.get(side, {})
                if name not in ("figure", "cpu", "nginx")]

    def advantage(self, side: str = "ours") -> float | None:
        """How many times better that side is than Go's: side/Go for rates, Go/side otherwise."""
        ours, go = self.median(side), self.median("go")
        if not ours or not go:
            return None
        return ours / go if self.kind == "rate" else go / ours

    def as_dict(self) -> dict:
        """Every round's figures and the medians; "advantage" is one-process mkv's over Go's,
        each of ours' sides has its own."""
        return {"measure": self.measure, "kind": self.kind, "advantage": self.advantage(),
                "sides": {side: {**series, "median": self.median(side),
                                 **({} if side == "go" else {"advantage": self.advantage(side)}),
                                 "cpu_per_op_s": self.median(side, "cpu"),
                                 "nginx_cpu_per_op_s": self.median(side, "nginx"),
                                 "cpu_per_op_s_by_process": self.by_process(side)}
                          for side, series in self.samples.items()}}

    def by_process(self, side: str) -> dict[str, float | None]:
        """Median CPU seconds per operation of each process group: the master's (by role when
        it has several) and the volumes' nginx; empty when not measured."""
        if "cpu" not in self.samples[side]:
            return {}
        own = self.processes(side) or ["cpu"]
        return {("master" if name == "cpu" else name): self.median(side, name)
                for name in [*own, "nginx"]}


def fmt_cpu(seconds: float | None) -> str:
    """CPU time per operation: µs under 10 ms, then ms, then s."""
    if seconds is None:
        return "—"
    if seconds < 1e-2:
        return f"{seconds * 1e6:.1f} µs" if seconds < 1e-5 else f"{seconds * 1e6:,.0f} µs"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_figure(row: Row, value: float | None) -> str:
    if value is None:
        return "—"
    return fmt_s(value) if row.kind == "time" else fmt(value)


def _at_least(x: float | None, bound: float) -> bool | None:
    return None if x is None else x >= bound


def _at_most(x: float | None, bound: float | None) -> bool | None:
    return None if x is None or bound is None else x <= bound


def _scaled(x: float | None, by: float) -> float | None:
    return None if x is None else x * by


def targets(rows: dict[str, Row],
            sides: dict[str, Side]) -> dict[tuple[str, str], list[tuple[str, bool | None]]]:
    """Issue 10's targets for one-process mkv and those of -workers 2, by (row, side), each
    with whether it is met (None: a figure is missing)."""
    found: dict[tuple[str, str], list[tuple[str, bool | None]]] = {}
    for name, row in rows.items():
        for side in row.samples:
            if side == "go" or sides[side].workers > 2:
                continue
            goals = (_targets(name, row, rows) if sides[side].workers == 1
                     else _workers_targets(name, row, side))
            if goals:
                found[name, side] = goals
    return found


def _targets(name: str, row: Row, rows: dict[str, Row]) -> list[tuple[str, bool | None]]:
    """One-process mkv's."""
    if name == "missing":
        nginx_404 = rows["nginx 404"].samples
        per_404 = [x for series in nginx_404.values() for x in series["nginx"]]
        return [("≥ 1.0× Go", _at_least(row.advantage(), 1.0)),
                ("CPU/req ≤ 1.3× nginx's per 404",
                 _at_most(row.median("ours", "cpu"),
                          _scaled(statistics.median(per_404), 1.3) if per_404 else None))]
    if name == "existing" or name.startswith(("rebuild", "rebalance")):
        return [("≥ 1.5× Go", _at_least(row.advantage(), 1.5))]
    if name == "thrasher":
        return [("≥ 1.2× Go", _at_least(row.advantage(), 1.2)),
                ("CPU/cycle ≤ 0.7× Go's", _at_most(row.median("ours", "cpu"),
                                                   _scaled(row.median("go", "cpu"), 0.7)))]
    if name == f"put {1 << 30}":
        return [("≤ 0.5× Go's time", _at_least(row.advantage(), 2.0))]
    if name == f"rss {1 << 30}":
        rss = row.median("ours")
        return [("< 100 MB", None if rss is None else rss * 1.048576 < 100)]
    return []


def _workers_targets(name: str, row: Row, side: str) -> list[tuple[str, bool | None]]:
    """mkv -workers 2's."""
    bound = {"missing": 1.1, "thrasher": 1.2}.get(name)
    return [] if bound is None else [(f"≥ {bound}× Go", _at_least(row.advantage(side), bound))]


def table(rows: dict[str, Row], sides: dict[str, Side], verdicts: bool) -> str:
    """A line per measure and side of ours, against Go's in the same rounds."""
    header = ["measure", "side", "figure", "Go mkv", "vs Go (>1: mkv better)",
              "CPU/op (all its processes)", "Go CPU/op", "nginx CPU/op (this side's / Go's runs)",
              "target"]
    goals = targets(rows, sides)
    lines = []
    for name, row in rows.items():
        direction = "mkv/Go" if row.kind == "rate" else f"Go/mkv {row.kind}"
        for side in row.samples:
            if side == "go":
                continue
            advantage = row.advantage(side)
            nginx = " / ".join(fmt_cpu(row.median(s, "nginx")) for s in (side, "go")
                               if s in row.samples)
            goal = "; ".join(text if met is None or not verdicts
                             else f"{text} ({'met' if met else 'NOT met'})"
                             for text, met in goals.get((name, side), []))
            lines.append([row.measure, sides[side].label, fmt_figure(row, row.median(side)),
                          fmt_figure(row, row.median("go")),
                          "—" if advantage is None else f"{advantage:.2f}× ({direction})",
                          fmt_cpu(row.median(side, "cpu")), fmt_cpu(row.median("go", "cpu")),
                          nginx or "—", goal or "—"])
    return markdown_table(header, lines)


def process_table(rows: dict[str, Row], sides: dict[str, Side]) -> str | None:
    """CPU per operation of every process, for the measures where a master of ours has more
    than one: a line per side (None when there are no such measures)."""
    header = ["measure", "side", "master, all its processes", "supervisor", "owner",
              "workers (each)", "nginx (volumes)"]
    lines = []
    for row in rows.values():
        if not any(row.processes(side) for side in row.samples):
            continue
        for side in row.samples:
            apart = row.processes(side)
            workers = " / ".join(fmt_cpu(row.median(side, p)) for p in apart
                                 if p.startswith("worker"))
            lines.append([row.measure, sides[side].label, fmt_cpu(row.median(side, "cpu")),
                          *(fmt_cpu(row.median(side, p)) if p in apart else "—"
                            for p in ("supervisor", "owner")),
                          workers or "—", fmt_cpu(row.median(side, "nginx"))])
    return markdown_table(header, lines) if lines else None


# --- the measurements ---


@dataclass
class Bench:
    """What every measurement needs: the cluster, the sides, the options, the volumes' nginx
    processes, each side's running master and its processes by role, the rows so far."""
    cluster: LocalCluster
    sides: dict[str, Side]
    args: argparse.Namespace
    nginx: list[int]
    masters: dict[str, tuple[Proc, dict[str, list[int]]]] = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)
    started: int = 0

    def compared(self) -> list[str]:
        """The sides of the GETs and the thrasher: ours with each --workers count, then Go."""
        return [*(side_name(n) for n in self.args.workers), "go"]

    @contextlib.contextmanager
    def start_master(self, side: str) -> Iterator[tuple[Proc, dict[str, list[int]]]]:
        """A master of that side, with a fresh index, on the first three volumes, and its
        processes by role; stopped after."""
        self.started += 1
        db = self.cluster.dir / f"index-{side}-{self.started}"
        with self.cluster.own_master(db, program=self.sides[side].program,
                                     serving=SERVED) as master:
            yield master, roles(master, db, self.sides[side].workers)

    def master(self, side: str,
               fresh: bool) -> contextlib.AbstractContextManager[tuple[Proc, dict[str, list[int]]]]:
        """That side's running master and its processes, or, when `fresh`, one started as
        `start_master` does."""
        return self.start_master(side) if fresh else contextlib.nullcontext(self.masters[side])

    def row(self, name: str, measure: str, kind: str = "rate") -> Row:
        return self.rows.setdefault(name, Row(measure, kind))

    def meter(self, groups: dict[str, list[int]] | None = None) -> CpuMeter:
        """A meter of the groups of processes (a master's, by role) and of the volumes' nginx."""
        return CpuMeter({**(groups or {}), "nginx": self.nginx})

    def alternate(self, what: str, one: Callable[[str, Target, CpuMeter], str],
                  sides: Sequence[str], fresh: bool = False) -> None:
        """`one(side, target, meter)` for each of `sides` in turn, `--rounds` times (each time
        on a master just started when `fresh`); it returns a line to print."""
        width = max(len(self.sides[side].label) for side in sides)
        for r in range(self.args.rounds):
            for side in sides:
                with self.master(side, fresh) as (master, groups):
                    line = one(side, self.cluster.target(master), self.meter(groups))
                print(f"  {what} round {r + 1} {self.sides[side].label:{width}} {line}",
                      flush=True)


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

    bench.alternate("GET", one, bench.compared())


def measure_thrasher(bench: Bench) -> None:
    row = bench.row("thrasher", "thrasher, 16 workers × (PUT, GET + redirect, DELETE), cycles/s")

    def one(side: str, target: Target, meter: CpuMeter) -> str:
        report = thrasher.run(target, 16, bench.args.count, meter=meter)
        row.add(side, report.master.rate, meter.spent["master"], report.master.cycles)
        return f"{fmt(report.master.rate)} cycles/s"

    bench.alternate("thrasher", one, bench.compared())


def measure_large(bench: Bench) -> None:
    """Each PUT on a master just started: Go's keeps the memory of an earlier value."""
    for size in (large.parse_size(s) for s in bench.args.sizes.split(",") if s):
        bench.alternate(f"large {large.size_name(size)}",
                        functools.partial(_large_put, bench, size), PAIR, fresh=True)


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
            ran = ops.run_command([*bench.sides[side].program, "-db", str(db), "-volumes",
                                   volumes, step.split("-")[0]], log)
        if side == "go" and any(word in line for line in log.read_text().splitlines()
                                for word in GO_TROUBLE):
            raise BenchFailure(f"Go mkv {step} reported errors: see {log}")
        row = bench.row(f"{step} {keys}", f"{measure} ({label}), keys/s")
        row.add(side, keys / ran.seconds, {"master": ran.cpu_s, **meter.spent[step]}, keys)
        print(f"  ops {label} {bench.sides[side].label:7} {step:15} {ran.seconds:7.2f} s "
              f"{fmt(keys / ran.seconds):>8} keys/s   {ran.line[:100]}", flush=True)

    for r in range(bench.args.ops_rounds):
        print(f"  ops {label} round {r + 1}", flush=True)
        rebuilt = {side: work / f"{side}-rebuilt-{r}" for side in PAIR}
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
    parser.add_argument("--workers", default="1",
                        help="ours with each of these -workers counts, comma-separated, as sides "
                             "of their own in the GETs and the thrasher (%(default)s)")
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
    try:
        args.workers = list(dict.fromkeys(int(n) for n in args.workers.split(",") if n))
    except ValueError:
        parser.error(f"--workers: not a list of counts: {args.workers}")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers: counts of at least 1")
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
    title = (f"mkv {version} (-workers {','.join(map(str, args.workers))}) vs Go mkv "
             f"({source}), {date}, {'quick' if args.quick else 'full'}, "
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
    with cluster, contextlib.ExitStack() as running:
        nginx = [pid for data in cluster.volume_dirs for pid in nginx_pids(data)]
        bench = Bench(cluster, make_sides(args.workers, go), args, nginx)
        if {"get", "thrasher"} & set(args.only):  # the others start masters of their own
            bench.masters = {side: running.enter_context(bench.start_master(side))
                             for side in bench.compared()}
        masters = ", ".join(f"{bench.sides[side].label} {master.addr}"
                            for side, (master, _) in bench.masters.items())
        print(f"volumes {', '.join(v.addr for v in cluster.volumes)} (Go mkv's launcher); "
              f"masters: {masters or 'each started for its run'}; in {cluster.dir}", flush=True)
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
        report(args, bench.rows, bench.sides, failures, title=title, date=date, mkv=version,
               go_source=str(source))
        print(f"\n({time.monotonic() - started:.0f} s in all; stopping and cleaning up)",
              flush=True)
    return 1 if failures else 0


def report(args: argparse.Namespace, rows: dict[str, Row], sides: dict[str, Side],
           failures: dict[str, str], **about: str) -> None:
    """The tables, the failures, and with --json every figure."""
    print(f"\n{about['title']}\n\n{table(rows, sides, verdicts=not args.quick)}")
    by_process = process_table(rows, sides)
    if by_process:
        print(f"\nCPU per operation of each process (medians):\n\n{by_process}")
    for name, why in failures.items():
        print(f"\nFAILED {name}: {why}")
    if args.json:
        goals = targets(rows, sides)
        args.json.write_text(json.dumps({
            **about, "quick": args.quick, "rounds": args.rounds, "ops_rounds": args.ops_rounds,
            "ops_size": args.ops_size, "workers": args.workers, "failures": failures,
            "sides": {side: {"label": s.label, "workers": s.workers} for side, s in sides.items()},
            "rows": {name: {**row.as_dict(),
                            "targets": {side: [{"target": text, "met": met}
                                               for text, met in goals.get((name, side), [])]
                                        for side in row.samples if side != "go"}}
                     for name, row in rows.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
