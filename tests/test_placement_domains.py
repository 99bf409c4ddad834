"""-domains and -weights on a real cluster (SPEC §6): a rack's volumes all stopped loses no
key; turning the flags on for a cluster written without them marks exactly the keys SPEC's walk
places elsewhere, and `rebalance` moves only those; `where` and `verify` show it.

The figures each test measures are printed (`pytest -s` shows them).
"""

import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from cluster import free_port, mkv_command
from conftest import Master, fetch, request

from mkv.config import Config

KEYS = 2000


def domains_flag(vols, racks: int) -> tuple[str, dict[str, str]]:
    """Volumes 0,1 in rack0, 2,3 in rack1, …; the flag and the map."""
    domain = {v.addr: f"rack{n // (len(vols) // racks)}" for n, v in enumerate(vols)}
    return ",".join(f"{v}={d}" for v, d in domain.items()), domain


def command(master: Master, *args: str) -> subprocess.CompletedProcess:
    """An offline command with the master's flags (its admin port aside)."""
    flags = list(master.flags)
    if "-admin_port" in flags:
        del flags[flags.index("-admin_port"):flags.index("-admin_port") + 2]
    return subprocess.run(mkv_command("-db", str(master.db), "-volumes", ",".join(master.addrs),
                                      *flags, *args),
                          capture_output=True, text=True, timeout=300)


def put_all(master: Master, keys: list[bytes]) -> None:
    def put(key: bytes) -> int:
        return master.put(key, b"value of " + key).status
    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(put, keys))
    assert statuses == {201: len(keys)}, statuses


def replicas_of(master: Master, key: bytes) -> tuple[list[str], str]:
    reply = master.call("GET", key)
    assert reply.status == 302, (key, reply.status)
    return reply.header("Key-Volumes").split(","), reply.header("Key-Balance")


def read_all(master: Master, keys: list[bytes]) -> None:
    def read(key: bytes) -> bool:
        return fetch(master.call("GET", key).header("Location")) == b"value of " + key
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, keys))


@pytest.mark.parametrize("replicas", [3, 2])
def test_a_rack_dies_and_nothing_is_lost(make_volumes, make_master, replicas):
    vols = make_volumes(6)
    flag, domain = domains_flag(vols, 3)
    master = make_master("-replicas", str(replicas), "-subvolumes", "4", "-domains", flag,
                         volumes=vols)
    keys = [f"/rack/{n}".encode() for n in range(KEYS)]
    put_all(master, keys)
    config = Config(volumes=tuple(v.addr for v in vols), replicas=replicas, subvolumes=4,
                    domains=tuple(domain.items()))
    for key in keys:
        placed, balance = replicas_of(master, key)
        assert placed == config.placement(key) and balance == "balanced"
        assert len({domain[r.partition("/")[0]] for r in placed}) == replicas

    lost = [v for v in vols if domain[v.addr] == "rack1"]
    for vol in lost:
        assert vol.stop() == 0
    began = time.monotonic()
    read_all(master, keys)  # every key has a replica outside rack1
    read_seconds = time.monotonic() - began
    during = [f"/during/{n}".encode() for n in range(200)]
    deadline = time.monotonic() + 30
    while master.put(b"/during/probe-%d" % time.monotonic_ns(), b"x").status != 201:
        assert time.monotonic() < deadline, "writes never went on around the dead rack"
        time.sleep(0.2)
    put_all(master, during)
    for key in during:
        placed, balance = replicas_of(master, key)
        assert not any(domain[r.partition("/")[0]] == "rack1" for r in placed)
        assert len(placed) == replicas
    print(f"\nreplicas {replicas}: {KEYS} keys read byte-exact in {read_seconds:.1f} s with "
          f"rack1 ({len(lost)} of 6 volumes) down; {len(during)} written around it")

    for vol in lost:
        make_volumes.restart(vol)
    rebalanced = command(master, "rebalance")
    assert rebalanced.returncode == 0, rebalanced.stdout + rebalanced.stderr
    verified = command(master, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    print(rebalanced.stdout.strip().splitlines()[-1])
    for key in keys + during:
        placed, balance = replicas_of(master, key)
        assert placed == config.placement(key) and balance == "balanced", key
    read_all(master, keys + during)


def test_turning_domains_and_weights_on_moves_only_what_the_walk_places_elsewhere(
        make_volumes, make_master, tmp_path):
    vols = make_volumes(4)
    addrs = tuple(v.addr for v in vols[:3])
    plain = make_master("-replicas", "2", "-subvolumes", "4", volumes=vols[:3])
    keys = [f"/turn/{n}".encode() for n in range(KEYS)]
    put_all(plain, keys)
    assert plain.stop() == 0

    flag = f"{addrs[0]}=rackA,{addrs[1]}=rackA,{addrs[2]}=rackB"
    admin = free_port()
    racked = make_master("-replicas", "2", "-subvolumes", "4", "-domains", flag,
                         "-admin_port", str(admin), db=plain.db, volumes=vols[:3])
    config = Config(volumes=addrs, replicas=2, subvolumes=4,
                    domains=tuple(zip(addrs, ("rackA", "rackA", "rackB"), strict=True)))
    before = Config(volumes=addrs, replicas=2, subvolumes=4)
    elsewhere = {k for k in keys if config.placement(k) != before.placement(k)}
    unbalanced = {k for k in keys if replicas_of(racked, k)[1] == "unbalanced"}
    assert unbalanced == elsewhere and elsewhere
    crowded = command(racked, "verify")
    assert crowded.returncode == 1 and crowded.stdout.count("crowded:") == len(elsewhere)
    page = request(admin, "GET", "/").body.decode()
    for addr, rack in zip(addrs, ("rackA", "rackA", "rackB"), strict=True):
        row = page[page.index(addr):].split("</tr>")[0]
        assert f"<td>{rack}</td><td>1</td>" in row, row  # its domain, weight 1, keys counted
        assert row.endswith("</td>") and row.rsplit("<td>", 1)[1] != "—</td>", row
    where = command(racked, "where", "/turn/0")
    assert where.returncode == 0 and "rackA" in where.stdout and "rackB" in where.stdout
    moved = command(racked, "rebalance")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    print(f"\n-domains on: {len(elsewhere)} of {KEYS} keys placed elsewhere, "
          f"{moved.stdout.strip().splitlines()[-1]}")
    assert f"moved {len(elsewhere):,}" in moved.stdout
    assert command(racked, "verify").returncode == 0
    for key in keys:
        placed, balance = replicas_of(racked, key)
        assert balance == "balanced" and placed == config.placement(key)
        assert len({dict(config.domains)[r.partition("/")[0]] for r in placed}) == 2
    assert racked.stop() == 0

    # back to Go mkv's placement, then a fourth volume of weight 3 joins three of weight 1. It
    # is first for 3/6 of the keys, and among a key's 2 replicas for 3/6 + 3 × 1/6 × 3/5 =
    # 80% of them: the keys that move
    back = command(plain, "rebalance")
    assert back.returncode == 0 and f"moved {len(elsewhere):,}" in back.stdout, back.stdout
    joined = tuple(v.addr for v in vols)
    weighted = make_master("-replicas", "2", "-subvolumes", "4", "-weights", f"{joined[3]}=3",
                           db=plain.db, volumes=vols)
    after = Config(volumes=joined, replicas=2, subvolumes=4, weights=((joined[3], 3),))
    predicted = {k for k in keys if after.placement(k) != before.placement(k)}
    moved = command(weighted, "rebalance")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"moved {len(predicted):,}" in moved.stdout
    first = sum(after.placement(k)[0].startswith(joined[3]) for k in keys) / KEYS
    print(f"a volume of weight 3 joins 3 of weight 1: {len(predicted)} of {KEYS} keys moved "
          f"({len(predicted) / KEYS:.1%}; the weights predict 80%); it is first for {first:.1%}"
          f" (predicted 50%)")
    # the ports in the volumes' names differ each run: binomial, σ ≈ 0.009 and 0.011 here
    assert abs(len(predicted) / KEYS - 0.8) < 0.045 and abs(first - 0.5) < 0.055
    for key in keys[:300]:
        assert replicas_of(weighted, key)[1] == "balanced"
    read_all(weighted, keys)


def test_bad_domains_and_weights_are_start_up_errors(tmp_path):
    vols = "127.0.0.1:3001,127.0.0.1:3002"
    for flags, says in (
            (["-domains", "127.0.0.1:9=r1"], "not among -volumes"),
            (["-domains", "127.0.0.1:3001"], "not volume=value"),
            (["-weights", "127.0.0.1:3001=0"], "from 1 to 100"),
            (["-weights", "127.0.0.1:3001=101"], "from 1 to 100"),
            (["-weights", "127.0.0.1:3001=x"], "from 1 to 100"),
            (["-weights", "127.0.0.1:3001=2,127.0.0.1:3001=3"], "named twice")):
        for cmd in ("server", "verify", "rebalance"):
            done = subprocess.run(mkv_command("-db", str(tmp_path / "db"), "-volumes", vols,
                                              "-replicas", "1", *flags, cmd),
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and says in done.stderr, (flags, cmd, done.stderr)


def test_where_prints_placement_without_a_master(make_volumes, make_master):
    vols = make_volumes(2)
    master = make_master("-replicas", "1", "-subvolumes", "1", volumes=vols)
    assert master.put(b"/where/k", b"v").status == 201
    assert master.stop() == 0
    done = command(master, "-domains", f"{vols[0].addr}=left,{vols[1].addr}=right", "where",
                   "/where/k")
    assert done.returncode == 0, done.stderr
    today = Config(volumes=tuple(master.addrs), replicas=1, subvolumes=1).placement(b"/where/k")
    side = "left" if today[0] == vols[0].addr else "right"
    assert f"today:    {today[0]} ({side})" in done.stdout, done.stdout
    assert f"recorded: {today[0]} ({side})" in done.stdout, done.stdout
