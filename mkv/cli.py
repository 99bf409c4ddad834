"""The command line: Go mkv's flags (one or two dashes, `-f v` or `-f=v`, anywhere) → calls."""

import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mkv.config import Config, parse_duration

USAGE = """\
Usage: mkv [flags] <server|rebuild|rebalance|verify|repair>
       mkv volume DIR [-port N]     (nginx volume server; port also from $PORT, default 3001)
       mkv -db PATH checkpoint      (recover the index after a crash and leave it for Go mkv)
       mkv -db SRC copy DEST        (every record into an empty index: LevelDB path or
                                    postgresql:// URL, either way; masters stopped)
       mkv -volumes V [-db D] where KEY   (a key's placement, today's and recorded)
       mkv -db D -volumes V expire  (apply S3 lifecycle rules once; beside a master or not)
       mkv put|get|ls|rm ...        (the client: `mkv put --help`; masters from --master)
"""


@dataclass(frozen=True)
class Flag:
    field: str
    parse: Callable[[str], object] | None  # None: a boolean flag
    help: str


def _volumes(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _pairs(text: str) -> list[tuple[str, str]]:
    """`volume=value,…`, each volume once."""
    pairs = []
    for item in text.split(","):
        if not item:
            continue
        volume, eq, value = item.partition("=")
        if not eq or not volume or not value:
            raise ValueError(f"{item!r} is not volume=value")
        if any(volume == seen for seen, _ in pairs):
            raise ValueError(f"{volume} is named twice")
        pairs.append((volume, value))
    return pairs


def _domains(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(_pairs(text))


def _weights(text: str) -> tuple[tuple[str, int], ...]:
    weights = []
    for volume, value in _pairs(text):
        if not value.isdigit() or not 1 <= int(value) <= 100:
            raise ValueError(f"{volume}'s weight {value!r} is not a whole number from 1 to 100")
        weights.append((volume, int(value)))
    return tuple(weights)


def _s3_keys(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        access, colon, secret = item.partition(":")
        if not colon or not access or not secret:
            raise ValueError("expected access:secret pairs, comma separated")
        pairs.append((access, secret))
    if not pairs:
        raise ValueError("no access:secret pair")
    return tuple(pairs)


def _s3_keyfile(path: str) -> tuple[tuple[str, str], ...]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(str(e)) from None
    # comments go first, whole lines: a comment may hold commas and colons
    return _s3_keys(",".join(line for line in lines if not line.lstrip().startswith("#")))


def _orphans(text: str) -> str:
    if text not in ("keep", "delete"):
        raise ValueError("must be keep or delete")
    return text


FLAGS: dict[str, Flag] = {
    "db": Flag("db", str, "Path to leveldb, or a postgresql:// URL (an index several "
               "masters share)"),
    "volumes": Flag("volumes", _volumes, "Volumes to use for storage, comma separated"),
    "port": Flag("port", int, "Port for the server to listen on (default 3000)"),
    "replicas": Flag("replicas", int, "Amount of replicas to make of the data (default 3)"),
    "subvolumes": Flag("subvolumes", int, "Amount of subvolumes, disks per machine (default 10)"),
    "fallback": Flag("fallback", str, "Fallback server for missing keys"),
    "protect": Flag("protect", None, "Force UNLINK before DELETE"),
    "md5sum": Flag("md5sum", None, "Calculate and store MD5 checksum of values (default true)"),
    "voltimeout": Flag("voltimeout", parse_duration,
                       "Volume servers must answer GET/HEAD within this time (default 1s)"),
    "writetimeout": Flag("writetimeout", parse_duration,
                         "A volume taking no part of a write for this long fails it (default 30s)"),
    "idletimeout": Flag("idletimeout", parse_duration,
                        "Close a client connection idle this long (default 60s)"),
    "readtimeout": Flag("readtimeout", parse_duration,
                        "Close a client that stalls this long within a request (default 30s)"),
    "secret": Flag("secret", str, "Shared secret for writes to volumes (better: $MKV_SECRET); "
                   "volumes refuse PUT/DELETE without it"),
    "signedreads": Flag("signedreads", None, "Volumes serve reads only through URLs the master "
                        "signed (needs the secret)"),
    "signexpiry": Flag("signexpiry", parse_duration,
                       "How long a signed read URL works (default 1m)"),
    "workers": Flag("workers", _positive, "Master processes serving one port (SO_REUSEPORT); "
                    "over LevelDB, one more process owns the index (default 1)"),
    "v": Flag("verbose", None, "Verbose output"),
    "vdir_colocation": Flag("vdir_colocation", None, "Place a key by its directory"),
    "domains": Flag("domains", _domains, "Failure domains: volume=domain,… (a volume not named "
                    "is a domain of its own); no two replicas of a key in one domain while "
                    "there are enough domains"),
    "weights": Flag("weights", _weights, "Volume weights 1-100: volume=N,… (default 1); a "
                    "volume of weight N is first for N/ΣN of the keys"),
    "strict_placement": Flag("strict_placement", None, "PUT only to today's placement, failing "
                             "while one of its volumes is down, as Go mkv does (default: the "
                             "next healthy volumes in rank take a down volume's place)"),
    "admin_port": Flag("admin_port", int, "A port of its own for /metrics (Prometheus) and "
                       "the status page at /; offline commands serve their progress there "
                       "(default: none)"),
    "s3_port": Flag("s3_port", int, "S3: a port of its own, where every request is S3's, "
                    "signed or not (default: none; S3 also answers on -port)"),
    "s3_keys": Flag("s3_keys", _s3_keys, "S3: access:secret pairs, comma separated; S3 "
                    "requests must then carry a valid SigV4 signature (default: no auth)"),
    "s3_keyfile": Flag("s3_keys", _s3_keyfile,
                       "S3: a file of access:secret pairs, one a line (instead of -s3_keys)"),
    "s3_spool": Flag("s3_spool", str, "S3: with a LevelDB index, the directory for multipart "
                     "parts, buckets and metadata (default: <db>.s3 beside the index; a "
                     "PostgreSQL index keeps them in its database)"),
    "s3_upload_ttl": Flag("s3_upload_ttl", parse_duration, "S3: remove multipart uploads "
                          "idle this long; 0 never (default 24h)"),
    "s3_lifecycle_every": Flag("s3_lifecycle_every", parse_duration, "S3: how often the "
                               "master applies buckets' lifecycle rules; 0 never, `expire` "
                               "then does (default 1h)"),
    "s3_lifecycle_day": Flag("s3_lifecycle_day", parse_duration, "S3: the length of a "
                             "lifecycle rule's day: shorter only to see rules act in a test "
                             "(default 24h)"),
    "concurrency": Flag("concurrency", _positive,
                        "rebuild/rebalance/verify/repair: keys or listings in flight (default 16)"),
    "checksum": Flag("checksum", None, "rebuild/verify/repair: read every value and check "
                     "(verify, repair) or restore (rebuild) its md5"),
    "orphans": Flag("orphans", _orphans,
                    "repair: keep or delete files that no record claims (default keep)"),
    "grace": Flag("grace", parse_duration, "repair: leave orphans and INIT records younger "
                  "than this alone (default 1h)"),
}


class UsageError(Exception):
    pass


class HelpRequested(Exception):
    """-h or -help: print the usage and exit 0, as Go's flag package does."""


def usage() -> str:
    lines = [USAGE]
    for name, flag in FLAGS.items():
        kind = "" if flag.parse is None else " value"
        lines.append(f"  -{name}{kind}\n        {flag.help}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> tuple[Config, list[str], set[str]]:
    """Flags into a Config; also the positional words and the names of the flags given."""
    config, positional, given = Config(), [], set()
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise HelpRequested
        flag = FLAGS.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.parse is None:
            parse, value = _bool, value if eq else "true"
        else:
            parse = flag.parse
            if not eq:
                value = next(args, None)
                if value is None:
                    raise UsageError(f"flag needs an argument: -{name}")
        try:
            parsed: object = parse(value)
        except ValueError as e:
            raise UsageError(f"invalid value {value!r} for flag -{name}: {e}") from None
        setattr(config, flag.field, parsed)
        given.add(name)
    return config, positional, given


def _check_cluster(config: Config, needs_db: bool = True) -> str | None:
    if needs_db and not config.db:
        return "-db is required: the path of the LevelDB index, or a postgresql:// URL"
    if not config.volumes:
        return "-volumes is required: volume servers, comma separated (e.g. localhost:3001)"
    if config.replicas < 1 or config.replicas > len(config.volumes):
        count = len(config.volumes)
        return f"-replicas {config.replicas} must be between 1 and the volume count ({count})"
    if config.subvolumes < 1:
        return "-subvolumes must be at least 1"
    for flag, pairs in (("-domains", config.domains), ("-weights", config.weights)):
        unknown = [volume for volume, _ in pairs if volume not in config.volumes]
        if unknown:
            return f"{flag} names {', '.join(unknown)}, not among -volumes"
    return None


def _check_secret(config: Config) -> str | None:
    from mkv.volumes.security import secret_problem

    if config.secret:
        return secret_problem(config.secret)
    if config.signedreads:
        return "-signedreads needs the shared secret: -secret or $MKV_SECRET"
    return None


def _volume(config: Config, positional: list[str], given: set[str]) -> int:
    from mkv.volumes.nginx import run_volume

    if len(positional) != 2:
        print("mkv volume: give the data directory: mkv volume DIR [-port N]", file=sys.stderr)
        return 2
    port = config.port if "port" in given else int(os.environ.get("PORT", "3001"))
    return run_volume(positional[1], port, config.secret, config.signedreads)


def _checkpoint(config: Config) -> int:
    """Open the index (LevelDB replays what a crash left in its journal) and close it cleanly."""
    from mkv.index import LevelDBIndex

    if not config.db:
        print("mkv checkpoint: -db is required: the path of the LevelDB index", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(config.db, "CURRENT")):
        print(f"mkv checkpoint: no LevelDB index at {config.db}", file=sys.stderr)
        return 1
    async def checkpoint() -> None:
        await LevelDBIndex(config.db).close()  # itself: a serving master's would not do

    asyncio.run(checkpoint())
    print(f"mkv checkpoint: {config.db} is closed cleanly; Go mkv reads every record",
          file=sys.stderr)
    return 0


def _server(config: Config) -> int:
    from mkv.master import serve

    return serve(config)


def _offline(name: str) -> Callable[[Config], int]:
    """An offline command: `main` of the module of that name, imported when run."""
    return lambda config: importlib.import_module(f"mkv.ops.{name}").main(config)


CLUSTER_COMMANDS: dict[str, Callable[[Config], int]] = {
    "server": _server,
    **{name: _offline(name) for name in ("rebuild", "rebalance", "verify", "repair")},
    "expire": lambda config: importlib.import_module("mkv.s3.expiry").main(config),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("put", "get", "ls", "rm"):  # the client's verbs: flags of their own
        from mkv.client.shell import main as client_main

        return client_main(argv)
    try:
        config, positional, given = parse_args(argv)
    except UsageError as e:
        print(f"{e}\n{usage()}", file=sys.stderr, end="")
        return 2
    except HelpRequested:
        print(usage(), file=sys.stderr, end="")
        return 0
    if not positional:
        print(usage(), file=sys.stderr, end="")
        return 2
    config.secret = config.secret or os.environ.get("MKV_SECRET", "")
    problem = _check_secret(config)
    if problem:
        print(f"mkv: {problem}", file=sys.stderr)
        return 2
    command = positional[0]
    if command == "volume":
        return _volume(config, positional, given)
    from mkv.index import IndexLocked, IndexUnavailable

    try:
        return _run_on_index(command, positional, config)
    except IndexLocked as e:
        print(f"mkv: {e} (Go mkv's master, or another mkv command, which serve no index to "
              "commands); stop it first", file=sys.stderr)
        return 1
    except IndexUnavailable as e:
        print(f"mkv: {e}", file=sys.stderr)
        return 1


def _run_on_index(command: str, positional: list[str], config: Config) -> int:
    if command == "checkpoint" and len(positional) == 1:
        return _checkpoint(config)
    if command == "where" and len(positional) == 2:
        problem = _check_cluster(config, needs_db=False)
        if problem:
            print(f"mkv: {problem}", file=sys.stderr)
            return 2
        return importlib.import_module("mkv.ops.where").main(config, positional[1])
    if command == "copy" and len(positional) == 2:
        if not config.db:
            print("mkv copy: -db is required: the index to copy from", file=sys.stderr)
            return 2
        return importlib.import_module("mkv.ops.copy").main(config, positional[1])
    run = CLUSTER_COMMANDS.get(command)
    if run is None or len(positional) != 1:
        print(f"unknown command {' '.join(positional)!r}\n{usage()}", file=sys.stderr, end="")
        return 2
    problem = _check_cluster(config)
    if problem:
        print(f"mkv: {problem}", file=sys.stderr)
        return 2
    return run(config)
