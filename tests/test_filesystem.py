"""`mkv://` (mkv/client/filesystem.py) as data tools use it, against a real master and nginx
volumes: fsspec's calls, pandas and pyarrow reading and writing parquet, compressed CSV, tar
shards read in turn, odd key names, reads that go to the volumes (and on to the next replica),
and the redirect kept for a file's ranged reads."""

import gzip
import io
import tarfile
import uuid

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import files_of
from fsspec.tests.abstract import AbstractFixtures, AbstractOpenTests, AbstractPipeTests

from mkv.client.filesystem import MkvFileSystem


@pytest.fixture
def fs(cluster) -> MkvFileSystem:
    return fsspec.filesystem("mkv", masters=f"127.0.0.1:{cluster.port}", skip_instance_cache=True)


@pytest.fixture
def root() -> str:
    return f"fsspec-{uuid.uuid4().hex[:10]}"


def test_files_and_directories_as_an_object_store_has_them(fs, root, cluster):
    fs.pipe_file(f"{root}/a.txt", b"alpha")
    fs.pipe_file(f"{root}/sub/b.txt", b"beta")
    fs.pipe_file(f"{root}/sub/deeper/c.txt", b"gamma")
    fs.mkdir(f"{root}/empty")  # a no-op, as in object stores
    assert fs.cat_file(f"{root}/a.txt") == b"alpha"
    assert fs.cat_file(f"{root}/a.txt", start=1, end=3) == b"lp"
    assert fs.cat_file(f"{root}/a.txt", start=-2) == b"ha"
    info = fs.info(f"{root}/a.txt")
    assert info["type"] == "file" and info["size"] == 5 and info["md5"]
    assert len(info["volumes"]) == 3
    assert fs.info(f"{root}/sub")["type"] == "directory"
    assert fs.ls(root, detail=False) == [f"{root}/a.txt", f"{root}/sub"]
    listed = {e["name"]: e for e in fs.ls(f"{root}/sub")}
    assert listed[f"{root}/sub/b.txt"]["size"] == 4
    assert listed[f"{root}/sub/deeper"]["type"] == "directory"
    assert fs.find(root) == [f"{root}/a.txt", f"{root}/sub/b.txt", f"{root}/sub/deeper/c.txt"]
    assert fs.glob(f"{root}/sub/*.txt") == [f"{root}/sub/b.txt"]
    assert sorted(d for d, _, _ in fs.walk(root)) == [root, f"{root}/sub", f"{root}/sub/deeper"]
    assert fs.exists(f"{root}/sub/b.txt") and not fs.exists(f"{root}/nope")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{root}/nope")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{root}/nope")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{root}/a.txt", b"again")
    fs.pipe_file(f"{root}/a.txt", b"again", replace=True)
    assert fs.cat_file(f"{root}/a.txt") == b"again"
    fs.rm_file(f"{root}/a.txt")
    assert not fs.exists(f"{root}/a.txt")
    fs.rm(f"{root}/sub", recursive=True)
    assert fs.find(root) == []
    # the URL form names the masters itself
    with fsspec.open(f"mkv://127.0.0.1:{cluster.port}/{root}/url.bin", "wb") as f:
        f.write(b"by url")
    assert fsspec.open(f"mkv://127.0.0.1:{cluster.port}/{root}/url.bin").open().read() == \
        b"by url"


def test_odd_key_names_round_trip(fs, root, cluster):
    for name in ("with space", "per%cent", "plus+sign", "ünïcødé", "a/b/c/nested", "q?mark"):
        path = f"{root}/{name}"
        fs.pipe_file(path, name.encode())
        assert fs.cat_file(path) == name.encode(), name
        assert cluster.read(("/" + path).encode()) == name.encode()  # the key mkv stores
    assert len(fs.find(root)) == 6


def test_a_file_reads_by_ranges_from_the_volumes_with_one_master_request(fs, root, cluster):
    value = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe_file(f"{root}/big", value)
    asked = []
    locate = fs.client.locate

    async def counting(key):
        asked.append(key)
        return await locate(key)
    fs.client.locate = counting
    with fs.open(f"{root}/big", "rb", block_size=64 << 10) as f:
        f.seek(100_000)
        assert f.read(10) == value[100_000:100_010]
        f.seek(900_000)
        assert f.read(200_000) == value[900_000:]
    ranges = fs.cat_ranges([f"{root}/big"] * 3, [0, 5, 700_000], [5, 10, 700_100])
    assert ranges == [value[:5], value[5:10], value[700_000:700_100]]
    assert len(asked) == 1  # one redirect served every range


def test_a_replica_gone_is_read_from_the_next_and_a_moved_value_found_again(
        fs, root, cluster):
    value = b"replicated " * 1000
    fs.pipe_file(f"{root}/r", value)
    first = fs.info(f"{root}/r")["volumes"][0]
    host, _, sub = first.partition("/")
    vol = next(v for v in cluster.volumes if v.addr == host)
    from conftest import key2path
    replica = vol.dir / sub / key2path(f"/{root}/r".encode()).lstrip("/")
    replica.unlink()  # the redirect's replica lost its file: the next one answers
    assert fs.cat_file(f"{root}/r") == value
    fs.pipe_file(f"{root}/r", b"new value", replace=True)  # the kept redirect is dropped
    assert fs.cat_file(f"{root}/r") == b"new value"


def test_pandas_and_pyarrow_read_and_write_parquet(fs, root):
    frame = pd.DataFrame({"n": range(1000), "s": [f"row {i}" for i in range(1000)]})
    frame.to_parquet(f"{root}/one.parquet", filesystem=fs, row_group_size=100)
    back = pd.read_parquet(f"{root}/one.parquet", filesystem=fs, columns=["s"])
    assert list(back["s"]) == list(frame["s"])
    table = pq.read_table(f"{root}/one.parquet", filesystem=fs)
    assert table.num_rows == 1000
    assert pq.ParquetFile(fs.open(f"{root}/one.parquet")).metadata.num_row_groups == 10
    for part in range(4):
        part_frame = pd.DataFrame({"part": [part] * 50, "v": range(50)})
        pq.write_table(pa.Table.from_pandas(part_frame), f"{root}/set/part-{part}.parquet",
                       filesystem=fs)
    dataset = ds.dataset(f"{root}/set", filesystem=fs, format="parquet")
    selected = dataset.to_table(columns=["v"], filter=ds.field("part") == 2)
    assert selected.num_rows == 50 and selected.column_names == ["v"]


def test_compressed_csv_and_tar_shards(fs, root, cluster):
    csv = "a,b\n" + "".join(f"{i},{i * i}\n" for i in range(500))
    fs.pipe_file(f"{root}/x.csv.gz", gzip.compress(csv.encode()))
    url = f"mkv://127.0.0.1:{cluster.port}/{root}/x.csv.gz"
    with fsspec.open(url, "rt", compression="infer") as f:
        assert f.read() == csv
    assert pd.read_csv(url, compression="infer")["b"].sum() == sum(i * i for i in range(500))
    for shard in range(3):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for n in range(4):
                data = f"sample {shard}-{n}".encode()
                info = tarfile.TarInfo(f"{shard:03d}-{n}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        fs.pipe_file(f"{root}/shard-{shard:04d}.tar", buffer.getvalue())
    shards = fs.glob(f"{root}/shard-*.tar")
    samples = []
    for shard in shards:  # WebDataset's loop: each shard read through, in turn
        with fs.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            samples += [tar.extractfile(m).read().decode() for m in tar]
    assert samples == [f"sample {s}-{n}" for s in range(3) for n in range(4)]


class TestFsspecConformance(AbstractFixtures, AbstractPipeTests, AbstractOpenTests):
    """fsspec's own abstract tests where they apply: pipe and open. Its copy, get and put
    tests build their trees with `touch`, empty files, which mkv (as Go mkv) refuses."""

    @pytest.fixture
    def fs(self, cluster):
        return MkvFileSystem(masters=f"127.0.0.1:{cluster.port}", replace=True,
                             skip_instance_cache=True)

    @pytest.fixture
    def fs_path(self):
        return f"conformance-{uuid.uuid4().hex[:10]}"


def test_a_range_past_the_end_is_empty_whatever_the_key_is_called(fs, root, cluster):
    """The 416 of every replica is an empty read; a key (its name holding "416") whose
    replicas are all gone is still an error, not an empty file."""
    fs.pipe_file(f"{root}/416.bin", b"0123456789")
    assert fs.cat_file(f"{root}/416.bin", start=10, end=20) == b""
    assert fs.cat_file(f"{root}/416.bin", start=8) == b"89"
    for replica in files_of(cluster.volumes, f"/{root}/416.bin".encode()):
        replica.unlink()
    with pytest.raises(FileNotFoundError):  # the replicas refuse, and then so does the master
        fs.cat_file(f"{root}/416.bin", start=2)
