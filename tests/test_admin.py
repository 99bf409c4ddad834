"""The admin listener (-admin_port): /metrics parsed as Prometheus parses it, the status page
in a real headless browser (Debian's chromium), and an offline command's progress."""

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cluster import free_port, mkv_command, wait_listening
from conftest import request
from prometheus_client.parser import text_string_to_metric_families

from mkv.metrics import Histogram, RequestMetrics, counter, render

SCREENSHOT_DIR = os.environ.get("MKV_SCREENSHOTS")  # set to keep the README's screenshots


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_rendering_is_prometheus_text() -> None:
    requests = RequestMetrics()
    for status, seconds in ((302, 0.0003), (302, 0.002), (404, 40.0)):
        requests.observe(b"GET", status, seconds, 0, 120)
    families = [*requests.families(),
                counter("odd_total", 'a "quoted"\nhelp', {'a"b\\c': 2}, ("label",))]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in
               text_string_to_metric_families(render(families).decode()) for s in f.samples}
    assert samples[("mkv_http_requests_total", (("method", "GET"), ("status", "302")))] == 2
    bucket = "mkv_http_request_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.0005"), ("method", "GET")))] == 1
    assert samples[(bucket, (("le", "30.0"), ("method", "GET")))] == 2
    assert samples[(bucket, (("le", "+Inf"), ("method", "GET")))] == 3
    assert samples[("mkv_http_request_duration_seconds_count", (("method", "GET"),))] == 3
    assert samples[("mkv_http_sent_bytes_total", ())] == 360
    assert samples[("odd_total", (("label", 'a"b\\c'),))] == 2
    histogram = Histogram()
    histogram.observe("x", 0.0001)  # on a bucket's bound: counted in it, as le says
    assert histogram.counts["x"][0] == 1


def test_metrics_count_what_the_master_did(make_volumes, make_master):
    vols = make_volumes(3)
    admin = free_port()
    master = make_master("-admin_port", str(admin), volumes=vols)
    for i in range(5):
        assert master.put(f"/m/{i}".encode(), b"value").status == 201
    assert master.put(b"/m/0", b"again").status == 403
    for _ in range(3):
        assert master.call("GET", b"/m/1").status == 302
    assert master.call("GET", b"/m/missing").status == 404
    assert master.put(b"/metrics", b"a key like any other").status == 201  # not shadowed
    assert master.call("GET", b"/metrics").status == 302
    s3 = request(master.port, "PUT", "/bucket/obj", b"s3 value",
                 headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    assert s3.status == 200

    samples = scrape(admin)
    assert value(samples, "mkv_http_requests_total", method="PUT", status="201") == 6
    assert value(samples, "mkv_http_requests_total", method="PUT", status="403") == 1
    assert value(samples, "mkv_http_requests_total", method="GET", status="302") == 4
    assert value(samples, "mkv_http_requests_total", method="GET", status="404") == 1
    assert value(samples, "mkv_http_request_duration_seconds_count", method="GET") == 5
    assert value(samples, "mkv_http_received_bytes_total") >= 5 * 5 + 8
    assert value(samples, "mkv_head_checks_total", outcome="found") == 4
    assert value(samples, "mkv_s3_requests_total", operation="PutObject", code="") == 1
    assert value(samples, "mkv_index_info", engine="leveldb") == 1
    assert all(value(samples, "mkv_volume_up", volume=v.addr) == 1 for v in vols)
    assert value(samples, "mkv_keys_busy") == 0

    assert vols[2].stop() == 0
    wait_for(lambda: value(scrape(admin), "mkv_volume_up", volume=vols[2].addr) == 0)
    assert request(admin, "GET", "/nothing-here").status == 404


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", f"--user-data-dir={out}/profile", *args, url],
                          capture_output=True, timeout=120)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_the_status_page_in_a_browser(make_volumes, make_master, tmp_path):
    vols = make_volumes(3)
    admin = free_port()
    master = make_master("-admin_port", str(admin), volumes=vols)
    for i in range(20):
        assert master.put(f"/page/{i}".encode(), b"v").status == 201
    assert vols[1].stop() == 0
    wait_for(lambda: value(scrape(admin), "mkv_volume_up", volume=vols[1].addr) == 0)
    url = f"http://127.0.0.1:{admin}/"

    dom = browse(url, tmp_path, "--dump-dom").stdout.decode()
    assert "mkv master" in dom
    for vol, state in ((vols[0], "up"), (vols[1], "down"), (vols[2], "up")):
        row = dom[dom.index(vol.addr):].split("</tr>")[0]
        assert f'class="{state}"' in row, row
    assert "1 of 3" not in dom and "2 of 3" in dom  # volumes up
    assert "<td>PUT</td><td>201</td><td>20</td>" in dom

    shots = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    for name, size in (("status-laptop.png", "1100,900"), ("status-phone.png", "390,844")):
        done = browse(url, tmp_path, f"--screenshot={shots / name}", f"--window-size={size}")
        assert done.returncode == 0, done.stderr.decode()[-500:]
        assert (shots / name).stat().st_size > 10_000


def test_an_offline_command_serves_its_progress_and_notes_its_run(make_volumes, make_master):
    vols = make_volumes(2)
    master = make_master("-replicas", "1", "-subvolumes", "1", volumes=vols)
    for i in range(10):
        assert master.put(f"/off/{i}".encode(), b"v").status == 201
    master.process.stop()
    admin = free_port()
    group = os.getpgid(int((vols[1].dir / ".mkv" / "nginx.pid").read_text()))
    os.killpg(group, signal.SIGSTOP)  # the walk waits on this volume: time to scrape
    try:
        proc = subprocess.Popen(
            mkv_command("-db", str(master.db), "-volumes", ",".join(v.addr for v in vols),
                        "-replicas", "1", "-subvolumes", "1", "-admin_port", str(admin),
                        "verify"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_listening(admin, proc)
        samples = scrape(admin)
        assert any(name == "mkv_offline_done" and dict(labels)["command"] == "verify"
                   for name, labels in samples)
    finally:
        os.killpg(group, signal.SIGCONT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    runs = Path(f"{master.db}.runs").read_text().splitlines()
    assert len(runs) == 1 and '"command": "verify"' in runs[0] and '"exit": 0' in runs[0]
