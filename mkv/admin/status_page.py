"""The status page: the cluster at a glance as one server-rendered HTML page (no script, no build
step), from a `Snapshot` of what the master knows; readable on a phone and a laptop."""

import html
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VolumeRow:
    volume: str  # host:port
    up: bool
    probe_seconds: float | None  # the last answered health probe's round trip
    errors: int  # failed exchanges since the master started
    domain: str = ""  # its failure domain (-domains; itself when none is named)
    weight: int = 1  # -weights
    keys: int | None = None  # live keys with a replica on it, as the last verify counted


@dataclass(frozen=True)
class Snapshot:
    volumes: list[VolumeRow]
    index: dict[str, str | float]
    per_second: float  # requests answered, over the last `window` seconds
    errors_per_second: float  # 5xx answers, the same
    window: float
    answers: dict[tuple[str, int], int]  # (method, status) → requests
    started: float
    busy: int
    runs: list[dict] = field(default_factory=list)  # newest first (mkv/ops/runs.py)
    replicas: int = 3
    port: int = 3000
    workers: int = 1  # processes whose figures these are (-workers)


STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#222}
h1{font-size:1.4rem;margin:.2rem 0} h2{font-size:1.1rem;margin:1.4rem 0 .4rem}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{flex:1 1 9rem;border:1px solid #ddd;border-radius:.5rem;padding:.6rem .8rem}
.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;width:100%} td,th{padding:.35rem .5rem;text-align:left;
border-bottom:1px solid #eee;vertical-align:top} th{font-weight:600;color:#555}
.up{color:#17803d;font-weight:600} .down{color:#c0262d;font-weight:600}
.wrap{overflow-x:auto} small{color:#666}
"""


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds // 60 % 60} min"


def rates(samples: list[tuple[float, int, int]]) -> tuple[float, float]:
    """Requests and 5xx answers per second over the samples (zeros with fewer than two)."""
    if len(samples) < 2:
        return 0.0, 0.0
    (t0, r0, e0), (t1, r1, e1) = samples[0], samples[-1]
    span = max(t1 - t0, 1e-9)
    return (r1 - r0) / span, (e1 - e0) / span


def page(snap: Snapshot, now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    e = html.escape
    up = sum(row.up for row in snap.volumes)
    window = _ago(snap.window) if snap.window else "—"
    total = sum(snap.answers.values())
    index_size = (f"{float(snap.index['bytes']) / 1e6:,.1f} MB"
                  if "bytes" in snap.index else "—")
    cards = [("volumes up", f"{up} of {len(snap.volumes)}"),
             ("requests/s", f"{snap.per_second:,.1f}"),
             ("5xx/s", f"{snap.errors_per_second:,.2f}"),
             ("requests", f"{total:,}"), ("keys busy", f"{snap.busy:,}"),
             ("index", f"{snap.index.get('engine', '?')}, {index_size}"),
             ("up for", _ago(now - snap.started)),
             *([("workers", f"{snap.workers}")] if snap.workers > 1 else [])]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>mkv :{snap.port}</title><style>{STYLE}</style></head><body>",
        f"<h1>mkv master :{snap.port}</h1>",
        f"<small>{snap.replicas} replicas · rates over the last {window}</small>",
        '<div class=cards id=summary>',
        *(f'<div class=card>{e(name)}<b>{e(value)}</b></div>' for name, value in cards),
        "</div>",
        "<h2>Volumes</h2><div class=wrap><table id=volumes>",
        "<tr><th>volume</th><th>health</th><th>probe</th><th>errors</th><th>domain</th>"
        "<th>weight</th><th>keys (last verify)</th></tr>",
    ]
    for row in snap.volumes:
        probe = f"{row.probe_seconds * 1000:.1f} ms" if row.probe_seconds is not None else "—"
        state = '<span class=up>up</span>' if row.up else '<span class=down>down</span>'
        keys = "—" if row.keys is None else f"{row.keys:,}"
        parts.append(f"<tr><td>{e(row.volume)}</td><td>{state}</td><td>{probe}</td>"
                     f"<td>{row.errors:,}</td><td>{e(row.domain)}</td><td>{row.weight}</td>"
                     f"<td>{keys}</td></tr>")
    parts += ["</table></div>", "<h2>Answers</h2><div class=wrap><table id=answers>",
              "<tr><th>method</th><th>status</th><th>requests</th></tr>"]
    for (method, status), n in sorted(snap.answers.items()):
        parts.append(f"<tr><td>{e(method)}</td><td>{status}</td><td>{n:,}</td></tr>")
    parts += ["</table></div>", "<h2>Last offline runs</h2><div class=wrap><table id=runs>",
              "<tr><th>command</th><th>when</th><th>exit</th><th>summary</th></tr>"]
    for run in snap.runs:
        when = f"{_ago(now - float(run.get('started', now)))} ago"
        parts.append(f"<tr><td>{e(str(run.get('command')))}</td><td>{when}</td>"
                     f"<td>{e(str(run.get('exit')))}</td><td>{e(str(run.get('summary')))}</td></tr>")
    if not snap.runs:
        parts.append("<tr><td colspan=4>none noted beside this index</td></tr>")
    parts += ["</table></div>", "<p><small>Metrics for Prometheus: <a href=/metrics>/metrics"
              "</a></small></p></body></html>"]
    return "\n".join(parts).encode()
