"""Real processes for tests: nginx volumes and the master, on free loopback ports in temp dirs
(the process plumbing is bench/cluster.py's, shared with the benchmarks)."""

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.cluster import (  # noqa: F401  (children: for the tests, from here)
    children,
    free_port,
    mkv_command,
    reset_peak_rss,
    status_kib,
    stop_process,
    wait_listening,
)


@dataclass
class Process:
    port: int
    proc: subprocess.Popen

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        return stop_process(self.proc, timeout, sig)

    def peak_rss_kib(self) -> int:
        """VmHWM of the process: its peak resident memory so far."""
        return status_kib(self.proc.pid, "VmHWM")

    def reset_peak_rss(self) -> int:
        """Start VmHWM again from the resident memory now; that, in KiB."""
        if not reset_peak_rss(self.proc.pid):
            raise RuntimeError("this kernel does not let VmHWM be reset")
        return status_kib(self.proc.pid, "VmRSS")


@dataclass
class Volume(Process):
    dir: Path = field(default=Path())


def start_volume(data_dir: Path, port: int | None = None, *flags: str) -> Volume:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(mkv_command("volume", str(data_dir), "-port", str(port), *flags))
    wait_listening(port, proc)
    return Volume(port, proc, data_dir)


def start_master(db: Path | str, volumes: list[str], *flags: str,
                 port: int | None = None, stderr: IO | None = None) -> Process:
    """A master on `port` (a free one if None); its log to `stderr` (else this process's)."""
    port = port or free_port()
    cmd = mkv_command("-db", str(db), "-volumes", ",".join(volumes), "-port", str(port),
                      *flags, "server")
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=stderr)
    wait_listening(port, proc)
    return Process(port, proc)


async def exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request on a connection of its own, all written at once (no await between the
    writes, so the master reads them in one turn); the status of each answer."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in requests]
    for (_, writer), request in zip(connections, requests, strict=True):
        writer.write(request)
    statuses = [(await reader.readline()).split()[1] for reader, _ in connections]
    for _, writer in connections:
        writer.close()
    return statuses
