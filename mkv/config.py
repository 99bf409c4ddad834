"""The master's settings, as Go mkv's flags name them, and Go-style duration parsing."""

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

from mkv.placement import key2volume, place, placement_key

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}  # micro: Go takes both the micro sign and Greek mu
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as `1s`, `500ms` or `1m30s`; `0` alone is allowed."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return total


@dataclass
class Config:
    db: str = ""
    volumes: tuple[str, ...] = ()
    port: int = 3000
    replicas: int = 3
    subvolumes: int = 10
    fallback: str = ""
    protect: bool = False
    md5sum: bool = True
    voltimeout: float = 1.0
    writetimeout: float = 30.0
    idletimeout: float = 60.0
    secret: str = ""  # shared with the volumes: see mkv/volumes/security.py
    signedreads: bool = False
    signexpiry: float = 60.0
    readtimeout: float = 30.0
    verbose: bool = False
    vdir_colocation: bool = False
    workers: int = 1  # master processes serving one port (SO_REUSEPORT)
    strict_placement: bool = False  # Go mkv's writes: today's placement even with a volume down
    domains: tuple[tuple[str, str], ...] = ()  # (volume, failure domain), SPEC §6
    weights: tuple[tuple[str, int], ...] = ()  # (volume, weight 1-100), SPEC §6
    # the S3 face (mkv/s3/)
    admin_port: int = 0  # /metrics and the status page; 0: none
    s3_port: int = 0  # a port where every request is S3's, signed or not; 0: none
    s3_keys: tuple[tuple[str, str], ...] = ()  # (access key, secret key): SigV4 checked if any
    s3_spool: str = ""  # S3's state beside LevelDB; "" means `<db>.s3` (PostgreSQL: its tables)
    s3_upload_ttl: float = 86400.0  # multipart uploads idle this long are removed; 0 never
    s3_lifecycle_every: float = 3600.0  # how often a lifecycle pass runs; 0 never (in the master)
    s3_lifecycle_day: float = 86400.0  # a lifecycle day's length: shorter only to test rules
    # offline operations (rebuild, rebalance, verify, repair)
    concurrency: int = 16
    checksum: bool = False
    orphans: str = "keep"
    grace: float = 3600.0

    def placement(self, key: bytes) -> list[str]:
        """Today's replicas for `key`."""
        pk = placement_key(key, self.vdir_colocation)
        if not self.domains and not self.weights:
            return key2volume(pk, list(self.volumes), self.replicas, self.subvolumes)
        return place(pk, list(self.volumes), self.replicas, self.subvolumes,
                     self.domain_of, self.weight_of)

    def placement_around(self, key: bytes, down: Collection[str]) -> list[str]:
        """Where `key` goes with the volumes `down` skipped by the same walk (SPEC §4, §6):
        fewer than -replicas when too few are up."""
        return place(placement_key(key, self.vdir_colocation), list(self.volumes),
                     self.replicas, self.subvolumes, self.domain_of, self.weight_of, down)

    @cached_property
    def domain_of(self) -> dict[str, str]:
        """Each volume's failure domain (itself when -domains names none)."""
        return {volume: volume for volume in self.volumes} | dict(self.domains)

    @cached_property
    def weight_of(self) -> dict[str, int]:
        return dict(self.weights)
