"""Reading an index as Go mkv's goleveldb and as our C++ LevelDB do, for the compatibility
tests. Go programs are built with bench/gomkv.py (Debian's Go packages; `bash setup.sh test`
installs them), which also finds Go mkv's source.
"""

import subprocess
from pathlib import Path

from conftest import read_records


def dump_goleveldb(ldbdump: Path, db: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, record) of the index as goleveldb reads it (read-only: nothing changes)."""
    done = subprocess.run([str(ldbdump), str(db)], capture_output=True, timeout=300)
    assert done.returncode == 0, f"goleveldb could not read {db}: {done.stderr.decode()}"
    pairs = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition(b" ")
        pairs.append((bytes.fromhex(key.decode()), bytes.fromhex(value.decode())))
    return pairs


def assert_same_through_both(ldbdump: Path, db: Path) -> list[tuple[bytes, bytes]]:
    """goleveldb and C++ LevelDB read the same keys and record bytes; the records."""
    through_go = dump_goleveldb(ldbdump, db)  # first: C++ LevelDB's open may recover a journal
    through_cpp = list(read_records(db).items())
    go_keys = {k for k, _ in through_go}
    missing = [k for k, _ in through_cpp if k not in go_keys][:5]
    assert len(through_go) == len(through_cpp) and through_go == through_cpp, (
        f"goleveldb read {len(through_go)} records, C++ LevelDB {len(through_cpp)}; "
        f"e.g. missing in goleveldb: {missing}")
    return through_cpp


def memtable_flushed(db: Path) -> bool:
    """Whether LevelDB has written a table file yet: at least one memtable flush happened."""
    return any(db.glob("*.ldb"))
