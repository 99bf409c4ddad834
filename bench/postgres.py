"""A throwaway PostgreSQL server for benchmarks and tests: `initdb` and `pg_ctl` in a temp dir,
on a free loopback port, no system service. Run as the `postgres` (or `nobody`) user when run as
root, as PostgreSQL refuses root."""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench.cluster import free_port

SUPERUSER = "mkv"


def find_bindir() -> Path | None:
    """Where PostgreSQL's server programs are: pg_config's answer, Debian's versioned
    directories (newest first), or PATH; None when PostgreSQL is not installed."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(found.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda d: int(Path(d).parent.name), reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for bindir in candidates:
        if bindir and os.access(Path(bindir) / "initdb", os.X_OK):
            return Path(bindir)
    return None


def _unprivileged() -> tuple[int, int] | None:
    """The uid and gid to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no postgres or nobody user to run PostgreSQL as")


class PostgresServer:
    """One cluster in its own temp dir (owned by the server's user; removed by `remove`)."""

    def __init__(self, bindir: Path, primary: "PostgresServer | None" = None) -> None:
        """A new cluster, or with `primary` a streaming standby of it (pg_basebackup)."""
        self.bindir = bindir
        self.user = _unprivileged()
        self.dir = Path(tempfile.mkdtemp(prefix="mkv-pg-"))  # outside pytest's 0700 dirs
        self.data = self.dir / "data"
        self.port = free_port()
        if self.user:
            os.chown(self.dir, *self.user)
        if primary is None:
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                      "-E", "UTF8", "--no-sync")
        else:  # -R: standby.signal and primary_conninfo written for it
            self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                      SUPERUSER, "-D", str(self.data), "-R", "-X", "stream", "--no-sync",
                      "--checkpoint=fast")
        self.settings = ""  # more -c options for `start`

    def _run(self, program: str, *args: str) -> None:
        user = {"user": self.user[0], "group": self.user[1]} if self.user else {}
        result = subprocess.run([str(self.bindir / program), *args], capture_output=True,
                                text=True, cwd=self.dir, **user)
        if result.returncode:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.dir} -c fsync=off "
                   f"-c full_page_writes=off -c max_connections=200 {self.settings}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options,
                  "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends the sessions at once, `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        """A standby becomes a primary."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def sql(self, statement: str) -> None:
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", statement)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t{uuid.uuid4().hex[:16]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
