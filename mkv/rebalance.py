"""Moving a key to today's placement: copy to the new replicas, rewrite the record, then
delete from replicas no longer used. The REBALANCE method and `mkv rebalance` share it.
"""

from mkv.config import Config
from mkv.httpclient import VolumeError
from mkv.index import Index
from mkv.record import Record
from mkv.volumes import Volumes


class RebalanceError(Exception):
    """The key could not be moved; its record and files are as they were."""


async def rebalance_key(index: Index, volumes: Volumes, config: Config, key: bytes,
                        record: Record) -> bool:
    """Move one key; True when anything changed. The record's state and md5 are kept."""
    target = config.placement(key)
    if list(record.replicas) == target:
        return False
    missing = [r for r in target if r not in record.replicas]
    if missing:
        await _copy(volumes, config, key, record, missing)
    index.put(key, Record(tuple(target), record.state, record.md5))
    # a failed delete leaves an orphan file, never a missing value: the record is already moved
    for replica in record.replicas:
        if replica not in target:
            try:
                await volumes.delete(replica, key)
            except VolumeError:
                pass
    return True


async def _copy(volumes: Volumes, config: Config, key: bytes, record: Record,
                missing: list[str]) -> None:
    errors = []
    for source in record.replicas:
        try:
            response = await volumes.open(source, key)
        except VolumeError as e:
            errors.append(str(e))
            continue
        length = response.headers.get(b"content-length")
        try:
            await volumes.write(missing, key, response.body,  # type: ignore[arg-type]
                                int(length) if length is not None else None, md5=False)
            return
        except VolumeError as e:
            raise RebalanceError(f"copying from {source} failed: {e}") from None
    raise RebalanceError("no replica has the value: " + "; ".join(errors))
