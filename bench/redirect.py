"""Redirect throughput with wrk: GET of a missing and of an existing key on the master, and of a
missing and of an existing file straight from one nginx volume, in the same run.

The master's existing-key GET includes its HEAD check of the replica (the default -voltimeout).
A wrong answer (anything but 404 for a missing key, 302 for an existing one) fails the run.

    python -m bench.redirect [--duration 10] [--threads 2] [--connections 100]
"""

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a file: python bench/redirect.py
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from bench.cluster import Target, add_cluster_args, target_from_args, track, untrack
from bench.common import (
    GO,
    BenchFailure,
    Meter,
    fmt,
    fmt_ratio,
    ratio,
    run_id,
    unmetered,
)

INSTALL_HINT = "wrk is not installed: install it with `apt-get install -y wrk` (Debian package wrk)"


class WrkMissing(Exception):
    pass


def find_wrk(install: bool = True) -> str:
    """The wrk binary; installs the Debian package when missing and allowed (root + apt-get)."""
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env,
                            stdout=subprocess.DEVNULL).returncode == 0
        if not ok:
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env,
                           stdout=subprocess.DEVNULL)
        wrk = shutil.which("wrk")
        if wrk:
            return wrk
    raise WrkMissing(INSTALL_HINT)


@dataclass
class WrkRun:
    name: str
    url: str
    expect: int
    requests: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    non_2xx_3xx: int = 0
    socket_errors: str = ""
    latency_avg: str = ""

    @property
    def wrong(self) -> int:
        """Answers other than the expected status (wrk counts only non-2xx/3xx)."""
        if self.expect >= 400:
            return self.requests - self.non_2xx_3xx
        return self.non_2xx_3xx


def parse_wrk(out: str, run: WrkRun) -> WrkRun:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m or not rate:
        raise BenchFailure(f"cannot read wrk's output for {run.name}:\n{out}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}.get(m.group(3), 1.0)
    run.requests, run.seconds = int(m.group(1)), float(m.group(2)) * unit
    run.rate = float(rate.group(1))
    non = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    run.non_2xx_3xx = int(non.group(1)) if non else 0
    errors = re.search(r"Socket errors:\s*(.*)", out)
    run.socket_errors = errors.group(1).strip() if errors else ""
    lat = re.search(r"Latency\s+(\S+)", out)
    run.latency_avg = lat.group(1) if lat else ""
    return run


def wrk(binary: str, run: WrkRun, duration: float, threads: int, connections: int) -> WrkRun:
    cmd = [binary, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", run.url]
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    track(popen)
    try:
        out, err = popen.communicate(timeout=duration + 60)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    finally:
        untrack(popen)
    if popen.returncode != 0:
        raise BenchFailure(f"{' '.join(cmd)} exited {popen.returncode}: {err}")
    return parse_wrk(out, run)


def _call(addr: str, method: str, path: str, body: bytes | None = None):
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Location"), resp.read()
    finally:
        conn.close()


@dataclass
class Report:
    master_missing: WrkRun
    nginx_missing: WrkRun
    master_existing: WrkRun
    nginx_existing: WrkRun
    settings: str

    def runs(self) -> list[WrkRun]:
        return [self.master_missing, self.nginx_missing, self.master_existing,
                self.nginx_existing]

    def as_dict(self) -> dict:
        return {"settings": self.settings,
                **{r.name: {**asdict(r), "wrong": r.wrong} for r in self.runs()},
                "missing_ratio": ratio(self.master_missing.rate, self.nginx_missing.rate),
                "existing_ratio": ratio(self.master_existing.rate, self.nginx_existing.rate),
                "existing_vs_nginx_404": ratio(self.master_existing.rate,
                                               self.nginx_missing.rate)}

    def text(self) -> str:
        lines = [f"redirect: {self.settings}"]
        for r in self.runs():
            extra = f"  socket errors: {r.socket_errors}" if r.socket_errors else ""
            lines.append(f"  {r.name:16} {fmt(r.rate):>9} req/s  latency avg {r.latency_avg:>8}"
                         f"  {r.url}{extra}")
        mm, nm = self.master_missing.rate, self.nginx_missing.rate
        me, ne = self.master_existing.rate, self.nginx_existing.rate
        go_m, go_e = GO["missing_get"], GO["existing_get"]
        lines.append(f"  missing key:  mkv/nginx 404 {fmt_ratio(ratio(mm, nm))}   "
                     f"mkv/Go mkv ({go_m:,}) {fmt_ratio(ratio(mm, go_m))}")
        lines.append(f"  existing key: mkv/nginx 200 {fmt_ratio(ratio(me, ne))}   "
                     f"mkv/nginx 404 {fmt_ratio(ratio(me, nm))}   "
                     f"mkv/Go mkv ({go_e:,}) {fmt_ratio(ratio(me, go_e))}")
        return "\n".join(lines)


def run(target: Target, duration: float = 10, threads: int = 2, connections: int = 100,
        install: bool = True, meter: Meter = unmetered) -> Report:
    """The four wrk runs; `meter` wraps each, named as its WrkRun."""
    binary = find_wrk(install)
    tag = run_id()
    key = f"/bench/redirect-{tag}"
    status, _, body = _call(target.master, "PUT", key, b"a small value for the redirect bench")
    if status != 201:
        raise BenchFailure(f"PUT {key}: {status} {body[:200]!r}")
    try:
        status, location, _ = _call(target.master, "GET", key)
        if status != 302 or not location:
            raise BenchFailure(f"GET {key}: {status}, expected 302 with a Location")
        where = urlsplit(location)
        missing_file = f"/bench/redirect-missing-{tag}"
        if _call(where.netloc, "GET", where.path)[0] != 200:
            raise BenchFailure(f"GET {location}: expected 200")
        if _call(where.netloc, "GET", missing_file)[0] != 404:
            raise BenchFailure(f"GET {where.netloc}{missing_file}: expected 404")
        if _call(target.master, "GET", f"/bench/missing-{tag}")[0] != 404:
            raise BenchFailure(f"GET /bench/missing-{tag}: expected 404")
        runs = [
            WrkRun("master missing", f"http://{target.master}/bench/missing-{tag}", 404),
            WrkRun("nginx missing", f"http://{where.netloc}{missing_file}", 404),
            WrkRun("master existing", f"http://{target.master}{key}", 302),
            WrkRun("nginx existing", location, 200),
        ]
        for r in runs:
            with meter(r.name):
                wrk(binary, r, duration, threads, connections)
            if r.wrong:
                raise BenchFailure(f"{r.name}: {r.wrong} of {r.requests} answers were not "
                                   f"{r.expect} ({r.url})")
    finally:
        _call(target.master, "DELETE", key)
    settings = f"wrk -t{threads} -c{connections} -d{duration:g}s"
    return Report(*runs, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install wrk when it is missing")
    add_cluster_args(parser)
    args = parser.parse_args(argv)
    try:
        find_wrk(not args.no_install)
    except WrkMissing as e:
        print(f"redirect: {e}", file=sys.stderr)
        return 2
    with target_from_args(args) as target:
        try:
            report = run(target, args.duration, args.threads, args.connections, install=False)
        except BenchFailure as e:
            print(f"redirect FAILED: {e}", file=sys.stderr)
            return 1
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
