"""The benchmarks keep working: `python -m bench --quick` runs every one of them on its own
cluster, `python -m bench.vs_go --quick` ours against Go mkv and `python -m bench.dataplane
--quick` the data path against its floors; each reports sane (non-zero) figures and leaves no
process behind. No time is asserted."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import large, redirect
from bench.common import percentile
from bench.gomkv import peer_source

ROOT = Path(__file__).resolve().parents[1]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_quick_run_reports_every_benchmark(tmp_path):
    out = tmp_path / "figures.json"
    workdir = tmp_path / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-install", "--json", str(out),
         "--dir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert processes_mentioning(str(workdir)) == []  # every volume and master stopped

    report = json.loads(out.read_text())
    assert report["failures"] == {}
    results = report["results"]
    assert "| measure" in done.stdout  # the summary table

    thrash = results["thrasher"]
    for side in ("master", "nginx"):
        assert thrash[side]["cycles"] == 300
        assert thrash[side]["cycles_per_s"] > 0
        assert thrash[side]["put_p99_ms"] >= thrash[side]["put_p50_ms"] > 0
    assert thrash["client_ceiling_req_per_s"] > 0

    if shutil.which("wrk"):
        figures = results["redirect"]
        for run in ("master missing", "nginx missing", "master existing", "nginx existing"):
            assert figures[run]["rate"] > 0 and figures[run]["requests"] > 0
            assert figures[run]["wrong"] == 0
        assert figures["missing_ratio"] > 0 and figures["existing_ratio"] > 0
    else:
        assert "wrk" in report["skipped"]["redirect"]

    sizes = results["large"]["sizes"]
    assert [s["size"] for s in sizes] == [1 << 20, 3 << 20]
    for s in sizes:
        assert s["replicas"] == 3
        assert s["put_s"] > 0 and s["get_s"] > 0 and s["direct_put_s"] > 0
        assert s["put_peak_rss_mib"] > 0

    index = results["index"]
    assert index["keys"] == 20_000 and index["pages"] == 20
    assert index["keys_per_s"] > 0 and index["nginx_keys_per_s"] > 0


@pytest.mark.skipif(peer_source() is None, reason="no Go mkv source: shared/peer/minikeyvalue "
                                                   "beside the checkout, or $MKV_GO_PEER")
def test_vs_go_quick_run_reports_both_masters(tmp_path):
    out = tmp_path / "figures.json"
    # not under tmp_path (0700): run by root, the volumes' nginx workers are nobody
    workdir = Path(tempfile.mkdtemp(prefix="mkv-vs-go-test-"))
    workdir.chmod(0o755)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.vs_go", "--quick", "--json", str(out),
             "--dir", str(workdir)],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert processes_mentioning(str(workdir)) == []  # every volume's nginx and both masters
    assert "| measure" in done.stdout  # the table

    report = json.loads(out.read_text())
    assert report["failures"] == {}
    rows = report["rows"]
    both = {"missing", "nginx 404", "existing", "thrasher",
            *(f"{what} {size}" for what in ("put", "rss") for size in (1 << 20, 3 << 20)),
            "rebuild 2000", "rebalance-3-4 2000", "rebalance-4-3 2000"}
    assert set(rows) == both | {"verify 2000", "repair 2000"}
    for name, row in rows.items():
        assert set(row["sides"]) == ({"ours", "go"} if name in both else {"ours"}), name
        for side in row["sides"].values():
            assert side["median"] > 0, name
        if name in both:
            assert row["advantage"] > 0, name


def test_dataplane_quick_run_reports_every_path(tmp_path):
    out = tmp_path / "figures.json"
    workdir = tmp_path / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "bench.dataplane", "--quick", "--json", str(out),
         "--dir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert processes_mentioning(str(workdir)) == []  # every volume and the master stopped
    assert "| path" in done.stdout  # the table

    report = json.loads(out.read_text())
    assert report["failure"] is None and report["rounds"] == 1
    assert set(report["hashing_cpu_s_per_gib"]) == {"md5", "sha256", "crc32"}
    assert all(cost > 0 for cost in report["hashing_cpu_s_per_gib"].values())
    rows = report["rows"]
    floors = {"fanout", "nginx_get", "nginx_ranged"}
    assert set(rows) == floors | {"native_put", "native_get", "s3_put", "s3_multipart",
                                  "s3_multipart_4", "s3_get", "s3_ranged", "s3_copy",
                                  "s3_part_copy"}
    for name, row in rows.items():
        assert row["mb_per_s"] > 0, name
        assert 0 < row["master_peak_rss_mib"] * 1.048576 < 100, name  # MB
        assert set(row["ratios"]) == set(row["floors"]), name
        assert all(r > 0 for r in row["ratios"].values()), name
        assert (name in floors) == (not row["floors"]), name
    assert rows["s3_ranged"]["floors"] == ["s3_get", "nginx_ranged"]
    assert len(rows["fanout"]["rounds"]) == 6  # a floor beside each of the six writes
    for name in ("native_put", "s3_put", "s3_multipart", "s3_copy"):  # the master did the work
        assert rows[name]["master_cpu_s_per_gib"] > 0, name
        assert rows[name]["nginx_cpu_s_per_gib"] > 0, name


def test_wrk_missing_is_reported_not_crashed(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    try:
        redirect.find_wrk(install=False)
    except redirect.WrkMissing as e:
        assert "apt-get install -y wrk" in str(e)
    else:
        raise AssertionError("find_wrk found a wrk that is not there")


def test_wrk_output_is_read():
    out = """Running 1s test @ http://127.0.0.1:3000/x
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.19ms  300.00us   9.00ms   90.00%
  176370 requests in 2.00s, 20.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
  Non-2xx or 3xx responses: 176370
Requests/sec:  88185.00
Transfer/sec:     10.00MB
"""
    run = redirect.parse_wrk(out, redirect.WrkRun("m", "http://x/", 404))
    assert (run.requests, run.seconds, run.rate) == (176370, 2.0, 88185.0)
    assert run.wrong == 0 and run.latency_avg == "1.19ms"
    assert "read 3" in run.socket_errors
    ok = redirect.parse_wrk(out, redirect.WrkRun("m", "http://x/", 302))
    assert ok.wrong == 176370


def test_large_value_is_checked_byte_for_byte():
    value = large.Value(3 * large.BLOCK + 123, seed=1)
    whole = b"".join(value.chunks())
    assert len(whole) == value.size
    block = large.BLOCK
    for offset, n in ((0, 5), (3, 20), (block - 4, 16), (5, 2 * block), (0, value.size)):
        assert value.expected(offset, n) == whole[offset:offset + n]
    good = large.Checker(value)
    for i in range(0, value.size, 65536):
        good(whole[i:i + 65536])
    good.verify("good")
    bad = large.Checker(value)
    bad(whole[:large.BLOCK + 9] + b"x" + whole[large.BLOCK + 10:])
    try:
        bad.verify("bad")
    except large.BenchFailure as e:
        assert f"offset {large.BLOCK + 9:,} (1 MiB block 1)" in str(e)
    else:
        raise AssertionError("a wrong byte went unnoticed")


def test_percentile():
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_thrasher_fails_loudly_on_a_wrong_answer(volumes):
    # an nginx volume posing as the master answers a GET with 200, not the 302 a master gives
    vol = volumes[0].addr
    done = subprocess.run(
        [sys.executable, "-m", "bench.thrasher", "--master", vol, "--volume", vol,
         "--count", "20", "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "thrasher FAILED" in done.stderr and "expected 302, got 200" in done.stderr


def test_fsspec_read_quick_run_reports_every_road():
    done = subprocess.run([sys.executable, "-m", "bench.fsspec_read", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    rows = [line for line in done.stdout.splitlines()
            if line.startswith("| ") and "MB/s" not in line]
    assert len(rows) == 6, done.stdout
    for row in rows:
        rate = float(row.split("|")[3].replace(",", ""))
        assert rate > 0, row


def test_lifecycle_quick_run_expires_exactly_the_rules_keys(tmp_path):
    out = tmp_path / "figures.json"
    workdir = tmp_path / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "bench.lifecycle", "--quick", "--json", str(out),
         "--dir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert processes_mentioning(str(workdir)) == []
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert checks["logs_not_404"] == 0 and checks["others_not_302"] == 0
    assert checks["files_after"] == report["files"] - report["logs_keys"] * report["replicas"]
    for row in report["rows"]:
        assert row["seconds"] > 0 and row["command_cpu_s"] > 0, row["name"]
