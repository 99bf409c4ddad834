"""The master process: one store, its two faces (the native API and S3) on one HTTP server
(and S3 alone on `-s3_port` when given), and the lifecycle: serve until SIGTERM or SIGINT, let
requests in flight finish, close the index. A master over a LevelDB index also serves the index
to the offline commands run meanwhile (mkv/index/owner.py). With `-workers N`, N such
processes on one port, and for LevelDB the owner of the index apart, under mkv/supervisor.py."""

import asyncio
import logging
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import NamedTuple

import uvloop

from mkv.admin.endpoint import admin_handler
from mkv.admin.master import RATE_SECONDS, MasterAdmin
from mkv.admin.workers import SHARE_SECONDS, SharedFigures
from mkv.config import Config
from mkv.http.messages import Handler, Pending, Request, Response
from mkv.http.server import HTTPServer
from mkv.index import (
    Index,
    IndexLocked,
    IndexUnavailable,
    LevelDBIndex,
    is_postgres_url,
    open_index,
)
from mkv.index.owner import IndexOwner, socket_path
from mkv.index.remote import RemoteIndex
from mkv.metrics import RequestMetrics
from mkv.native import EXTRA_METHODS, NativeAPI
from mkv.s3.face import S3, is_s3
from mkv.store import REFUSED, Store
from mkv.supervisor import Supervisor
from mkv.tasks import Tasks
from mkv.volumes.replicas import Volumes


def faces(native: NativeAPI, s3: S3) -> Handler:
    """One handler for both faces: S3's requests to S3 (checked first: S3 also POSTs), the
    rest to the native API."""
    native_handle, s3_handle = native.handle, s3.handle

    def handle(req: Request) -> Response | Pending | Awaitable[Response]:
        return s3_handle(req) if is_s3(req) else native_handle(req)
    return handle


def serve(config: Config) -> int:
    """Run the master until SIGTERM or SIGINT; the index is closed on the way out."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s",
                        level=logging.INFO if config.verbose else logging.WARNING)
    if config.workers > 1:
        own = None if is_postgres_url(config.db) else (lambda told: _child(_own(config, told)))
        with tempfile.TemporaryDirectory(prefix="mkv-workers-") as figures:
            def work(slot: int) -> int:
                return _child(_serve(config, Worker(slot, Path(figures))))
            return Supervisor(config.workers, work, own).run()
    uvloop.run(_serve(config))
    return 0


class Worker(NamedTuple):
    """Where a worker of -workers N is: its slot (1..N), and the directory of their figures."""

    slot: int
    figures: Path


def _child(life: Coroutine[None, None, None]) -> int:
    """A forked process's life on a loop of its own: its exit status."""
    try:
        uvloop.run(life)
    except (IndexLocked, IndexUnavailable) as e:
        print(f"mkv: {e}", file=sys.stderr, flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT. Installed before a port opens: whoever sees it open may stop
    us at once."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def _own(config: Config, told: int) -> None:
    """The index's owner among -workers: open LevelDB, serve it on its socket, say so on
    `told`, and close it cleanly when stopped."""
    stop = _stop_event()
    index = LevelDBIndex(config.db)
    owner = IndexOwner(index, config.db)
    try:
        await owner.start()
        os.write(told, b"1")
        os.close(told)
        await stop.wait()
    finally:
        await owner.close()
        await index.close()


async def _every(seconds: float, call: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        call()


async def _serve(config: Config, worker: Worker | None = None) -> None:
    stop = _stop_event()
    index: Index
    owner = None
    if worker is not None and not is_postgres_url(config.db):
        index = RemoteIndex(socket_path(config.db))  # connects on first use
    else:
        index = await open_index(config.db, serving=True)
    if isinstance(index, LevelDBIndex):  # served to the offline commands run meanwhile
        owner = IndexOwner(index, config.db)
        await owner.start()
    try:
        await _serve_until_stopped(config, index, stop, worker)
    finally:
        if owner is not None:
            await owner.close()
        await index.close()


async def _serve_until_stopped(config: Config, index: Index, stop: asyncio.Event,
                               worker: Worker | None) -> None:
    volumes = Volumes.for_config(config)
    volumes.health.watch(config.volumes)
    store = Store(config, index, volumes)
    s3 = S3(store)
    options = {"access_log": config.verbose, "idle_timeout": config.idletimeout,
               "read_timeout": config.readtimeout, "refusals": REFUSED}
    # counted only when someone can read them: timing each request costs the GET path
    requests = RequestMetrics() if config.admin_port else None
    tasks = Tasks()  # the admin's sampler
    servers = [HTTPServer(faces(NativeAPI(store), s3), extra_methods=EXTRA_METHODS,
                          metrics=requests, **options)]
    reuse_port = worker is not None
    await servers[0].start(None, config.port, reuse_port=reuse_port)
    also = ""
    if config.s3_port:
        servers.append(HTTPServer(s3.handle_own_port, metrics=requests, **options))
        await servers[-1].start(None, config.s3_port, reuse_port=reuse_port)
        also += f", S3 on :{config.s3_port}"
    if config.admin_port:
        admin = MasterAdmin(config, store, s3, requests)  # type: ignore[arg-type]
        admin.sample()
        tasks.start(_every(RATE_SECONDS, admin.sample))
        families, status = admin.families, admin.status
        if worker is not None:  # whichever worker answers shows them all
            shared = SharedFigures(worker.figures, worker.slot, admin.families, admin.snapshot)
            shared.publish()
            tasks.start(_every(SHARE_SECONDS, shared.publish))
            families, status = shared.families, shared.status
        servers.append(HTTPServer(admin_handler(families, status), **options))
        await servers[-1].start(None, config.admin_port, reuse_port=reuse_port)  # a worker answers
        also += f", admin on :{config.admin_port}"
    print(f"mkv master listening on :{config.port}{also}, volumes "
          f"{','.join(config.volumes)}, {config.replicas} replicas, {config.subvolumes} "
          f"subvolumes", file=sys.stderr, flush=True)
    await stop.wait()
    await tasks.close()
    await asyncio.gather(*(server.shutdown(grace=10.0) for server in servers))
    await s3.close()
    await volumes.close()
