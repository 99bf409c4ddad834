"""A busy run: writes and deletes from many clients at once, and checks of what they were told."""

import http.client
import threading
from collections.abc import Iterable

from conftest import url_path

from mkv.record import Record, State

KEY_FILLER = "k" * 150  # long keys: a 4 MB memtable fills within a few thousand writes


def busy_writes(port: int, puts: int, workers: int = 16) -> tuple[set[bytes], set[bytes]]:
    """PUT `puts` long keys from `workers` threads, DELETE every fourth after its 201.

    The keys acknowledged live (201, not deleted) and those acknowledged deleted (204).
    """
    live: set[bytes] = set()
    deleted: set[bytes] = set()
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(puts))

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in counter:  # iterators are thread-safe enough: next() holds the GIL
            key = f"/busy/{i:06d}-{KEY_FILLER}".encode()
            conn.request("PUT", url_path(key), body=f"value {i}".encode())
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                failures.append(f"PUT {i}: {resp.status}")
                continue
            if i % 4:
                with lock:
                    live.add(key)
                continue
            conn.request("DELETE", url_path(key))
            resp = conn.getresponse()
            resp.read()
            if resp.status != 204:
                failures.append(f"DELETE {i}: {resp.status}")
                continue
            with lock:
                deleted.add(key)
        conn.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    return live, deleted


def assert_acknowledged(records: Iterable[tuple[bytes, bytes]] | dict[bytes, bytes],
                        live: set[bytes], deleted: set[bytes]) -> None:
    """Every key acknowledged live is live in the index; every key acknowledged deleted is gone."""
    index = dict(records)
    lost = [k for k in live if k not in index or Record.decode(index[k]).state is not State.LIVE]
    back = [k for k in deleted if k in index]
    assert not lost, f"{len(lost)} acknowledged keys missing, e.g. {sorted(lost)[:3]}"
    assert not back, f"{len(back)} deleted keys back, e.g. {sorted(back)[:3]}"
