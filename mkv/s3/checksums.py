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


COMPOSITE, FULL_OBJECT = "COMPOSITE", "FULL_OBJECT"  # what a multipart object's checksum covers
DEFAULT_CHECKSUM = "crc64nvme"  # S3's for an object sent without one (since 2025)


def header_of(algorithm: str) -> str:
    """`crc32` → `x-amz-checksum-crc32`."""
    return f"x-amz-checksum-{algorithm}"


def element_of(algorithm: str) -> str:
    """`crc32` → `ChecksumCRC32`, as S3's XML names it."""
    return f"Checksum{algorithm.upper()}"


def wanted_for_upload(algorithm: str | None, kind: str | None) -> dict | None:
    """CreateMultipartUpload's x-amz-checksum-algorithm and -type, checked as S3 checks them:
    {"algorithm", "type"}, or None when no checksum is asked for. ValueError says why not."""
    if algorithm is None:
        if kind is not None:
            raise ValueError("x-amz-checksum-type needs x-amz-checksum-algorithm")
        return None
    algorithm = algorithm.lower()
    if algorithm not in _FACTORIES:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    if kind is None:  # S3's defaults: CRC64NVME covers the whole object, the others parts
        kind = FULL_OBJECT if algorithm == "crc64nvme" else COMPOSITE
    kind = kind.upper()
    if kind not in (COMPOSITE, FULL_OBJECT):
        raise ValueError(f"unknown checksum type {kind!r}")
    if kind == FULL_OBJECT and not algorithm.startswith("crc") or \
            kind == COMPOSITE and algorithm == "crc64nvme":
        raise ValueError(f"{algorithm.upper()} does not support the {kind} checksum type")
    return {"algorithm": algorithm, "type": kind}


class AssembledChecksum:
    """The checksum of a value assembled from parts, as S3 gives it: over every byte
    (FULL_OBJECT), or over the parts' own digests, `-N` after it (COMPOSITE)."""

    def __init__(self, algorithm: str, kind: str) -> None:
        self.algorithm, self.type = algorithm, kind
        self._whole = Checksum(algorithm) if kind == FULL_OBJECT else None
        self._part: Checksum | None = None
        self.parts: list[str] = []  # each part's, base64, once COMPOSITE parts are done

    def begin_part(self) -> None:
        self._end_part()
        if self._whole is None:
            self._part = Checksum(self.algorithm)

    def update(self, data: bytes) -> None:
        (self._whole or self._part).update(data)  # type: ignore[union-attr]

    def _end_part(self) -> None:
        if self._part is not None:
            self.parts.append(self._part.b64digest())
            self._part = None

    def document(self) -> dict:
        """What the object's S3 state keeps: {"algorithm", "type", "value", "parts"}."""
        self._end_part()
        if self._whole is not None:
            value = self._whole.b64digest()
        else:
            combined = Checksum(self.algorithm)
            for part in self.parts:
                combined.update(base64.b64decode(part))
            value = f"{combined.b64digest()}-{len(self.parts)}"
        return {"algorithm": self.algorithm, "type": self.type, "value": value,
                "parts": self.parts}
