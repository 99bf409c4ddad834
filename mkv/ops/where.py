"""`mkv … where KEY`: where a key lives, without a master: its path, today's placement (with
-domains, the failure domain of each replica; with -weights, from the weighted ranking) and, given
a `-db`, the replicas its record names (through a serving master's index, or the directory)."""

import asyncio
import sys
from urllib.parse import unquote_to_bytes

from mkv.config import Config
from mkv.index import open_index
from mkv.placement import key2path
from mkv.volumes.health import volume_of


def described(config: Config, replicas: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"{r} ({config.domain_of.get(volume_of(r), volume_of(r))})"
                     for r in replicas)


async def where(config: Config, key: bytes) -> list[str]:
    today = config.placement(key)
    lines = [f"key      {key.decode(errors='backslashreplace')}", f"path     {key2path(key)}",
             f"today:    {described(config, today)}"]
    if config.db:
        index = await open_index(config.db)
        try:
            record = await index.get(key)
        finally:
            await index.close()
        if record is None:
            lines.append("recorded: no record")
        else:
            balanced = "balanced" if list(record.replicas) == today else \
                "unbalanced (rebalance moves it)"
            lines.append(f"recorded: {described(config, record.replicas)}; "
                         f"{record.state.name.lower()}, {balanced}")
    return lines


def main(config: Config, path: str) -> int:
    key = unquote_to_bytes(path if path.startswith("/") else "/" + path)
    for line in asyncio.run(where(config, key)):
        print(line)
    sys.stdout.flush()
    return 0
