"""The master process: one store, its two faces (the native API and S3) on one HTTP server,
and the lifecycle: serve until SIGTERM or SIGINT, let requests in flight finish, close the
index."""

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from mkv.config import Config
from mkv.http.server import HTTPServer, Request, Response
from mkv.index import Index, open_index
from mkv.native import EXTRA_METHODS, NativeAPI
from mkv.s3.face import S3, is_s3
from mkv.store import Store
from mkv.volumes import Volumes

Handler = Callable[[Request], Response | Awaitable[Response]]


def faces(store: Store) -> Handler:
    """One handler for both faces: S3's requests to S3 (checked first: S3 also POSTs), the
    rest to the native API."""
    native, s3 = NativeAPI(store).handle, S3(store).handle

    def handle(req: Request) -> Response | Awaitable[Response]:
        return s3(req) if is_s3(req) else native(req)
    return handle


def serve(config: Config) -> int:
    """Run the master until SIGTERM or SIGINT; the index is closed on the way out."""
    logging.basicConfig(stream=sys.stderr, format="%(message)s",
                        level=logging.INFO if config.verbose else logging.WARNING)
    uvloop.run(_serve(config))
    return 0


async def _serve(config: Config) -> None:
    index = await open_index(config.db)
    try:
        await _serve_until_stopped(config, index)
    finally:
        await index.close()


async def _serve_until_stopped(config: Config, index: Index) -> None:
    volumes = Volumes.for_config(config)
    server = HTTPServer(faces(Store(config, index, volumes)), extra_methods=EXTRA_METHODS,
                        access_log=config.verbose, idle_timeout=config.idletimeout,
                        read_timeout=config.readtimeout)
    await server.start(None, config.port)
    print(f"mkv master listening on :{config.port}, volumes {','.join(config.volumes)}, "
          f"{config.replicas} replicas, {config.subvolumes} subvolumes", file=sys.stderr,
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(grace=10.0)
    volumes.close()
