"""Moving values: copy a value between replicas (streamed, md5-checked when known), move one
key to today's placement (the REBALANCE method), and `mkv rebalance` over the whole index.

A move copies to the new replicas, rewrites the record (state and md5 kept), then deletes
from replicas no longer used. A copy that fails leaves the key as it was.
"""

import hashlib
from collections.abc import AsyncIterator
from contextlib import aclosing

from mkv.config import Config
from mkv.http.client import ClientResponse, VolumeError
from mkv.index import Index
from mkv.ops.progress import Progress, count_keys, for_each, run_offline, shown
from mkv.record import Record, State
from mkv.volumes import Volumes


class RebalanceError(Exception):
    """The key could not be moved; its record and files are as they were."""


class CopyError(Exception):
    """No source gave the value whole to every target; nothing new was left on them."""


class _SourceBroke(VolumeError):
    """The replica being copied from broke off mid-value: another one may do."""


async def read_md5(volumes: Volumes, replica: str, key: bytes) -> str:
    """The md5 hex of the key's file on one replica, read streamed; VolumeError if unreadable."""
    return await md5_of(volumes, await volumes.open(replica, key))


async def md5_of(volumes: Volumes, response: ClientResponse) -> str:
    """The md5 hex of the body of a response from `Volumes.open`, read streamed."""
    digest = hashlib.md5()
    async with aclosing(volumes.chunks(response)) as chunks:
        async for chunk in chunks:
            digest.update(chunk)
    return digest.hexdigest()


async def _tagged(chunks: AsyncIterator[bytes], source: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except VolumeError as e:
        raise _SourceBroke(f"reading {source}: {e}") from None


async def copy_value(volumes: Volumes, key: bytes, sources: list[str], targets: list[str],
                     md5: str | None) -> str:
    """Stream the value to every target from the first source that gives it whole (and
    with `md5`, when given); the source used. Raises CopyError otherwise."""
    errors = []
    for source in sources:
        try:
            response = await volumes.open(source, key)
        except VolumeError as e:
            errors.append(str(e))
            continue
        length = response.headers.get(b"content-length")
        try:
            async with aclosing(volumes.chunks(response)) as chunks:
                written = await volumes.write(targets, key, _tagged(chunks, source),
                                              int(length) if length is not None else None,
                                              md5=md5 is not None)
        except _SourceBroke as e:
            errors.append(str(e))  # nginx drops an upload cut off, so the targets hold nothing
            continue
        except VolumeError as e:
            await volumes.delete_all(targets, key)  # a target that did finish must not keep it
            raise CopyError(f"copying from {source} failed: {e}") from None
        if md5 is None or written == md5:
            return source
        # a corrupt source must not spread: undo, and try the next one
        await volumes.delete_all(targets, key)
        errors.append(f"{source} holds md5 {written}, the record says {md5}")
    raise CopyError("no replica gave the value: " + "; ".join(errors or ["none listed"]))


async def rebalance_key(index: Index, volumes: Volumes, config: Config, key: bytes,
                        record: Record) -> list[str] | None:
    """Move one key to today's placement; None when it is there already, else the old
    replicas whose file could not be deleted (orphans now).

    The record's state and md5 are kept. Raises RebalanceError when the copy fails.
    """
    target = config.placement(key)
    if list(record.replicas) == target:
        return None
    missing = [r for r in target if r not in record.replicas]
    if missing:
        try:
            await copy_value(volumes, key, list(record.replicas), missing, record.md5)
        except CopyError as e:
            raise RebalanceError(str(e)) from None
    index.put(key, Record(tuple(target), record.state, record.md5))
    # a failed delete leaves an orphan file, never a missing value: the record is moved
    return await volumes.delete_all([r for r in record.replicas if r not in target], key)


async def rebalance(config: Config, index: Index, volumes: Volumes,
                    progress: Progress) -> None:
    """Move every key whose replicas differ from today's placement; a key that fails stays
    as it was, is reported, and the run goes on. A second run finds nothing to move."""
    progress.phase("rebalance", "keys", total=count_keys(index))

    async def one(item: tuple[bytes, Record]) -> None:
        key, record = item
        progress.advance()
        progress.count("keys")
        if record.state is State.WRITING:
            # a write in progress or cut off: its files may not exist; repair settles it
            progress.count("skipped (writing)")
            return
        try:
            left = await rebalance_key(index, volumes, config, key, record)
        except RebalanceError as e:
            progress.problem("failed", f"{shown(key)}: {e}")
            return
        if left is None:
            progress.count("in place")
            return
        progress.count("moved")
        for replica in left:
            progress.note(f"orphan: {shown(key)} on {replica}: moved, but deleting it failed")

    await for_each(index.items(), one, config.concurrency)


def main(config: Config) -> int:
    return run_offline(config, rebalance, "rebalance")
