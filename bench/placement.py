"""Placement's cost on the hot path: GET of a missing and of an existing key (wrk) and the
thrasher, against a master with `-domains` and `-weights` and one without, on the same six
volumes (three racks of two), 3 replicas, in alternating rounds; each with the master's CPU per
operation from /proc/PID/stat.

    python -m bench.placement [--rounds 3] [--duration 5] [--count 3000]
"""

import argparse
import statistics
import sys

from bench import redirect, thrasher
from bench.cluster import LocalCluster
from bench.common import fmt, fmt_ratio, markdown_table, ratio
from bench.vs_go import CpuMeter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--count", type=int, default=3000, help="thrasher cycles a round")
    args = parser.parse_args(argv)
    figures: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with LocalCluster(volumes=6, with_master=False) as cluster:
        addrs = [v.addr for v in cluster.volumes]
        racks = ",".join(f"{v}=rack{n // 2}" for n, v in enumerate(addrs))
        sides = {"plain": (), "-domains -weights": ("-domains", racks, "-weights",
                                                    f"{addrs[0]}=3,{addrs[3]}=2")}
        for r in range(args.rounds):
            for side, flags in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                with cluster.own_master(None, "-replicas", "3", *flags) as master:
                    meter = CpuMeter({"master": [master.pid]})
                    target = cluster.target(master)
                    gets = redirect.run(target, args.duration, install=False, meter=meter)
                    thrash = thrasher.run(target, count=args.count, rounds=2, meter=meter)
                got = figures.setdefault(side, {})
                for name, run in (("missing", gets.master_missing),
                                  ("existing", gets.master_existing)):
                    got.setdefault(name, []).append(
                        (run.rate, meter.spent[run.name]["master"] / run.requests))
                got.setdefault("thrasher", []).append(
                    (thrash.master.rate, meter.spent["master"]["master"] / thrash.master.cycles))
                print(f"round {r + 1} {side}: {gets.text()}\n{thrash.text()}", file=sys.stderr,
                      flush=True)
    rows = []
    base = {name: statistics.median(rate for rate, _ in runs)
            for name, runs in figures["plain"].items()}
    for side, got in figures.items():
        cells = []
        for name, runs in got.items():
            rate = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            cells.append(f"{fmt(rate)} ({fmt_ratio(ratio(rate, base[name]))}), "
                         f"{cpu * 1e6:.0f} µs")
        rows.append([side, *cells])
    print(markdown_table(["master", "GET missing req/s, CPU/req", "GET existing req/s, CPU/req",
                          "thrasher cycles/s, CPU/cycle"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
