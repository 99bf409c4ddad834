"""Volumes that only the master may write, and signed read URLs (issue 6, items 7-9)."""

import subprocess
import time
from urllib.parse import urlsplit

import pytest
from cluster import free_port, mkv_command, start_volume, wait_listening
from conftest import MasterFactory, request, unique_key, url_path

from mkv.volumes.security import secret_problem, sign

SECRET = "s3cr3t-for-tests-0123456789"


@pytest.fixture
def secured(tmp_path, monkeypatch):
    """Two volumes holding the secret (given as a flag), and a factory of masters that get it
    from $MKV_SECRET."""
    vols = [start_volume(tmp_path / f"vol{i}", None, "-secret", SECRET) for i in range(2)]
    monkeypatch.setenv("MKV_SECRET", SECRET)
    factory = MasterFactory(tmp_path, vols)
    try:
        yield vols, factory
    finally:
        factory.stop_all()
        for vol in vols:
            vol.stop()


@pytest.fixture
def signed(tmp_path, monkeypatch):
    """Volumes and a master with signed reads; URLs live 1 s."""
    monkeypatch.setenv("MKV_SECRET", SECRET)
    vols = [start_volume(tmp_path / f"vol{i}", None, "-signedreads") for i in range(2)]
    factory = MasterFactory(tmp_path, vols)
    try:
        yield factory("-replicas", "2", "-signedreads", "-signexpiry", "1s")
    finally:
        factory.stop_all()
        for vol in vols:
            vol.stop()


def split(location: str) -> tuple[int, str, str]:
    url = urlsplit(location)
    return url.port, url.path, url.query


def test_master_with_the_secret_writes_reads_and_deletes(secured):
    vols, factory = secured
    master = factory("-replicas", "2")
    key = unique_key()
    assert master.put(key, b"guarded").status == 201
    assert master.read(key) == b"guarded"  # reads stay open without signed reads
    assert master.call("DELETE", key).status == 204


def test_direct_writes_without_the_secret_are_refused(secured):
    vols, factory = secured
    master = factory("-replicas", "2")
    key = unique_key()
    assert master.put(key, b"original").status == 201
    port, path, _ = split(master.call("GET", key).header("Location"))
    for headers in ({}, {"X-Mkv-Secret": "wrong-secret-wrong-secret"}):
        assert request(port, "PUT", path, b"overwritten", headers).status == 403
        assert request(port, "DELETE", path, headers=headers).status == 403
    assert request(port, "PUT", path + "x", b"new file").status == 403
    assert request(port, "GET", path + "x").status == 404  # nothing was created
    assert master.read(key) == b"original"


def test_master_without_the_secret_cannot_write(secured, monkeypatch):
    vols, factory = secured
    monkeypatch.delenv("MKV_SECRET")
    master = factory("-replicas", "2")
    key = unique_key()
    reply = master.put(key, b"x")
    assert reply.status == 500
    assert key.decode() not in master.listing()["keys"]


def test_signed_redirect_works_until_it_expires(signed):
    key = unique_key()
    assert signed.put(key, b"signed value").status == 201
    port, path, query = split(signed.call("GET", key).header("Location"))
    assert "md5=" in query and "expires=" in query
    assert request(port, "GET", f"{path}?{query}").body == b"signed value"
    assert request(port, "GET", path).status == 403  # unsigned
    tampered = query.replace("md5=", "md5=A", 1)
    assert request(port, "GET", f"{path}?{tampered}").status == 403
    other = url_path(unique_key())
    assert request(port, "GET", f"{other}?{query}").status == 403  # signature is per path
    time.sleep(2.2)
    assert request(port, "GET", f"{path}?{query}").status == 403  # expired


def test_signed_reads_keep_the_master_working(signed):
    key = unique_key()
    assert signed.put(key, b"v").status == 201
    assert signed.call("REPLACE", key, b"w").status == 201
    assert signed.call("GET", key).status == 302  # its HEAD check carries the secret
    assert signed.call("DELETE", key).status == 204


def test_secret_never_in_the_log(secured, tmp_path):
    vols, _ = secured
    log = tmp_path / "master.log"
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(mkv_command(
            "-db", str(tmp_path / "db"), "-volumes", ",".join(v.addr for v in vols),
            "-replicas", "2", "-port", str(port), "-v", "server"), stderr=out)
        try:
            wait_listening(port, proc)
            key = url_path(unique_key())
            assert request(port, "PUT", key, b"logged").status == 201
            assert request(port, "GET", key).status == 302
            assert request(port, "DELETE", key).status == 204
        finally:
            proc.terminate()
            proc.wait(10)
    text = log.read_text()
    assert "PUT /" in text and "DELETE /" in text  # the log was written...
    assert SECRET not in text  # ...without the secret


def test_weak_or_odd_secrets_are_refused():
    assert secret_problem("short") is not None
    assert secret_problem('has"quote-and-long-enough') is not None
    assert secret_problem(SECRET) is None
    for args in (["-secret", "short", "volume", "/nonexistent"],
                 ["-signedreads", "-db", "x", "-volumes", "a", "server"]):
        proc = subprocess.run(mkv_command(*args), capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1


def test_sign_vector():
    # echo -n '2147483647/s/link secret' | openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =
    assert sign("/s/link", "secret", 2147483647) == "md5=0Xgm37lo5nFEuHMDKl_vQg&expires=2147483647"
