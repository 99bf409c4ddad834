"""Go mkv, the original, beside ours: where its source is, and Go programs built with Debian's
Go packages (`GOPATH=/usr/share/gocode GO111MODULE=off`: no module download), as
`shared/peer/README.md` builds it. Used by bench/vs_go.py and by the compatibility tests.
"""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_DEFAULT = ROOT.parent / "shared/peer/minikeyvalue"
GOPATH = "/usr/share/gocode"


class GoUnavailable(Exception):
    """Go programs cannot be built here: no toolchain, or the build failed."""


def peer_candidate() -> Path:
    """Where Go mkv's source is looked for: `$MKV_GO_PEER`, else shared/peer/minikeyvalue
    beside this checkout."""
    return Path(os.environ.get("MKV_GO_PEER") or PEER_DEFAULT)


def peer_source() -> Path | None:
    """Go mkv's source tree (src/, tools/ and its `volume` launcher), or None when
    `peer_candidate()` does not hold it."""
    candidate = peer_candidate()
    if (candidate / "src/main.go").is_file() and (candidate / "volume").is_file():
        return candidate
    return None


def go_build(source: Path, out: Path, cache: Path) -> Path:
    """`go build` a package directory or a single .go file into `out` (written whole: a build
    cut off leaves no binary), with `cache` as the Go build cache."""
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable("no go toolchain: `bash setup.sh test` installs it (apt-get install "
                            "golang-go golang-github-syndtr-goleveldb-dev "
                            "golang-github-google-uuid-dev)")
    cwd, target = (source, ".") if source.is_dir() else (source.parent, source.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}")
    env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "GOCACHE": str(cache),
           "GOFLAGS": ""}
    done = subprocess.run([go, "build", "-o", str(partial), target], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise GoUnavailable(f"go build {source} failed:\n{done.stderr}")
    partial.replace(out)
    return out
