"""What the harnesses share: the harness process's main, seeds laid out for
`atheris.FuzzedDataProvider`, driving a coroutine that never waits, and a broken invariant.

A harness module defines `TestOneInput(data)`, `SEEDS` (a list of inputs), `MAX_LEN` and
perhaps `DICTIONARY` (tokens libFuzzer splices into inputs), and ends with
`if __name__ == "__main__": run(TestOneInput, SEEDS, MAX_LEN, DICTIONARY)`. A crash is any
exception leaving TestOneInput: one the parser is not documented to raise, or `Broken`.
"""

import sys
from collections.abc import Callable, Coroutine, Sequence
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
