"""`mkv verify`: a read-only health check of the index against the volumes.

Every live key's replicas must hold its file (a HEAD each; with -checksum a streamed GET
whose md5 must equal the record's), and every file on the volumes must be claimed by a
record (else it is an orphan). With -domains, a live key with two replicas in one failure
domain while there are enough domains to spread them is `crowded` (`rebalance` spreads it).
One line per problem, a summary, exit 0 only when healthy. Unlinked and INIT records are
counted, not checked: their files may rightly be gone.
"""

import asyncio
from collections import Counter
from typing import NamedTuple

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.index import Index
from mkv.ops.progress import Progress, for_each, run_offline, shown
from mkv.ops.walk import VolumeFile, Walk
from mkv.record import Record, State
from mkv.volumes.health import volume_of
from mkv.volumes.replicas import Volumes
from mkv.volumes.transfer import read_md5

HEAD_TIMEOUT = 1.0  # when -voltimeout is 0 (the master's "no check"): verify always checks


class Checked(NamedTuple):
    replica: str
    fault: str  # "" when good, else "missing" or "corrupt"
    detail: str = ""


async def _md5_or_error(volumes: Volumes, replica: str, key: bytes) -> tuple[str | None, str]:
    try:
        return await read_md5(volumes, replica, key), ""
    except VolumeError as e:
        return None, str(e)


async def check_replicas(config: Config, volumes: Volumes, key: bytes,
                         record: Record) -> list[Checked]:
    """What is wrong with each replica of a live record, if anything.

    Without -checksum a replica is good when it answers a HEAD. With it, when its content's
    md5 equals the record's; a record without an md5 needs its replicas to agree.
    """
    if not config.checksum:
        timeout = config.voltimeout or HEAD_TIMEOUT
        found = await asyncio.gather(*(volumes.exists(r, key, timeout) for r in record.replicas))
        return [Checked(r, "" if ok else "missing")
                for r, ok in zip(record.replicas, found, strict=True)]
    read = await asyncio.gather(*(_md5_or_error(volumes, r, key) for r in record.replicas))
    agree = len({md5 for md5, _ in read if md5 is not None}) <= 1
    checked = []
    for replica, (md5, error) in zip(record.replicas, read, strict=True):
        if md5 is None:
            checked.append(Checked(replica, "missing", error))
        elif record.md5 is not None and md5 != record.md5:
            checked.append(Checked(replica, "corrupt", f"md5 {md5}, the record says {record.md5}"))
        elif record.md5 is None and not agree:
            checked.append(Checked(replica, "corrupt", f"md5 {md5}: the replicas differ and the "
                                   "record has no md5 to tell which is right"))
        else:
            checked.append(Checked(replica, ""))
    return checked


async def claimed(index: Index, file: VolumeFile) -> bool:
    """Whether a record (in any state) names this file as one of its key's replicas."""
    if file.key is None:
        return False
    record = await index.get(file.key)
    return record is not None and file.replica in record.replicas


def problem_line(key: bytes, checked: Checked) -> str:
    detail = f" ({checked.detail})" if checked.detail else ""
    return f"{shown(key)} on {checked.replica}{detail}"


def describe(file: VolumeFile) -> str:
    what = f"key {shown(file.key)}" if file.key is not None else file.problem
    return f"{file.url} ({what})"


def crowding(replicas: tuple[str, ...], domain_of: dict[str, str], domains: int) -> str:
    """Which failure domain holds two of the replicas although `domains` could spread them;
    "" when none does."""
    seen = Counter(domain_of.get(volume_of(r), volume_of(r)) for r in replicas)
    if len(seen) >= min(len(replicas), domains):
        return ""
    return ", ".join(f"{n} replicas in {domain}" for domain, n in seen.items() if n > 1)


async def verify(config: Config, index: Index, volumes: Volumes, progress: Progress) -> None:
    progress.phase("verify: checking keys", "keys", total=await index.count())
    spread = len(set(config.domain_of.values())) if config.domains else 0
    per_volume: Counter[str] = Counter()  # live keys with a replica there: the status page's
    progress.figures["keys_per_volume"] = per_volume

    async def one(item: tuple[bytes, Record]) -> None:
        key, record = item
        progress.advance()
        progress.count("keys")
        if record.state is not State.LIVE:
            progress.count("unlinked" if record.state is State.UNLINKED else "writing")
            return
        progress.count("live")
        per_volume.update(volume_of(r) for r in record.replicas)
        if spread:
            crowded = crowding(record.replicas, config.domain_of, spread)
            if crowded:
                progress.problem("crowded", f"{shown(key)}: {crowded}")
        for checked in await check_replicas(config, volumes, key, record):
            if checked.fault:
                progress.problem(checked.fault, problem_line(key, checked))

    await for_each(index.items(), one, config.concurrency)
    walk = Walk(volumes, config.volumes, config.concurrency, progress)
    progress.phase("verify: looking for orphans", "files", fraction=walk.fraction)

    async def found(file: VolumeFile) -> None:
        progress.advance()
        progress.count("files")
        if not await claimed(index, file):
            progress.problem("orphan", describe(file))

    await walk.run(found)


def main(config: Config) -> int:
    return run_offline(config, verify, "verify")
