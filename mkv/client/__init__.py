"""mkv from Python programs: `Client` (blocking) and `AsyncClient` (asyncio), the same names.

    from mkv.client import Client
    with Client("localhost:3000,otherhost:3000") as mkv:
        mkv.put("/photos/cat.jpg", open("cat.jpg", "rb"))
        data = mkv.get("/photos/cat.jpg")
        for key in mkv.iter_keys("/photos/"):
            ...
"""

from mkv.client.aio import AsyncClient
from mkv.client.core import KeyInfo, Page
from mkv.client.errors import Busy, KeyExists, MkvError, NotFound, Refused, Unavailable
from mkv.client.sync import Client

__all__ = ["AsyncClient", "Busy", "Client", "KeyExists", "KeyInfo", "MkvError", "NotFound",
           "Page", "Refused", "Unavailable"]
