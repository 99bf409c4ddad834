"""The master process: one store, its two faces (the native API and S3) on one HTTP server
(and S3 alone on `-s3_port` when given), and the lifecycle: serve until SIGTERM or SIGINT, let
requests in flight finish, close the index."""

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from mkv.admin import RATE_SECONDS, MasterAdmin, admin_handler
from mkv.config import Config
from mkv.http.server import HTTPServer, Request, Response
from mkv.index import Index, open_index
from mkv.metrics import RequestMetrics
from mkv.native import EXTRA_METHODS, NativeAPI
from mkv.s3.face import S3, is_s3
from mkv.store import Store
from mkv.volumes import Volumes

Handler = Callable[[Request], Response | Awaitable[Response]]


def faces(native: NativeAPI, s3: S3) -> Handler:
    """One handler for both faces: S3's requests to S3 (checked first: S3 also POSTs), the
    rest to the native API."""
    native_handle, s3_handle = native.handle, s3.handle

    def handle(req: Request) -> Response | Awaitable[Response]:
        return s3_handle(req) if is_s3(req) else native_handle(req)
    return handle


def serve(config: Config) -> int:
    """Run the master until SIGTERM or SIGINT; the index is closed on the way out."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s",
                        level=logging.INFO if config.verbose else logging.WARNING)
    uvloop.run(_serve(config))
    return 0


def _every(seconds: float, call: Callable[[], None]) -> asyncio.Task:
    async def repeat() -> None:
        while True:
            await asyncio.sleep(seconds)
            call()
    return asyncio.get_running_loop().create_task(repeat())


async def _serve(config: Config) -> None:
    # before the port opens: whoever sees it open may stop us at once
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    index = await open_index(config.db)
    try:
        await _serve_until_stopped(config, index, stop)
    finally:
        await index.close()


async def _serve_until_stopped(config: Config, index: Index, stop: asyncio.Event) -> None:
    volumes = Volumes.for_config(config)
    volumes.health.watch(config.volumes)
    store = Store(config, index, volumes)
    s3 = S3(store)
    timeouts = {"access_log": config.verbose, "idle_timeout": config.idletimeout,
                "read_timeout": config.readtimeout}
    # counted only when someone can read them: timing each request costs the GET path
    requests = RequestMetrics() if config.admin_port else None
    servers = [HTTPServer(faces(NativeAPI(store), s3), extra_methods=EXTRA_METHODS,
                          metrics=requests, **timeouts)]
    await servers[0].start(None, config.port)
    also = ""
    if config.s3_port:
        servers.append(HTTPServer(s3.handle_own_port, metrics=requests, **timeouts))
        await servers[-1].start(None, config.s3_port)
        also += f", S3 on :{config.s3_port}"
    if config.admin_port:
        admin = MasterAdmin(config, store, s3, requests)  # type: ignore[arg-type]
        admin.sample()
        sampler = _every(RATE_SECONDS, admin.sample)
        servers.append(HTTPServer(admin_handler(admin.families, admin.status), **timeouts))
        await servers[-1].start(None, config.admin_port)
        also += f", admin on :{config.admin_port}"
    print(f"mkv master listening on :{config.port}{also}, volumes "
          f"{','.join(config.volumes)}, {config.replicas} replicas, {config.subvolumes} "
          f"subvolumes", file=sys.stderr, flush=True)
    await stop.wait()
    if config.admin_port:
        sampler.cancel()
    await asyncio.gather(*(server.shutdown(grace=10.0) for server in servers))
    volumes.close()
