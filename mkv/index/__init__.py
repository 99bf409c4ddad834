"""The index: every key's record (SPEC §3), in key byte order, behind one interface.

`Index` is what the store and the offline commands use; an engine implements it. LevelDB
(mkv/index/leveldb.py) is the engine today, chosen by `open_index` for a `-db` path. An engine
must keep LevelDB's order (bytewise on the key), so listings, pages and `next` are the same
whatever the engine, and must hand records back exactly as they were put.
"""

from mkv.index.base import Index, IndexLocked
from mkv.index.leveldb import LevelDBIndex

__all__ = ["Index", "IndexLocked", "LevelDBIndex", "open_index"]


async def open_index(location: str) -> Index:
    """The index at `-db`: a LevelDB directory (created when missing). Awaited, as a
    networked engine connects on the event loop it then serves."""
    return LevelDBIndex(location)
