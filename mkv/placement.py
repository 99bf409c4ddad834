"""Where a key lives: `key2path` and `key2volume`, the on-disk contract shared with Go mkv.

Both are pure functions of their arguments; tests/test_placement.py pins their outputs.
"""

import base64
import hashlib


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
    """The replicas of `key`, best first: volumes ranked by md5(key + volume), descending.

    The ranking depends on a volume's name, not its position, so adding a volume
    moves only the keys that now rank it first. With several subvolumes, the low
    32 bits of the score pick the disk (`/svXX`, upper-case hex).
    """
    scored = [(hashlib.md5(key + v.encode()).digest(), v) for v in volumes]
    scored.sort(key=lambda sv: sv[0], reverse=True)  # sort is stable, as Go's sort.Stable
    chosen = []
    for score, volume in scored[:replicas]:
        if subvolumes == 1:
            chosen.append(volume)
        else:
            sub = int.from_bytes(score[12:16], "big") % subvolumes
            chosen.append(f"{volume}/sv{sub:02X}")
    return chosen


def key2ranking(key: bytes, volumes: list[str], subvolumes: int) -> list[str]:
    """Every volume as a replica of `key`, in key2volume's order: key2volume is its first
    `replicas`. Where a write goes when a volume is down: the next in rank takes its place,
    each with its own subvolume."""
    scored = sorted(((hashlib.md5(key + v.encode()).digest(), v) for v in volumes),
                    key=lambda sv: sv[0], reverse=True)
    if subvolumes == 1:
        return [volume for _, volume in scored]
    return [f"{volume}/sv{int.from_bytes(score[12:16], 'big') % subvolumes:02X}"
            for score, volume in scored]


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
