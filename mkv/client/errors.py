"""The client's exceptions, one per answer a program handles differently, from the status."""


class MkvError(Exception):
    """An answer that is not what was asked for; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(MkvError):
    """No live value under the key (404), or no replica has its file any more (410)."""


class KeyExists(MkvError):
    """A PUT of a key that holds a live value: DELETE it first, or put with replace=True."""


class Busy(MkvError):
    """Another write, delete or move of the key is in flight (409): try again shortly."""


class Refused(MkvError):
    """The master refused the request as it stands (a bad key, an empty value, protected)."""


class Unavailable(MkvError):
    """No master, or no replica, could answer: connection failures, timeouts, 5xx."""


def raise_for(status: int, reason: str, key: bytes, method: str) -> None:
    """Raise the exception an unsuccessful status stands for; return for 2xx and 3xx."""
    if status < 400:
        return
    what = f"{method} {key.decode(errors='replace')}: {status}" + (f": {reason}" if reason else "")
    if status in (404, 410):
        raise NotFound(what, status)
    if status == 409 and method in ("PUT", "REPLACE", "DELETE", "UNLINK", "RELINK"):
        raise Busy(what, status)
    if status == 403 and method == "PUT" and "exists" in reason:
        raise KeyExists(what, status)
    if status >= 500:
        raise Unavailable(what, status)
    raise Refused(what, status)
