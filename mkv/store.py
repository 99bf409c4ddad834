"""The store: what a key's life means over the index and the volumes — write (PUT, REPLACE),
remove, unlink, relink and move — in SPEC §4's write order. Each is called holding the key's
lock (`store.locks.hold`, mkv/locks.py).

The native API and the S3 face translate their protocols into calls on it; the offline
commands use it too.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.index import Index
from mkv.index.base import IndexUnavailable, KeyBusy
from mkv.locks import Locks
from mkv.placement import key2path
from mkv.record import Record, State
from mkv.volumes.health import volume_of
from mkv.volumes.replicas import Volumes
from mkv.volumes.transfer import CopyError, copy_value

log = logging.getLogger("mkv")

PLACEMENT_CACHE = 1 << 16  # keys whose placement and path are remembered


# the errors of the index a request may meet, as HTTP answers them: the one place they are
# mapped (the master's servers and the native GET use it; S3 words them as S3 errors)
REFUSED = {IndexUnavailable: 503, KeyBusy: 409}


class MoveError(Exception):
    """The key could not be moved; its record and files are as they were."""


class TooFewVolumesUp(VolumeError):
    """Fewer volumes are up than -replicas needs: the write was refused before anything was
    written (the key's record and files are as they were)."""


class WatchedBody:
    """A value's chunks as they pass to the replicas, watched for whether all were sent."""

    __slots__ = ("_chunks", "_length", "_sent", "_ended")

    def __init__(self, chunks: AsyncIterator[bytes], length: int | None) -> None:
        self._chunks = chunks.__aiter__()
        self._length = length
        self._sent = 0
        self._ended = False

    def __aiter__(self) -> "WatchedBody":
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            raise
        self._sent += len(chunk)
        return chunk

    @property
    def may_be_whole(self) -> bool:
        """Whether a replica may hold the whole value: the body ended, or gave its length."""
        return self._ended or (self._length is not None and self._sent >= self._length)


class Store:
    """One index, the volumes, and the keys with a write, delete or move in flight."""

    def __init__(self, config: Config, index: Index, volumes: Volumes) -> None:
        self.config = config
        self.index = index
        self.volumes = volumes
        self.locks = Locks(index.locks)  # every change of a key is made holding its lock
        # told of each key whose value is being written or removed (S3 drops what it kept
        # about the old value, whichever face changed it); what a listener gives back is
        # awaited after the record is written, before the write or remove returns
        self.on_change: list[Callable[[bytes], Awaitable[None] | None]] = []
        # pure functions of the key: remembered, as a hot key is read over and over
        self.placement = lru_cache(PLACEMENT_CACHE)(lambda key: tuple(config.placement(key)))
        self.key2path = lru_cache(PLACEMENT_CACHE)(key2path)

    async def write(self, key: bytes, chunks: AsyncIterator[bytes], length: int | None,
                    old: Record | None) -> str | None:
        """Write a value where `write_placement` says, in SPEC order; its md5 when -md5sum
        is on.

        The caller holds the key's lock and has read `old`, the key's record. A write that
        does not finish, whatever stopped it, is undone by `_undo_write`: a live value it was
        to replace stays live; otherwise the key is left unlinked (a failed replica, as SPEC
        §4 says) or as it was (a client gone or a body refused: no record at all for a new
        key). With too few volumes up (TooFewVolumesUp) nothing is written.
        """
        replicas = await self.write_placement(key)
        stale = await self._begin_write(key, replicas, old)
        source = WatchedBody(chunks, length)
        try:
            md5 = await self.volumes.write(replicas, self.key2path(key), source, length,
                                           self.config.md5sum)
        except BaseException as e:  # a replica, the client, the body's checks, a cancel
            log.warning("PUT %s failed: %s", key.decode(errors="replace"), e)
            await self._undo_write(key, replicas, old, source.may_be_whole,
                                   isinstance(e, VolumeError))
            raise
        await self._finish_write(key, replicas, md5, stale)
        return md5

    async def _begin_write(self, key: bytes, replicas: list[str], old: Record | None
                           ) -> list[str]:
        """The record before a value's files reach the key's place; the old value's replicas
        the new one leaves (deleted once it is live)."""
        stale: list[str] = []
        if old is not None and old.state is not State.LIVE:
            await self._clear_dead_value(key, old)
        elif old is not None:
            stale = [r for r in old.replicas if r not in replicas]
        # crash safety: INIT first, so a cut-off write is never live. A live key being
        # replaced stays live (nginx renames each replica into place whole, so a reader gets
        # the old or the new value) but loses its md5 meanwhile: cut off, its replicas may
        # hold different whole values, which `repair -checksum` settles.
        if old is None or old.state is not State.LIVE:
            await self.index.put(key, Record(tuple(replicas), State.WRITING))
        elif old.md5:
            await self.index.put(key, Record(old.replicas, State.LIVE))
        return stale

    async def _finish_write(self, key: bytes, replicas: list[str], md5: str | None,
                            stale: list[str]) -> None:
        """The new value live, S3's listeners told, the replicas it left deleted."""
        told = self._changing(key)
        await self.index.put(key, Record(tuple(replicas), State.LIVE, md5))
        await self._told(told)
        if stale:
            await self.delete_files(stale, key)

    async def commit(self, key: bytes, replicas: list[str], staged: str, md5: str,
                     old: Record | None) -> str | None:
        """Make a value already whole on `replicas` (at `staged` on each, where no key's file
        is) the key's, in SPEC order, and return its md5 when -md5sum is on: the record as
        `write` leaves it before its files, then each file renamed into the key's place
        (volumes that rename: `Volumes.can_move`), then the live record.

        The caller holds the key's lock and has read `old`; only the renames happen under
        it, so writers of one key stream their values at once. A rename that fails is undone
        as a write cut off after its last byte (`_undo_write`); what was not renamed stays
        staged for the caller to delete.
        """
        stale = await self._begin_write(key, replicas, old)
        path = self.key2path(key)
        moves = [asyncio.ensure_future(self.volumes.move(r, staged, path)) for r in replicas]
        try:
            await asyncio.gather(*moves)
        except BaseException as e:
            log.warning("committing %s failed: %s", key.decode(errors="replace"), e)
            await asyncio.gather(*moves, return_exceptions=True)  # none runs on unseen
            await self._undo_write(key, replicas, old, True, isinstance(e, VolumeError))
            raise
        recorded = md5 if self.config.md5sum else None
        await self._finish_write(key, replicas, recorded, stale)
        return recorded

    async def _clear_dead_value(self, key: bytes, old: Record) -> None:
        """Delete the files of an unlinked value (or of a write cut off) before a new value
        is written over it: its INIT record would otherwise name complete old files, which
        `repair` makes live if a crash leaves it so. Raises VolumeError, nothing written,
        when a file cannot be deleted."""
        failed = await self.delete_files(old.replicas, key)
        if failed:
            raise VolumeError(f"the earlier value's file on {', '.join(failed)} could not be "
                              "deleted; nothing was written")

    async def _undo_write(self, key: bytes, replicas: list[str], old: Record | None,
                          may_be_whole: bool, replica_failed: bool) -> None:
        """Put the key right after a write that did not finish.

        `may_be_whole`: every byte of the value was sent, so a replica may have taken the new
        value whole (else nginx dropped each upload, and the replicas are as they were).
        """
        down = self.volumes.health.down
        if old is not None and old.state is State.LIVE:
            # the old value stays live; its md5 only while no replica can hold the new one
            await self.index.put(key, Record(old.replicas, State.LIVE,
                                             None if may_be_whole else old.md5))
            fresh = [r for r in replicas if r not in old.replicas]  # unclaimed by the record
            if fresh:
                await self.delete_files([r for r in fresh if volume_of(r) not in down], key)
            return
        # nothing live was here (an unlinked value's files went first): unlinked with every
        # replica that may hold a file, so a later DELETE cleans up
        await self.index.put(key, Record(tuple(replicas), State.UNLINKED))
        # files nobody can read (volumes down are left to a later DELETE, not waited for)
        reachable = [r for r in replicas if volume_of(r) not in down]
        failed = await self.delete_files(reachable, key)
        if old is None and not replica_failed and not failed and len(reachable) == len(replicas):
            # a client gone or a body refused leaves no trace of a key that was not there
            told = self._changing(key)
            await self.index.delete(key)
            await self._told(told)

    async def write_placement(self, key: bytes) -> list[str]:
        """Where a write of `key` goes: today's placement, or, with a volume of it down (and
        not -strict_placement), the first -replicas of its ranking that are up (SPEC §4).

        Before refusing with TooFewVolumesUp, the volumes down are probed once more: one that
        just came back takes writes at once, not at the next probe.
        """
        today = self.config.placement(key)
        down = self.volumes.health.down
        if self.config.strict_placement or not down or not any(
                volume_of(r) in down for r in today):
            return today
        replicas = self.config.replicas
        chosen = self.config.placement_around(key, down)
        if len(chosen) < replicas:
            await self.volumes.health.recheck(list(down))
            chosen = self.config.placement_around(key, down)
        if len(chosen) < replicas:
            up = sum(1 for v in self.config.volumes if v not in down)
            raise TooFewVolumesUp(f"{up} of {len(self.config.volumes)} volumes are up, "
                                  f"-replicas {self.config.replicas} needs "
                                  f"{self.config.replicas}; nothing was written")
        return chosen

    async def remove(self, key: bytes, record: Record) -> list[str]:
        """Unlink, delete every replica, drop the record; the replicas that failed (the key
        then stays unlinked)."""
        if record.state is not State.UNLINKED:
            await self.index.put(key, record.with_state(State.UNLINKED))
        failed = await self.delete_files(record.replicas, key)
        if not failed:
            told = self._changing(key)
            await self.index.delete(key)
            await self._told(told)
        return failed

    def _changing(self, key: bytes) -> list[Awaitable[None]]:
        """Tell the listeners; what they are doing meanwhile (alongside the index write)."""
        pending = [listener(key) for listener in self.on_change]
        return [p for p in pending if p is not None]

    @staticmethod
    async def _told(pending: list[Awaitable[None]]) -> None:
        for listener in pending:
            await listener

    async def delete_files(self, replicas: list[str] | tuple[str, ...], key: bytes) -> list[str]:
        """Delete the key's file from each replica at once; the replicas that failed."""
        failed = await self.volumes.delete_all(replicas, key)
        for replica in failed:
            log.warning("DELETE %s from %s failed", key.decode(errors="replace"), replica)
        return failed

    async def unlink(self, key: bytes, record: Record) -> None:
        """The virtual delete: the record kept as unlinked, the files left."""
        await self.index.put(key, record.with_state(State.UNLINKED))

    async def relink(self, key: bytes, record: Record) -> bool:
        """Undo an unlink if every replica still has the file; whether it did."""
        # an unlinked record may be a failed write: only a complete one may come back
        present = await asyncio.gather(
            *(self.volumes.exists(r, key, self.config.voltimeout) for r in record.replicas))
        if not record.replicas or not all(present):
            return False
        await self.index.put(key, record.with_state(State.LIVE))
        return True

    async def move(self, key: bytes, record: Record) -> list[str] | None:
        """Move one key to today's placement; None when it is there already, else the old
        replicas whose file could not be deleted (orphans now).

        Copy to the new replicas, rewrite the record (state and md5 kept), then delete from
        the replicas no longer used. Raises MoveError when the copy fails.
        """
        target = self.config.placement(key)
        if list(record.replicas) == target:
            return None
        missing = [r for r in target if r not in record.replicas]
        if missing:
            try:
                await copy_value(self.volumes, key, list(record.replicas), missing, record.md5)
            except (CopyError, VolumeError) as e:
                raise MoveError(str(e)) from None
        await self.index.put(key, Record(tuple(target), record.state, record.md5))
        # a failed delete leaves an orphan file, never a missing value: the record is moved
        return await self.volumes.delete_all([r for r in record.replicas if r not in target],
                                             key)
