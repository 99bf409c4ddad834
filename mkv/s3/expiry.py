"""S3 lifecycle, applied: Get/Put/DeleteBucketLifecycleConfiguration, and the expiry pass that
removes what the rules (mkv/s3/lifecycle.py) say has expired, in the master's background every
`-s3_lifecycle_every` or once by `mkv … expire`.

Bucket `b` is the key prefix `/b/`, so a rule expires native keys under it too.

How a pass finds old objects without reading every record: the index keeps no write time (its
record format is Go mkv's), but each volume's JSON listing gives every file's mtime and size.
A pass walks the listings (mkv/ops/walk.py, as `rebuild` does, every volume at once) and looks
at a file's name only (and walks all volumes but `-replicas` - 1, as a key has a copy on one
of those anyway): a key outside every bucket that has rules, or outside its rules'
prefixes, costs a dictionary lookup; one inside, a comparison of its mtime with the rules'.
Only a file whose rule says it has expired is looked at further, under its key's lock: its
record read, the value's time and size asked of a replica again (the listing may be stale),
its tags read if a rule filters by them; then it is deleted as DeleteObject deletes (unlinked
under -protect). A key being written is skipped: it is new. Multipart uploads come from the S3
state's list of uploads, by bucket. A bucket with no rules costs nothing, and a cluster with no
rules is not walked at all.

Among several masters (over PostgreSQL, or -workers) a pass is claimed in the S3 state, so one
of them runs it each period.
"""

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from mkv.config import Config
from mkv.http.client import VolumeError
from mkv.http.messages import Request, Response
from mkv.index import Index, IndexUnavailable
from mkv.index.base import KeyBusy
from mkv.metrics import Family, counter, gauge
from mkv.ops.progress import Progress, run_offline, shown
from mkv.ops.walk import VolumeFile, Walk
from mkv.record import State
from mkv.s3.access import Access
from mkv.s3.buckets import Buckets
from mkv.s3.deletes import Deletes
from mkv.s3.engine import open_state
from mkv.s3.errors import S3Error
from mkv.s3.lifecycle import (
    Rule,
    abort_at,
    configuration_document,
    expiry,
    needs_tags,
    parse_configuration,
)
from mkv.s3.objects import Objects
from mkv.s3.payload import read_xml
from mkv.s3.sigv4 import Signed
from mkv.s3.state import S3State, UploadBusy
from mkv.s3.xml import XML
from mkv.store import Store
from mkv.tasks import Periodic
from mkv.volumes.replicas import Volumes

log = logging.getLogger("mkv")

PASS = "lifecycle"  # the pass's name where masters claim it


def walked(volumes: tuple[str, ...], replicas: int, start: int) -> tuple[str, ...]:
    """The volumes a pass walks: all but `replicas` - 1 of them, from `start` on. A key has
    its copies on `replicas` distinct volumes, so at least one is walked; a pass starts at a
    random volume, so over passes each is walked (a key short of copies waits for that)."""
    count = len(volumes) - min(max(replicas, 1), len(volumes)) + 1
    return tuple(volumes[(start + i) % len(volumes)] for i in range(count))


class _LogLines:
    """Where a background pass's progress lines go: the master's log."""

    def write(self, text: str) -> None:
        if text.strip():
            log.info("S3 lifecycle: %s", text.strip())

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@dataclass
class Passes:
    """What the passes run by this master did, for the metrics."""

    runs: int = 0
    outcomes: Counter = field(default_factory=Counter)  # expired, aborted, busy, failed
    files_listed: int = 0
    last_started: float = 0.0
    last_seconds: float = 0.0
    under_way: Progress | None = None


class Lifecycle:
    """Buckets' lifecycle configurations, and the pass that applies them. Started with
    `background`, it runs a pass every -s3_lifecycle_every (`stop`, `closed`)."""

    def __init__(self, store: Store, state: S3State, buckets: Buckets, deletes: Deletes,
                 objects: Objects, background: bool = True) -> None:
        self.store = store
        self.config = store.config
        self.state = state
        self.buckets = buckets
        self.deletes = deletes
        self.objects = objects
        self.passes = Passes()
        # tried twice a period: a claim made just short of it by another master is not
        # missed by a whole period
        every = self.config.s3_lifecycle_every if background else 0
        self._passes = Periodic(self._background_pass, min(every, 60.0) / 2,
                                first=min(every, 60.0) / 2)

    # --- the configuration ---
    async def configuration(self, method: bytes, bucket: str, req: Request,
                            signed: Signed | None) -> Response:
        """Get/Put/DeleteBucketLifecycle(Configuration)."""
        settings = await self.buckets.settings(bucket)
        if method == b"GET":
            rules = (settings or {}).get("lifecycle")
            if not rules:
                raise S3Error(404, "NoSuchLifecycleConfiguration", "The lifecycle "
                              "configuration does not exist", BucketName=bucket)
            return Response(200, [XML], configuration_document(rules))
        if method == b"PUT":
            rules = parse_configuration(await read_xml(req, signed))
            await self.buckets.set_setting(bucket, "lifecycle", rules)
            return Response(200, [("Content-Length", "0")])
        if settings is not None:
            await self.buckets.set_setting(bucket, "lifecycle", None)
        return Response(204)

    # --- the pass ---
    async def rules(self) -> dict[str, list[Rule]]:
        """The enabled rules of each bucket that has some."""
        rules_of = {name: [rule for rule in settings.get("lifecycle") or () if rule["enabled"]]
                    for name, settings in (await self.state.bucket_settings()).items()}
        return {name: rules for name, rules in rules_of.items() if rules}

    async def run_pass(self, progress: Progress, now: float | None = None) -> None:
        """Expire what the rules say has expired as of `now`, counting into `progress`."""
        now = time.time() if now is None else now
        day = self.config.s3_lifecycle_day
        rules_of = await self.rules()
        await self._abort_uploads(rules_of, now, day, progress)
        expiring = {name.encode(): rules for name, rules in rules_of.items()
                    if any(rule["expiration"] for rule in rules)}
        if not expiring:
            return
        decided: set[bytes] = set()  # a key has a file on each replica: looked at once

        async def on_file(file: VolumeFile) -> None:
            progress.advance()
            key = file.key
            slash = key.find(b"/", 1) if key is not None else -1
            rules = expiring.get(key[1:slash]) if key is not None and slash > 0 else None
            if rules is None or key in decided:
                return
            name = key[slash + 1:].decode("utf-8", "surrogateescape")
            size = file.size if file.size >= 0 else None
            due = expiry(rules, name, size, None, file.mtime, day)
            if due is None or due[0] > now:
                return
            decided.add(key)
            await self._expire(key, name, rules, file.replica, now, day, progress)

        progress.phase("expire", "files")
        walk = Walk(self.store.volumes, walked(self.config.volumes, self.config.replicas,
                                               random.randrange(len(self.config.volumes))),
                    self.config.concurrency, progress)
        progress.fraction = walk.fraction
        await walk.run(on_file)

    async def _abort_uploads(self, rules_of: dict[str, list[Rule]], now: float, day: float,
                             progress: Progress) -> None:
        for bucket, rules in rules_of.items():
            if not any(rule["abort_days"] for rule in rules):
                continue
            prefix = f"/{bucket}/".encode()
            for upload in await self.state.uploads(prefix):
                name = upload.key[len(prefix):].decode("utf-8", "surrogateescape")
                due = abort_at(rules, name, upload.initiated, day)
                if due is None or due > now:
                    continue
                try:
                    if await self.state.remove(upload.id):
                        progress.count("aborted")
                except UploadBusy:  # completing now: not abandoned after all
                    progress.count("busy")

    async def _expire(self, key: bytes, name: str, rules: list[Rule], replica: str,
                      now: float, day: float, progress: Progress) -> None:
        """Delete the key if, looked at again under its lock, it has expired."""
        try:
            async with self.store.locks.hold(key):
                record = await self.store.index.get(key)
                if record is None or record.state is not State.LIVE \
                        or replica not in record.replicas:  # gone, or the file is not its
                    return
                info = await self.objects.stat(key, record)
                if info is None:
                    return
                tags: list = []
                if any(needs_tags(rule) for rule in rules):
                    metadata = (await self.state.kept(key, record.md5)).metadata or {}
                    tags = metadata.get("tags", [])
                due = expiry(rules, name, info.size, tags, info.modified, day)
                if due is None or due[0] > now:
                    return
                if await self.deletes.remove_value(key, record):
                    progress.problem("failed", f"{shown(key)}: a replica could not be "
                                     "deleted; the key stays unlinked")
                    return
                progress.count("expired")
        except KeyBusy:  # being written: new, not expired
            progress.count("busy")

    # --- in the background ---
    async def _background_pass(self) -> None:
        try:
            # with no rules anywhere nothing is claimed: the state is not written
            if await self.rules() and await self.state.claim_pass(
                    PASS, self.config.s3_lifecycle_every, time.time()):
                await self._counted_pass()
        except (OSError, IndexUnavailable, VolumeError) as e:  # the next period tries again
            log.warning("S3 lifecycle pass failed: %s", e)

    async def _counted_pass(self) -> None:
        progress = Progress(PASS, out=_LogLines(), err=_LogLines())
        self.passes.under_way = progress
        self.passes.last_started = time.time()
        started = time.monotonic()
        try:
            await self.run_pass(progress)
        finally:
            self.passes.runs += 1
            self.passes.outcomes.update(progress.counts)
            self.passes.files_listed += progress.done
            self.passes.last_seconds = time.monotonic() - started
            self.passes.under_way = None
            log.info("S3 lifecycle: %s", progress.summary())

    def families(self) -> list[Family]:
        passes = self.passes
        under_way = passes.under_way
        return [
            counter("mkv_s3_lifecycle_passes_total", "Lifecycle passes this master ran.",
                    {(): passes.runs}, ()),
            counter("mkv_s3_lifecycle_outcomes_total", "What lifecycle passes did: objects "
                    "expired, uploads aborted, keys busy (skipped), deletes failed.",
                    {(name,): n for name, n in passes.outcomes.items()}, ("outcome",)),
            counter("mkv_s3_lifecycle_files_listed_total", "Volume files lifecycle passes "
                    "looked at.", {(): passes.files_listed + (under_way.done if under_way
                                                               else 0)}, ()),
            gauge("mkv_s3_lifecycle_last_pass_start_seconds", "When the last lifecycle pass "
                  "began (Unix time; 0: none yet).", [((), passes.last_started)]),
            gauge("mkv_s3_lifecycle_last_pass_seconds", "How long the last lifecycle pass "
                  "took.", [((), passes.last_seconds)]),
            gauge("mkv_s3_lifecycle_pass_fraction", "The share of the pass under way done "
                  "(0: none under way).",
                  [((), under_way.fraction() if under_way and under_way.fraction else 0.0)]),
        ]

    def stop(self) -> None:
        self._passes.stop()

    async def closed(self) -> None:
        await self._passes.closed()


def main(config: Config) -> int:
    """`mkv … expire`: one pass now, with progress; 0 when nothing failed. It runs beside a
    serving master as the other commands do (through its index, with its key locks)."""
    async def operation(config: Config, index: Index, volumes: Volumes,
                        progress: Progress) -> None:
        store = Store(config, index, volumes)
        state = open_state(store, command=True)
        store.on_change.append(state.forget)  # an expired key's S3 documents go with it
        try:
            access = Access(index, state, set())
            buckets = Buckets(store, state, access)
            objects = Objects(store, state, buckets)
            lifecycle = Lifecycle(store, state, buckets, Deletes(store, objects), objects,
                                  background=False)
            await lifecycle.run_pass(progress)
        finally:
            await state.close()

    return run_offline(config, operation, "expire")
