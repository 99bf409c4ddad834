"""Values between replicas: read one streamed to its md5, or copy it from the first source
that gives it whole (md5-checked when known) to new replicas. A copy that fails leaves nothing
new on the targets."""

import hashlib
from collections.abc import AsyncIterator
from contextlib import aclosing

from mkv.http.client import ClientResponse, VolumeError
from mkv.placement import key2path
from mkv.volumes.replicas import Volumes


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
                written = await volumes.write(targets, key2path(key), _tagged(chunks, source),
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
