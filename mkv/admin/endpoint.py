"""The admin listener (`-admin_port`): `/metrics` for Prometheus and `/` the status page. It is a
port of its own, so neither can shadow a key (a key may well be called `/metrics`).

A master serves both (mkv/admin/master.py says what); an offline command given
`-admin_port` serves its progress as metrics (`Progress.families`). Nothing here knows a face,
so the offline commands load no S3.
"""

from collections.abc import Callable

from mkv.http.messages import Request, Response
from mkv.metrics import Family, render

METRICS_TYPE = ("Content-Type", "text/plain; version=0.0.4; charset=utf-8")


def admin_handler(families: Callable[[], list[Family]], status: Callable[[], bytes] | None
          ) -> Callable[[Request], Response]:
    """The admin handler: metrics from `families`, the page from `status` (if any)."""
    def handle(req: Request) -> Response:
        if req.method not in (b"GET", b"HEAD"):
            return Response(405, [("Content-Type", "text/plain")], b"GET only\n")
        if req.path == b"/metrics":
            return Response(200, [METRICS_TYPE], render(families()))
        if req.path == b"/" and status is not None:
            return Response(200, [("Content-Type", "text/html; charset=utf-8")], status())
        return Response(404, [("Content-Type", "text/plain")], b"/metrics, or / the status page\n")
    return handle
