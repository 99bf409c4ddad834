"""What the benchmarks share: failures, percentiles, number formatting, the cluster to target."""

import argparse
import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.launcher import LocalCluster, Proc, stop_on_sigterm

# SPEC §7 and issue 3: Go mkv measured on this project's 2-core machine kind.
GO = {
    "missing_get": 77_000,  # req/s, wrk -t2 -c100 -d10s
    "existing_get": 27_000,  # req/s, 302 + HEAD check
    "thrasher": 1_480,  # cycles/s, 16 workers
    "put_256m_s": 4.7,  # s, 3 replicas
    "put_256m_rss_mb": 567,  # MB peak RSS of the master
}


class BenchFailure(Exception):
    """A wrong answer: the benchmark stops and exits non-zero."""


# Wraps each measured interval of a benchmark by name (`with meter("master missing"): ...`),
# for a caller that reads what the processes did over exactly that interval (bench/vs_go.py).
Meter = Callable[[str], contextlib.AbstractContextManager[object]]


def unmetered(name: str) -> contextlib.AbstractContextManager[object]:
    """The default meter: measures nothing."""
    return contextlib.nullcontext()


def run_id() -> str:
    """A short tag that keeps this run's keys apart from any other's."""
    return secrets.token_hex(4)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(p / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ratio(ours: float | None, base: float | None) -> float | None:
    return ours / base if ours is not None and base else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def fmt_s(seconds: float) -> str:
    """Seconds with three significant decimals for short times."""
    return f"{seconds:.2f}" if seconds >= 1 else f"{seconds:.3f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])


# --- the cluster a standalone benchmark runs on ---


def add_cluster_args(parser: argparse.ArgumentParser, *, external: bool = True) -> None:
    if external:
        parser.add_argument("--master", metavar="HOST:PORT",
                            help="benchmark a running master instead of starting a cluster "
                                 "(needs --volume)")
        parser.add_argument("--volume", metavar="HOST:PORT",
                            help="the nginx volume to measure as the yardstick (with --master)")
        parser.add_argument("--master-pid", type=int,
                            help="the running master's pid, for its peak RSS (with --master)")
    parser.add_argument("--dir", type=Path,
                        help="work dir for a started cluster (default: a temp dir, removed after)")


class Target:
    """Where a benchmark sends its requests: a master, a volume, and maybe the master process."""

    def __init__(self, master: str, volume: str, master_proc: Proc | None = None,
                 cluster: LocalCluster | None = None) -> None:
        self.master = master
        self.volume = volume
        self.master_proc = master_proc
        self.cluster = cluster


class _PidProc(Proc):
    """An external master known only by pid (for /proc figures)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid


@contextlib.contextmanager
def target_from_args(args: argparse.Namespace) -> Iterator[Target]:
    """The running cluster the flags name, or a local one started here and stopped after."""
    stop_on_sigterm()
    if getattr(args, "master", None):
        if not args.volume:
            raise SystemExit("--master needs --volume (an nginx volume for the yardstick)")
        proc = _PidProc(args.master_pid) if args.master_pid else None
        yield Target(args.master, args.volume, proc)
        return
    with LocalCluster(args.dir) as cluster:
        yield Target(cluster.master.addr, cluster.volumes[0].addr, cluster.master, cluster)


def mib(n: int) -> float:
    return n / (1 << 20)

