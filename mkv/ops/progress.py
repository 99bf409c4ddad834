"""Running an offline operation (rebuild, rebalance, verify, repair): bounded concurrency,
a progress line on stderr, one stdout line per problem, a summary, and the exit status.

`run_offline` opens the index itself; a held LevelDB lock raises IndexLocked, which the CLI
turns into a clear message and exit 1. Over a shared index (PostgreSQL) the masters may be
serving: every command then changes a key only holding its lock, its record read again.
"""

import asyncio
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TextIO, TypeVar

import uvloop

from mkv.admin.endpoint import admin_handler
from mkv.config import Config
from mkv.http.server import HTTPServer
from mkv.index import Index, open_index
from mkv.metrics import Family, counter, gauge
from mkv.ops.runs import note_run
from mkv.tasks import Tasks
from mkv.volumes.replicas import Volumes

T = TypeVar("T")

TTY_REDRAW_SECONDS = 0.2
PLAIN_LINE_SECONDS = 10.0  # a log file gets a line this often, not a line per key


async def for_each(items: AsyncIterator[T], work: Callable[[T], Awaitable[None]],
                   concurrency: int) -> None:
    """`work(item)` for every item, at most `concurrency` at a time, items taken in order.

    The workers share one iterator, so a huge index is read as it is worked through; one
    at a time, as an async generator may not be resumed while it waits.
    """
    turn = asyncio.Lock()
    done = object()

    async def worker() -> None:
        while True:
            async with turn:
                item = await anext(items, done)
            if item is done:
                return
            await work(item)  # type: ignore[arg-type]

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


def shown(key: bytes) -> str:
    """A key for a report line: its UTF-8 text, other bytes escaped."""
    return key.decode("utf-8", "backslashreplace")


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counters of one operation, shown while it runs and summed up at its end.

    `done` counts the unit of work (`unit`, e.g. keys); `total` (when known) or `fraction`
    (an estimate, e.g. for a volume walk) gives the ETA. `counts` holds the outcomes
    (moved, fixed, failed...). A problem makes the exit status non-zero.
    """

    def __init__(self, command: str, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.command = command
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.err.isatty()
        self.counts: Counter[str] = Counter()
        self.figures: dict = {}  # noted with the run (e.g. verify's keys per volume)
        self.problems = 0
        self.started = time.monotonic()
        self.phase(command, "keys")
        self._drawn = False
        self._tasks = Tasks()  # the ticker

    def phase(self, what: str, unit: str, total: int | None = None,
              fraction: Callable[[], float] | None = None) -> None:
        """Start counting a new stretch of work (a command may have two: keys, then files)."""
        self.what, self.unit, self.total, self.fraction = what, unit, total, fraction
        self.done = 0
        self.phase_started = time.monotonic()

    def families(self) -> list[Family]:
        """The progress as metrics, for `-admin_port`."""
        command = (("command", self.command),)
        fraction = self.fraction() if self.fraction is not None else (
            self.done / self.total if self.total else 0.0)
        return [
            gauge("mkv_offline_done", "Units of the phase done (its unit in the label).",
                  [((*command, ("phase", self.what), ("unit", self.unit)), self.done)]),
            gauge("mkv_offline_fraction", "The share of the phase done, as estimated.",
                  [(command, fraction)]),
            counter("mkv_offline_outcomes_total", "Outcomes so far, by name.",
                    {(self.command, name): n for name, n in self.counts.items()},
                    ("command", "outcome")),
            counter("mkv_offline_problems_total", "Problems so far (non-zero: the exit will "
                    "be).", {(self.command,): self.problems}, ("command",)),
        ]

    def advance(self, n: int = 1) -> None:
        self.done += n

    def count(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n

    def note(self, line: str) -> None:
        """One line on stdout (the operator's record of what happened), above the bar."""
        self._clear()
        print(line, file=self.out, flush=True)

    def problem(self, outcome: str, line: str) -> None:
        """Something is wrong or failed: counted under `outcome`, reported, exit non-zero."""
        self.problems += 1
        self.count(outcome)
        self.note(f"{outcome}: {line}")

    # --- display ---

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.phase_started, 1e-9)
        done = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        parts = [f"{self.what}: {done} {self.unit}", f"{self.done / elapsed:,.0f} {self.unit}/s"]
        if self.fraction is not None:
            fraction = self.fraction()
        else:
            fraction = self.done / self.total if self.total else 0.0
        if 0 < fraction < 1:
            parts.insert(1, f"{fraction:.0%}")
            parts.append(f"ETA {_eta(elapsed * (1 - fraction) / fraction)}")
        parts += [f"{name} {n:,}" for name, n in sorted(self.counts.items())]
        return ", ".join(parts)

    def _clear(self) -> None:
        if self._drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._drawn = False

    async def _tick(self) -> None:
        interval = TTY_REDRAW_SECONDS if self.tty else PLAIN_LINE_SECONDS
        while True:
            await asyncio.sleep(interval)
            if self.tty:  # cut to the terminal's width: a wrapped line would not redraw
                width = shutil.get_terminal_size().columns - 1
                self.err.write("\r\x1b[K" + self.line()[:width])
                self._drawn = True
            else:
                self.err.write(self.line() + "\n")
            self.err.flush()

    def start(self) -> None:
        self._tasks.start(self._tick())

    async def stop(self) -> None:
        await self._tasks.close()
        self._clear()

    def summary(self) -> str:
        outcomes = ", ".join(f"{name} {n:,}" for name, n in sorted(self.counts.items()))
        seconds = time.monotonic() - self.started
        state = "failed" if self.problems else "ok"
        return f"{self.command} {state}: {outcomes or 'nothing to do'}; {seconds:.2f}s"


def run_offline(config: Config,
                operation: Callable[[Config, Index, Volumes, Progress], Awaitable[None]],
                command: str) -> int:
    """Open the index, run `operation` with a progress display; 0 when nothing went wrong."""
    progress = Progress(command)
    started = time.time()

    async def main() -> None:
        # SIGTERM stops the run as Ctrl-C does, so the index is still closed cleanly
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        admin = None
        if config.admin_port:
            admin = HTTPServer(admin_handler(progress.families, None))
            await admin.start(None, config.admin_port)
        index = await open_index(config.db)
        volumes = Volumes.for_config(config)
        progress.start()
        try:
            await operation(config, index, volumes, progress)
        finally:
            await progress.stop()
            await volumes.close()
            await index.close()
            if admin is not None:
                await admin.shutdown(grace=1.0)

    try:
        uvloop.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        # a key cut off mid-copy keeps its record; at worst an orphan file is left behind
        summary = f"{progress.summary()} (interrupted)"
        print(summary, file=progress.out, flush=True)
        note_run(config.db, command, started, 130, summary)
        return 130
    summary = progress.summary()
    print(summary, file=progress.out, flush=True)
    status = 1 if progress.problems else 0
    note_run(config.db, command, started, status, summary, progress.figures)
    return status
