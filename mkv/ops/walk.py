"""Walking the volumes: every file in the mkv layout of every volume, through nginx's JSON
directory listings, with the key its name encodes (or why it encodes none).

The layout is `[/svXX]/ab/cd/<base64 key>`; a base64 name holding `/` nests into deeper
directories, so below the two hex levels the walk follows directories down to the files.
Entries outside the layout (`lost+found`, a stray file at the top) are not mkv's and are
passed over, as Go mkv's rebuild does. nginx's own `DIR/.mkv` is never listed.
"""

import asyncio
import base64
import binascii
import functools
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from mkv.http.client import VolumeError
from mkv.ops.progress import Progress
from mkv.placement import key2path
from mkv.volumes.replicas import Volumes, split_replica

_SUBVOLUME = re.compile(r"sv[0-9A-F]{2}")
_HEX = re.compile(r"[0-9a-f]{2}")


@dataclass(frozen=True)
class VolumeFile:
    replica: str  # as a record names it: a volume from -volumes, plus `/svXX` when listed so
    path: str  # under the replica: `/ab/cd/<name>`
    key: bytes | None  # None when the name is not a key stored at this path
    problem: str  # why `key` is None
    modified: str  # the listing's mtime, an HTTP date: parsed only when asked (it is slow)
    size: int = -1  # the listing's size (-1: not given)

    @property
    def mtime(self) -> float:
        return http_time(self.modified)

    @property
    def url(self) -> str:
        return f"http://{self.replica}{self.target}"

    @property
    def target(self) -> str:
        return quoted(self.path)


def http_time(text: str) -> float:
    """An HTTP date (an mtime from nginx) in seconds since the epoch, whole seconds.
    Unknown counts as now: never old enough to be deleted or settled."""
    seconds = _parsed_http_time(text)
    return time.time() if seconds is None else seconds


@functools.lru_cache(maxsize=4096)
def _parsed_http_time(text: str) -> float | None:
    # files written in one second share their mtime's text: parsed once (the parse is slow)
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


def quoted(path: str) -> str:
    """`path` percent-encoded for a request: names that are not mkv's may need it."""
    return quote(path, safe="/+=", errors="surrogateescape")


def key_at(path: str) -> tuple[bytes | None, str]:
    """The key whose file `path` (`/ab/cd/<name>`) is, or None and why it is none."""
    name = path[7:]
    try:
        key = base64.b64decode(name, validate=True)
    except (binascii.Error, ValueError):
        return None, "name is not base64"
    expected = key2path(key)
    if expected != path:
        return None, f"not at its key's path {expected}"
    return key, ""


OnFile = Callable[[VolumeFile], Awaitable[None]]
OnGroup = Callable[[str], Awaitable[None]]

# first-level directories a volume may begin past the oldest one not yet walked everywhere:
# what waits for its directory to be done stays a few 256ths of the keys
GROUPS_AHEAD = 4


class _Group:
    """A first-level directory (`/ab/`) across every volume and subvolume: the directories of
    it still to be listed, and whether that is done."""

    def __init__(self, number: int, path: str) -> None:
        self.number = number
        self.path = path
        self.left = 0
        self.done = asyncio.Event()


class Walk:
    """One walk over `names` (volumes as in -volumes), `concurrency` listings at a time
    on each volume.

    The top of each volume is listed first, so the first-level directories are all known
    before the rest: md5 spreads keys evenly over them, so the share of them begun is a
    fair estimate of the share of the walk done.

    The volumes go in step, first-level directory by first-level directory. A key's files
    are in the same one (`/ab/`, its md5's first byte) on every volume and subvolume, so once
    a directory is walked everywhere no file of its keys is still to come: `on_group` is told,
    and rebuild writes each key's record once instead of reading and rewriting it per file.
    """

    def __init__(self, volumes: Volumes, names: Sequence[str], concurrency: int,
                 progress: Progress) -> None:
        self.volumes = volumes
        self.names = names
        self.concurrency = concurrency
        self.progress = progress
        self.first_level_total = 0
        self.first_level_begun = 0
        self.groups: list[_Group] = []

    def fraction(self) -> float:
        return self.first_level_begun / self.first_level_total if self.first_level_total else 0.0

    async def _list(self, replica: str, path: str) -> list[dict] | None:
        hostport, subvolume = split_replica(replica)
        try:
            return await self.volumes.list_dir(hostport, quoted(subvolume + path))
        except (VolumeError, ValueError) as e:
            self.progress.problem("unlisted", f"http://{replica}{path}: {e}")
            return None

    async def _roots(self, name: str) -> list[tuple[str, str]]:
        """The (replica, path) of each first-level directory of a volume."""
        top = await self._list(name, "/")
        if top is None:
            return []
        roots = []
        for entry in top:
            if entry.get("type") != "directory":
                continue
            if _SUBVOLUME.fullmatch(entry["name"]):
                replica = f"{name}/{entry['name']}"
                roots += [(replica, f"/{e['name']}/") for e in await self._list(replica, "/") or ()
                          if e.get("type") == "directory" and _HEX.fullmatch(e["name"])]
            elif _HEX.fullmatch(entry["name"]):
                roots.append((name, f"/{entry['name']}/"))
        return roots

    async def run(self, on_file: OnFile, on_group: OnGroup | None = None) -> None:
        """Await `on_file` for every file in the layout, and `on_group` with each first-level
        directory's path once it is walked on every volume."""
        first_levels = await asyncio.gather(*(self._roots(name) for name in self.names))
        self.first_level_total = sum(map(len, first_levels))
        paths = sorted({path for roots in first_levels for _, path in roots})
        self.groups = [_Group(i, path) for i, path in enumerate(paths)]
        group_of = {group.path: group for group in self.groups}
        for roots in first_levels:
            for _, path in roots:
                group_of[path].left += 1
        async with asyncio.TaskGroup() as group:  # volumes are separate machines: all at once
            for roots in first_levels:
                in_step = sorted(roots, key=lambda root: (root[1], root[0]))
                group.create_task(self._walk_volume(in_step, group_of, on_file, on_group))

    async def _walk_volume(self, roots: list[tuple[str, str]], group_of: dict[str, _Group],
                           on_file: OnFile, on_group: OnGroup | None) -> None:
        # depth first (LIFO), so the directories waiting stay few however big the volume
        queue: asyncio.LifoQueue[tuple[str, str, int, _Group]] = asyncio.LifoQueue()
        for replica, path in reversed(roots):
            queue.put_nowait((replica, path, 1, group_of[path]))

        async def worker() -> None:
            while True:
                replica, path, depth, group = await queue.get()
                try:
                    if depth == 1 and group.number >= GROUPS_AHEAD:
                        await self.groups[group.number - GROUPS_AHEAD].done.wait()
                    await self._visit(replica, path, depth, group, queue, on_file)
                    group.left -= 1
                    if not group.left:
                        group.done.set()
                        if on_group is not None:
                            await on_group(group.path)
                finally:
                    queue.task_done()

        async with asyncio.TaskGroup() as group:  # an error in on_file ends the walk
            workers = [group.create_task(worker()) for _ in range(self.concurrency)]
            await queue.join()
            for task in workers:
                task.cancel()

    async def _visit(self, replica: str, path: str, depth: int, group: _Group,
                     queue: asyncio.LifoQueue, on_file: OnFile) -> None:
        if depth == 1:
            self.first_level_begun += 1
        entries = await self._list(replica, path)
        for entry in entries or ():
            name, is_dir = entry["name"], entry.get("type") == "directory"
            if depth == 1:  # the second hex level: anything else is not mkv's
                if is_dir and _HEX.fullmatch(name):
                    group.left += 1
                    queue.put_nowait((replica, f"{path}{name}/", 2, group))
            elif is_dir:  # a base64 name with `/` in it, or a directory that is not mkv's
                group.left += 1
                queue.put_nowait((replica, f"{path}{name}/", depth + 1, group))
            else:
                file_path = f"{path}{name}"
                key, problem = key_at(file_path)
                await on_file(VolumeFile(replica, file_path, key, problem,
                                         entry.get("mtime", ""), entry.get("size", -1)))
