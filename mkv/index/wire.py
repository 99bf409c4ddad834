"""The messages between a LevelDB index's owner (mkv/index/owner.py) and the processes that use
the index through it (mkv/index/remote.py): a worker's batch of one event-loop turn, or an
online command's, is one frame; the owner answers it with one frame.

A frame is a 4-byte little-endian length, then a `marshal`ed list: the requests, each a tuple
`(op, *arguments)`, or the answers, one per request in order. marshal is Python's own C
serializer of bytes, ints, tuples and lists: a turn's batch costs about a microsecond each way,
where struct-packing each request in Python costs several. It is not meant for hostile input;
only processes of the owner's user reach its socket (mode 0600), who could write the LevelDB
files themselves, and a frame over MAX_FRAME, or one that does not decode, ends the connection.
"""

import marshal
import struct

HEADER = struct.Struct("<I")
MAX_FRAME = 256 << 20  # bytes: far above any batch (put_many of rebuild's 1,000 records)

# requests: (op, arguments) -> answer
GET = 0  # key -> the record's bytes, or None
PUT = 1  # key, record bytes -> None
PUT_MANY = 2  # [(key, record bytes)] -> None
DELETE = 3  # key -> None
LOCK = 4  # key -> (whether the key is now the connection's, its record's bytes if so)
UNLOCK = 5  # key -> None
PAGE = 6  # prefix, state name, start, limit -> (keys, next key or None)
ITEMS = 7  # prefix, start, limit -> [(key, record bytes)] in key order
COUNT = 8  # -> how many records
CLEAR = 9  # -> None
STATS = 10  # -> the engine's stats dict

WRITES = frozenset({PUT, DELETE})  # a record write of a key (held under its lock)


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(message: list) -> bytes:
    data = marshal.dumps(message)
    return HEADER.pack(len(data)) + data


class Frames:
    """Cuts the bytes a connection receives into its messages."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[list]:
        """The messages `data` completes (none yet, maybe); FrameError on garbage."""
        buffer = self.buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise FrameError(f"a frame of {length} bytes")
            end = start + HEADER.size + length
            if len(buffer) < end:
                break
            with memoryview(buffer)[start + HEADER.size:end] as body:
                try:
                    message = marshal.loads(body)
                except (EOFError, ValueError, TypeError) as e:
                    raise FrameError(f"a frame that does not decode: {e}") from None
            if not isinstance(message, list):
                raise FrameError("a frame that is not a list")
            messages.append(message)
            start = end
        if start:
            del buffer[:start]
        return messages
