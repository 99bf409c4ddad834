"""Which S3 state a master (or `mkv … expire`) opens: the one its index's engine goes with."""

from pathlib import Path

from mkv.index import is_postgres_url
from mkv.s3.parts import PartFiles
from mkv.s3.spool import Spool
from mkv.s3.state import S3State
from mkv.store import Store


def open_state(store: Store, command: bool = False) -> S3State:
    """The S3 state for the store's index: shared tables beside a PostgreSQL index (their
    connections opened on first use), else the spool directory (`-s3_spool`, by default
    `<db>.s3`), shared among -workers, and with a `command` that may run beside them."""
    if is_postgres_url(store.config.db):
        from mkv.s3.pgstate import PostgresState  # asyncpg only loaded when used

        return PostgresState(store.config.db, PartFiles(store))
    return Spool(Path(store.config.s3_spool or f"{store.config.db.rstrip('/')}.s3"),
                 PartFiles(store), shared=command or store.config.workers > 1)
