"""The index interface every engine implements, and the errors it raises."""

from collections.abc import Iterator
from typing import Protocol

from mkv.record import Record, State


class IndexLocked(Exception):
    """Another process holds the index (LevelDB is single-process)."""


class Index(Protocol):
    def get(self, key: bytes) -> Record | None:
        """The key's record, or None when the key is absent (hard deleted)."""

    def put(self, key: bytes, record: Record) -> None:
        """Write the record, durable against a process crash once this returns."""

    def delete(self, key: bytes) -> None:
        """Remove the key's record (absent keys are fine)."""

    def items(self, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, Record]]:
        """Records whose key starts with `prefix`, from `start` on, in byte order."""

    def page(self, prefix: bytes, state: State, start: bytes,
             limit: int) -> tuple[list[bytes], bytes | None]:
        """Up to `limit` keys in `state`, and the first key in `state` after them, if any."""

    def count(self) -> int:
        """How many records the index holds (one pass over the keys)."""

    def clear(self) -> None:
        """Delete every record."""

    def close(self) -> None:
        """Leave the index so that another process, Go mkv's included, reads every record."""
