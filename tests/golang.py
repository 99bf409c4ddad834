"""Go programs for the compatibility tests, built with Debian's Go packages (no module download).

`bash setup.sh test` installs golang-go, golang-github-syndtr-goleveldb-dev and
golang-github-google-uuid-dev; they are built here with `GOPATH=/usr/share/gocode
GO111MODULE=off`, as `shared/peer/README.md` builds Go mkv. `peer_source()` finds Go mkv's source
(the original minikeyvalue at 451d248): `$MKV_GO_PEER`, else `shared/peer/minikeyvalue` beside
this checkout.
"""

import os
import shutil
import subprocess
from pathlib import Path

import plyvel

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
GOPATH = "/usr/share/gocode"


def peer_source() -> Path | None:
    """Go mkv's source tree (with its tools/), or None when this machine has no copy."""
    candidates = [os.environ.get("MKV_GO_PEER", ""), REPO.parent / "shared/peer/minikeyvalue"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "src/main.go").is_file():
            return Path(candidate)
    return None


def go_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "GOCACHE": str(cache),
            "GOFLAGS": ""}


def go_build(source: Path, out: Path, cache: Path) -> Path:
    """`go build` a package directory or a single .go file into `out`."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("no go toolchain: bash setup.sh test installs golang-go")
    cwd, target = (source, ".") if source.is_dir() else (source.parent, source.name)
    done = subprocess.run([go, "build", "-o", str(out), target], cwd=cwd, env=go_env(cache),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"go build {source}: {done.stderr}")
    return out


def dump_goleveldb(ldbdump: Path, db: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, record) of the index as goleveldb reads it (read-only: nothing changes)."""
    done = subprocess.run([str(ldbdump), str(db)], capture_output=True, timeout=300)
    assert done.returncode == 0, f"goleveldb could not read {db}: {done.stderr.decode()}"
    pairs = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition(b" ")
        pairs.append((bytes.fromhex(key.decode()), bytes.fromhex(value.decode())))
    return pairs


def dump_plyvel(db: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, record) as C++ LevelDB reads it. Opening may recover a journal: dump goleveldb
    first."""
    ldb = plyvel.DB(str(db))
    try:
        return list(ldb.iterator())
    finally:
        ldb.close()


def assert_same_through_both(ldbdump: Path, db: Path) -> list[tuple[bytes, bytes]]:
    """goleveldb and C++ LevelDB read the same keys and record bytes; the records."""
    through_go = dump_goleveldb(ldbdump, db)
    through_cpp = dump_plyvel(db)
    go_keys = {k for k, _ in through_go}
    missing = [k for k, _ in through_cpp if k not in go_keys][:5]
    assert len(through_go) == len(through_cpp) and through_go == through_cpp, (
        f"goleveldb read {len(through_go)} records, C++ LevelDB {len(through_cpp)}; "
        f"e.g. missing in goleveldb: {missing}")
    return through_cpp


def memtable_flushed(db: Path) -> bool:
    """Whether LevelDB has written a table file yet: at least one memtable flush happened."""
    return any(db.glob("*.ldb"))
