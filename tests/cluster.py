"""Real processes for tests: nginx volumes and the master, on free loopback ports in temp dirs."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def mkv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mkv", *args]


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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def peak_rss_kib(self) -> int:
        """VmHWM of the process: its peak resident memory so far."""
        return self._status_kib("VmHWM")

    def reset_peak_rss(self) -> int:
        """Start VmHWM again from the resident memory now (Linux's clear_refs 5); that, in
        KiB."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self._status_kib("VmRSS")

    def _status_kib(self, name: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
        raise RuntimeError(f"no {name}")


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
