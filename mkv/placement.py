"""Where a key lives: `key2path` and `key2volume`, the on-disk contract shared with Go mkv,
and the failure domains and weights beyond it (`place`, SPEC §6).

Pure functions of their arguments; tests/test_contracts.py pins their outputs (SPEC §2, §6).
"""

import base64
import hashlib
from collections.abc import Collection, Mapping
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


def key2ranking(key: bytes, volumes: list[str], subvolumes: int,
                weights: Mapping[str, int] | None = None) -> list[str]:
    """Every volume as a replica of `key`, best first: volumes ranked by md5(key + volume),
    descending. Where a write goes when a volume is down: the next in rank takes its place.

    The ranking depends on a volume's name, not its position, so adding a volume moves only
    the keys that now rank it first. With several subvolumes, the low 32 bits of the score
    pick the disk (`/svXX`, upper-case hex). A volume of weight N (SPEC §6) draws N scores,
    md5(key + volume), then md5(key + volume + "#1") … "#(N-1)", and is ranked by the largest.
    """
    if weights:
        scored = [(_weighted_score(key, v, weights.get(v, 1)), v) for v in volumes]
    else:
        scored = [(hashlib.md5(key + v.encode()).digest(), v) for v in volumes]
    scored.sort(key=_score, reverse=True)  # stable, as Go's sort.Stable
    if subvolumes == 1:
        return [volume for _, volume in scored]
    suffix = _subvolume_names(subvolumes)
    return [volume + suffix[int.from_bytes(score[12:16], "big") % subvolumes]
            for score, volume in scored]


def _weighted_score(key: bytes, volume: str, weight: int) -> bytes:
    base = key + volume.encode()
    return max([hashlib.md5(base).digest()] +
               [hashlib.md5(base + b"#%d" % n).digest() for n in range(1, weight)])


def place(key: bytes, volumes: list[str], replicas: int, subvolumes: int,
          domains: Mapping[str, str] | None = None, weights: Mapping[str, int] | None = None,
          down: Collection[str] = ()) -> list[str]:
    """The replicas of `key` (its placement key) with failure domains and weights (SPEC §6):
    walk the ranking, skipping volumes `down`, taking a volume whose domain (itself, unless
    `domains` names one) holds none of the key's replicas yet; short of `replicas` (fewer
    domains than replicas), the skipped volumes follow in ranking order. Fewer than
    `replicas` only when too few volumes are up. With neither domains nor weights nor a
    volume down, this is key2volume, byte for byte."""
    domains = domains or {}
    taken: list[str] = []
    skipped: list[str] = []
    used: set[str] = set()
    for replica in key2ranking(key, volumes, subvolumes, weights):
        volume = replica.partition("/")[0]  # a replica is the volume, or volume/svXX
        if volume in down:
            continue
        domain = domains.get(volume, volume)
        if domain in used:
            skipped.append(replica)
            continue
        taken.append(replica)
        used.add(domain)
        if len(taken) == replicas:
            return taken
    return taken + skipped[:replicas - len(taken)]


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
