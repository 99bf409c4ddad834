"""The checksums S3 clients send with a body (`x-amz-checksum-*`): CRC32, CRC32C, CRC64NVME,
SHA1, SHA256, each as S3 names it and encodes it (base64 of the big-endian digest).

CRC32 and the SHAs come from the standard library, CRC32C and CRC64NVME from `awscrt` (AWS's
own C implementations): pyarrow sends CRC64NVME with every part, and a pure-Python CRC would
hold the event loop for a second per 10 MB part.
"""

import base64
import hashlib
import zlib
from collections.abc import Callable

from awscrt import checksums as _crt


class _CRC:
    __slots__ = ("_update", "_width", "value")

    def __init__(self, update: Callable[[bytes, int], int], width: int) -> None:
        self._update = update
        self._width = width
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = self._update(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self._width, "big")


_FACTORIES: dict[str, Callable[[], "_CRC | hashlib._Hash"]] = {
    "crc32": lambda: _CRC(zlib.crc32, 4),
    "crc32c": lambda: _CRC(_crt.crc32c, 4),
    "crc64nvme": lambda: _CRC(_crt.crc64nvme, 8),
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}

ALGORITHMS = tuple(_FACTORIES)


class Checksum:
    """A running checksum of one algorithm; `b64digest()` is how S3 headers carry it."""

    __slots__ = ("algorithm", "_impl")

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._impl = _FACTORIES[algorithm]()

    def update(self, data: bytes) -> None:
        self._impl.update(data)

    def b64digest(self) -> str:
        return base64.b64encode(self._impl.digest()).decode()


def algorithm_of(header: str) -> str | None:
    """`x-amz-checksum-crc32` → `crc32`; None for a header that names no known checksum."""
    header = header.lower()
    if not header.startswith("x-amz-checksum-"):
        return None
    name = header[len("x-amz-checksum-"):]
    return name if name in _FACTORIES else None
