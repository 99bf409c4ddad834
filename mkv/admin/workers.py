"""The admin port of a master of `-workers N`: every worker binds it (SO_REUSEPORT), so
whichever answers a scrape must show the whole master. Each worker writes its figures every
SHARE_SECONDS to a file of its slot (1..N) in a directory the supervisor made; the answering
worker reads the others' and adds its own as they are now.

/metrics gives every worker's series with a `worker` label (its slot), so that a worker
replaced after a crash shows as a counter reset of that series, which Prometheus's rate()
handles, and `sum without (worker)` is the master's. The status page sums them: requests,
rates, busy keys; volumes and the index as the answering worker sees them.
"""

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from mkv.admin.status_page import Snapshot, VolumeRow, page
from mkv.metrics import Family, Sample

SHARE_SECONDS = 1.0


class SharedFigures:
    """One worker's part: publish its figures, and answer for all."""

    def __init__(self, directory: Path, slot: int, families: Callable[[], list[Family]],
                 snapshot: Callable[[], Snapshot]) -> None:
        self.directory = directory
        self.slot = slot
        self.own_families = families
        self.own_snapshot = snapshot

    def publish(self) -> None:
        """Write this worker's figures for the others (whole: written aside, then renamed)."""
        figures = {"families": self.own_families(), "snapshot": _snapshot_json(
            self.own_snapshot())}
        path = self.directory / f"worker-{self.slot}.json"
        aside = path.with_suffix(f".{os.getpid()}")
        aside.write_text(json.dumps(figures))
        os.replace(aside, path)

    def _others(self) -> list[tuple[int, dict]]:
        found = []
        for path in sorted(self.directory.glob("worker-*.json")):
            slot = int(path.stem.removeprefix("worker-"))
            if slot == self.slot:
                continue
            try:
                found.append((slot, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue  # being replaced this instant: next scrape
        return found

    def families(self) -> list[Family]:
        merged: dict[str, Family] = {}
        every = [(self.slot, self.own_families())] + [
            (slot, [_family(f) for f in figures["families"]]) for slot, figures in self._others()]
        for slot, families in sorted(every):
            for name, kind, text, samples in families:
                into = merged.setdefault(name, (name, kind, text, []))
                into[3].extend(_labelled(sample, slot) for sample in samples)
        return list(merged.values())

    def snapshot(self) -> Snapshot:
        snaps = [self.own_snapshot()] + [_snapshot(figures["snapshot"])
                                         for _, figures in self._others()]
        return combined(snaps)

    def status(self) -> bytes:
        return page(self.snapshot())


def combined(snaps: list[Snapshot]) -> Snapshot:
    """The master's snapshot from its workers' (the first is the answering one's)."""
    answers: Counter[tuple[str, int]] = Counter()
    for snap in snaps:
        answers.update(snap.answers)
    return replace(snaps[0], answers=dict(answers), busy=sum(s.busy for s in snaps),
                   per_second=sum(s.per_second for s in snaps),
                   errors_per_second=sum(s.errors_per_second for s in snaps),
                   started=min(s.started for s in snaps), workers=len(snaps))


def _labelled(sample: Sample, slot: int) -> Sample:
    series, labels, value = sample
    return series, (("worker", str(slot)), *labels), value


def _family(loaded: list) -> Family:
    name, kind, text, samples = loaded
    return name, kind, text, [(series, tuple(tuple(pair) for pair in labels), value)
                              for series, labels, value in samples]


def _snapshot_json(snap: Snapshot) -> dict:
    found = asdict(snap)
    found["answers"] = [[method, status, n] for (method, status), n in snap.answers.items()]
    return found


def _snapshot(loaded: dict) -> Snapshot:
    return Snapshot(**{**loaded, "volumes": [VolumeRow(**row) for row in loaded["volumes"]],
                       "answers": {(method, status): n
                                   for method, status, n in loaded["answers"]}})
