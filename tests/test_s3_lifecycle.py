"""S3 lifecycle with boto3: the configuration put, got and deleted and checked as S3 checks it;
objects expired by the master's background pass and by `mkv … expire` (beside a serving master),
filtered by prefix, tags and size, native keys under the bucket included; stale multipart
uploads aborted; counts in the metrics. A lifecycle day is made one second long
(-s3_lifecycle_day) so rules act within a test; every wait is for a condition."""

import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cluster import free_port, mkv_command
from conftest import client, error_of
from test_admin import scrape, value

from mkv.s3.lifecycle import after_days, expiry, parse_configuration

DAY = 1.0  # seconds: -s3_lifecycle_day of the masters here


def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def rule(rule_id: str, days: int = 1, **filtered) -> dict:
    return {"ID": rule_id, "Status": "Enabled", "Filter": filtered or {"Prefix": ""},
            "Expiration": {"Days": days}}


def new_bucket(s3) -> str:
    name = f"lc-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except s3.exceptions.ClientError:
        return False


# --- the rules, as pure functions ---

def test_days_end_at_the_next_midnight_utc():
    written = datetime(2026, 3, 1, 15, 30, tzinfo=UTC).timestamp()
    assert after_days(written, 1) == datetime(2026, 3, 3, tzinfo=UTC).timestamp()
    midnight = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert after_days(midnight, 2) == datetime(2026, 3, 3, tzinfo=UTC).timestamp()
    assert after_days(10.5, 3, day=1.0) == 14.0


def test_the_earliest_matching_rule_decides():
    rules = parse_configuration(b"""<LifecycleConfiguration>
      <Rule><ID>logs</ID><Filter><Prefix>logs/</Prefix></Filter><Status>Enabled</Status>
        <Expiration><Days>7</Days></Expiration></Rule>
      <Rule><ID>tmp</ID><Filter><And><Prefix>logs/</Prefix><Tag><Key>tmp</Key><Value>1</Value>
        </Tag><ObjectSizeGreaterThan>100</ObjectSizeGreaterThan></And></Filter>
        <Status>Enabled</Status><Expiration><Days>1</Days></Expiration></Rule>
      <Rule><ID>off</ID><Prefix></Prefix><Status>Disabled</Status>
        <Expiration><Days>1</Days></Expiration></Rule>
    </LifecycleConfiguration>""")
    assert expiry(rules, "logs/a", 500, [["tmp", "1"]], 0.0) == (86400, "tmp")
    assert expiry(rules, "logs/a", 50, [["tmp", "1"]], 0.0) == (7 * 86400, "logs")
    assert expiry(rules, "logs/a", 500, [["tmp", "2"]], 0.0) == (7 * 86400, "logs")
    assert expiry(rules, "data/a", 500, [["tmp", "1"]], 0.0) is None


# --- the configuration ---

@pytest.fixture(scope="module")
def master(tmp_path_factory, volumes):
    from conftest import MasterFactory

    factory = MasterFactory(tmp_path_factory.mktemp("lifecycle"), volumes)
    admin = free_port()
    try:
        master = factory("-s3_lifecycle_day", "1s", "-s3_lifecycle_every", "1s",
                         "-admin_port", str(admin))
        master.admin = admin
        yield master
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def s3(master):
    return client(master.port, 1)


def test_the_configuration_round_trips_and_deletes(s3):
    bucket = new_bucket(s3)
    assert error_of(s3.get_bucket_lifecycle_configuration, Bucket=bucket) == \
        ("NoSuchLifecycleConfiguration", 404)
    rules = [
        rule("by-prefix", 30, Prefix="logs/"),
        rule("by-tag", 5, Tag={"Key": "kind", "Value": "scratch"}),
        rule("by-all", 2, And={"Prefix": "tmp/", "Tags": [{"Key": "a", "Value": "b"}],
                               "ObjectSizeGreaterThan": 10, "ObjectSizeLessThan": 1000}),
        {"ID": "on-a-date", "Status": "Disabled", "Filter": {"Prefix": "old/"},
         "Expiration": {"Date": datetime(2030, 1, 1, tzinfo=UTC)}},
        {"ID": "uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}},
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                          LifecycleConfiguration={"Rules": rules})
    got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["ID"] for r in got] == [r["ID"] for r in rules]
    assert got[0]["Filter"] == {"Prefix": "logs/"} and got[0]["Expiration"] == {"Days": 30}
    assert got[1]["Filter"] == {"Tag": {"Key": "kind", "Value": "scratch"}}
    assert got[2]["Filter"]["And"] == rules[2]["Filter"]["And"]
    assert got[3]["Status"] == "Disabled"
    assert got[3]["Expiration"]["Date"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert got[4]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    # the old form, a Prefix on the rule, and a rule without an ID (one is made)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"Prefix": "p/", "Status": "Enabled", "Expiration": {"Days": 1}}]})
    got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert got[0]["Prefix"] == "p/" and len(got[0]["ID"]) > 0
    s3.delete_bucket_lifecycle(Bucket=bucket)
    assert error_of(s3.get_bucket_lifecycle_configuration, Bucket=bucket) == \
        ("NoSuchLifecycleConfiguration", 404)
    assert error_of(s3.get_bucket_lifecycle_configuration, Bucket="no-such-bucket-here") == \
        ("NoSuchBucket", 404)


@pytest.mark.parametrize("rules, refused", [
    ([rule("x" * 256)], ("InvalidArgument", 400)),
    ([rule("same"), rule("same", Prefix="a/")], ("InvalidArgument", 400)),
    ([{**rule("r"), "Status": "enabled"}], ("MalformedXML", 400)),
    ([rule("r", days=0)], ("InvalidArgument", 400)),
    ([{**rule("r"), "Expiration": {"Date": datetime(2030, 1, 1, 12, tzinfo=UTC)}}],
     ("InvalidArgument", 400)),
    ([{"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""}}], ("InvalidRequest", 400)),
    ([{"ID": "r", "Status": "Enabled", "Filter": {"Tag": {"Key": "k", "Value": "v"}},
       "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}],
     ("InvalidRequest", 400)),
    ([{**rule("r"), "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}],
     ("InvalidStorageClass", 400)),
    ([rule("r", And={"Prefix": "a", "ObjectSizeGreaterThan": 10, "ObjectSizeLessThan": 5})],
     ("InvalidArgument", 400)),
])
def test_a_bad_configuration_is_refused_and_the_old_one_stays(s3, rules, refused):
    bucket = new_bucket(s3)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
        "Rules": [rule("kept", 9)]})
    assert error_of(s3.put_bucket_lifecycle_configuration, Bucket=bucket,
                    LifecycleConfiguration={"Rules": rules}) == refused
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]] \
        == ["kept"]


# --- expiry ---

def test_the_background_pass_expires_what_the_rules_say_and_nothing_else(master, s3):
    bucket = new_bucket(s3)
    expired = {"logs/a": b"aa", "logs/deep/b": b"b" * 200, "scratch": b"tagged"}
    kept = {"keep/c": b"c", "logs/small": b"s", "untagged": b"u"}
    s3.put_object(Bucket=bucket, Key="logs/a", Body=expired["logs/a"])
    s3.put_object(Bucket=bucket, Key="logs/deep/b", Body=expired["logs/deep/b"])
    s3.put_object(Bucket=bucket, Key="logs/small", Body=kept["logs/small"])
    s3.put_object(Bucket=bucket, Key="scratch", Body=expired["scratch"], Tagging="tmp=yes")
    s3.put_object(Bucket=bucket, Key="untagged", Body=kept["untagged"])
    s3.put_object(Bucket=bucket, Key="keep/c", Body=kept["keep/c"])
    assert master.call("PUT", f"/{bucket}/logs/native".encode(), b"native").status == 201
    expired["logs/native"] = b"native"
    before = value(scrape(master.admin), "mkv_s3_lifecycle_outcomes_total", outcome="expired")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        rule("logs", 2, And={"Prefix": "logs/", "ObjectSizeGreaterThan": 1}),
        rule("tagged", 2, Tag={"Key": "tmp", "Value": "yes"}),
        rule("keep", 1000, Prefix="keep/")]})
    wait_for(lambda: not any(_exists(s3, bucket, key) for key in expired))
    written = time.time()
    # what the rules leave alone outlives a day past where they would have expired it
    s3.put_object(Bucket=bucket, Key="logs/written-later", Body=b"late")
    for key, body in kept.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    wait_for(lambda: value(scrape(master.admin), "mkv_s3_lifecycle_outcomes_total",
                           outcome="expired") >= before + len(expired))
    wait_for(lambda: not _exists(s3, bucket, "logs/written-later"))
    assert time.time() - written >= DAY  # not before its day was over
    for key, body in kept.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    samples = scrape(master.admin)
    assert value(samples, "mkv_s3_lifecycle_passes_total") >= 1
    assert value(samples, "mkv_s3_lifecycle_files_listed_total") > 0


def test_stale_multipart_uploads_are_aborted_by_rule(master, s3):
    bucket = new_bucket(s3)
    stale = s3.create_multipart_upload(Bucket=bucket, Key="big/one")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="big/one", UploadId=stale, PartNumber=1, Body=b"x")
    other = s3.create_multipart_upload(Bucket=bucket, Key="other/one")["UploadId"]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "abort", "Status": "Enabled", "Filter": {"Prefix": "big/"},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]})

    def uploads() -> set[str]:
        return {u["UploadId"] for u in
                s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}

    wait_for(lambda: stale not in uploads())
    assert error_of(s3.list_parts, Bucket=bucket, Key="big/one", UploadId=stale) == \
        ("NoSuchUpload", 404)
    assert other in uploads()
    s3.abort_multipart_upload(Bucket=bucket, Key="other/one", UploadId=other)


def test_expire_runs_once_beside_a_serving_master(make_master, volumes):
    master = make_master("-s3_lifecycle_every", "0")
    s3 = client(master.port, 1)
    bucket = new_bucket(s3)
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"old/{i}", Body=b"o")
        s3.put_object(Bucket=bucket, Key=f"new/{i}", Body=b"n")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        rule("old", 1, Prefix="old/")]})
    flags = ["-db", str(master.db), "-volumes", ",".join(master.addrs)]
    # a real day: nothing is old enough yet
    done = subprocess.run(mkv_command(*flags, "expire"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "expired" not in done.stdout
    assert _exists(s3, bucket, "old/0")
    last = s3.head_object(Bucket=bucket, Key="old/19")["LastModified"].timestamp()
    wait_for(lambda: time.time() > after_days(last, 1, DAY))  # a day of the rule is over
    done = subprocess.run(mkv_command(*flags, "-s3_lifecycle_day", "1s", "expire"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "expired 20" in done.stdout, done.stdout
    for i in range(20):
        assert not _exists(s3, bucket, f"old/{i}")
        assert s3.get_object(Bucket=bucket, Key=f"new/{i}")["Body"].read() == b"n"
    # the master serving meanwhile saw the deletes (its index, its metadata)
    assert master.call("GET", f"/{bucket}/old/0".encode()).status == 404


def test_a_date_rule_expires_everything_it_matches_at_once(make_master, volumes):
    master = make_master("-s3_lifecycle_every", "0")
    s3 = client(master.port, 1)
    bucket = new_bucket(s3)
    s3.put_object(Bucket=bucket, Key="a", Body=b"a")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for date, left in ((today + timedelta(days=1), True), (today, False)):
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
            "Rules": [{"ID": "date", "Status": "Enabled", "Filter": {"Prefix": ""},
                       "Expiration": {"Date": date}}]})
        done = subprocess.run(mkv_command("-db", str(master.db), "-volumes",
                                          ",".join(master.addrs), "expire"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert _exists(s3, bucket, "a") is left


def test_masters_over_postgresql_run_each_pass_once(pg_url, make_master):
    admins = [free_port(), free_port()]
    masters = [make_master("-s3_lifecycle_day", "1s", "-s3_lifecycle_every", "1s",
                           "-admin_port", str(admin), db=pg_url) for admin in admins]
    s3 = client(masters[0].port, 1)
    bucket = new_bucket(s3)
    for i in range(30):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"v")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        rule("all", 1)]})
    read = client(masters[1].port, 1)
    wait_for(lambda: read.list_objects_v2(Bucket=bucket)["KeyCount"] == 0)

    def total(name: str, **labels: str) -> float:
        return sum(value(scrape(admin), name, **labels) for admin in admins)

    wait_for(lambda: total("mkv_s3_lifecycle_outcomes_total", outcome="expired") == 30)
    # a pass a period between the two: each master tries twice a period, so without the
    # claim they would run about four; a slow machine only runs fewer
    began, passes = time.monotonic(), total("mkv_s3_lifecycle_passes_total")
    time.sleep(4.0)
    ran = total("mkv_s3_lifecycle_passes_total") - passes
    assert ran <= (time.monotonic() - began) / 1.0 + 2
    assert total("mkv_s3_lifecycle_outcomes_total", outcome="expired") == 30


def test_writes_and_reads_say_when_a_rule_will_expire_them(s3):
    bucket = new_bucket(s3)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        rule("soon", 1000, Prefix="e/"), rule('"odd" id', 2000, Tag={"Key": "t", "Value": "v"})]})
    put = s3.put_object(Bucket=bucket, Key="e/x", Body=b"x")
    head = s3.head_object(Bucket=bucket, Key="e/x")
    for answer in (put, head, s3.get_object(Bucket=bucket, Key="e/x", Range="bytes=0-0")):
        assert answer["Expiration"].startswith('expiry-date="')
        assert answer["Expiration"].endswith(' GMT", rule-id="soon"')
    when = datetime.strptime(head["Expiration"].split('"')[1], "%a, %d %b %Y %H:%M:%S GMT")
    written = head["LastModified"].timestamp()
    assert when.replace(tzinfo=UTC).timestamp() == after_days(written, 1000, DAY)
    tagged = s3.put_object(Bucket=bucket, Key="t", Body=b"t", Tagging="t=v")
    assert tagged["Expiration"].endswith('rule-id="\\"odd\\" id"')
    assert "Expiration" not in s3.put_object(Bucket=bucket, Key="other", Body=b"o")
    assert "Expiration" not in s3.head_object(Bucket=bucket, Key="other")
