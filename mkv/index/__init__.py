"""The index: every key's record (SPEC §3), in key byte order, behind one interface.

`Index` is what the store and the offline commands use; an engine implements it. LevelDB
(mkv/index/leveldb.py) is the default, chosen by `open_index` for a `-db` path, or, while a
master serves that directory, the master's index through its owner's socket
(mkv/index/remote.py, served by mkv/index/owner.py); PostgreSQL (mkv/index/postgres.py) for a
`postgresql://` URL, shared by several masters. An engine must
keep LevelDB's order (bytewise on the key), so listings, pages and `next` are the same whatever
the engine, and must hand records back exactly as they were put.
"""

from mkv.index.base import Index, IndexLocked, IndexUnavailable
from mkv.index.leveldb import LevelDBIndex

__all__ = ["Index", "IndexLocked", "IndexUnavailable", "LevelDBIndex", "is_postgres_url",
           "open_index"]


def is_postgres_url(location: str) -> bool:
    """Whether `-db` names a PostgreSQL database (a libpq URL) rather than a LevelDB path."""
    return location.startswith(("postgresql://", "postgres://"))


async def open_index(location: str, serving: bool = False) -> Index:
    """The index at `-db`: a `postgresql://` URL's table (created when missing), else a
    LevelDB directory (created when missing): through the master serving it if one does,
    unless `serving` (a master opening it). Awaited, as a networked engine connects on the
    event loop it then serves."""
    if is_postgres_url(location):
        from mkv.index.postgres import PostgresIndex  # asyncpg only loaded when used

        return await PostgresIndex.connect(location, serving)
    if not serving:
        from mkv.index.remote import RemoteIndex

        served = await RemoteIndex.reach(location)
        if served is not None:
            return served
    return LevelDBIndex(location)
