"""The pure contracts: key2path, key2volume, placement_key, storable, the index record,
Go durations and request paths → keys. SPEC §2, §3 and §6 pin every expected value here."""

import hashlib
import itertools

import pytest

from mkv.config import parse_duration
from mkv.http.target import parse_key
from mkv.placement import key2path, key2volume, place, placement_key, storable
from mkv.record import Record, State

STOOGES = ["larry", "moe", "curly"]
MD5_HELLO = "5d41402abc4b2a76b9719d911017c592"  # md5("hello")

# --- key2path (SPEC §2) ---


@pytest.mark.parametrize("key, path", [
    (b"hello", "/5d/41/aGVsbG8="),
    (b"helloworld", "/fc/5e/aGVsbG93b3JsZA=="),
    (b"/???", "/27/6f/Lz8/Pw=="),  # standard base64: its '/' nests a directory
])
def test_key2path_vectors(key: bytes, path: str) -> None:
    assert key2path(key) == path


def test_key2path_uses_standard_base64_alphabet() -> None:
    # b"\xfb\xff" is "+/8=" in standard base64 and "-_8=" in the URL-safe one
    assert key2path(b"\xfb\xff").endswith("/+/8=")
    md5 = hashlib.md5(b"/a b").digest()
    assert key2path(b"/a b") == f"/{md5[0]:02x}/{md5[1]:02x}/L2EgYg=="


# --- key2volume (SPEC §2) ---


@pytest.mark.parametrize("key, first", [
    (b"hello", "larry"), (b"helloworld", "curly"), (b"world", "moe"), (b"blah", "curly"),
])
def test_key2volume_first_replica(key: bytes, first: str) -> None:
    [replica] = key2volume(key, STOOGES, 1, 3)
    assert replica.split("/")[0] == first


@pytest.mark.parametrize("key, replicas", [
    (b"hello", ["larry/sv00", "curly/sv01", "moe/sv02"]),
    (b"helloworld", ["curly/sv01", "larry/sv02", "moe/sv00"]),
    (b"world", ["moe/sv02", "curly/sv00", "larry/sv02"]),
    (b"blah", ["curly/sv01", "larry/sv00", "moe/sv02"]),
])
def test_key2volume_full_outputs(key: bytes, replicas: list[str]) -> None:
    assert key2volume(key, STOOGES, 3, 3) == replicas
    # fewer replicas: a prefix of the same order (the order is the replica order)
    assert key2volume(key, STOOGES, 2, 3) == replicas[:2]
    assert key2volume(key, STOOGES, 1, 3) == replicas[:1]


# --- failure domains and weights (SPEC §6) ---

FOUR = ["larry", "moe", "curly", "shemp"]
RACKS = {"larry": "rack1", "moe": "rack1", "curly": "rack2", "shemp": "rack2"}


@pytest.mark.parametrize("key, replicas, without", [
    (b"hello", ["shemp", "larry"], ["shemp", "larry"]),
    (b"helloworld", ["curly", "larry"], ["curly", "shemp"]),
    (b"world", ["moe", "curly"], ["moe", "curly"]),
    (b"blah", ["curly", "larry"], ["curly", "shemp"]),
])
def test_domain_vectors(key: bytes, replicas: list[str], without: list[str]) -> None:
    assert place(key, FOUR, 2, 1, RACKS) == replicas
    assert key2volume(key, FOUR, 2, 1) == without == place(key, FOUR, 2, 1)


@pytest.mark.parametrize("key, replicas, without", [
    (b"a", ["shemp", "larry"], ["larry", "moe"]),
    (b"b", ["moe", "shemp"], None),
    (b"key2", ["shemp", "curly"], None),
    (b"hello", ["shemp", "larry"], ["shemp", "larry"]),
])
def test_weight_vectors(key: bytes, replicas: list[str], without: list[str] | None) -> None:
    assert place(key, FOUR, 2, 1, weights={"shemp": 3}) == replicas
    if without is not None:
        assert key2volume(key, FOUR, 2, 1) == without


def test_key2volume_one_subvolume_is_the_bare_volume() -> None:
    assert key2volume(b"hello", STOOGES, 3, 1) == ["larry", "curly", "moe"]
    assert key2volume(b"world", STOOGES, 2, 1) == ["moe", "curly"]


def _score(key: bytes, volume: str) -> bytes:
    return hashlib.md5(key + volume.encode()).digest()


def test_key2volume_follows_the_formula() -> None:
    """Ranked by md5(key + volume) descending; subvolume from the score's low 32 bits, %02X."""
    volumes = [f"localhost:{3001 + i}" for i in range(5)]
    for i in range(300):
        key = f"/key-{i}".encode()
        ranked = sorted(volumes, key=lambda v, k=key: _score(k, v), reverse=True)
        expected = [f"{v}/sv{int.from_bytes(_score(key, v)[12:16], 'big') % 200:02X}"
                    for v in ranked[:3]]
        assert key2volume(key, volumes, 3, 200) == expected


def test_key2volume_subvolume_hex_is_upper_case() -> None:
    subs = {r.split("/sv")[1] for i in range(200)
            for r in key2volume(f"/k{i}".encode(), STOOGES, 3, 256)}
    assert any(any(c in "ABCDEF" for c in s) for s in subs)
    assert all(len(s) == 2 and s == s.upper() for s in subs)


def test_key2volume_depends_on_names_not_positions() -> None:
    volumes = [f"10.0.0.{i}:3001" for i in range(1, 6)]
    keys = [f"/stable/{i}".encode() for i in range(200)]
    for order in itertools.islice(itertools.permutations(volumes), 0, 120, 7):
        for key in keys:
            assert key2volume(key, list(order), 3, 10) == key2volume(key, volumes, 3, 10)


def test_adding_a_volume_moves_only_keys_that_rank_it_first() -> None:
    old = [f"10.0.0.{i}:3001" for i in range(1, 5)]
    new = old + ["10.0.0.9:3001"]
    moved = 0
    for i in range(500):
        key = f"/grow/{i}".encode()
        before, after = key2volume(key, old, 1, 10), key2volume(key, new, 1, 10)
        if before != after:
            moved += 1
            assert after[0].startswith("10.0.0.9:3001/")
    assert 0 < moved < 250  # about a fifth of the keys


# --- placement_key (SPEC §6, -vdir_colocation) ---


@pytest.mark.parametrize("key, colocated", [
    (b"/photos/2024/a.jpg", b"/photos/2024"),
    (b"/photos/a.jpg", b"/photos"),
    (b"/a", b""),  # the leading '/' is the last one: the directory is empty
    (b"nodir", b"nodir"),
    (b"/dir/", b"/dir"),
])
def test_placement_key(key: bytes, colocated: bytes) -> None:
    assert placement_key(key, True) == colocated
    assert placement_key(key, False) == key


def test_colocation_puts_a_directory_on_the_same_volumes() -> None:
    volumes = [f"v{i}:3001" for i in range(6)]
    spots = {tuple(key2volume(placement_key(f"/dir/{i}".encode(), True), volumes, 2, 4))
             for i in range(50)}
    assert len(spots) == 1
    spread = {tuple(key2volume(placement_key(f"/dir/{i}".encode(), False), volumes, 2, 4))
              for i in range(50)}
    assert len(spread) > 1


# --- storable (SPEC §4) ---


@pytest.mark.parametrize("key", [b"", b"/"])
def test_empty_key_is_not_storable(key: bytes) -> None:
    assert storable(key)


def test_component_limit_255() -> None:
    # base64 of n bytes is 4*ceil(n/3) long: 189 bytes → 252 chars, 190 → 256
    fits = b"/" + b"a" * 188
    too_long = b"/" + b"a" * 189
    assert "/" not in key2path(fits)[7:] and len(key2path(fits).split("/")[-1]) == 252
    assert storable(fits) is None
    assert storable(too_long)


def test_limit_is_per_component_not_per_name() -> None:
    # "b??" encodes as "Yj8/": each repetition ends a directory level 204 characters long
    key = b"/aa" + (b"a" * 150 + b"b??") * 3 + b"abc"
    parts = key2path(key).split("/")[3:]
    assert len(key) > 400 and len(parts) == 4 and max(len(p) for p in parts) <= 255
    assert storable(key) is None


def test_empty_path_component_is_not_storable() -> None:
    assert key2path(b"/??").endswith("/Lz8/")  # the file name would be a directory
    assert storable(b"/??")
    assert "//" in key2path(b"/a\xff\xff\xff")  # the filesystem would merge "//"
    assert storable(b"/a\xff\xff\xff")


@pytest.mark.parametrize("key", [b"/hello", b"/a/b/c.txt", b"/???", "/é".encode()])
def test_ordinary_keys_are_storable(key: bytes) -> None:
    assert storable(key) is None


# --- the index record (SPEC §3) ---

RECORDS = [
    (b"a,b", Record(("a", "b"))),
    (b"DELETEDa,b", Record(("a", "b"), State.UNLINKED)),
    (b"HASH" + MD5_HELLO.encode() + b"a,b", Record(("a", "b"), State.LIVE, MD5_HELLO)),
    (b"DELETEDHASH" + MD5_HELLO.encode() + b"a", Record(("a",), State.UNLINKED, MD5_HELLO)),
    (b"INITa,b", Record(("a", "b"), State.WRITING)),
    (b"INITHASH" + MD5_HELLO.encode() + b"a", Record(("a",), State.WRITING, MD5_HELLO)),
    (b"localhost:3001/sv04,localhost:3002/sv0A",
     Record(("localhost:3001/sv04", "localhost:3002/sv0A"))),
]


@pytest.mark.parametrize("raw, record", RECORDS)
def test_record_encode(raw: bytes, record: Record) -> None:
    assert record.encode() == raw


@pytest.mark.parametrize("raw, record", RECORDS)
def test_record_decode(raw: bytes, record: Record) -> None:
    decoded = Record.decode(raw)
    assert (decoded.replicas, decoded.state, decoded.md5) == (
        record.replicas, record.state, record.md5)
    assert decoded.encode() == raw


def test_record_with_state_keeps_the_rest() -> None:
    live = Record(("a", "b"), State.LIVE, MD5_HELLO)
    assert live.with_state(State.UNLINKED).encode() == b"DELETEDHASH" + MD5_HELLO.encode() + b"a,b"
    assert Record.decode(b"DELETEDa").with_state(State.LIVE).encode() == b"a"


# --- Go durations (SPEC §6, -voltimeout) ---


@pytest.mark.parametrize("text, seconds", [
    ("1s", 1.0), ("500ms", 0.5), ("10ms", 0.01), ("1m30s", 90.0), ("0", 0.0),
    ("0s", 0.0), ("1.5s", 1.5), ("2h", 7200.0), ("250us", 0.00025), ("1h2m3s", 3723.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "5", "s", "abc", "1x", "1 s", "ms500", "1s2"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_greek_mu() -> None:
    assert parse_duration("3\u03bcs") == pytest.approx(3e-6)


# --- request path → key (parse_key) ---


@pytest.mark.parametrize("path, key", [
    (b"/hello", b"/hello"),
    (b"/a%20b", b"/a b"),
    (b"/a+b", b"/a+b"),  # a path, not a form: '+' stays '+'
    (b"/%3F%3F%3F", b"/???"),
    (b"/a%2Fb", b"/a/b"),
    (b"/a%2fb", b"/a/b"),
    (b"/%C3%A9t%C3%A9", "/été".encode()),
    ("/été".encode(), "/été".encode()),  # raw UTF-8 in the request line
    (b"/a..b/c.", b"/a..b/c."),  # dots inside a segment are fine
    (b"/%25", b"/%"),
])
def test_parse_key(path: bytes, key: bytes) -> None:
    assert parse_key(path) == key


@pytest.mark.parametrize("path", [
    b"/%zz", b"/a%2", b"/a%", b"/%g0",  # broken percent-encoding
    b"/a%00b", b"/a\x00b",  # NUL
    b"/%ff", b"/%C3", b"/\xff",  # not UTF-8
    b"/./a", b"/a/.", b"/a/../b", b"/..", b"/%2e%2e/x", b"/a/%2E",  # dot segments
])
def test_parse_key_rejects(path: bytes) -> None:
    assert isinstance(parse_key(path), str)
