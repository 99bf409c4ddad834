"""The shared secret between master and volumes: its header, its checks, and signed read URLs.

A volume given a secret accepts PUT and DELETE only with `X-Mkv-Secret`; with signed reads
it also wants GET/HEAD either from the master (the header) or through a URL the master
signed for nginx's `secure_link` module: `?md5=<base64url md5("<expires><uri> <secret>")>
&expires=<unix time>`.
"""

import base64
import hashlib
import re
import time

SECRET_HEADER = "X-Mkv-Secret"
MIN_SECRET_LENGTH = 16
# what nginx can hold in a quoted config string and a client in a header, without escaping
_SECRET_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")


def secret_problem(secret: str) -> str | None:
    """Why `secret` cannot be used, or None when it can."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"the secret must be at least {MIN_SECRET_LENGTH} characters"
    if not _SECRET_CHARS.fullmatch(secret):
        return "the secret may hold only letters, digits and . _ ~ + / = -"
    return None


def sign(uri: str, secret: str, expires: int) -> str:
    """The query string nginx's secure_link accepts for `uri` until `expires` (unix time)."""
    digest = hashlib.md5(f"{expires}{uri} {secret}".encode()).digest()
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"md5={token}&expires={expires}"


def signed_location(replica: str, path: str, secret: str, lifetime: float) -> str:
    """A redirect target for `path` on `replica` that stops working after `lifetime` s."""
    subvolume = replica[replica.find("/"):] if "/" in replica else ""
    expires = int(time.time() + lifetime)
    return f"http://{replica}{path}?{sign(subvolume + path, secret, expires)}"
