"""`python -m fuzz NAME --seconds N`: run a harness for N seconds under libFuzzer, in a process of
its own (libFuzzer exits when it is done), and print its executions, crashes and coverage.

    python -m fuzz --list                  the harnesses
    python -m fuzz sigv4 --seconds 60      one
    python -m fuzz all --seconds 30        each in turn
    python -m fuzz sigv4 crash-1234…       run saved inputs once (a crash, to reproduce it)

Exits 1 if any harness crashed (an exception it does not allow, a broken invariant, a hang
past --timeout), leaving the crashing input in the artifacts directory it names.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuzz import HARNESSES

ROOT = Path(__file__).resolve().parents[1]
CRASH_PREFIXES = ("crash-", "timeout-", "oom-", "leak-")  # slow-unit- files are not crashes
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)")


@dataclass
class Outcome:
    """What one run did, from libFuzzer's own report (its last status line, its final stats)."""

    name: str
    seconds: float
    exit_code: int
    executions: int = 0
    cov: int = 0  # coverage points (edges, plus comparisons atheris traces) reached
    ft: int = 0  # features: finer-grained coverage libFuzzer keeps inputs for
    corpus: int = 0
    crashes: list[str] = field(default_factory=list)  # the inputs that crashed it
    error: str = ""  # the uncaught exception, as the harness printed it

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.crashes and self.executions > 0

    def line(self) -> str:
        return (f"{self.name:<11} {self.executions:>12,} executions in {self.seconds:5.0f} s  "
                f"crashes {len(self.crashes)}  cov {self.cov:,}  ft {self.ft:,}  "
                f"corpus {self.corpus:,}" + ("" if self.exit_code == 0
                                              else f"  exit {self.exit_code}"))


def read_report(outcome: Outcome, log: list[str]) -> None:
    error: list[str] = []
    in_error = False  # from atheris's "Uncaught Python exception" to libFuzzer's ERROR line
    for line in log:
        if m := _STATUS.match(line):
            outcome.executions = int(m[1])
            outcome.cov, outcome.ft, outcome.corpus = int(m[2]), int(m[3]), int(m[4])
        elif m := _EXECUTED.match(line):
            outcome.executions = int(m[1])
        in_error = in_error or "=== Uncaught Python exception: ===" in line
        if in_error or "ERROR: libFuzzer: timeout" in line:
            error.append(line.rstrip("\n"))
            in_error = in_error and "ERROR: libFuzzer" not in line
    outcome.error = "\n".join(error).strip()


def fuzz(name: str, seconds: float, artifacts: Path, timeout: int = 10,
         verbose: bool = False, inputs: tuple[str, ...] = ()) -> Outcome:
    """Run harness `name` for `seconds` (or over `inputs` once each) in a child process."""
    with tempfile.TemporaryDirectory(prefix=f"mkv-fuzz-{name}-") as work:
        corpus = Path(work) / "corpus"  # the harness writes its seeds here, tokens beside it
        corpus.mkdir()
        command = [sys.executable, "-m", f"fuzz.{name}",
                   *(inputs or (str(corpus), f"-max_total_time={max(1, round(seconds))}")),
                   "-print_final_stats=1", f"-timeout={timeout}",
                   f"-artifact_prefix={artifacts}/"]
        before = set(artifacts.iterdir())
        started = time.monotonic()
        log: list[str] = []
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace") as child:
            for line in child.stdout:  # type: ignore[union-attr]
                log.append(line)
                if verbose:
                    sys.stderr.write(line)
        outcome = Outcome(name, time.monotonic() - started, child.returncode)
    read_report(outcome, log)
    outcome.crashes = sorted(str(p) for p in set(artifacts.iterdir()) - before
                             if p.name.startswith(CRASH_PREFIXES))
    if outcome.exit_code != 0 and not verbose and not outcome.error:
        outcome.error = "".join(log[-30:]).strip()
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="a harness (see --list), or all")
    parser.add_argument("inputs", nargs="*", help="inputs to run once instead of fuzzing")
    parser.add_argument("--list", action="store_true", help="list the harnesses")
    parser.add_argument("--seconds", type=float, default=60, help="how long each runs")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may take before it counts as a hang")
    parser.add_argument("--artifacts", type=Path,
                        help="where crashing inputs are written (default: a new temp dir, "
                        "removed when nothing crashed)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("-v", "--verbose", action="store_true", help="show libFuzzer's output")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        for name, what in HARNESSES.items():
            print(f"{name:<11} {what}")
        return 0
    names = list(HARNESSES) if args.name == "all" else [args.name]
    if any(name not in HARNESSES for name in names):
        parser.error(f"no harness {args.name!r}: one of {', '.join(HARNESSES)}, or all")
    if args.inputs and len(names) > 1:
        parser.error("inputs are run by one harness")
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="mkv-fuzz-crashes-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for name in names:
        outcome = fuzz(name, args.seconds, artifacts, args.timeout, args.verbose,
                       tuple(str(Path(i).resolve()) for i in args.inputs))  # run from ROOT
        outcomes.append(outcome)
        print(outcome.line(), flush=True)
        if outcome.error:
            print("    " + outcome.error.replace("\n", "\n    "), flush=True)
        for crash in outcome.crashes:
            print(f"    crashing input: {crash}  (rerun: python -m fuzz {name} {crash})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    if args.artifacts is None and not any(artifacts.iterdir()):
        shutil.rmtree(artifacts)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
