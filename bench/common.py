"""What the benchmarks share: failures, meters, percentiles, number formatting (the cluster they
run on is bench/cluster.py)."""

import contextlib
import secrets
from collections.abc import Callable

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


def mib(n: int) -> float:
    return n / (1 << 20)

