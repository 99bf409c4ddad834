"""The tests' PostgreSQL: bench/postgres.py's throwaway server, started for a test or a
session, skipped when PostgreSQL is not installed."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench.postgres import PostgresServer, find_bindir

__all__ = ["PostgresServer", "running_postgres"]


@contextmanager
def running_postgres(primary: PostgresServer | None = None) -> Iterator[PostgresServer]:
    """A started server (with `primary`, a standby of it), stopped and removed afterwards; the
    test skips when PostgreSQL is not installed."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (bash setup.sh test installs it)")
    server = PostgresServer(bindir, primary)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:
            pass  # a test left it stopped
        server.remove()
