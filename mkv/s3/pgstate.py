"""The S3 state (mkv/s3/state.py) in PostgreSQL, beside a PostgreSQL index, so that every
master over the database shares it. Its tables, created when missing:

    mkv_s3_uploads    id text PK, key bytea, initiated float8, metadata text (JSON)
    mkv_s3_parts      upload_id → mkv_s3_uploads (ON DELETE CASCADE), number, md5, size,
                      modified float8, replicas text (where its bytes are), file text,
                      checksum text (its x-amz-checksum-*); PK (upload_id, number)
    mkv_s3_completed  id text PK, key bytea, etag text, at float8: a repeated Complete's answer
    mkv_s3_buckets    name text PK, created float8
    mkv_s3_documents  kind ('etag', 'metadata'), key bytea, md5 text, document text (JSON);
                      PK (kind, key): valid while the key's value has that md5

Documents are JSON text, not jsonb: metadata keeps header bytes that are not UTF-8 as
surrogate escapes, which jsonb refuses.

A part's bytes are on the volumes (mkv/s3/parts.py, which this state is given), never on a
master's disk; its row says where.

Row locks order what masters do to one upload. A part's row is written holding the upload's
row FOR SHARE NOWAIT: while an abort, the sweep or a Complete holds it, the part fails as
NoSuchUpload and its files go. A Complete holds the row FOR UPDATE on a connection of its own
until it has finished, so an abort meanwhile is busy (409); a master that dies lets it go with
its session. The sweep takes stale rows FOR UPDATE SKIP LOCKED: each is removed by one master.
"""

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from mkv.index.base import ANSWER_SECONDS, IndexUnavailable
from mkv.index.postgres import (
    CLOSE_TIMEOUT,
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    MASTER,
    UNAVAILABLE,
)
from mkv.record import successor
from mkv.s3.parts import PartFiles, location, part_path
from mkv.s3.state import ETAG, METADATA, Kept, Part, Upload, UploadBusy, UploadGone
from mkv.tasks import Tasks, settle

log = logging.getLogger("mkv")

POOL_SIZE = 8  # connections per process (a Complete holds one while it runs)
ABORT_WAIT = "1s"  # an abort waits this long for the upload's row, then is busy

T = TypeVar("T")

_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7105398, 1)"  # the index's is (7105398, 0)
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS mkv_s3_uploads (id text PRIMARY KEY, key bytea NOT NULL, "
    "initiated float8 NOT NULL, metadata text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mkv_s3_parts (upload_id text NOT NULL REFERENCES "
    "mkv_s3_uploads (id) ON DELETE CASCADE, number int NOT NULL, md5 text NOT NULL, "
    "size bigint NOT NULL, modified float8 NOT NULL, replicas text NOT NULL, "
    "file text NOT NULL, checksum text, PRIMARY KEY (upload_id, number))",
    # a part's x-amz-checksum-* ("algorithm:value"), on tables made before it was kept
    "ALTER TABLE mkv_s3_parts ADD COLUMN IF NOT EXISTS checksum text",
    "CREATE TABLE IF NOT EXISTS mkv_s3_completed (id text PRIMARY KEY, key bytea NOT NULL, "
    "etag text NOT NULL, at float8 NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mkv_s3_buckets (name text PRIMARY KEY, created float8 NOT NULL)",
    # a bucket's owner, ACL and lifecycle rules, on tables made before they were kept
    "ALTER TABLE mkv_s3_buckets ADD COLUMN IF NOT EXISTS settings jsonb NOT NULL DEFAULT '{}'",
    "CREATE TABLE IF NOT EXISTS mkv_s3_passes (name text PRIMARY KEY, started float8 NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mkv_s3_documents (kind text NOT NULL, key bytea NOT NULL, "
    "md5 text, document text NOT NULL, PRIMARY KEY (kind, key))",
]
_UPSERT_PART = (
    "INSERT INTO mkv_s3_parts (upload_id, number, md5, size, modified, replicas, file, "
    "checksum) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (upload_id, number) DO "
    "UPDATE SET md5 = EXCLUDED.md5, size = EXCLUDED.size, modified = EXCLUDED.modified, "
    "replicas = EXCLUDED.replicas, file = EXCLUDED.file, checksum = EXCLUDED.checksum")
# idle: no part written since; the newest of its creation and its parts
_STALE = (
    "SELECT id FROM mkv_s3_uploads u WHERE greatest(initiated, (SELECT max(modified) FROM "
    "mkv_s3_parts p WHERE p.upload_id = u.id)) < $1 FOR UPDATE SKIP LOCKED")


class PostgresState:
    """The S3 state in the index's database; a pool of its own, opened on first use."""

    def __init__(self, url: str, files: PartFiles) -> None:
        self.url = url
        self.files = files
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        # this turn's forgotten keys, their writers, and when the first was asked
        self._forgetting: tuple[set[bytes], list[asyncio.Future[None]], float] | None = None
        self._tasks = Tasks()  # the forgets in flight

    async def _connected(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.url, min_size=0, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT, max_inactive_connection_lifetime=0,
                    server_settings={"application_name": MASTER})
                async with pool.acquire() as connection, connection.transaction():
                    await connection.execute(_SCHEMA_LOCK)  # masters starting together
                    for statement in _SCHEMA:
                        await connection.execute(statement)
                self._pool = pool
        return self._pool

    async def _call(self, method: Callable[[asyncpg.Pool], Callable[..., Awaitable[T]]],
                    query: str, *args: object) -> T:
        try:
            return await method(await self._connected())(query, *args)
        except UNAVAILABLE as e:
            raise IndexUnavailable(f"the PostgreSQL index is unavailable: {e}") from None

    def _fetch(self, query: str, *args: object) -> Awaitable[list[asyncpg.Record]]:
        return self._call(lambda pool: pool.fetch, query, *args)

    def _fetchrow(self, query: str, *args: object) -> Awaitable[asyncpg.Record | None]:
        return self._call(lambda pool: pool.fetchrow, query, *args)

    def _execute(self, query: str, *args: object) -> Awaitable[str]:
        return self._call(lambda pool: pool.execute, query, *args)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction; the database down is IndexUnavailable."""
        try:
            async with (await self._connected()).acquire() as connection, \
                    connection.transaction():
                yield connection
        except UNAVAILABLE as e:
            raise IndexUnavailable(f"the PostgreSQL index is unavailable: {e}") from None

    # --- multipart uploads ---
    async def create(self, key: bytes, metadata: dict) -> Upload:
        upload = Upload(secrets.token_hex(16), key, time.time(), metadata)
        await self._execute("INSERT INTO mkv_s3_uploads (id, key, initiated, metadata) "
                            "VALUES ($1, $2, $3, $4)", upload.id, key, upload.initiated,
                            json.dumps(metadata))
        return upload

    async def get(self, upload_id: str) -> Upload | None:
        row = await self._fetchrow("SELECT key, initiated, metadata FROM mkv_s3_uploads "
                                   "WHERE id = $1", upload_id)
        return None if row is None else Upload(upload_id, row[0], row[1], json.loads(row[2]))

    async def uploads(self, prefix: bytes) -> list[Upload]:
        below = successor(prefix)
        bound = "" if below is None else " AND key < $2"
        rows = await self._fetch("SELECT id, key, initiated, metadata FROM mkv_s3_uploads "
                                 f"WHERE key >= $1{bound}",
                                 *((prefix,) if below is None else (prefix, below)))
        return [Upload(row[0], row[1], row[2], json.loads(row[3])) for row in rows]

    async def parts(self, upload_id: str) -> dict[int, Part]:
        rows = await self._fetch("SELECT number, md5, size, modified, replicas, file, "
                                 "checksum FROM mkv_s3_parts WHERE upload_id = $1", upload_id)
        return {row[0]: Part(row[0], row[1], row[2], row[3], location(
            row[4].split(","), part_path(upload_id, row[5])),
            tuple(row[6].split(":", 1)) if row[6] else None)  # type: ignore[arg-type]
            for row in rows}

    async def write_part(self, upload_id: str, number: int, chunks: AsyncIterator[bytes],
                         length: int | None, checksum: Callable[[], tuple[str, str] | None]
                         ) -> Part:
        """Stream the part's file, then its row (replacing an earlier one, whose files then
        go). Files that no row names are deleted: an upload gone meanwhile."""
        written = await self.files.write(upload_id, number, chunks, length)
        part = Part(number, written.md5, written.size, time.time(), written.location,
                    checksum())
        try:
            old = await self._insert_part(upload_id, part, written.replicas, written.file)
        except BaseException:
            await self.files.delete(written.replicas, written.path)
            raise
        if old is not None:
            await self.files.delete(old[0].split(","), part_path(upload_id, old[1]))
        return part

    async def _insert_part(self, upload_id: str, part: Part, replicas: list[str],
                           file: str) -> asyncpg.Record | None:
        """Write the part's row; the replicas and file of the part it replaced, if any."""
        async with self._transaction() as connection:
            try:
                found = await connection.fetchval("SELECT 1 FROM mkv_s3_uploads WHERE id = $1 "
                                                  "FOR SHARE NOWAIT", upload_id)
            except asyncpg.LockNotAvailableError:  # being completed, aborted or swept
                raise UploadGone(upload_id) from None
            if found is None:
                raise UploadGone(upload_id)
            # one writer of a part number at a time across masters, so the one replaced is
            # the one read here
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1), $2)",
                                     upload_id, part.number)
            old = await connection.fetchrow("SELECT replicas, file FROM mkv_s3_parts WHERE "
                                            "upload_id = $1 AND number = $2", upload_id,
                                            part.number)
            await connection.execute(_UPSERT_PART, upload_id, part.number, part.md5, part.size,
                                     part.modified, ",".join(replicas), file,
                                     ":".join(part.checksum) if part.checksum else None)
        return old

    @asynccontextmanager
    async def completing(self, upload_id: str) -> AsyncIterator["PostgresCompletion"]:
        try:
            connection = await (await self._connected()).acquire()
        except UNAVAILABLE as e:
            raise IndexUnavailable(f"the PostgreSQL index is unavailable: {e}") from None
        completion = PostgresCompletion(connection, upload_id)
        transaction = connection.transaction()
        try:
            await transaction.start()
            try:
                found = await connection.fetchval("SELECT 1 FROM mkv_s3_uploads WHERE id = $1 "
                                                  "FOR UPDATE NOWAIT", upload_id)
            except asyncpg.LockNotAvailableError:
                raise UploadBusy(upload_id) from None
            if found is None:
                raise UploadGone(upload_id)
            yield completion
            await transaction.commit()
        except UNAVAILABLE as e:
            raise IndexUnavailable(f"the PostgreSQL index is unavailable: {e}") from None
        finally:
            await _let_go(self._pool, connection, transaction)
        await self.files.remove_upload(upload_id, completion.replicas)

    async def remove(self, upload_id: str) -> bool:
        async with self._transaction() as connection:
            await connection.execute(f"SET LOCAL lock_timeout = '{ABORT_WAIT}'")
            try:
                found = await connection.fetchval("SELECT 1 FROM mkv_s3_uploads WHERE id = $1 "
                                                  "FOR UPDATE", upload_id)
            except asyncpg.LockNotAvailableError:  # a Complete holds it
                raise UploadBusy(upload_id) from None
            if found is None:
                return False
            replicas = await _replicas_of(connection, [upload_id])
            await connection.execute("DELETE FROM mkv_s3_uploads WHERE id = $1", upload_id)
        await self.files.remove_upload(upload_id, replicas.get(upload_id, set()))
        return True

    async def completed(self, upload_id: str) -> tuple[bytes, str] | None:
        row = await self._fetchrow("SELECT key, etag FROM mkv_s3_completed WHERE id = $1",
                                   upload_id)
        return None if row is None else (row[0], row[1])

    def read(self, parts: list[Part]) -> AsyncIterator[bytes]:
        return self.files.read([part.location for part in parts])

    async def sweep(self, ttl: float, now: float) -> list[str]:
        """Stale uploads (each removed by one master), old answers, and directories of parts
        whose upload the database does not know (a master died between a part's file and
        its row)."""
        async with self._transaction() as connection:
            stale = [row[0] for row in await connection.fetch(_STALE, now - ttl)]
            replicas = await _replicas_of(connection, stale)
            await connection.execute("DELETE FROM mkv_s3_uploads WHERE id = ANY($1)", stale)
            await connection.execute("DELETE FROM mkv_s3_completed WHERE at < $1", now - ttl)
        for upload_id in stale:
            await self.files.remove_upload(upload_id, replicas.get(upload_id, set()))
        return stale + await self._sweep_unknown(ttl, now)

    async def _sweep_unknown(self, ttl: float, now: float) -> list[str]:
        found = await self.files.uploads_older_than(ttl, now)
        if not found:
            return []
        known = {row[0] for row in await self._fetch(
            "SELECT id FROM mkv_s3_uploads WHERE id = ANY($1)", list(found))}
        unknown = [upload_id for upload_id in found if upload_id not in known]
        for upload_id in unknown:
            await self.files.remove_upload(upload_id, set(found[upload_id]))
        return unknown

    # --- buckets ---
    async def make_bucket(self, name: str, settings: dict) -> bool:
        return await self._execute("INSERT INTO mkv_s3_buckets (name, created, settings) "
                                   "VALUES ($1, $2, $3::jsonb) ON CONFLICT (name) DO NOTHING",
                                   name, time.time(), json.dumps(settings)) != "INSERT 0 0"

    async def bucket_created(self, name: str) -> float | None:
        row = await self._fetchrow("SELECT created FROM mkv_s3_buckets WHERE name = $1", name)
        return None if row is None else row[0]

    async def remove_bucket(self, name: str) -> bool:
        return await self._execute("DELETE FROM mkv_s3_buckets WHERE name = $1",
                                   name) != "DELETE 0"

    async def buckets(self) -> dict[str, float]:
        return {row[0]: row[1] for row in await self._fetch(
            "SELECT name, created FROM mkv_s3_buckets")}

    async def bucket_settings(self, name: str | None = None) -> dict[str, dict]:
        rows = await (self._fetch("SELECT name, settings FROM mkv_s3_buckets") if name is None
                      else self._fetch("SELECT name, settings FROM mkv_s3_buckets WHERE "
                                       "name = $1", name))
        return {row[0]: json.loads(row[1]) for row in rows}

    async def set_bucket_setting(self, name: str, field: str, value: object) -> bool:
        if value is None:
            done = await self._execute("UPDATE mkv_s3_buckets SET settings = settings - $2 "
                                       "WHERE name = $1", name, field)
        else:  # one field, in one statement: fields set at once by two masters both stay
            done = await self._execute(
                "UPDATE mkv_s3_buckets SET settings = jsonb_set(settings, ARRAY[$2], "
                "$3::jsonb) WHERE name = $1", name, field, json.dumps(value))
        return done != "UPDATE 0"

    async def claim_pass(self, name: str, every: float, now: float) -> bool:
        # the row's lock orders masters claiming at once: the second sees the first's start
        row = await self._fetchrow(
            "INSERT INTO mkv_s3_passes (name, started) VALUES ($1, $2) ON CONFLICT (name) DO "
            "UPDATE SET started = EXCLUDED.started WHERE mkv_s3_passes.started <= $3 "
            "RETURNING started", name, now, now - every)
        return row is not None

    # --- per-key documents ---
    async def kept(self, key: bytes, md5: str | None) -> Kept:
        rows = await self._fetch("SELECT kind, document FROM mkv_s3_documents WHERE key = $1 "
                                 "AND md5 IS NOT DISTINCT FROM $2", key, md5)
        found = {row[0]: json.loads(row[1]) for row in rows}
        return Kept(found.get(ETAG) if md5 else None, found.get(METADATA))

    async def multipart_etags(self, records: dict[bytes, str | None]) -> dict[bytes, str]:
        keys = [key for key, md5 in records.items() if md5]
        if not keys:
            return {}
        rows = await self._fetch("SELECT key, md5, document FROM mkv_s3_documents WHERE "
                                 "kind = $1 AND key = ANY($2)", ETAG, keys)
        return {row[0]: json.loads(row[2])["etag"] for row in rows
                if row[1] == records[row[0]]}

    async def keep(self, kind: str, key: bytes, md5: str | None, document: dict) -> None:
        await self._execute("INSERT INTO mkv_s3_documents (kind, key, md5, document) VALUES "
                            "($1, $2, $3, $4) ON CONFLICT (kind, key) DO UPDATE SET "
                            "md5 = EXCLUDED.md5, document = EXCLUDED.document",
                            kind, key, md5, json.dumps(document))

    async def drop(self, kind: str, key: bytes) -> None:
        await self._execute("DELETE FROM mkv_s3_documents WHERE kind = $1 AND key = $2",
                            kind, key)

    def forget(self, key: bytes) -> Awaitable[None]:
        """The key's documents go; the keys of one loop turn in one statement, sent now, so
        it runs beside the store's record write. A future per writer: one that gives up
        cancels only its own."""
        loop = asyncio.get_running_loop()
        if self._forgetting is None:
            self._forgetting = (set(), [], loop.time())
            loop.call_soon(self._start_forgets)
        keys, waiters, _ = self._forgetting
        keys.add(key)
        told = loop.create_future()
        waiters.append(told)
        return told

    def _start_forgets(self) -> None:
        assert self._forgetting is not None
        (keys, waiters, since), self._forgetting = self._forgetting, None
        if self._tasks.closed:
            settle(waiters, error=IndexUnavailable("the PostgreSQL index is closed"))
            return
        late = IndexUnavailable("the PostgreSQL index is unavailable: no answer within "
                                f"{ANSWER_SECONDS:g} seconds")
        self._tasks.start(self._send_forgets(keys, waiters), deadline=since + ANSWER_SECONDS,
                          late=lambda: settle(waiters, error=late))

    async def _send_forgets(self, keys: set[bytes], waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self._execute("DELETE FROM mkv_s3_documents WHERE key = ANY($1)", list(keys))
        except asyncio.CancelledError:  # closing, or late (then told already)
            settle(waiters, error=IndexUnavailable("the PostgreSQL index is closed"))
            raise
        except Exception as e:  # IndexUnavailable, or a bug: every writer is told
            settle(waiters, error=e)
        else:
            settle(waiters)

    async def close(self) -> None:
        """End the statements in flight; close the connections, or cut them."""
        self._tasks.cancel()
        if self._pool is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._pool.close()
            except TimeoutError:  # asyncpg has cut the connections
                log.warning("S3's PostgreSQL state did not answer its close: connections cut")
        await self._tasks.close()  # their cleanup, which a cut connection does not hold up


class PostgresCompletion:
    """A Complete in progress, holding its upload's row on its own connection."""

    def __init__(self, connection: asyncpg.Connection, upload_id: str) -> None:
        self.connection = connection
        self.upload_id = upload_id
        self.replicas: set[str] = set()  # where its parts' files are, once finished

    async def finish(self, key: bytes, etag: str) -> None:
        """The answer kept and the upload's rows gone, committed with the Complete's end;
        the files are deleted after that."""
        found = await _replicas_of(self.connection, [self.upload_id])
        await self.connection.execute("INSERT INTO mkv_s3_completed (id, key, etag, at) VALUES "
                                      "($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                                      self.upload_id, key, etag, time.time())
        await self.connection.execute("DELETE FROM mkv_s3_uploads WHERE id = $1",
                                      self.upload_id)
        self.replicas = found.get(self.upload_id, set())


async def _let_go(pool: asyncpg.Pool, connection: asyncpg.Connection,
                  transaction: asyncpg.transaction.Transaction) -> None:
    """Back to the pool, rolled back unless committed (a connection the database lost is
    dropped by the pool)."""
    try:
        if connection.is_in_transaction():
            await transaction.rollback()
        await pool.release(connection)
    except UNAVAILABLE:
        connection.terminate()


async def _replicas_of(connection: asyncpg.Connection,
                       upload_ids: list[str]) -> dict[str, set[str]]:
    """The replicas any part of each upload is on."""
    rows = await connection.fetch("SELECT upload_id, replicas FROM mkv_s3_parts WHERE "
                                  "upload_id = ANY($1)", upload_ids)
    found: dict[str, set[str]] = {}
    for upload_id, replicas in rows:
        found.setdefault(upload_id, set()).update(replicas.split(","))
    return found
