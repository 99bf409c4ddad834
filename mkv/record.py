"""The index record: what LevelDB holds for a key, byte-compatible with Go mkv.

Value = optional state prefix (`DELETED` unlinked, `INIT` write in progress),
then optional `HASH` + 32 hex md5, then the replicas joined by `,`. Keys are ordered
bytewise, as LevelDB orders them, in every engine (SPEC §3): `successor` bounds a prefix.
"""

from enum import Enum
from typing import NamedTuple


class State(Enum):
    LIVE = b""
    UNLINKED = b"DELETED"
    WRITING = b"INIT"


class Record(NamedTuple):
    """A NamedTuple: immutable, and built cheaply on every GET."""

    replicas: tuple[str, ...]
    state: State = State.LIVE
    md5: str | None = None

    def encode(self) -> bytes:
        md5 = b"HASH" + self.md5.encode() if self.md5 else b""
        return self.state.value + md5 + ",".join(self.replicas).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Record":
        state = State.LIVE
        if raw.startswith(b"DELETED"):
            state, raw = State.UNLINKED, raw[7:]
        elif raw.startswith(b"INIT"):
            state, raw = State.WRITING, raw[4:]
        md5 = None
        if raw.startswith(b"HASH"):
            md5, raw = raw[4:36].decode(), raw[36:]
        replicas = tuple(raw.decode().split(",")) if raw else ()
        return cls(replicas, state, md5)

    def with_state(self, state: State) -> "Record":
        return Record(self.replicas, state, self.md5)


def successor(prefix: bytes) -> bytes | None:
    """The least key greater than every key starting with `prefix`; None when there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
