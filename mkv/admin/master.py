"""What a master shows on its admin port: its requests, store, volumes, S3 face and index, as
metrics families and as the status page's snapshot (served by mkv/admin/endpoint.py)."""

import time
from collections import deque

from mkv.admin.status_page import Snapshot, VolumeRow, page, rates
from mkv.config import Config
from mkv.metrics import Family, RequestMetrics, counter, gauge
from mkv.ops.runs import last_runs
from mkv.s3.face import S3
from mkv.store import Store

RATE_SECONDS = 10.0  # the status page's rates: a sample this often
RATE_SAMPLES = 31  # five minutes of them


class MasterAdmin:
    """What a master shows: its requests, its store, its volumes, its S3 face, its index."""

    def __init__(self, config: Config, store: Store, s3: S3, requests: RequestMetrics) -> None:
        self.config = config
        self.store = store
        self.volumes = store.volumes
        self.s3 = s3
        self.requests = requests
        self.rates: deque[tuple[float, int, int]] = deque(maxlen=RATE_SAMPLES)

    def sample(self) -> None:
        """Take the totals now: the page's rates are differences of these samples."""
        answers = self.requests.answers
        errors = sum(n for (_, status), n in answers.items() if status >= 500)
        self.rates.append((time.time(), sum(answers.values()), errors))

    def families(self) -> list[Family]:
        volumes, heads = self.volumes, self.volumes.heads
        health = volumes.health
        stats = self.store.index.stats()
        return [
            *self.requests.families(),
            counter("mkv_head_checks_total", "HEAD checks of replicas, by outcome.",
                    heads.outcomes, ("outcome",)),
            gauge("mkv_keys_busy", "Keys with a write, delete or move in flight.",
                  [((), len(self.store.locks.busy))]),
            counter("mkv_key_busy_refusals_total", "Requests refused (409) as their key was "
                    "busy.", {(): self.store.locks.conflicts}, ()),
            gauge("mkv_volume_up", "1 when the master believes the volume up.",
                  [((("volume", v),), 0 if v in health.down else 1)
                   for v in self.config.volumes]),
            gauge("mkv_volume_probe_seconds", "The last health probe's round trip.",
                  [((("volume", v),), s) for v, s in sorted(health.latency.items())]),
            counter("mkv_volume_errors_total", "Exchanges with a volume that failed.",
                    dict(volumes.pool.errors), ("volume",)),
            counter("mkv_s3_requests_total", "S3 requests, by operation and error code "
                    "(empty: success).", self.s3.answered, ("operation", "code")),
            *self.s3.lifecycle.families(),
            gauge("mkv_index_info", "The index engine.", [((("engine", stats["engine"]),), 1)]),
            *([gauge("mkv_index_bytes", "The index's size on disk, as the engine estimates it.",
                     [((), stats["bytes"])])] if "bytes" in stats else []),
            gauge("mkv_start_time_seconds", "When the master started (Unix time).",
                  [((), self.requests.started)]),
        ]

    def snapshot(self) -> Snapshot:
        health = self.volumes.health
        errors = self.volumes.pool.errors
        runs = last_runs(self.config.db)
        counted = next((run["keys_per_volume"] for run in runs
                        if run.get("command") == "verify" and "keys_per_volume" in run), {})
        rows = [VolumeRow(v, v not in health.down,
                          None if v in health.down else health.latency.get(v), errors.get(v, 0),
                          self.config.domain_of.get(v, v), self.config.weight_of.get(v, 1),
                          counted.get(v))
                for v in self.config.volumes]
        stats = self.store.index.stats()
        per_second, errors_per_second = rates(list(self.rates))
        window = self.rates[-1][0] - self.rates[0][0] if len(self.rates) > 1 else 0.0
        return Snapshot(volumes=rows, index=stats, per_second=per_second,
                        errors_per_second=errors_per_second, window=window,
                        answers=dict(self.requests.answers), started=self.requests.started,
                        busy=len(self.store.locks.busy), runs=runs,
                        replicas=self.config.replicas, port=self.config.port)

    def status(self) -> bytes:
        return page(self.snapshot())
