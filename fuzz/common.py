"""What the harnesses share: the harness process's main, seeds laid out for
`atheris.FuzzedDataProvider`, driving a coroutine that never waits, and a broken invariant.

A harness module defines `TestOneInput(data)`, `SEEDS` (a list of inputs), `MAX_LEN` and
perhaps `DICTIONARY` (tokens libFuzzer splices into inputs), and ends with
`if __name__ == "__main__": run(TestOneInput, SEEDS, MAX_LEN, DICTIONARY)`. A crash is any
exception leaving TestOneInput: one the parser is not documented to raise, or `Broken`.
"""

import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import atheris


class Broken(Exception):
    """An invariant the code under test broke (what it returned, not what it raised)."""


def check(holds: bool, what: str) -> None:
    if not holds:
        raise Broken(what)


def tail(*choices: int) -> bytes:
    """The bytes that make a FuzzedDataProvider's ConsumeIntInRange(0, n ≤ 255) calls return
    `choices`, in order: it takes integers from the end of the data, one byte each."""
    return bytes(reversed(choices))


def pieces(data: bytes, cut: int, spread: int, step: int, longest: int) -> list[bytes]:
    """`data` as a transport might hand it over: in pieces of 1 to `longest` bytes, eight
    sizes in turn, chosen by `cut` (each harness its own `spread` and `step`)."""
    sizes = [1 + (cut * spread + i * step) % longest for i in range(8)]
    out, i = [], 0
    while i < len(data):
        out.append(data[i:i + sizes[len(out) % 8]])
        i += len(out[-1])
    return out


async def source(parts: list[bytes]) -> AsyncIterator[bytes]:
    """The parts as a body's chunks."""
    for part in parts:
        yield part


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits for anything outside it (its input is in memory) to
    its end. One that does wait would wait forever: a hang, reported as Broken."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise Broken("waited for input that never comes: a hang")


def run(test_one_input: Callable[[bytes], None], seeds: list[bytes], max_len: int,
        dictionary: Sequence[bytes] = ()) -> None:
    """The harness process: `argv` as libFuzzer takes it (the first directory given is the
    corpus, where the seeds are written first, and the dictionary beside it), then libFuzzer
    runs until its time is up or an input crashes, and exits."""
    argv = list(sys.argv)
    corpus = next((Path(a) for a in argv[1:] if not a.startswith("-") and Path(a).is_dir()),
                  None)
    if corpus is not None:
        for number, seed in enumerate(seeds):
            (corpus / f"seed-{number:03d}").write_bytes(seed)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append(f"-max_len={max_len}")
    if corpus is not None and dictionary:
        # libFuzzer's format: one quoted token a line, bytes outside printable ASCII as \xNN
        tokens = corpus.parent / "tokens.dict"
        tokens.write_text("".join('"' + "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\'
                                                else f"\\x{b:02X}" for b in token) + '"\n'
                                  for token in dictionary))
        argv.append(f"-dict={tokens}")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
