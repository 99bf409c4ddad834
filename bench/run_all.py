"""Every benchmark on a local cluster started here (3 nginx volumes + a master, free ports, a temp
dir), then a summary table: mkv, nginx in the same run, their ratio, Go mkv's figures (SPEC §7)
and issue 3's targets.

    python -m bench              # thrasher 10,000 cycles, wrk 10 s, 256 MiB + 1 GiB, 1M keys
    python -m bench --quick      # tiny sizes and a second of wrk: checks the benchmarks run
    python -m bench --vs-go      # instead: ours against Go mkv (bench/vs_go.py, its options)
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/run_all.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from bench import index_scale, large, redirect, thrasher, vs_go
from bench.client import HTTPFailure
from bench.cluster import LocalCluster
from bench.common import (
    GO,
    BenchFailure,
    fmt,
    fmt_ratio,
    fmt_s,
    markdown_table,
    ratio,
)

BENCHMARKS = ("thrasher", "redirect", "large", "index")
FULL = {"count": 10_000, "duration": 10.0, "sizes": "256M,1G", "keys": 1_000_000}
QUICK = {"count": 300, "duration": 1.0, "sizes": "1M,3M", "keys": 20_000}


def summary(results: dict, verdicts: bool = True) -> str:
    """The figures as a markdown table; `verdicts` says whether each target is met."""

    def _target(cell: str, met: bool | None) -> str:
        if met is None or not verdicts:
            return cell
        return f"{cell} ({'met' if met else 'NOT met'})"

    header = ["measure", "mkv", "nginx (same run)", "mkv/nginx", "Go mkv (SPEC §7)", "mkv/Go",
              "target (issue 3)"]
    rows: list[list[str]] = []
    if "redirect" in results:
        r = results["redirect"]
        mm, nm = r.master_missing.rate, r.nginx_missing.rate
        me, ne = r.master_existing.rate, r.nginx_existing.rate
        go_m, go_e = GO["missing_get"], GO["existing_get"]
        rows += [
            ["GET missing key, req/s", fmt(mm), f"{fmt(nm)} (404)", fmt_ratio(ratio(mm, nm)),
             fmt(go_m), fmt_ratio(ratio(mm, go_m)),
             _target(f"≥ {fmt(1.5 * go_m)} (1.5× Go)", mm >= 1.5 * go_m)],
            ["GET existing key (302 + HEAD check), req/s", fmt(me), f"{fmt(ne)} (200)",
             fmt_ratio(ratio(me, ne)), fmt(go_e), fmt_ratio(ratio(me, go_e)),
             _target(f"≥ {fmt(1.5 * go_e)} (1.5× Go)", me >= 1.5 * go_e)],
            ["GET existing key vs nginx's 404, req/s", fmt(me), f"{fmt(nm)} (404)",
             fmt_ratio(ratio(me, nm)), "—", "—", "≈ 0.45× nginx 404"],
        ]
    if "thrasher" in results:
        t = results["thrasher"]
        go = GO["thrasher"]
        rows.append([f"thrasher ({t.workers} workers), cycles/s", fmt(t.master.rate),
                     fmt(t.nginx.rate), fmt_ratio(ratio(t.master.rate, t.nginx.rate)),
                     fmt(go), fmt_ratio(ratio(t.master.rate, go)),
                     _target(f"≥ {fmt(2 * go)} (2× Go)", t.master.rate >= 2 * go)])
        for op in thrasher.OPERATIONS:
            rows.append([f"thrasher {op.upper()} p50 / p99, ms",
                         f"{t.master.p(op, 50):.2f} / {t.master.p(op, 99):.2f}",
                         f"{t.nginx.p(op, 50):.2f} / {t.nginx.p(op, 99):.2f}",
                         fmt_ratio(ratio(t.master.p(op, 50), t.nginx.p(op, 50))) + " (p50)",
                         "—", "—", "—"])
    if "large" in results:
        for s in results["large"].results:
            name = large.size_name(s.size)
            is_256m, is_1g = s.size == 256 << 20, s.size == 1 << 30
            put_ratio = ratio(s.put_s, s.direct_put_s)
            rows.append([f"{name} PUT ({s.replicas} replicas), s (MB/s)",
                         f"{fmt_s(s.put_s)} ({fmt(s.mbps(s.put_s))})",
                         f"{fmt_s(s.direct_put_s)} ({fmt(s.mbps(s.direct_put_s))})",
                         fmt_ratio(put_ratio) + " time",
                         f"{GO['put_256m_s']}" if is_256m else "—",
                         fmt_ratio(ratio(s.put_s, GO["put_256m_s"])) if is_256m else "—",
                         _target("≤ 1.5× direct", put_ratio is not None and put_ratio <= 1.5)
                         if is_1g else "—"])
            rss = s.put_peak_rss_mib
            rows.append([f"{name} PUT master peak RSS, MiB", fmt(rss), "—", "—",
                         f"{GO['put_256m_rss_mb']} MB" if is_256m else "—", "—",
                         _target("< 100 MB", rss is not None and rss * 1.048576 < 100)
                         if is_1g else "—"])
            rows.append([f"{name} GET (302 + download), s (MB/s)",
                         f"{fmt_s(s.get_s)} ({fmt(s.mbps(s.get_s))})",
                         f"{fmt_s(s.direct_get_s)} ({fmt(s.mbps(s.direct_get_s))})",
                         fmt_ratio(ratio(s.get_s, s.direct_get_s)) + " time", "—", "—", "—"])
    if "index" in results:
        x = results["index"]
        rows.append([f"list {x.keys:,} keys, limit={x.limit}, keys/s", fmt(x.rate),
                     f"{fmt(x.nginx_rate)} (page-sized file)",
                     fmt_ratio(ratio(x.rate, x.nginx_rate)), "—", "—", "—"])
    return markdown_table(header, rows)


def code_version() -> str:
    """The commit the master runs from, `-dirty` when mkv/ has changes not committed."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mkv"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--vs-go" in argv:
        return vs_go.main([a for a in argv if a != "--vs-go"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vs-go", action="store_true",
                        help="run bench.vs_go instead, with the options it takes (see its --help)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and durations")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--workers", type=int, default=16, help="thrasher workers")
    parser.add_argument("--count", type=int, help="thrasher cycles (10,000; quick 300)")
    parser.add_argument("--size", type=int, default=20, help="thrasher value bytes")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (10; quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=100, help="wrk connections")
    parser.add_argument("--sizes", help="large values (256M,1G; quick 1M,3M)")
    parser.add_argument("--keys", type=int, help="index keys (1,000,000; quick 20,000)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip the wrk benchmark when wrk is missing, rather than apt-get it")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--dir", type=Path,
                        help="work dir for the cluster (default: a temp dir, removed after)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    only = [b for b in args.only.split(",") if b]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    results: dict = {}
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    started = time.monotonic()
    version = code_version()
    print(f"mkv benchmarks ({'quick' if args.quick else 'full'}) of mkv {version}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cpus", flush=True)
    with LocalCluster(args.dir) as cluster:
        target = cluster.target()
        print(f"cluster: master {target.master}, volumes "
              f"{', '.join(v.addr for v in cluster.volumes)}, in {cluster.dir}\n", flush=True)

        def attempt(name: str, work) -> None:
            if name not in only:
                return
            t0 = time.monotonic()
            try:
                results[name] = work()
            except redirect.WrkMissing as e:
                skipped[name] = str(e)
                print(f"{name}: skipped: {e}\n", flush=True)
                return
            except (BenchFailure, HTTPFailure) as e:
                failures[name] = str(e)
                print(f"{name} FAILED: {e}\n", file=sys.stderr, flush=True)
                return
            print(f"{results[name].text()}\n  ({time.monotonic() - t0:.1f} s)\n", flush=True)

        attempt("thrasher", lambda: thrasher.run(target, args.workers, args.count, args.size))
        attempt("redirect", lambda: redirect.run(target, args.duration, args.threads,
                                                 args.connections, not args.no_install))

        def run_large() -> large.Report:
            # a master of its own, so its peak RSS is the large values' alone
            with cluster.own_master() as master:
                return large.run(cluster.target(master),
                                 [large.parse_size(s) for s in args.sizes.split(",")])

        attempt("large", run_large)
        attempt("index", lambda: index_scale.run(cluster, args.keys))

    print(summary(results, verdicts=not args.quick))
    for name, why in skipped.items():
        print(f"\nskipped {name}: {why}")
    for name, why in failures.items():
        print(f"\nFAILED {name}: {why}")
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    if args.json:
        figures = {name: report.as_dict() for name, report in results.items()}
        args.json.write_text(json.dumps({"quick": args.quick, "mkv": version, "results": figures,
                                         "skipped": skipped, "failures": failures,
                                         "go_mkv": GO}, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
