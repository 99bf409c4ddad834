"""S3 for clients that do not sign: `-s3_port` (every request there is S3's) and unsigned AWS
SDK requests on the main port (pyarrow `anonymous=True`, boto3 `UNSIGNED`, `aws
--no-sign-request`), with the original's own `tools/s3test.py` run unmodified but for its port.
"""

import re
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cluster import free_port
from conftest import MasterFactory, request
from conftest import client as s3_client
from pyarrow import fs
from test_s3_clients import aws

from bench.gomkv import peer_candidate

S3TEST = peer_candidate() / "tools/s3test.py"


@pytest.fixture(scope="module")
def master(tmp_path_factory, volumes):
    factory = MasterFactory(tmp_path_factory.mktemp("s3anon"), volumes)
    try:
        yield factory("-s3_port", str(free_port()))
    finally:
        factory.stop_all()


def s3_port(master) -> int:
    return int(master.flags[master.flags.index("-s3_port") + 1])


def unsigned(port: int):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED,
                                      s3={"addressing_style": "path"}))


def anonymous_arrow(port: int) -> fs.S3FileSystem:
    return fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                           anonymous=True, region="us-east-1", allow_bucket_creation=True)


def run_s3test(port: int, tmp_path: Path) -> dict[str, str]:
    """The original's s3test.py against `port`: each test's unittest verdict."""
    if not S3TEST.is_file():
        pytest.skip(f"the original's tools/s3test.py is not at {S3TEST}")
    source = S3TEST.read_text()
    assert source.count("127.0.0.1:3000") == 2
    (tmp_path / "s3test.py").write_text(source.replace("127.0.0.1:3000", f"127.0.0.1:{port}"))
    run = subprocess.run([sys.executable, "-m", "unittest", "-v", "s3test"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    verdicts = dict(re.findall(r"^(test_\w+) \(.*?\) \.\.\. (.+)$", run.stderr, re.M))
    assert len(verdicts) == 8, run.stderr
    return verdicts


def passes(verdicts: dict[str, str]) -> int:
    # test_writeread expects boto3's get_object to fail on Go mkv's redirect: here it works
    return sum(v == "ok" or v == "unexpected success" for v in verdicts.values())


def test_the_originals_s3test_passes_on_the_main_port(master, tmp_path):
    verdicts = run_s3test(master.port, tmp_path)
    assert passes(verdicts) == 8, verdicts
    assert verdicts["test_writeread"] == "unexpected success"


def test_the_originals_s3test_passes_on_the_s3_port(master, tmp_path):
    # S3 refuses writes into a bucket that does not exist: the two it writes into are made first
    for bucket in ("boto", "bucket"):
        unsigned(s3_port(master)).create_bucket(Bucket=bucket)
    verdicts = run_s3test(s3_port(master), tmp_path)
    assert passes(verdicts) == 8, verdicts


@pytest.mark.parametrize("on", ["main port", "s3 port"])
def test_unsigned_boto3_gets_s3_answers(master, on):
    port = master.port if on == "main port" else s3_port(master)
    s3 = unsigned(port)
    bucket = f"anon-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"unsigned value", ContentType="text/plain")
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["ContentLength"] == 14  # not the redirect's 0
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"unsigned value"
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=bucket, Key="nothing")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"  # S3 XML, not a bare 404
    s3.put_object(Bucket=bucket, Key="dir/", Body=b"")  # a directory marker: zero bytes
    assert s3.head_object(Bucket=bucket, Key="dir/")["ContentLength"] == 0
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("dir/", 0), ("k", 14)]
    assert master.read(f"/{bucket}/k".encode()) == b"unsigned value"


@pytest.mark.parametrize("on", ["main port", "s3 port"])
def test_anonymous_pyarrow_parquet_and_directories(master, on):
    arrow = anonymous_arrow(master.port if on == "main port" else s3_port(master))
    bucket = f"anon-{uuid.uuid4().hex[:12]}"
    arrow.create_dir(f"{bucket}/lake/2024")  # directory markers: empty objects ending in /
    assert arrow.get_file_info(f"{bucket}/lake/2024").type == fs.FileType.Directory
    table = pa.table({"n": list(range(100))})
    pq.write_table(table, f"{bucket}/lake/2024/t.parquet", filesystem=arrow)
    info = arrow.get_file_info(f"{bucket}/lake/2024/t.parquet")
    assert info.size > 0
    assert pq.read_table(f"{bucket}/lake/2024/t.parquet", filesystem=arrow).equals(table)
    arrow.delete_dir_contents(f"{bucket}/lake")
    assert arrow.get_file_info(f"{bucket}/lake/2024/t.parquet").type == fs.FileType.NotFound


def test_every_request_on_the_s3_port_is_s3s(master):
    key = f"/plain-{uuid.uuid4().hex}/k".encode()
    assert master.put(key, b"native value").status == 201
    got = request(s3_port(master), "GET", key.decode())  # no SDK headers at all
    assert (got.status, got.body) == (200, b"native value")
    head = request(s3_port(master), "HEAD", key.decode())
    assert (head.status, head.header("Content-Length")) == (200, "12")
    missing = request(s3_port(master), "GET", f"{key.decode()}-not-there")
    assert missing.status == 404 and b"<Code>NoSuchKey</Code>" in missing.body


def test_native_answers_on_the_main_port_are_unchanged(master):
    key = f"/native-{uuid.uuid4().hex}".encode()
    assert request(master.port, "PUT", key.decode(), b"").status == 411
    assert master.put(key, b"v").status == 201
    assert master.call("GET", key).status == 302
    assert master.call("HEAD", key).status == 302
    assert request(master.port, "GET", f"{key.decode()}x").status == 404


def test_the_s3_port_refuses_unsigned_requests_under_s3_keys(make_master):
    port = free_port()
    master = make_master("-s3_port", str(port), "-s3_keys", "ak:sk")
    assert master.put(b"/kept/k", b"v").status == 201
    with pytest.raises(ClientError) as refused:
        unsigned(port).get_object(Bucket="kept", Key="k")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    plain = request(port, "GET", "/kept/k")
    assert plain.status == 403 and b"<Code>AccessDenied</Code>" in plain.body
    signed = s3_client(port, key="ak", secret="sk")
    assert signed.get_object(Bucket="kept", Key="k")["Body"].read() == b"v"


def test_aws_cli_no_sign_request(master, tmp_path):
    bucket = f"cli-anon-{uuid.uuid4().hex[:8]}"
    (tmp_path / "f.txt").write_text("from the cli")
    aws(master, "s3", "mb", f"s3://{bucket}", "--no-sign-request")
    aws(master, "s3", "cp", str(tmp_path / "f.txt"), f"s3://{bucket}/d/f.txt",
        "--no-sign-request")
    listed = aws(master, "s3", "ls", "--recursive", f"s3://{bucket}", "--no-sign-request")
    assert listed.split()[-2:] == ["12", "d/f.txt"]
    aws(master, "s3", "cp", f"s3://{bucket}/d/f.txt", str(tmp_path / "back.txt"),
        "--no-sign-request")
    assert (tmp_path / "back.txt").read_text() == "from the cli"
    head = aws(master, "s3api", "head-object", "--bucket", bucket, "--key", "d/f.txt",
               "--no-sign-request")
    assert '"ContentLength": 12' in head
