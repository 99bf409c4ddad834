"""Index engines compared in one run: GET of a missing and of an existing key (wrk) and the
thrasher, against a master over LevelDB with one process and with `-workers 2` (the index's
owner and two workers), over PostgreSQL with one worker and with two, on the same three volumes
and a throwaway PostgreSQL server (bench/postgres.py) on the same machine.

    python -m bench.engines [--duration 5] [--count 4000]
"""

import argparse
import sys

from bench import redirect, thrasher
from bench.cluster import LocalCluster
from bench.common import fmt, fmt_ratio, markdown_table, ratio
from bench.postgres import PostgresServer, find_bindir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--count", type=int, default=4000, help="thrasher cycles per engine")
    args = parser.parse_args(argv)
    bindir = find_bindir()
    if bindir is None:
        print("engines: PostgreSQL is not installed (apt-get install postgresql)",
              file=sys.stderr)
        return 2
    database = PostgresServer(bindir)
    rows = []
    try:
        database.start()
        with LocalCluster(with_master=False) as cluster:
            engines = {"LevelDB": (None, ()), "LevelDB, 2 workers": (None, ("-workers", "2")),
                       "PostgreSQL, 1 worker": (database.new_database(), ()),
                       "PostgreSQL, 2 workers": (database.new_database(), ("-workers", "2"))}
            baseline: dict[str, float] = {}
            for name, (url, flags) in engines.items():
                spool = ("-s3_spool", str(cluster.dir / f"s3-{len(rows)}")) if url else ()
                with cluster.own_master(url, *cluster.master_flags, *flags, *spool) as master:
                    target = cluster.target(master)
                    gets = redirect.run(target, args.duration, install=False)
                    thrash = thrasher.run(target, count=args.count)
                figures = {"missing": gets.master_missing.rate,
                           "existing": gets.master_existing.rate, "thrasher": thrash.master.rate}
                baseline = baseline or figures
                rows.append([name, *(f"{fmt(v)} ({fmt_ratio(ratio(v, baseline[k]))})"
                                     for k, v in figures.items())])
                print(f"{name}: {gets.text()}\n{thrash.text()}", file=sys.stderr, flush=True)
    finally:
        try:
            database.stop()
        finally:
            database.remove()
    print(markdown_table(["index", "GET missing req/s", "GET existing req/s",
                          "thrasher cycles/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
