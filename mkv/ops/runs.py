"""The runs log: each offline command notes its run (command, start, seconds, exit status,
summary) in a file beside a LevelDB index, for the status page's "last runs"."""

import json
import time
from pathlib import Path

RUNS_SHOWN = 10


def runs_file(db: str) -> Path | None:
    """Where the offline commands note their runs: beside a LevelDB index; None for a URL."""
    return None if "://" in db else Path(f"{db.rstrip('/')}.runs")


def note_run(db: str, command: str, started: float, exit_status: int, summary: str,
             figures: dict | None = None) -> None:
    """Append one offline run to the runs file the status page shows (best effort)."""
    path = runs_file(db)
    if path is None:
        return
    line = json.dumps({"command": command, "started": started, "seconds": time.time() - started,
                       "exit": exit_status, "summary": summary, **(figures or {})})
    try:
        with path.open("a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # a read-only place: the run still happened


def last_runs(db: str) -> list[dict]:
    path = runs_file(db)
    try:
        lines = path.read_text().splitlines()[-RUNS_SHOWN:] if path else []
    except OSError:
        return []
    runs = []
    for line in reversed(lines):
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue
    return runs
