"""The cluster a benchmark runs on: a local one of nginx volumes and masters on free loopback
ports in a work dir (`LocalCluster`), or a running one named by the flags (`target_from_args`).

Every process a local cluster starts is stopped by `LocalCluster.stop()`: on leaving the `with`
block, on an exception, and on SIGTERM or Ctrl-C (its start installs `stop_on_sigterm()`). Each
process's output goes to a log file in the work dir; a process that dies while starting shows
its tail. The volumes are `mkv volume`, or another launcher such as Go mkv's `volume` script
(run in a process group of its own, so that stopping it stops the nginx it started too).
"""

import argparse
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [0] state, [1] ppid, [2] process group,
    [11] utime, [12] stime (clock ticks, all threads)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat_fields) of every process, leaving out those that exit meanwhile."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), stat_fields(int(entry.name))
            except OSError:
                continue


def wait_listening(port: int, popen: subprocess.Popen, timeout: float = 15.0,
                   name: str = "process") -> None:
    """Until something listens on `port`; RuntimeError when `popen` exits first, TimeoutError
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode} before listening on "
                               f"{port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{name}: nothing listening on {port} after {timeout}s")


def stop_process(popen: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """`sig`, then SIGKILL after `timeout` seconds; the exit status."""
    if popen.poll() is None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return popen.returncode


def status_kib(pid: int, field: str) -> int:
    """A memory figure (VmHWM, VmRSS) of a process from /proc, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its RSS now (Linux clear_refs 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The running (not zombie) children of a process, in pid order."""
    return sorted(child for child, fields in processes()
                  if int(fields[1]) == pid and fields[0] != "Z")


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies aside)."""
    return any(int(f[2]) == pgid and f[0] != "Z" for _, f in processes())


class Proc:
    """A started server: its port, its Popen, its log; `group` when it leads a process group
    whose every member is stopped with it."""

    def __init__(self, name: str, port: int, popen: subprocess.Popen, log: Path,
                 group: bool = False) -> None:
        self.name, self.port, self.popen, self.log = name, port, popen, log
        self.group = group

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
        try:
            wait_listening(self.port, self.popen, timeout, self.name)
        except RuntimeError as e:
            raise RuntimeError(f"{e}:\n{self.log_tail()}") from None

    def stop(self, timeout: float = 15.0) -> None:
        if self.group:
            self._stop_group(timeout)
        else:
            stop_process(self.popen, timeout)

    def _stop_group(self, timeout: float) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left of it after `timeout`."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self._group_running() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not self._group_running():
                break
        self.popen.wait()

    def _group_running(self) -> bool:
        return self.popen.poll() is None or _group_alive(self.popen.pid)

    def status_kib(self, field: str) -> int:
        return status_kib(self.pid, field)

    def reset_peak_rss(self) -> bool:
        return reset_peak_rss(self.pid)


def _open_to_nginx_workers(workdir: Path, own: bool) -> None:
    """Started by root, a launcher's nginx runs its workers as `nobody`, who must be able to
    enter the work dir; ValueError when a directory on its path is closed to others."""
    if own:
        workdir.chmod(0o755)  # mkdtemp made it 0700
    for path in (workdir.resolve(), *workdir.resolve().parents):
        if not path.stat().st_mode & stat.S_IXOTH:
            raise ValueError(f"{path} is closed to others (mode {path.stat().st_mode & 0o777:o}), "
                             f"but the volumes' nginx workers run as nobody and must reach "
                             f"{workdir}: choose a work dir that others can enter")


def mkv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mkv", *args]


class Target:
    """Where a benchmark sends its requests: a master, a volume, and maybe the master process."""

    def __init__(self, master: str, volume: str, master_proc: Proc | None = None,
                 cluster: "LocalCluster | None" = None) -> None:
        self.master = master
        self.volume = volume
        self.master_proc = master_proc
        self.cluster = cluster


class LocalCluster:
    """`volumes` nginx volumes and a master on them (default flags) in a work dir.

    `volume_script` starts each volume as `PORT=N script DIR/` (Go mkv's launcher) instead of
    `mkv volume DIR -port N`.
    """

    def __init__(self, workdir: Path | None = None, volumes: int = 3,
                 master_flags: tuple[str, ...] = (), with_master: bool = True,
                 volume_script: Path | None = None) -> None:
        self.own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="mkv-bench-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        if volume_script is not None and os.geteuid() == 0:
            _open_to_nginx_workers(self.dir, self.own_dir)
        self.volume_count = volumes
        self.master_flags = master_flags
        self.with_master = with_master
        self.volume_script = volume_script
        self.procs: list[Proc] = []
        self.volumes: list[Proc] = []
        self.volume_dirs: list[Path] = []  # each volume's data
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

    def _spawn(self, name: str, port: int, cmd: list[str], extra_env: dict[str, str] | None = None,
               group: bool = False) -> Proc:
        log = self.dir / f"{name}.log"
        # no $MKV_SECRET: the yardstick writes to a volume directly, as any client would
        env = {k: v for k, v in os.environ.items() if k != "MKV_SECRET"}
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=group,
                                     env={**env, "PYTHONUNBUFFERED": "1", **(extra_env or {})})
        proc = Proc(name, port, popen, log, group)
        self.procs.append(proc)
        proc.wait_listening()
        return proc

    def start(self) -> None:
        stop_on_sigterm()
        _clusters.append(self)
        for i in range(self.volume_count):
            port, data = free_port(), self.dir / f"volume{i}"
            self.volume_dirs.append(data)
            if self.volume_script is None:
                self.volumes.append(self._spawn(
                    f"volume{i}", port, mkv_command("volume", str(data), "-port", str(port))))
            else:  # its nginx config goes to a mktemp file: keep that in the work dir
                self.volumes.append(self._spawn(
                    f"volume{i}", port, [str(self.volume_script), f"{data}/"],
                    {"PORT": str(port), "TMPDIR": str(self.dir)}, group=True))
        if self.with_master:
            self.master = self.start_master()

    def start_master(self, db: Path | str | None = None, *flags: str,
                     program: list[str] | None = None, serving: int | None = None) -> Proc:
        """Another master on the same volumes (a fresh index unless `db` is given), or on the
        first `serving` of them; `program` is the command before the flags (default ours,
        `python -m mkv`)."""
        self.masters += 1
        db = db or self.dir / f"index{self.masters}"
        port = free_port()
        cmd = [*(program or mkv_command()), "-db", str(db),
               "-volumes", ",".join(v.addr for v in self.volumes[:serving]),
               "-port", str(port), *(flags or self.master_flags), "server"]
        return self._spawn(f"master{self.masters}", port, cmd)

    @contextlib.contextmanager
    def own_master(self, db: Path | str | None = None, *flags: str,
                   program: list[str] | None = None,
                   serving: int | None = None) -> Iterator[Proc]:
        """A master started as `start_master` does, for one measurement: stopped after it."""
        master = self.start_master(db, *flags, program=program, serving=serving)
        try:
            yield master
        finally:
            self.stop_proc(master)

    def target(self, master: Proc | None = None) -> Target:
        """Requests to `master` (default the cluster's own), the first volume as yardstick."""
        master = master or self.master
        if master is None:
            raise ValueError("a cluster started without a master needs one named")
        return Target(master.addr, self.volumes[0].addr, master, self)

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


# --- the cluster a standalone benchmark runs on ---


def add_cluster_args(parser: argparse.ArgumentParser, *, external: bool = True) -> None:
    if external:
        parser.add_argument("--master", metavar="HOST:PORT",
                            help="benchmark a running master instead of starting a cluster "
                                 "(needs --volume)")
        parser.add_argument("--volume", metavar="HOST:PORT",
                            help="the nginx volume to measure as the yardstick (with --master)")
        parser.add_argument("--master-pid", type=int,
                            help="the running master's pid, for its peak RSS (with --master)")
    parser.add_argument("--dir", type=Path,
                        help="work dir for a started cluster (default: a temp dir, removed after)")


class _PidProc(Proc):
    """An external master known only by pid (for /proc figures)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid


@contextlib.contextmanager
def target_from_args(args: argparse.Namespace) -> Iterator[Target]:
    """The running cluster the flags name, or a local one started here and stopped after."""
    if getattr(args, "master", None):
        if not args.volume:
            raise SystemExit("--master needs --volume (an nginx volume for the yardstick)")
        stop_on_sigterm()  # the helpers (wrk) are stopped with us
        proc = _PidProc(args.master_pid) if args.master_pid else None
        yield Target(args.master, args.volume, proc)
        return
    with LocalCluster(args.dir) as cluster:
        yield cluster.target()
