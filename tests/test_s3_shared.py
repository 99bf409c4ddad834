"""Several masters over one PostgreSQL index share the S3 state (mkv/s3/pgstate.py): uploads
and their parts (bytes on the volumes), buckets, ETags, metadata and tags. Real masters, nginx
volumes and a throwaway PostgreSQL; then the state itself, that PostgreSQL's and the spool's
beside LevelDB (mkv/s3/spool.py, whose parts are on the volumes too): a part sent again, an
abort racing part writes, two sweepers; and the walks passing over `s3-parts/`.

The figures each test measures are printed (`pytest -s` shows them).
"""

import asyncio
import hashlib
import inspect
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
import test_s3
import test_s3_checksums
import test_s3_metadata
from boto3.s3.transfer import TransferConfig
from cluster import Volume, mkv_command
from conftest import client, error_of, md5hex, part_files, read_records, request
from test_postgres import pg_master  # noqa: F401  (a fixture: a master over PostgreSQL)

from bench.gomkv import peer_source
from mkv.config import Config
from mkv.index import open_index
from mkv.s3.parts import PARTS, PartFiles
from mkv.s3.pgstate import PostgresState
from mkv.s3.spool import Spool
from mkv.s3.state import METADATA, UploadBusy, UploadGone
from mkv.store import Store
from mkv.volumes.replicas import Volumes

MiB = 1024 * 1024
_PART_REQUEST = re.compile(rb"PUT [^ ]*partNumber=(\d+)[^ ]*uploadId=([0-9a-f]+)|"
                           rb"PUT [^ ]*uploadId=([0-9a-f]+)[^ ]*partNumber=(\d+)")


class RoundRobin:
    """A TCP proxy handing each new connection to the next master in turn; it counts the
    UploadPart requests that went to each."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.parts: dict[int, set[tuple[str, int]]] = {port: set() for port in ports}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.turn = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            port = self.ports[self.turn % len(self.ports)]
            self.turn += 1
            upstream = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=self._pump, args=(downstream, upstream, port),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, None),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, port: int | None) -> None:
        tail = b""
        try:
            while data := source.recv(1 << 16):
                if port is not None:  # requests: note the parts
                    for m in _PART_REQUEST.finditer(tail + data):
                        number, upload = (m[1], m[2]) if m[1] else (m[4], m[3])
                        self.parts[port].add((upload.decode(), int(number)))
                    tail = data[-300:]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def two_masters(pg_url, make_master):
    return [make_master(db=pg_url), make_master(db=pg_url)]


def test_upload_file_parts_over_two_masters(two_masters, volumes, tmp_path):
    a, b = two_masters
    proxy = RoundRobin([a.port, b.port])
    data = os.urandom(64 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    try:
        through = client(proxy.port)
        through.create_bucket(Bucket="shared")
        started = time.monotonic()
        through.upload_file(str(source), "shared", "big.bin", Config=TransferConfig(
            multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4))
        seconds = time.monotonic() - started
    finally:
        proxy.close()
    spread = {port: len(parts) for port, parts in proxy.parts.items()}
    print(f"\n64 MiB upload_file through two masters in {seconds:.2f}s; parts per master "
          f"{list(spread.values())}")
    assert sum(spread.values()) == 8 and all(spread.values()), spread
    (upload_id,) = {upload for parts in proxy.parts.values() for upload, _ in parts}
    for master in (a, b):
        got = client(master.port).get_object(Bucket="shared", Key="big.bin")
        assert got["ETag"].endswith('-8"')
        assert hashlib.md5(got["Body"].read()).hexdigest() == md5hex(data)
    assert part_files(volumes, upload_id) == []  # completed: the parts' files are gone


def test_parts_alternating_masters_completed_through_either(two_masters, volumes):
    s3a, s3b = (client(m.port) for m in two_masters)
    s3a.create_bucket(Bucket="alternate")
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    upload = s3a.create_multipart_upload(Bucket="alternate", Key="k")["UploadId"]
    etags = [(s3a, s3b)[n % 2].upload_part(Bucket="alternate", Key="k", UploadId=upload,
                                           PartNumber=n + 1, Body=p)["ETag"]
             for n, p in enumerate(parts)]
    again = s3b.upload_part(Bucket="alternate", Key="k", UploadId=upload, PartNumber=1,
                            Body=parts[0])  # a part sent again replaces the earlier one
    assert again["ETag"] == etags[0]
    assert len(part_files(volumes, upload)) == 3 * 3  # three parts, three replicas each
    listed = s3a.list_parts(Bucket="alternate", Key="k", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (n + 1, etags[n], len(p)) for n, p in enumerate(parts)]
    done = s3b.complete_multipart_upload(Bucket="alternate", Key="k", UploadId=upload,
                                         MultipartUpload={"Parts": [
                                             {"PartNumber": n + 1, "ETag": e}
                                             for n, e in enumerate(etags)]})
    repeat = s3a.complete_multipart_upload(Bucket="alternate", Key="k", UploadId=upload,
                                           MultipartUpload={"Parts": [
                                               {"PartNumber": n + 1, "ETag": e}
                                               for n, e in enumerate(etags)]})
    assert repeat["ETag"] == done["ETag"]  # the answer is shared too
    assert s3a.get_object(Bucket="alternate", Key="k")["Body"].read() == b"".join(parts)
    head = s3b.head_object(Bucket="alternate", Key="k", PartNumber=2)
    assert (head["PartsCount"], head["ContentLength"]) == (3, 5 * MiB)
    assert part_files(volumes, upload) == []


def test_bucket_made_on_one_master_is_there_on_the_other(two_masters):
    s3a, s3b = (client(m.port) for m in two_masters)
    s3a.create_bucket(Bucket="made-on-a")
    s3b.head_bucket(Bucket="made-on-a")
    assert "made-on-a" in [b["Name"] for b in s3b.list_buckets()["Buckets"]]
    s3b.put_object(Bucket="made-on-a", Key="x", Body=b"through b")
    assert s3a.get_object(Bucket="made-on-a", Key="x")["Body"].read() == b"through b"
    s3a.delete_object(Bucket="made-on-a", Key="x")
    s3b.delete_bucket(Bucket="made-on-a")
    assert error_of(s3a.head_bucket, Bucket="made-on-a")[1] == 404


def test_metadata_written_through_one_master_read_through_the_other(two_masters):
    a, b = two_masters
    s3a, s3b = client(a.port), client(b.port)
    s3a.create_bucket(Bucket="meta")
    s3a.put_object(Bucket="meta", Key="doc", Body=b"hello", ContentType="text/plain",
                   Metadata={"colour": "blue"}, Tagging="a=1&b=2")
    head = s3b.head_object(Bucket="meta", Key="doc")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", {"colour": "blue"})
    assert s3b.get_object_tagging(Bucket="meta", Key="doc")["TagSet"] == [
        {"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
    s3b.put_object_tagging(Bucket="meta", Key="doc",
                           Tagging={"TagSet": [{"Key": "c", "Value": "3"}]})
    assert s3a.get_object_tagging(Bucket="meta", Key="doc")["TagSet"] == [
        {"Key": "c", "Value": "3"}]
    # the same bytes written natively through b: a new value, without the old one's metadata
    assert request(b.port, "REPLACE", "/meta/doc", b"hello").status == 201
    head = s3a.head_object(Bucket="meta", Key="doc")
    assert (head["ContentType"], head["Metadata"]) == ("application/octet-stream", {})


def _verify(db: str, vols: list[Volume]) -> subprocess.CompletedProcess:
    return subprocess.run(mkv_command("-db", db, "-volumes", ",".join(v.addr for v in vols),
                                      "verify"), capture_output=True, text=True, timeout=120)


def test_upload_of_a_killed_master_is_aborted_or_swept_through_the_other(
        pg_url, make_master, make_volumes):
    vols = make_volumes(3)
    doomed = make_master(db=pg_url, volumes=vols)
    survivor = make_master("-s3_upload_ttl", "6s", db=pg_url, volumes=vols)
    s3d, s3s = client(doomed.port), client(survivor.port)
    s3d.create_bucket(Bucket="orphaned")
    assert request(doomed.port, "PUT", "/orphaned/plain", b"a key").status == 201
    uploads = []
    for name in ("aborted", "swept"):
        upload = s3d.create_multipart_upload(Bucket="orphaned", Key=name)["UploadId"]
        for n, body in enumerate([os.urandom(5 * MiB), b"last"]):
            s3d.upload_part(Bucket="orphaned", Key=name, UploadId=upload, PartNumber=n + 1,
                            Body=body)
        uploads.append(upload)
    doomed.process.proc.send_signal(signal.SIGKILL)
    doomed.process.proc.wait()
    listed = s3s.list_multipart_uploads(Bucket="orphaned")["Uploads"]
    assert sorted((u["Key"], u["UploadId"]) for u in listed) == sorted(
        zip(("aborted", "swept"), uploads, strict=True))
    assert [len(part_files(vols, u)) for u in uploads] == [6, 6]  # 2 parts × 3 replicas
    verified = _verify(pg_url, vols)  # the parts are nobody's key, and no orphans
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert PARTS not in verified.stdout and "orphan:" not in verified.stdout

    s3s.abort_multipart_upload(Bucket="orphaned", Key="aborted", UploadId=uploads[0])
    assert part_files(vols, uploads[0]) == []
    # a master killed between a part's file and its row leaves a directory no upload knows
    stray = vols[1].dir / PARTS / ("0" * 32)
    stray.mkdir(parents=True)
    (stray / "1.deadbeef").write_bytes(b"left behind")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    started = time.monotonic()
    while (part_files(vols, uploads[1]) or stray.exists()) and time.monotonic() - started < 60:
        time.sleep(0.5)
    print(f"\nswept {6} part files and a stray directory in "
          f"{time.monotonic() - started:.1f}s (-s3_upload_ttl 6s)")
    assert part_files(vols, uploads[1]) == [] and not stray.exists()
    assert error_of(s3s.list_parts, Bucket="orphaned", Key="swept",
                    UploadId=uploads[1])[0] == "NoSuchUpload"
    assert s3s.list_multipart_uploads(Bucket="orphaned").get("Uploads", []) == []


PEER = peer_source()


@pytest.mark.skipif(PEER is None, reason="no copy of Go mkv's source on this machine")
def test_go_mkv_rebuild_passes_over_parts(make_volumes, go_programs, tmp_path):
    vols = make_volumes(2)
    for vol in vols:  # a key's file, and parts in a subvolume and at the top
        for where in (vol.dir / "sv03" / PARTS / ("a" * 32), vol.dir / PARTS / ("b" * 32)):
            where.mkdir(parents=True)
            (where / "1.0123456789abcdef").write_bytes(b"part bytes")
    addrs = [v.addr for v in vols]
    go_mkv = go_programs(PEER / "src", "mkv-go")
    done = subprocess.run([str(go_mkv), "-volumes", ",".join(addrs), "-db",
                           str(tmp_path / "go.db"), "-replicas", "1", "rebuild"],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_records(tmp_path / "go.db") == {}


# --- the state itself: over the tests' PostgreSQL, and the spool beside a LevelDB index ---

ENGINES = pytest.mark.parametrize("engine", ["postgres", "spool"])


@pytest.fixture
def state_of(request, tmp_path):
    """`run(vols, work, masters=1)`: `work` given `masters` states of the engine on one
    database or directory (several spools on one directory are a master's -workers), their
    parts on `vols`; what it returns."""
    engine = request.node.callspec.params["engine"]
    db = request.getfixturevalue("pg_url") if engine == "postgres" else str(tmp_path / "db")

    def run(vols: list[Volume], work, masters: int = 1) -> object:
        config = Config(db=db, volumes=tuple(v.addr for v in vols), replicas=2, subvolumes=4)

        async def go() -> object:
            index = await open_index(db)
            volumes = Volumes.for_config(config)
            files = PartFiles(Store(config, index, volumes))
            states = [PostgresState(db, files) if engine == "postgres" else
                      Spool(tmp_path / "spool", files, shared=masters > 1)
                      for _ in range(masters)]
            try:
                return await work(*states)
            finally:
                for state in states:
                    await state.close()
                await volumes.close()
                await index.close()

        return asyncio.run(go())
    return run


async def _make_stale(state: PostgresState | Spool, upload_ids: list[str], age: float) -> None:
    """The uploads' last activity `age` seconds ago."""
    if isinstance(state, PostgresState):
        await state._execute("UPDATE mkv_s3_uploads SET initiated = initiated - $2 "
                             "WHERE id = ANY($1)", upload_ids, age)
        await state._execute("UPDATE mkv_s3_parts SET modified = modified - $2 "
                             "WHERE upload_id = ANY($1)", upload_ids, age)
        return
    then = time.time() - age
    for upload_id in upload_ids:
        upload = state.uploads_dir / upload_id
        for path in [*upload.iterdir(), upload]:
            os.utime(path, (then, then))


def _unchecked() -> None:
    """A part sent without an x-amz-checksum-*."""
    return None


async def _chunks(*blocks: bytes, pause: float = 0.0):
    for block in blocks:
        await asyncio.sleep(pause)
        yield block


@ENGINES
def test_a_part_sent_again_replaces_the_first_and_its_files(engine, state_of, make_volumes):
    vols = make_volumes(3)

    async def work(state: PostgresState | Spool) -> None:
        upload = await state.create(b"/b/k", {})
        first = await state.write_part(upload.id, 1, _chunks(b"first"), 5, _unchecked)
        assert len(part_files(vols, upload.id)) == 2  # -replicas 2
        second = await state.write_part(upload.id, 1, _chunks(b"second"), None,
                                     lambda: ("crc32", "ZO2Lpw=="))
        assert [p.read_bytes() for p in part_files(vols, upload.id)] == [b"second"] * 2
        parts = await state.parts(upload.id)
        assert list(parts) == [1] and parts[1].md5 == md5hex(b"second") != first.md5
        assert (parts[1].size, parts[1].checksum) == (6, ("crc32", "ZO2Lpw=="))
        assert b"".join([c async for c in state.read([second])]) == b"second"
        assert await state.remove(upload.id) and part_files(vols, upload.id) == []
        assert await state.parts(upload.id) == {}

    state_of(vols, work)


@ENGINES
def test_an_abort_racing_part_writes_leaves_no_record_and_no_file(engine, state_of,
                                                                  make_volumes):
    vols = make_volumes(3)

    async def work(state: PostgresState | Spool) -> list[str]:
        outcomes = []
        for _ in range(12):
            upload = await state.create(b"/b/race", {})

            async def write(n: int, upload_id: str) -> str:
                try:
                    await state.write_part(upload_id, n, _chunks(b"x" * 1000, b"y", pause=0.01),
                                           None, _unchecked)
                    return "written"
                except UploadGone:
                    return "gone"

            async def abort(upload_id: str) -> None:
                await asyncio.sleep(random.uniform(0, 0.05))
                assert await state.remove(upload_id)

            results = await asyncio.gather(*(write(n, upload.id) for n in range(1, 5)),
                                           abort(upload.id))
            outcomes += [r for r in results if r]
            assert await state.parts(upload.id) == {}
            assert part_files(vols, upload.id) == [], upload.id
        return outcomes

    outcomes = state_of(vols, work)
    print(f"\n{engine}: 48 part writes racing 12 aborts: {outcomes.count('written')} written "
          f"before the abort, {outcomes.count('gone')} refused as NoSuchUpload")
    assert "gone" in outcomes


@ENGINES
def test_two_sweepers_remove_each_stale_upload_once(engine, state_of, make_volumes):
    vols = make_volumes(3)

    async def work(one: PostgresState | Spool,
                   other: PostgresState | Spool) -> tuple[list[str], list[str]]:
        ids = []
        for n in range(6):
            upload = await one.create(f"/b/stale{n}".encode(), {})
            await one.write_part(upload.id, 1, _chunks(b"part"), 4, _unchecked)
            ids.append(upload.id)
        fresh = await one.create(b"/b/fresh", {})
        await one.write_part(fresh.id, 1, _chunks(b"fresh part"), None, _unchecked)
        await _make_stale(one, ids, 100)
        now = time.time()
        swept = await asyncio.gather(one.sweep(50, now), other.sweep(50, now))
        assert sorted(swept[0] + swept[1]) == sorted(ids)
        assert await one.get(fresh.id) is not None
        assert all(part_files(vols, i) == [] for i in ids)
        assert len(part_files(vols, fresh.id)) == 2
        return swept

    swept = state_of(vols, work, masters=2)
    print(f"\n{engine}: two sweepers at once: {len(swept[0])} and {len(swept[1])} of 6 stale "
          "uploads")
    assert not set(swept[0]) & set(swept[1])


@pytest.mark.parametrize("engine", ["spool"])
def test_a_spool_shared_by_workers_agrees_across_its_users(engine, state_of, make_volumes):
    """Two Spools on one directory, as two -workers of a master over LevelDB have: what one
    keeps the other reads, and a Complete one holds is busy for the other."""
    vols = make_volumes(2)

    async def work(one: Spool, other: Spool) -> None:
        assert (await other.kept(b"/b/k", "0" * 32)).metadata is None  # known as absent
        await one.keep(METADATA, b"/b/k", "0" * 32, {"headers": [["x-amz-meta-a", "1"]]})
        assert (await other.kept(b"/b/k", "0" * 32)).metadata["headers"] == [["x-amz-meta-a",
                                                                              "1"]]
        other.forget(b"/b/k")
        assert (await one.kept(b"/b/k", "0" * 32)).metadata is None
        upload = await one.create(b"/b/k", {})
        await one.write_part(upload.id, 2, _chunks(b"two"), 3, _unchecked)
        async with one.completing(upload.id):
            with pytest.raises(UploadBusy):
                async with other.completing(upload.id):
                    pass
            with pytest.raises(UploadBusy):
                await other.remove(upload.id)
            with pytest.raises(UploadGone):
                await other.write_part(upload.id, 1, _chunks(b"x"), 1, _unchecked)
        assert list(await one.parts(upload.id)) == [2]  # the refused part left no record
        assert len(part_files(vols, upload.id)) == 2  # nor files: part 2's two copies
        await other.write_part(upload.id, 1, _chunks(b"x"), 1, _unchecked)  # let go: it comes
        assert sorted(await one.parts(upload.id)) == [1, 2]
        assert await other.remove(upload.id)
        assert part_files(vols, upload.id) == []

    state_of(vols, work, masters=2)


# --- the S3 tests' core scenarios, on a master over PostgreSQL ---


S3_CHECKS = [
    test_s3.test_put_get_head_and_the_same_value_natively,
    test_s3.test_range_get_and_head,
    test_s3.test_conditional_requests,
    test_s3.test_overwrite_is_allowed_and_empty_objects_work,
    test_s3.test_concurrent_writes_of_a_key_all_succeed_and_the_last_wins,
    test_s3.test_list_objects_v2_prefix_delimiter_paging,
    test_s3.test_buckets_are_prefixes,
    test_s3.test_delete_object_and_delete_objects,
    test_s3.test_copy_object_same_and_other_bucket,
    test_s3.test_managed_copy_uses_upload_part_copy,
    test_s3.test_multipart_upload,
    test_s3.test_multipart_errors,
    test_s3_metadata.test_put_keeps_metadata_for_get_and_head,
    test_s3_checksums.test_upload_file_gets_a_composite_crc32,
    test_s3_checksums.test_list_parts_gives_each_part_its_checksum,
    test_s3_checksums.test_a_copy_keeps_the_checksum_and_a_rewrite_drops_it,
    test_s3_metadata.test_non_ascii_metadata_is_answered_rfc2047_encoded,
    test_s3_metadata.test_copy_object_metadata_directive,
    test_s3_metadata.test_multipart_metadata_applies_at_complete_and_complete_repeats,
    test_s3_metadata.test_object_tagging,
    test_s3_metadata.test_a_native_write_or_delete_drops_the_metadata,
]


@pytest.mark.parametrize("check", S3_CHECKS, ids=[c.__name__[5:] for c in S3_CHECKS])
def test_s3_over_postgres(pg_master, check) -> None:  # noqa: F811 (the fixture)
    s3 = client(pg_master.port, retries=1)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    given = {"s3master": pg_master, "s3": s3, "bucket": bucket}
    check(**{name: given[name] for name in inspect.signature(check).parameters})


@ENGINES
def test_a_pass_is_claimed_once_per_period_among_masters(engine, state_of, volumes):
    async def work(*states):
        now = time.time()
        claims = await asyncio.gather(*(state.claim_pass("lifecycle", 60.0, now)
                                        for state in states for _ in range(4)))
        again = await states[1].claim_pass("lifecycle", 60.0, now + 30)
        later = await asyncio.gather(*(state.claim_pass("lifecycle", 60.0, now + 61)
                                       for state in states))
        other = await states[0].claim_pass("another pass", 60.0, now)
        return claims, again, later, other

    claims, again, later, other = state_of(volumes, work, masters=3)
    assert claims.count(True) == 1
    assert not again
    assert later.count(True) == 1
    assert other


@ENGINES
def test_bucket_settings_fields_set_at_once_all_stay(engine, state_of, volumes):
    async def work(*states):
        made = await asyncio.gather(*(state.make_bucket("b", {"owner": f"key{i}"})
                                      for i, state in enumerate(states)))
        await asyncio.gather(*(state.set_bucket_setting("b", f"field{i}", [i])
                               for i, state in enumerate(states * 3)))
        await states[0].set_bucket_setting("b", "field0", None)
        missing = await states[0].set_bucket_setting("no-such-bucket", "acl", [])
        return made, (await states[1].bucket_settings())["b"], missing, \
            await states[0].bucket_created("b"), list(await states[2].buckets())

    made, settings, missing, created, names = state_of(volumes, work, masters=3)
    assert made.count(True) == 1
    owner = settings.pop("owner")
    assert owner in ("key0", "key1", "key2")
    assert settings == {f"field{i}": [i] for i in range(1, 9)}
    assert not missing
    assert created is not None and abs(created - time.time()) < 60
    assert names == ["b"]
