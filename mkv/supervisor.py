"""A master of `-workers N`: this process forks the index's owner (a LevelDB index: the one
process that opens it, mkv/index/owner.py) and N workers serving HTTP on the same ports
(SO_REUSEPORT), and replaces any of them that a signal kills; it runs no event loop and
holds nothing itself, so forking from it is safe.

A worker killed is replaced; the others serve on. The owner killed is replaced too: meanwhile
the workers answer what needs the index with 503, and reconnect to the new owner (which
replays LevelDB's journal). A child that exits by itself with an error (a port in use, an index
held by another process) stops the whole master with status 1, as does a child killed more
than RESTARTS times in RESTART_WINDOW seconds: a supervisor above (systemd) restarts it.

SIGTERM and SIGINT stop the workers first, letting their requests in flight finish, then the
owner, which leaves the index goleveldb-clean. Each child gets SIGTERM if this process dies.
"""

import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable

RESTARTS = 10
RESTART_WINDOW = 60.0  # seconds
_PR_SET_PDEATHSIG = 1


class Supervisor:
    """The owner's and the workers' pids, and what to run in each."""

    def __init__(self, workers: int, work: Callable[[int], int],
                 own: Callable[[int], int] | None) -> None:
        self.count = workers
        self.work = work  # a worker's life, given its slot (1..N): its exit status
        self.own = own  # the owner's, told the descriptor to write a byte to once it serves
        self.workers: dict[int, int] = {}  # pid → slot; a replacement takes the same slot
        self.owner: int | None = None
        self.stopping = False
        self.restarts: deque[float] = deque(maxlen=RESTARTS)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        if self.own is not None and not self._start_owner():
            return 1
        for slot in range(1, self.count + 1):
            self._start_worker(slot)
        status = 0
        while self.workers or self.owner is not None:
            pid, code = os.wait()
            exit_code = os.waitstatus_to_exitcode(code)
            role = "the index's owner" if pid == self.owner else f"worker {pid}"
            slot = self.workers.pop(pid, 0)
            if pid == self.owner:
                self.owner = None
            if self.stopping:
                self._stop_owner_when_alone()
                continue
            if exit_code < 0 and self._may_restart():
                _say(f"{role} was killed ({signal.Signals(-exit_code).name}); starting another")
                if slot:
                    self._start_worker(slot)
                elif not self._start_owner():
                    status = 1
                    self._stop()
                continue
            _say(f"{role} exited ({exit_code}); stopping the master")
            status = 1
            self._stop()
        return status

    def _may_restart(self) -> bool:
        now = time.monotonic()
        if len(self.restarts) == RESTARTS and now - self.restarts[0] < RESTART_WINDOW:
            _say(f"{RESTARTS} children killed within {RESTART_WINDOW:g} s")
            return False
        self.restarts.append(now)
        return True

    def _start_worker(self, slot: int) -> None:
        pid = _fork()
        if pid == 0:
            os._exit(self.work(slot))
        self.workers[pid] = slot

    def _start_owner(self) -> bool:
        """Fork the owner and wait until it serves; False when it could not."""
        assert self.own is not None
        ready, told = os.pipe()
        pid = _fork()
        if pid == 0:
            os.close(ready)
            os._exit(self.own(told))
        os.close(told)
        try:
            served = os.read(ready, 1) == b"1"  # b"": it exited first
        finally:
            os.close(ready)
        if not served:
            os.waitpid(pid, 0)
            return False
        self.owner = pid
        if self.stopping:  # told to stop while this owner was starting
            self._stop_owner_when_alone()
        return True

    def _stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self.stopping = True
        for pid in self.workers:
            _kill(pid)
        self._stop_owner_when_alone()

    def _stop_owner_when_alone(self) -> None:
        """The owner goes last: workers finishing their requests still use the index."""
        if not self.workers and self.owner is not None:
            _kill(self.owner)


def _fork() -> int:
    """fork(); in the child, the default signal handlers and SIGTERM when this process dies."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the prctl took
            os._exit(1)
    return pid


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _say(text: str) -> None:
    print(f"mkv: {text}", file=sys.stderr, flush=True)
