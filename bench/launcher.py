"""A local cluster for benchmarks: nginx volumes and masters on free loopback ports in a work dir.

Every process it starts is stopped by `LocalCluster.stop()`: on leaving the `with` block, on an
exception, and on SIGTERM or Ctrl-C once `stop_on_sigterm()` was called. Each process's
output goes to a log file in the work dir; a process that dies while starting shows its tail.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_clusters: list["LocalCluster"] = []  # started and not yet stopped
_helpers: set[subprocess.Popen] = set()  # other children (wrk) while they run


def track(popen: subprocess.Popen) -> None:
    """Have a helper process killed if we are terminated while it runs."""
    _helpers.add(popen)


def untrack(popen: subprocess.Popen) -> None:
    _helpers.discard(popen)


def stop_on_sigterm() -> None:
    """On SIGTERM or SIGINT, stop every cluster and helper process, then exit 128 + signal.

    Done in the handler itself rather than by raising SystemExit: raised inside an event loop
    callback, uvloop would hand the exception to a protocol as a lost connection and go on.
    """
    def handler(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)
        for popen in list(_helpers):
            popen.kill()
        for cluster in list(_clusters):
            cluster.stop()
        print(f"terminated by signal {signum}: every process started was stopped",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Proc:
    """A started server: its port, its Popen, its log."""

    def __init__(self, name: str, port: int, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.port, self.popen, self.log = name, port, popen, log

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before "
                                   f"listening on {self.port}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"{self.name}: nothing listening on {self.port} after {timeout}s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def status_kib(self, field: str) -> int:
        """A memory figure (VmHWM, VmRSS) of the process from /proc, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False


def mkv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mkv", *args]


class LocalCluster:
    """`volumes` nginx volumes and a master on them (default flags) in a work dir."""

    def __init__(self, workdir: Path | None = None, volumes: int = 3,
                 master_flags: tuple[str, ...] = (), with_master: bool = True) -> None:
        self.own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="mkv-bench-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.volume_count = volumes
        self.master_flags = master_flags
        self.with_master = with_master
        self.procs: list[Proc] = []
        self.volumes: list[Proc] = []
        self.master: Proc | None = None
        self.masters = 0

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, port: int, cmd: list[str]) -> Proc:
        log = self.dir / f"{name}.log"
        # no $MKV_SECRET: the yardstick writes to a volume directly, as any client would
        env = {k: v for k, v in os.environ.items() if k != "MKV_SECRET"}
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT,
                                     env={**env, "PYTHONUNBUFFERED": "1"})
        proc = Proc(name, port, popen, log)
        self.procs.append(proc)
        proc.wait_listening()
        return proc

    def start(self) -> None:
        _clusters.append(self)
        for i in range(self.volume_count):
            port = free_port()
            self.volumes.append(self._spawn(
                f"volume{i}", port, mkv_command("volume", str(self.dir / f"volume{i}"),
                                                "-port", str(port))))
        if self.with_master:
            self.master = self.start_master()

    def start_master(self, db: Path | None = None, *flags: str) -> Proc:
        """Another master on the same volumes (a fresh index unless `db` is given)."""
        self.masters += 1
        db = db or self.dir / f"index{self.masters}"
        port = free_port()
        cmd = mkv_command("-db", str(db), "-volumes", ",".join(v.addr for v in self.volumes),
                          "-port", str(port), *(flags or self.master_flags), "server")
        return self._spawn(f"master{self.masters}", port, cmd)

    def stop_proc(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self) -> None:
        """Stop every process (masters first, so none writes to a stopped volume); drop the dir."""
        for proc in sorted(self.procs, key=lambda p: not p.name.startswith("master")):
            proc.stop()
        self.procs.clear()
        if self in _clusters:
            _clusters.remove(self)
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
