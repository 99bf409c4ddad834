"""The key a request target names: the path, percent-decoded, with its leading `/` (SPEC §2),
or why it names none. Both faces take keys from request paths this way."""

import re
from urllib.parse import unquote_to_bytes

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def parse_key(path: bytes) -> bytes | str:
    """The key a request path names, or why it names none."""
    if path[:1] != b"/":  # absolute-form (http://host/k) and asterisk-form (*) targets
        return "the request target must be a path"
    if path.isascii() and b"%" not in path and b"/." not in path and b"\x00" not in path:
        return path  # the common case, checked in one pass each
    if b"%" in path:
        if _BAD_PERCENT.search(path):
            return "invalid percent-encoding in the key"
        path = unquote_to_bytes(path)
    if b"\x00" in path:
        return "NUL byte in the key"
    try:
        path.decode()
    except UnicodeDecodeError:
        return "the key is not valid UTF-8"
    if any(part in (b".", b"..") for part in path.split(b"/")):
        return "'.' and '..' are not allowed as key segments"
    return path
