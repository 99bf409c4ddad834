"""Harness `target`: the request target as both faces read it, and the S3 request's small parsers.

The input is lines: a request target (path and query), a Range header, an HTTP date, an
If-Match list, an ETag and a size; the last byte picks an object size. A crash is any
exception (none is allowed, but S3Error from `int_param`, `decode_token` and DeleteObject's
`conditions_of`) or a broken invariant:
- `parse_key` gives bytes or a reason; a key starts with `/`, is UTF-8 without NUL and without
  `.`/`..` segments, and is the path itself when the path has no escapes;
- a key `storable` accepts has a `key2path` whose components are non-empty and at most 255
  bytes, and whose base64 decodes back to the key (what rebuild reads keys from);
- `resolve_range` gives a first and last byte inside the object, first ≤ last;
- `params_of` maps str to str, `int_param` keeps to its range, `successor(prefix)` follows
  every string that starts with the prefix; `parse_http_date` gives a float or None,
  `etag_matches` a bool.
"""

import base64

import atheris

from fuzz.common import Broken, check, run, tail

with atheris.instrument_imports(include=["mkv"]):
    from mkv.http.flow import EMPTY
    from mkv.http.messages import Request
    from mkv.http.target import parse_key
    from mkv.placement import key2path, storable
    from mkv.record import successor
    from mkv.s3.deletes import conditions_of
    from mkv.s3.errors import S3Error
    from mkv.s3.request import (
        decode_token,
        etag_matches,
        int_param,
        params_of,
        parse_http_date,
        resolve_range,
        single_range,
    )

MAX_LEN = 16384  # Range numbers past int()'s 4,300 digits


def object_size(choice: int) -> int:
    return choice if choice < 200 else 1 << (choice - 200)  # 0…199, then powers of two to 2^55


def check_key(path: bytes) -> None:
    key = parse_key(path)
    check(isinstance(key, bytes | str), f"parse_key gave {key!r}")
    if isinstance(key, str):
        return
    check(key[:1] == b"/" and b"\x00" not in key, f"key {key!r}")
    try:
        key.decode()
    except UnicodeDecodeError:
        raise Broken(f"key {key!r} is not UTF-8") from None
    check(not any(part in (b".", b"..") for part in key.split(b"/")), f"dot segment in {key!r}")
    check(b"%" in path or key == path, f"{path!r} without escapes gave {key!r}")
    why = storable(key)
    check(why is None or isinstance(why, str), f"storable gave {why!r}")
    if why is None:
        parts = key2path(key).split("/")[1:]
        check(all(0 < len(part) <= 255 for part in parts), f"key2path({key!r}) = {parts}")
        check(base64.b64decode("/".join(parts[2:])) == key, f"key2path({key!r}) loses the key")


def check_params(params: dict[str, str]) -> None:
    """What listings read of the query: integers in a range, a continuation token, and the
    prefix's successor (the first string after every one the prefix starts)."""
    for name in params:
        try:
            value = int_param(params, name, 7, low=1, high=1000)
            check(value == 7 or 1 <= value <= 1000, f"int_param gave {value}")
        except S3Error:
            pass
    try:
        decode_token(params.get("continuation-token", ""))
    except S3Error:
        pass
    prefix = params.get("prefix", "").encode()
    after = successor(prefix)
    check(after is None and prefix.strip(b"\xff") == b"" or after is not None
          and after > prefix + b"\xff" * 8 and not after.startswith(prefix),
          f"successor({prefix!r}) = {after!r}")


def check_conditions(if_match: bytes, date: bytes, size: bytes) -> None:
    """DeleteObject's conditional headers."""
    headers = {b"if-match": if_match, b"x-amz-if-match-last-modified-time": date,
               b"x-amz-if-match-size": size}
    try:
        found = conditions_of(Request(b"DELETE", b"/b/k", b"", headers, EMPTY))
    except S3Error:
        return
    check(found.size is None or found.size >= 0, f"conditions_of gave {found}")


def check_range(header: bytes, size: int) -> None:
    m = single_range(header)
    if m is None:
        return
    found = resolve_range(m, size)
    if found is not None:
        first, last = found
        check(0 <= first <= last < size, f"{header!r} over {size} bytes gave {found}")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    size = object_size(fdp.ConsumeIntInRange(0, 255))
    lines = fdp.ConsumeBytes(fdp.remaining_bytes()).split(b"\n", 5)
    target, range_header, date, if_match, etag, size_header = lines + [b""] * (6 - len(lines))
    path, _, query = target.partition(b"?")
    check_key(path)
    params = params_of(query)
    check(all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()),
          f"params_of gave {params!r}")
    check_params(params)
    check_range(range_header, size)
    for value in (date, date.decode("latin-1")):
        seconds = parse_http_date(value)
        check(seconds is None or isinstance(seconds, float), f"parse_http_date gave {seconds!r}")
    check(isinstance(etag_matches(if_match, etag.decode("latin-1")), bool), "etag_matches")
    check_conditions(if_match, date, size_header)


def seed(target: bytes, range_header: bytes = b"", date: bytes = b"", if_match: bytes = b"",
         etag: bytes = b"", size_header: bytes = b"12", size: int = 100) -> bytes:
    return b"\n".join((target, range_header, date, if_match, etag, size_header)) + tail(size)


SEEDS = [
    seed(b"/bucket/key?versionId=1&x-id=GetObject", b"bytes=0-99",
         b"Sun, 06 Nov 1994 08:49:37 GMT", b'"abc", W/"def"', b'"abc"'),
    seed(b"/b/%E2%82%AC%20euro?prefix=a%2Fb&list-type=2", b"bytes=-5", b"Sunday, 06-Nov-94 "
         b"08:49:37 GMT", b"*", b'"0"', size=0),
    seed(b"/b/../etc?delete", b"bytes = 10 - ", b"Sun Nov  6 08:49:37 1994", size=5),
    seed(b"/a/%2e%2E/b?uploads&uploadId=%ZZ", b"bytes=0-0,5-6", b"", size=201),
    seed(b"/" + "é".encode() * 200 + b"/" + b"\xff\xfe", b"bytes=9999999999999999-",
         size=255),
    seed(b"http://host/k?%", b"bytes=" + b"1" * 40 + b"-" + b"2" * 40, b"Thu, 01 Jan 1970 "
         b"00:00:00 +2359", b"W/", size=1),
    seed(b"/b/%00?a=%00&=&&b", b"bytes=" + b"0" * 600 + b"7-" + b"9" * 600),
    seed(b"/b/k?max-keys=1001&prefix=a%FF%FF&continuation-token=YQ==", b"bytes=" + b"1" * 4250
         + b"-", size=210),
    # crashes found and fixed, kept: a zone past any clock, a size of superscript digits
    seed(b"/b/k", b"", b"Thu, 01 Jan 1970 00:00:00 +23522222222222222222222222", b"", b"",
         b"\xb311"),
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN)
