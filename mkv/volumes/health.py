"""Which volumes the master believes down: a probe of each volume every second, and any request
that could not reach a volume, decide. A PUT places around the volumes down (SPEC §4), a GET
asks their replicas last; a line is logged at each change.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable

from mkv.tasks import Tasks

log = logging.getLogger("mkv")

PROBE_SECONDS = 1.0  # between two probes of a volume
PROBE_TIMEOUT = 1.0  # a probe not answered by then failed
DOWN_AFTER_PROBES = 2  # failed probes in a row: one slow answer on a loaded machine is no verdict

Probe = Callable[[str], Awaitable[bool]]  # whether `host:port` answered at all


class VolumeState:
    """What the master believes of one volume. A request that could not reach it marks it down
    at once (and a probe follows); probes mark it down after DOWN_AFTER_PROBES failures in a
    row, and up at the first success."""

    __slots__ = ("up", "failed_probes")

    def __init__(self) -> None:
        self.up = True
        self.failed_probes = 0

    def probed(self, answered: bool) -> bool:
        """Take a probe's outcome; whether `up` changed."""
        was = self.up
        self.failed_probes = 0 if answered else self.failed_probes + 1
        if answered:
            self.up = True
        elif self.failed_probes >= DOWN_AFTER_PROBES:
            self.up = False
        return self.up != was

    def unreachable(self) -> bool:
        """A request could not reach the volume; whether `up` changed."""
        was, self.up = self.up, False
        return was


def volume_of(replica: str) -> str:
    """The volume (`host:port`) of a replica (`host:port` or `host:port/svXX`)."""
    return replica.partition("/")[0]


def asked_last(replicas: list[str], down: Collection[str]) -> list[str]:
    """The replicas in their order, those on volumes down moved to the end."""
    return ([r for r in replicas if volume_of(r) not in down]
            + [r for r in replicas if volume_of(r) in down])


class Health:
    """The volumes believed down (`down`, a set of `host:port`, read on every GET and PUT),
    kept up to date by probes and by the requests that fail to reach a volume."""

    def __init__(self, probe: Probe) -> None:
        self.down: set[str] = set()
        self._probe = probe
        self._states: dict[str, VolumeState] = {}
        self._probing: dict[str, asyncio.Task] = {}  # at most one probe in flight per volume
        self._tasks = Tasks()  # the watcher and the probes
        self.latency: dict[str, float] = {}  # the last answered probe's round trip, seconds

    def watch(self, volumes: Iterable[str], interval: float = PROBE_SECONDS) -> None:
        """Probe each volume every `interval` seconds until `close()`."""
        self._tasks.start(self._probe_every(list(volumes), interval))

    async def _probe_every(self, volumes: list[str], interval: float) -> None:
        while True:
            for volume in volumes:
                self._probe_soon(volume)
            await asyncio.sleep(interval)

    def _probe_soon(self, volume: str) -> asyncio.Task | None:
        """The volume's probe in flight, or a new one; None once closed."""
        task = self._probing.get(volume)
        if task is None and not self._tasks.closed:
            task = self._probing[volume] = self._tasks.start(self._probe_once(volume))
        return task

    async def _probe_once(self, volume: str) -> None:
        started = time.perf_counter()
        try:
            answered = await self._probe(volume)
        finally:
            del self._probing[volume]
        if answered:
            self.latency[volume] = time.perf_counter() - started
        state = self._state(volume)
        if state.probed(answered):
            self._changed(volume, state, "no answer to probes")

    def unreachable(self, volume: str, why: str) -> None:
        """A request could not reach `volume`: believe it down now, and probe it at once (a
        volume that answers the probe is up again)."""
        state = self._state(volume)
        if state.unreachable():
            self._changed(volume, state, why)
        self._probe_soon(volume)

    async def recheck(self, volumes: Iterable[str]) -> None:
        """Probe these volumes now (joining probes in flight) and take their answers."""
        tasks = [task for volume in volumes if (task := self._probe_soon(volume)) is not None]
        if tasks:
            await asyncio.wait(tasks)  # not cancelled with a caller that gives up

    def _state(self, volume: str) -> VolumeState:
        state = self._states.get(volume)
        if state is None:
            state = self._states[volume] = VolumeState()
        return state

    def _changed(self, volume: str, state: VolumeState, why: str) -> None:
        if state.up:
            self.down.discard(volume)
            log.warning("volume %s is up", volume)
        else:
            self.down.add(volume)
            log.warning("volume %s is down: %s", volume, why)

    async def close(self) -> None:
        """Stop probing: the watcher and the probes in flight are cancelled and awaited."""
        await self._tasks.close()
