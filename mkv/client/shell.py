"""`mkv put|get|ls|rm`: the client's verbs for people at a shell, with progress on a terminal."""

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from mkv.client.errors import MkvError
from mkv.client.sync import Client

CHUNK = 1 << 20
SHOWN_FROM = 8 << 20  # transfers smaller than this end before a progress line would help


class TransferMeter:
    """Bytes moved so far, redrawn on stderr at most 4 times a second when it is a terminal."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.started = self.drawn = time.monotonic()
        self.shown = sys.stderr.isatty() and (total is None or total >= SHOWN_FROM)

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.done += len(chunk)
            now = time.monotonic()
            if self.shown and now - self.drawn >= 0.25:
                self.drawn = now
                rate = self.done / max(now - self.started, 1e-6) / 1e6
                of = f" of {self.total / 1e6:,.1f}" if self.total else ""
                print(f"\r\x1b[K{self.what}: {self.done / 1e6:,.1f}{of} MB, {rate:,.1f} MB/s",
                      end="", file=sys.stderr, flush=True)
            yield chunk
        if self.shown:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--master", default=os.environ.get("MKV_MASTER", "localhost:3000"),
                        help="master(s), comma-separated, tried in turn (default: $MKV_MASTER "
                             "or localhost:3000)")
    parser = argparse.ArgumentParser(prog="mkv", description="mkv's client verbs")
    verbs = parser.add_subparsers(dest="verb", required=True)
    put = verbs.add_parser("put", parents=[common], help="store FILE (- for stdin) under KEY")
    put.add_argument("key")
    put.add_argument("file")
    put.add_argument("--replace", action="store_true", help="replace a value already there")
    get = verbs.add_parser("get", parents=[common], help="KEY's value to FILE (default stdout)")
    get.add_argument("key")
    get.add_argument("file", nargs="?", default="-")
    ls = verbs.add_parser("ls", parents=[common], help="the keys under PREFIX, one a line")
    ls.add_argument("prefix", nargs="?", default="/")
    ls.add_argument("--unlinked", action="store_true", help="unlinked keys instead of live")
    rm = verbs.add_parser("rm", parents=[common], help="delete KEY (--unlink: virtual delete)")
    rm.add_argument("key")
    rm.add_argument("--unlink", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(args.master) as client:
            return _run(client, args)
    except MkvError as e:
        print(f"mkv {args.verb}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mkv {args.verb}: {e}", file=sys.stderr)
        return 1


def _run(client: Client, args: argparse.Namespace) -> int:
    if args.verb == "put":
        source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
        with source:
            size = None if args.file == "-" else os.fstat(source.fileno()).st_size
            chunks = TransferMeter(f"put {args.key}", size).count(_chunks(source))
            client.put(args.key, chunks, replace=args.replace)
    elif args.verb == "get":
        sink = sys.stdout.buffer if args.file == "-" else open(args.file, "wb")
        with sink:
            for chunk in TransferMeter(f"get {args.key}", None).count(client.stream(args.key)):
                sink.write(chunk)
    elif args.verb == "ls":
        for key in client.iter_keys(args.prefix, "unlinked" if args.unlinked else "list"):
            sys.stdout.write(key.decode(errors="replace") + "\n")
    elif args.unlink:
        client.unlink(args.key)
    else:
        client.delete(args.key)
    return 0
