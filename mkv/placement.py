"""Where a key lives: `key2path` and `key2volume`, the on-disk contract shared with Go mkv.

Pure functions of their arguments; tests/test_contracts.py pins their outputs (SPEC §2).
"""

import base64
import hashlib
from functools import cache
from operator import itemgetter

_score = itemgetter(0)  # a (score, volume) pair's score


def key2path(key: bytes) -> str:
    """The path of `key` on a volume: two md5 levels, then the standard base64 of the key.

    A base64 holding `/` nests into deeper directories; that is part of the format.
    """
    digest = hashlib.md5(key).digest()
    return f"/{digest[0]:02x}/{digest[1]:02x}/{base64.b64encode(key).decode()}"


def placement_key(key: bytes, vdir_colocation: bool) -> bytes:
    """The bytes that choose a key's volumes: its directory under `-vdir_colocation`."""
    if vdir_colocation:
        slash = key.rfind(b"/")
        if slash >= 0:
            return key[:slash]
    return key


def key2volume(key: bytes, volumes: list[str], replicas: int, subvolumes: int) -> list[str]:
    """The replicas of `key`, best first: the first `replicas` of its ranking."""
    return key2ranking(key, volumes, subvolumes)[:replicas]


def key2ranking(key: bytes, volumes: list[str], subvolumes: int) -> list[str]:
    """Every volume as a replica of `key`, best first: volumes ranked by md5(key + volume),
    descending. Where a write goes when a volume is down: the next in rank takes its place.

    The ranking depends on a volume's name, not its position, so adding a volume moves only
    the keys that now rank it first. With several subvolumes, the low 32 bits of the score
    pick the disk (`/svXX`, upper-case hex).
    """
    # sort is stable, as Go's sort.Stable
    scored = sorted([(hashlib.md5(key + v.encode()).digest(), v) for v in volumes],
                    key=_score, reverse=True)
    if subvolumes == 1:
        return [volume for _, volume in scored]
    suffix = _subvolume_names(subvolumes)
    return [volume + suffix[int.from_bytes(score[12:16], "big") % subvolumes]
            for score, volume in scored]


@cache
def _subvolume_names(subvolumes: int) -> tuple[str, ...]:
    """`/sv00` … in upper-case hex: made once, as formatting each replica's cost a fifth of
    key2ranking (timeit)."""
    return tuple(f"/sv{n:02X}" for n in range(subvolumes))


def storable(key: bytes) -> str | None:
    """Why `key` cannot be stored faithfully as a file, or None when it can.

    A base64 name with `//` or a trailing `/` has an empty path component: the
    filesystem would merge or drop it, and rebuild could not recover the key.
    """
    if key in (b"", b"/"):
        return "empty key"
    parts = key2path(key).split("/")[1:]
    if any(part == "" for part in parts):
        return "key's base64 file name has an empty path component"
    if any(len(part) > 255 for part in parts):
        return "key too long for a file name (255 bytes per path component)"
    return None
