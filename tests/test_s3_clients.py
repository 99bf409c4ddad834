"""The S3 face with the clients people use, unmodified: pyarrow's S3FileSystem (parquet, with a
table big enough for multipart; it sends aws-chunked bodies with CRC64NVME trailers), the AWS
CLI (`aws s3 cp/ls/sync/rm`), and boto3 over TLS, where it streams aws-chunked bodies with a
CRC32 trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER) as it does against AWS.
"""

import asyncio
import base64
import os
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
import zlib
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from conftest import MasterFactory, fetch, md5hex, request
from pyarrow import fs

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3master(tmp_path_factory, volumes):
    factory = MasterFactory(tmp_path_factory.mktemp("s3clients"), volumes)
    try:
        yield factory()
    finally:
        factory.stop_all()


def boto(endpoint: str, **kw):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(s3={"addressing_style": "path"}), **kw)


def native_value(master, key: bytes) -> bytes:
    reply = master.call("GET", key)
    assert reply.status == 302
    return fetch(reply.header("Location"))


# --- pyarrow ---


@pytest.fixture(scope="module")
def arrow(s3master):
    return fs.S3FileSystem(endpoint_override=f"127.0.0.1:{s3master.port}", scheme="http",
                           access_key="test", secret_key="test", region="us-east-1",
                           allow_bucket_creation=True, allow_bucket_deletion=True)


def test_pyarrow_parquet_small_and_multipart(s3master, arrow):
    bucket = f"arrow-{uuid.uuid4().hex[:8]}"
    arrow.create_dir(bucket)
    small = pa.table({"n": list(range(1000)), "s": [f"row {i}" for i in range(1000)]})
    pq.write_table(small, f"{bucket}/small.parquet", filesystem=arrow)
    assert pq.read_table(f"{bucket}/small.parquet", filesystem=arrow).equals(small)
    # random bytes do not compress: about 24 MiB of parquet, past pyarrow's 10 MiB part size
    big = pa.table({"blob": pa.array([os.urandom(1024) for _ in range(24 * 1024)],
                                     pa.binary())})
    pq.write_table(big, f"{bucket}/data/big.parquet", filesystem=arrow, compression="none")
    info = arrow.get_file_info(f"{bucket}/data/big.parquet")
    assert info.type == fs.FileType.File and info.size > 20 * MiB
    assert pq.read_table(f"{bucket}/data/big.parquet", filesystem=arrow).equals(big)
    etag = boto(f"http://127.0.0.1:{s3master.port}").head_object(
        Bucket=bucket, Key="data/big.parquet")["ETag"]
    assert etag.endswith('-3"')  # written as three parts
    with arrow.open_input_file(f"{bucket}/data/big.parquet") as f:  # ranged reads
        f.seek(info.size - 8)
        assert f.read(8)[-4:] == b"PAR1"
    raw = native_value(s3master, f"/{bucket}/data/big.parquet".encode())
    assert len(raw) == info.size and raw.startswith(b"PAR1")
    listing = arrow.get_file_info(fs.FileSelector(bucket, recursive=True))
    assert {(i.path, i.type) for i in listing} >= {
        (f"{bucket}/small.parquet", fs.FileType.File), (f"{bucket}/data", fs.FileType.Directory),
        (f"{bucket}/data/big.parquet", fs.FileType.File)}
    arrow.delete_dir_contents(f"{bucket}/data")
    assert arrow.get_file_info(f"{bucket}/data/big.parquet").type == fs.FileType.NotFound
    arrow.delete_file(f"{bucket}/small.parquet")
    arrow.delete_dir(bucket)
    assert arrow.get_file_info(bucket).type == fs.FileType.NotFound


def test_pyarrow_reads_what_was_written_natively(s3master, arrow):
    table = pa.table({"x": [1, 2, 3]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    bucket = f"arrow-{uuid.uuid4().hex[:8]}"
    assert s3master.put(f"/{bucket}/native.parquet".encode(),
                        sink.getvalue().to_pybytes()).status == 201
    assert pq.read_table(f"{bucket}/native.parquet", filesystem=arrow).equals(table)


# --- the AWS CLI ---


def aws(master, *args: str) -> str:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "BOTO_DISABLE_CRT": "true"}  # botocore's own signer here, the CRT one in boto3 above
    result = subprocess.run(
        [sys.executable, "-m", "awscli", "--endpoint-url", f"http://127.0.0.1:{master.port}",
         *args, *(("--only-show-errors",) if args[1] in ("cp", "sync", "rm") else ())],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_aws_cli_cp_ls_sync_rm(s3master, tmp_path):
    bucket = f"cli-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(9 * MiB)  # over the CLI's 8 MiB multipart threshold
    (src / "big.bin").write_bytes(big)
    (src / "small.txt").write_text("small")
    (src / "sub" / "sp ace+plus.txt").write_text("odd name")
    aws(s3master, "s3", "cp", str(src / "big.bin"), f"s3://{bucket}/one/big.bin")
    assert native_value(s3master, f"/{bucket}/one/big.bin".encode()) == big
    aws(s3master, "s3", "sync", str(src), f"s3://{bucket}/tree")
    top = aws(s3master, "s3", "ls", f"s3://{bucket}")
    assert "PRE one/" in top and "PRE tree/" in top
    deep = aws(s3master, "s3", "ls", "--recursive", f"s3://{bucket}")
    assert {line.split(maxsplit=3)[3] for line in deep.splitlines()} == {
        "one/big.bin", "tree/big.bin", "tree/small.txt", "tree/sub/sp ace+plus.txt"}
    assert f"{len(big)} tree/big.bin" in " ".join(deep.split())
    down = tmp_path / "down"
    aws(s3master, "s3", "cp", f"s3://{bucket}/one/big.bin", str(down / "big.bin"))
    assert (down / "big.bin").read_bytes() == big
    aws(s3master, "s3", "sync", f"s3://{bucket}/tree", str(down / "tree"))
    for path in ("big.bin", "small.txt", "sub/sp ace+plus.txt"):
        assert (down / "tree" / path).read_bytes() == (src / path).read_bytes()
    (src / "small.txt").write_text("changed, and longer")
    aws(s3master, "s3", "sync", str(src), f"s3://{bucket}/tree")
    assert native_value(s3master, f"/{bucket}/tree/small.txt".encode()) == b"changed, and longer"
    aws(s3master, "s3", "rm", "--recursive", f"s3://{bucket}")
    assert s3master.listing(f"/{bucket}/".encode())["keys"] == []
    aws(s3master, "s3", "rb", f"s3://{bucket}")
    assert bucket not in aws(s3master, "s3", "ls")


# --- boto3 over TLS: aws-chunked bodies with trailing checksums ---


class TLSProxy:
    """TLS in front of the master, as a load balancer would put it: bytes pass unchanged."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(
            self._client, "127.0.0.1", 0, ssl=self.context))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _client(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src, dst):
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def tls(s3master, tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    proxy = TLSProxy(s3master.port, cert, key)
    try:
        yield f"https://127.0.0.1:{proxy.port}", str(cert)
    finally:
        proxy.close()


def test_boto3_aws_chunked_trailer_over_tls(s3master, tls):
    endpoint, cert = tls
    s3 = boto(endpoint, verify=cert)
    sent = {}
    s3.meta.events.register("before-send.s3.PutObject",
                            lambda request, **_: sent.update(request.headers))
    bucket = f"tls-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    value = os.urandom(200_000)
    put = s3.put_object(Bucket=bucket, Key="chunked", Body=value)
    assert sent["x-amz-content-sha256"] == b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert sent["Content-Encoding"] == b"aws-chunked"
    assert put["ETag"] == f'"{md5hex(value)}"'
    assert native_value(s3master, f"/{bucket}/chunked".encode()) == value  # payload only
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == value
    # upload_file: multipart, each part aws-chunked
    path = Path(cert).with_name("upload.bin")
    big = os.urandom(17 * MiB)
    path.write_bytes(big)
    s3.upload_file(str(path), bucket, "file.bin")
    assert native_value(s3master, f"/{bucket}/file.bin".encode()) == big


def aws_chunked(data: bytes, trailer: bytes, chunk: int = 64 * 1024) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + chunk]), data[i:i + chunk])
                   for i in range(0, len(data), chunk))
    return out + b"0\r\n" + trailer + b"\r\n\r\n"


@pytest.mark.parametrize("algorithm", ["crc32", "crc64nvme"])
def test_aws_chunked_with_a_wrong_trailer_checksum_stores_nothing(s3master, algorithm):
    bucket = f"trail-{uuid.uuid4().hex[:8]}"
    data = os.urandom(300_000)
    right = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    value = right if algorithm == "crc32" else "AAAAAAAAAAA="
    body = aws_chunked(data, f"x-amz-checksum-{algorithm}:{value}".encode())
    headers = {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
               "Content-Encoding": "aws-chunked", "x-amz-trailer": f"x-amz-checksum-{algorithm}",
               "x-amz-decoded-content-length": str(len(data))}
    reply = request(s3master.port, "PUT", f"/{bucket}/k", body, headers)
    if algorithm == "crc32":
        assert reply.status == 200, reply.body
        assert reply.header("x-amz-checksum-crc32") == right
        assert native_value(s3master, f"/{bucket}/k".encode()) == data
        bad = aws_chunked(data, b"x-amz-checksum-crc32:AAAAAA==")
        reply = request(s3master.port, "PUT", f"/{bucket}/k", bad, headers)
        assert reply.status == 400 and b"BadDigest" in reply.body
        assert native_value(s3master, f"/{bucket}/k".encode()) == data  # the old value stays
    else:
        assert reply.status == 400 and b"BadDigest" in reply.body
        assert s3master.call("GET", f"/{bucket}/k".encode()).status == 404
    truncated = aws_chunked(data, b"")[:100_000]
    headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    reply = request(s3master.port, "PUT", f"/{bucket}/cut", truncated, headers)
    assert reply.status == 400
    assert s3master.call("GET", f"/{bucket}/cut".encode()).status == 404
