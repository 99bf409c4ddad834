"""The master process: one store, its two faces (the native API and S3) on one HTTP server
(and S3 alone on `-s3_port` when given), and the lifecycle: serve until SIGTERM or SIGINT, let
requests in flight finish, close the index. With `-workers N` (a shared index: PostgreSQL), N
such processes forked on one port, and this one waiting on them."""

import asyncio
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable

import uvloop

from mkv.admin.endpoint import admin_handler
from mkv.admin.master import RATE_SECONDS, MasterAdmin
from mkv.config import Config
from mkv.http.messages import Handler, Pending, Request, Response
from mkv.http.server import HTTPServer
from mkv.index import Index, IndexUnavailable, open_index
from mkv.metrics import RequestMetrics
from mkv.native import EXTRA_METHODS, NativeAPI
from mkv.s3.face import S3, is_s3
from mkv.store import REFUSED, Store
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
        return _serve_workers(config)
    uvloop.run(_serve(config))
    return 0


def _serve_workers(config: Config) -> int:
    """Fork the workers (before any event loop or thread exists), pass SIGTERM and SIGINT on to
    them, and when one exits stop the rest: a supervisor restarts the whole."""
    workers = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            os._exit(_worker(config))
        workers.append(pid)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    status = 0
    while workers:
        pid, code = os.wait()
        workers.remove(pid)
        if os.waitstatus_to_exitcode(code) and not stopping:
            print(f"mkv: worker {pid} exited ({os.waitstatus_to_exitcode(code)}); stopping the "
                  "others", file=sys.stderr, flush=True)
            stop(signal.SIGTERM, None)
            status = 1
    return status


def _worker(config: Config) -> int:
    try:
        uvloop.run(_serve(config))
    except IndexUnavailable as e:
        print(f"mkv: {e}", file=sys.stderr, flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


async def _every(seconds: float, call: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        call()


async def _serve(config: Config) -> None:
    # before the port opens: whoever sees it open may stop us at once
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    index = await open_index(config.db, serving=True)
    try:
        await _serve_until_stopped(config, index, stop)
    finally:
        await index.close()


async def _serve_until_stopped(config: Config, index: Index, stop: asyncio.Event) -> None:
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
    shared = config.workers > 1
    await servers[0].start(None, config.port, reuse_port=shared)
    also = ""
    if config.s3_port:
        servers.append(HTTPServer(s3.handle_own_port, metrics=requests, **options))
        await servers[-1].start(None, config.s3_port, reuse_port=shared)
        also += f", S3 on :{config.s3_port}"
    if config.admin_port:
        admin = MasterAdmin(config, store, s3, requests)  # type: ignore[arg-type]
        admin.sample()
        tasks.start(_every(RATE_SECONDS, admin.sample))
        servers.append(HTTPServer(admin_handler(admin.families, admin.status), **options))
        await servers[-1].start(None, config.admin_port, reuse_port=shared)  # a worker answers
        also += f", admin on :{config.admin_port}"
    print(f"mkv master listening on :{config.port}{also}, volumes "
          f"{','.join(config.volumes)}, {config.replicas} replicas, {config.subvolumes} "
          f"subvolumes", file=sys.stderr, flush=True)
    await stop.wait()
    await tasks.close()
    await asyncio.gather(*(server.shutdown(grace=10.0) for server in servers))
    await s3.close()
    await volumes.close()
