"""The adversary (issue 19, item 7): hostile native and S3 requests, drawn by hypothesis
(tests/adversary_requests.py) and sent raw over sockets to two live masters, each on three nginx
volumes of its own: `plain`, without keys (the native API and anonymous S3 on one port), and
`keys`, with `-s3_keyfile` (S3 signed, on its main port and on `-s3_port`). Requests are
operations as clients make them, changed as an adversary would: random methods and paths
(percent-escapes, `..`, `//`, escaped control bytes, long and non-UTF-8 components), query
parameters, header names and values, signatures (valid, then altered; malformed; out of date),
bodies and their framings (chunked, aws-chunked, lengths that lie, cut off then hung up). Any
string a request carries may hold the header MARK after a CR, LF, NUL or other control byte.

For every request:
- each answer is well-formed HTTP/1.1 (a HEAD's without a body), or the connection closes;
- no 5xx but the documented 503 (index or volumes unavailable) and S3's 501 NotImplemented;
- no answer carries a header the request injected, nor a control byte in its head;
- what the keys master must refuse (no signature, or one altered or out of date; an x-amz-*
  header not signed) gets no 2xx;
- unless a write was acknowledged (2xx, or a form's 303), nothing changed: the index (`?list`,
  `?unlinked`, `?writing`), the bytes of every volume file, the S3 spool. A write refused over
  an unlinked key may clear that key's old files (store.py's `_clear_dead_value`); a request
  answered with nothing at all is unknown to its client, so it may have taken effect, unless
  the body it reads was cut off;
- nothing is left writing, every volume file belongs to a key the index holds, and a live key
  whose files changed reads as its record says (where its replicas are, their md5).
After every example: both masters alive, a known key byte-exact through each, no traceback in
their logs, their peak RSS (VmHWM) under RSS_CEILING_MIB. The last test stops both masters and
reads their LevelDB indexes: every file where its record says, no record left writing.

The counts (requests by target, face and method; statuses; peak RSS; kinds) and each finding
with its first request go to the run's terminal summary. The examples are derandomized, the
same every run; MKV_ADVERSARY_SEED=random explores afresh, MKV_ADVERSARY_SCALE=N draws N times
as many, MKV_ADVERSARY_SURVEY=1 records every finding instead of stopping at the first.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from adversary_requests import ACCESS, MARK, METHODS, SECRET, UPLOAD_IDS, Hostile, hostile
from cluster import free_port, start_master
from conftest import (
    SUMMARIES,
    Master,
    VolumeFactory,
    client,
    data_files,
    key2path,
    read_records,
    request,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rawhttp import Raw

from mkv.s3.parts import PARTS

KNOWN = (f"/known-{secrets.token_hex(4)}".encode(),  # a name no generator draws
         b"known value, read byte-exact after every example\n" * 3)
VICTIMS = {b"/adv/v0": b"victim zero", b"/adv/v1": b"victim one" * 100,
           b"/adv/dir/v2": b"victim two"}
UNLINKED = b"/adv/u0"
RSS_CEILING_MIB = 100  # a master's peak RSS (VmHWM) through all of this: ~37 MiB today
SCALE = float(os.environ.get("MKV_ADVERSARY_SCALE", "1"))
SURVEY = os.environ.get("MKV_ADVERSARY_SURVEY") == "1"  # record every finding, fail at the end
SOCKET_TIMEOUT = 10.0  # each master has -idletimeout and -readtimeout 2s: nothing waits this long
SENTINEL = b"GET /adv-sentinel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
WRITES = frozenset(m.encode() for m in METHODS) - {b"GET", b"HEAD"}


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize=os.environ.get("MKV_ADVERSARY_SEED") != "random",
                    phases=(Phase.explicit, Phase.generate),  # shrinking re-sends, state moved
                    suppress_health_check=list(HealthCheck))


# --- what the masters hold ---


@dataclass(frozen=True)
class Holding:
    """A master's index (by listing), the bytes of its volumes' files, its S3 spool."""

    live: frozenset[str]
    unlinked: frozenset[str]
    writing: frozenset[str]
    files: dict[tuple[int, str], str]  # (volume port, path in it) → md5
    spool: dict[str, str]


def key_of_file(rel: str) -> bytes | None:
    """The key a volume file holds, from its path (SPEC §2), or None if it names none."""
    parts = rel.split("/")
    if re.fullmatch(r"sv[0-9A-F]{2}", parts[0]):
        parts = parts[1:]
    try:
        key = base64.b64decode("/".join(parts[2:]), validate=True)
    except ValueError:
        return None
    return key if key2path(key) == "/" + "/".join(parts) else None


def place_of(replica: str, key: bytes) -> tuple[int, str]:
    """Where `replica` (`host:port` or `host:port/svXX`) keeps `key`: (volume port, path)."""
    hostport, _, sub = replica.partition("/")
    return int(hostport.rpartition(":")[2]), (f"{sub}/" if sub else "") + key2path(key)[1:]


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Rig:
    """The two masters, what they held after the last request, and the counts."""

    def __init__(self, masters: dict[str, Master], ports: dict[str, int],
                 admin: dict[str, int], logs: dict[str, Path]) -> None:
        self.masters = masters
        self.ports = ports  # target → port
        self.admin = admin
        self.logs = logs
        self.held: dict[str, Holding] = {}
        self.log_read: dict[str, int] = {}
        self.sent: Counter = Counter()  # (target, face, method) → requests
        self.statuses: Counter = Counter()
        self.kinds: Counter = Counter()
        self.findings: Counter = Counter()  # what failed, how often
        self.examples: dict[str, str] = {}  # the first request of each finding
        self.peaks: dict[str, int] = {}  # each master's VmHWM, MiB

    def __repr__(self) -> str:
        return "Rig()"

    def holding(self, name: str) -> Holding:
        m = self.masters[name]
        listed = {}
        for what in ("list", "unlinked", "writing"):
            listed[what] = frozenset(m.listing("/", what)["keys"])
        files, parts = {}, {}
        for vol in m.volumes:
            for p in data_files(vol):
                rel = str(p.relative_to(vol.dir))
                if f"{PARTS}/" in rel:  # multipart parts' bytes: the S3 state's
                    parts[f"{vol.port}:{rel}"] = md5_file(p)
                else:
                    files[(vol.port, rel)] = md5_file(p)
        root = Path(f"{m.db}.s3")
        spool = {str(p.relative_to(root)): md5_file(p) for p in root.rglob("*") if p.is_file()}
        named = " ".join(json.loads(p.read_bytes())["location"]
                         for p in root.glob("uploads/*/*.part"))
        for place in parts:  # each part's file is one a record of the spool names
            port, rel = place.split(":", 1)
            assert f":{port}/{rel}" in named, f"a part's file no record names: {place}"
        spool.update(parts)
        return Holding(listed["list"], listed["unlinked"], listed["writing"], files, spool)

    def busy(self, name: str) -> int:
        reply = request(self.admin[name], "GET", "/metrics")
        found = re.search(rb"^mkv_keys_busy (\d+)", reply.body, re.M)
        assert found, "no mkv_keys_busy in /metrics"
        return int(found.group(1))

    def settle(self, name: str) -> None:
        """Wait until nothing is in flight: a cut-off write may still be undoing itself."""
        deadline, quiet = time.monotonic() + 5, 0
        while quiet < 3:
            assert time.monotonic() < deadline, "a write stays in flight after its client left"
            quiet = quiet + 1 if self.busy(name) == 0 else 0
            time.sleep(0.02)

    def exchange(self, h: Hostile) -> list[tuple[int, bytes, bytes]]:
        """Send; every answer (status, head, body) until the connection closes."""
        c = Raw(self.ports[h.target], timeout=SOCKET_TIMEOUT)
        answers: list[tuple[int, bytes, bytes]] = []
        try:
            c.send(h.data)
            if h.cut:
                c.shut()
            elif b" HTTP/1.0\r\n" not in h.data.split(b"\r\n\r\n", 1)[0] + b"\r\n":
                c.send(SENTINEL)  # answered last (or never, if the master closes first)
            while True:
                try:
                    answer = c.response(head_request=not answers and h.method == b"HEAD")
                except TimeoutError:
                    raise AssertionError(f"no answer nor close in {SOCKET_TIMEOUT}s") from None
                if answer is None:
                    break
                check_head(c.head)
                if not 100 <= answer[0] < 200:  # interim answers (100 Continue) precede
                    answers.append((answer[0], c.head, answer[2]))
        finally:
            c.close()
        return answers

    def run(self, h: Hostile) -> None:
        """Send one request; check its answers, then what its master holds."""
        name = "plain" if h.target == "plain" else "keys"
        before = self.held[name]
        answers = self.exchange(h)
        first = answers[0][0] if answers else None
        face = "none" if not answers else face_of(answers[0][1])
        method = h.method.decode("latin-1") if h.method.decode("latin-1") in METHODS else "junk"
        self.sent[(h.target, face, method)] += 1
        self.statuses[first or "closed"] += 1
        self.kinds.update(h.kinds)
        for status, _, body in answers:
            assert status < 500 or status == 503 or (
                status == 501 and b"<Code>NotImplemented</Code>" in body), \
                f"{status} {body[:300]!r}"
        if h.refuse or h.refuse_as_s3 and face == "s3":
            assert first is None or first >= 400, \
                f"{h.refuse or h.refuse_as_s3}: answered {first}"
        if h.cut or not answers:
            self.settle(name)
        after = self.holding(name)
        self.held[name] = after
        # acknowledged: a write answered 2xx, or 303 (a form's success_action_redirect); or
        # what the bytes after a body's declared end became, answered 2xx
        acked = any(200 <= s < 300 for s, _, _ in answers[1:]) or (
            first is not None and 200 <= first < 400 and h.method in WRITES)
        # no answer at all to a request whose body (if it reads one) came whole: its client
        # cannot know whether it took effect, nor can we
        unknown = first is None and not h.cut_needed
        self.check_holding(h, before, after, changes=acked or unknown)

    def check_holding(self, h: Hostile, before: Holding, after: Holding,
                      changes: bool) -> None:
        """What a master holds after `h`: consistent always; unchanged unless `changes`."""
        name = "plain" if h.target == "plain" else "keys"
        assert not after.writing, f"left writing: {sorted(after.writing)}"
        for (port, rel) in after.files:
            key = key_of_file(rel)
            assert key is not None, f"a volume file that names no key: {port} {rel}"
            assert key.decode() in after.live | after.unlinked, \
                f"a file of {key!r} whose key the index does not hold ({port} {rel})"
        if changes:
            self.check_changed_live(name, before, after)
        else:
            assert after.live == before.live, \
                f"refused, yet live keys changed: {diff(before.live, after.live)}"
            assert after.unlinked == before.unlinked, \
                f"refused, yet unlinked keys changed: {diff(before.unlinked, after.unlinked)}"
            for place in before.files.keys() | after.files.keys():
                if before.files.get(place) != after.files.get(place):
                    key = key_of_file(place[1])
                    cleared = place not in after.files and key == h.names \
                        and key.decode() in before.unlinked
                    assert cleared, f"refused, yet a volume file changed: {place}"
            assert after.spool == before.spool, \
                f"refused, yet the S3 spool changed: {diff(set(before.spool), set(after.spool))}"

    def check_changed_live(self, name: str, before: Holding, after: Holding) -> None:
        """Each live key whose files changed: its files are where its record says, with its
        md5."""
        changed = {key_of_file(rel) for _, rel in before.files.keys() ^ after.files.keys()}
        changed |= {key_of_file(rel) for (port, rel), md5 in after.files.items()
                    if before.files.get((port, rel), md5) != md5}
        changed |= {k.encode() for k in after.live - before.live}
        m = self.masters[name]
        for key in sorted(k for k in changed if k is not None and k.decode() in after.live):
            reply = m.call("GET", key)
            assert reply.status == 302, f"live {key!r} reads {reply.status}"
            where = {place_of(r, key) for r in reply.header("Key-Volumes").split(",")}
            held = {place for place in after.files if key_of_file(place[1]) == key}
            assert held == where, f"{key!r}: files {sorted(held)}, record {sorted(where)}"
            md5 = reply.header("Content-Md5")
            assert md5 is None or {after.files[p] for p in where} == {md5}, \
                f"{key!r}: a replica's bytes are not the record's md5"

    def after_example(self) -> None:
        for name, m in self.masters.items():
            assert m.process.proc.poll() is None, f"the {name} master died"
            assert m.read(KNOWN[0]) == KNOWN[1]
            status = Path(f"/proc/{m.process.proc.pid}/status").read_text()
            peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024
            self.peaks[name] = peak
            assert peak < RSS_CEILING_MIB, f"the {name} master peaked at {peak} MiB"
            log = self.logs[name].read_bytes()
            new, self.log_read[name] = log[self.log_read.get(name, 0):], len(log)
            for sign_of_trouble in (b"Traceback", b"never retrieved", b"Exception in callback",
                                    b"destroyed but it is pending"):
                assert sign_of_trouble not in new, \
                    f"the {name} master logged:\n{new.decode(errors='replace')[-3000:]}"
            self.restore(name)

    def restore(self, name: str) -> None:
        """Put the victims back as they were, for the next example to attack."""
        m, held = self.masters[name], self.held[name]
        changed = False
        for key, value in VICTIMS.items():
            if key.decode() not in held.live:
                assert m.put(key, value, "REPLACE").status == 201
                changed = True
        if UNLINKED.decode() not in held.unlinked:
            if UNLINKED.decode() not in held.live:
                assert m.put(UNLINKED, b"unlinked value", "REPLACE").status == 201
            assert m.call("UNLINK", UNLINKED).status == 204
            changed = True
        if not Path(f"{m.db}.s3/uploads/{UPLOAD_IDS.get(name)}/upload.json").exists():
            self.start_upload(name)  # aborted or completed by the last example
            changed = True
        if changed:
            self.held[name] = self.holding(name)

    def found(self, message: str, h: Hostile | None) -> None:
        """Count a finding by its first line, keep its first request; then take the masters'
        state afresh, so that the next example is judged on its own."""
        first = re.sub(r"\d{3,}", "N", message.replace(MARK, "X-Injected").splitlines()[0])[:200]
        if h is not None:
            first += f" [{h.target} {h.kinds[1]}]"  # the operation, before its mutations
        if first not in self.findings:
            self.examples[first] = f"{message[:1500]}\n    after {h!r}"
        self.findings[first] += 1
        for name in self.masters:
            self.settle(name)
            self.held[name] = self.holding(name)

    def start_upload(self, name: str) -> None:
        """A multipart upload in progress, with one part, for the generators to name."""
        s3 = client(self.masters[name].port, key=ACCESS, secret=SECRET)
        upload = s3.create_multipart_upload(Bucket="adv", Key="mp")["UploadId"]
        s3.upload_part(Bucket="adv", Key="mp", UploadId=upload, PartNumber=1, Body=b"part")
        UPLOAD_IDS[name] = upload

    def summary(self) -> str:
        by_face = Counter()
        for (target, face, _), n in self.sent.items():
            by_face[f"{target}/{face}"] += n
        by_method = Counter()
        for (_, _, method), n in self.sent.items():
            by_method[method] += n
        return (f"adversary: {sum(self.sent.values())} requests; by target/face "
                f"{dict(sorted(by_face.items()))}; by method {dict(sorted(by_method.items()))}; "
                f"statuses {dict(sorted(self.statuses.items(), key=str))}; peak RSS (MiB, "
                f"ceiling {RSS_CEILING_MIB}) {self.peaks}; kinds "
                f"{dict(sorted(self.kinds.items()))}")


def face_of(head: bytes) -> str:
    """Who answered: S3 (its request id), the HTTP layer (a refusal of what it could not
    parse: no Date), or the native API."""
    if re.search(rb"\r\nx-amz-request-id:", head, re.I):
        return "s3"
    return "native" if re.search(rb"\r\ndate:", head, re.I) else "http"


def diff(before: frozenset | set, after: frozenset | set) -> str:
    return f"gone {sorted(before - after)[:5]}, new {sorted(after - before)[:5]}"


HEAD_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[^\x00-\x08\x0a-\x1f\x7f]*$")


def check_head(head: bytes) -> None:
    """A response head of well-formed lines: no header the request injected, no control byte."""
    lines = head.split(b"\r\n")
    assert re.fullmatch(rb"HTTP/1\.1 \d{3} [^\x00-\x1f\x7f]*", lines[0]), lines[0]
    for line in lines[1:]:
        assert HEAD_LINE.match(line), f"a malformed response header line: {line[:200]!r}"
        assert not line.lower().startswith(b"x-injected"), \
            f"the request injected a response header: {line[:200]!r}"


# --- the masters ---


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    """The two masters on volumes of their own, a known key, the victims (native values, S3
    objects with metadata and tags, an unlinked key, a multipart upload) in both."""
    tmp = tmp_path_factory.mktemp("adversary")
    keyfile = tmp / "keys"
    keyfile.write_text(f"{ACCESS}:{SECRET}\n")
    vols = VolumeFactory(tmp)
    started: list[Master] = []
    logs = {name: tmp / f"{name}.log" for name in ("plain", "keys")}
    try:
        masters, admin, ports = {}, {}, {}
        s3_port = free_port()
        for name, extra in (("plain", ()), ("keys", ("-s3_keyfile", str(keyfile), "-s3_port",
                                                     str(s3_port)))):
            volumes = vols(3)
            admin[name] = free_port()
            flags = ("-idletimeout", "2s", "-readtimeout", "2s", "-admin_port",
                     str(admin[name]), *extra)
            db = tmp / f"{name}.db"
            with logs[name].open("wb") as log:
                proc = start_master(db, [v.addr for v in volumes], *flags, stderr=log)
            masters[name] = Master(proc, volumes, db, flags)
            started.append(masters[name])
            ports[name] = proc.port
        ports["keys-s3port"] = s3_port
        rig = Rig(masters, ports, admin, logs)
        for name, m in masters.items():
            assert m.put(*KNOWN).status == 201
            for key, value in VICTIMS.items():
                assert m.put(key, value).status == 201
            s3 = client(m.port, key=ACCESS, secret=SECRET)
            for bucket in ("adv", "secret", "advb"):
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket="secret", Key="s", Body=b"the secret")
            s3.put_object(Bucket="adv", Key="s", Body=b"an S3 object", ContentType="text/x-s3",
                          Metadata={"who": "victim"}, Tagging="t=1")
            rig.held[name] = rig.holding(name)
            rig.restore(name)
        yield rig
        SUMMARIES.append(rig.summary())
        SUMMARIES.extend(f"adversary finding ({n}x): {f}\n  {rig.examples[f]}"
                         for f, n in rig.findings.most_common())
    finally:
        for m in started:
            m.stop()
        vols.stop_all()


def run_example(rig: Rig, requests: list[Hostile]) -> None:
    for h in requests:
        try:
            rig.run(h)
        except AssertionError as e:
            rig.found(str(e), h)
            if not SURVEY:
                raise AssertionError(f"{e}\n  after {h!r}") from None
    try:
        rig.after_example()
    except AssertionError as e:
        rig.found(str(e), None)
        if not SURVEY:
            raise


# --- the tests: one per flavour of request, then the indexes read with the masters stopped ---


@examples(300)
@given(st.lists(hostile("native"), min_size=1, max_size=3))
def test_hostile_native_requests(rig: Rig, requests: list[Hostile]) -> None:
    run_example(rig, requests)


@examples(350)
@given(st.lists(hostile("s3"), min_size=1, max_size=3))
def test_hostile_s3_requests(rig: Rig, requests: list[Hostile]) -> None:
    run_example(rig, requests)


@examples(250)
@given(st.lists(hostile("signed"), min_size=1, max_size=3))
def test_signed_then_altered_s3_requests(rig: Rig, requests: list[Hostile]) -> None:
    run_example(rig, requests)


@examples(150)
@given(st.lists(hostile("form"), min_size=1, max_size=2))
def test_hostile_post_forms(rig: Rig, requests: list[Hostile]) -> None:
    run_example(rig, requests)


def parse_record(value: bytes) -> tuple[str, str | None, list[str]]:
    state = "live"
    for prefix, name in ((b"DELETED", "unlinked"), (b"INIT", "writing")):
        if value.startswith(prefix):
            state, value = name, value[len(prefix):]
    md5 = None
    if value.startswith(b"HASH"):
        md5, value = value[4:36].decode(), value[36:]
    return state, md5, value.decode().split(",") if value else []


def test_index_and_volumes_agree_after_the_adversary(rig: Rig) -> None:
    """With the masters stopped, their LevelDB indexes read directly: no record writing, every
    volume file at a replica its key's record names, every live replica present with its md5."""
    for name, m in rig.masters.items():
        files = rig.holding(name).files  # keys' files; parts', each named by the spool, apart
        assert m.stop() == 0
        records = {key: parse_record(value) for key, value in read_records(m.db).items()}
        claimed = set()
        for key, (state, md5, replicas) in records.items():
            assert state != "writing", f"{name}: {key!r} left writing"
            places = {place_of(r, key) for r in replicas}
            claimed |= places
            if state == "live":
                for place in places:
                    assert place in files, f"{name}: live {key!r} lacks its replica {place}"
                    assert md5 is None or files[place] == md5, f"{name}: {key!r} at {place}"
        assert set(files) <= claimed, f"{name}: files no record claims: " \
            f"{sorted(set(files) - claimed)[:5]}"
    print("\n" + rig.summary())
    assert not SURVEY or not rig.findings, f"{len(rig.findings)} findings: {list(rig.findings)}"
