"""The fuzz harnesses keep running clean: each of fuzz/ for a few seconds under libFuzzer
(`python -m fuzz NAME --seconds N`, as CI runs them), exiting 0 with no crash, some
executions and some coverage. Longer runs, and what they found, are in fuzz/README.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import HARNESSES
from fuzz.__main__ import Outcome, read_report

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 7  # each: six harnesses stay under a minute with their start-up


@pytest.mark.parametrize("name", list(HARNESSES))
def test_harness_runs_clean(name, tmp_path):
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "fuzz", name, "--seconds", str(SECONDS), "--json", str(figures),
         "--artifacts", str(tmp_path / "crashes")],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120)
    assert done.returncode == 0, done.stdout + done.stderr
    (outcome,) = json.loads(figures.read_text())
    assert outcome["crashes"] == [] and outcome["error"] == "", done.stdout
    assert outcome["executions"] > 0 and outcome["cov"] > 0, done.stdout
    assert not any((tmp_path / "crashes").iterdir())


def test_list_names_every_harness():
    done = subprocess.run([sys.executable, "-m", "fuzz", "--list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(HARNESSES)


def test_report_is_read_from_libfuzzer_output():
    log = ["#2\tINITED cov: 21 ft: 21 corp: 1/1b exec/s: 0 rss: 42Mb\n",
           "#551505\tDONE   cov: 43 ft: 45 corp: 14/37b lim: 4096 exec/s: 137876 rss: 42Mb\n",
           "stat::number_of_executed_units: 551506\n",
           " === Uncaught Python exception: ===\n", "KeyError: 'x'\n",
           "==8406== ERROR: libFuzzer: fuzz target exited\n", "SUMMARY: libFuzzer\n"]
    outcome = Outcome("x", 1.0, 77)
    read_report(outcome, log)
    assert (outcome.executions, outcome.cov, outcome.ft, outcome.corpus) == (551506, 43, 45, 14)
    assert outcome.error.splitlines() == [
        "=== Uncaught Python exception: ===", "KeyError: 'x'",
        "==8406== ERROR: libFuzzer: fuzz target exited"]
    assert not outcome.ok
