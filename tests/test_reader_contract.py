"""Every built-in reader (and the example plugin) passes the reader contract kit,
`readers.testing.ReaderContract`; a meta-test makes sure no registered reader is left out."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from readers import BUILTIN
from readers.arrow_ipc import ArrowIPCReader
from readers.binary import BinaryReader
from readers.csv import CSVReader
from readers.fits import FITSReader
from readers.hdf5 import HDF5Reader
from readers.image import ImageReader
from readers.jsonl import JSONLReader
from readers.mp4 import MP4Reader
from readers.orc import ORCReader
from readers.parquet import ParquetReader
from readers.testing import ReaderContract
from readers.tsv import TSVReader
from readers.zarr import ZarrReader

sys.path.insert(0, str(Path(__file__).parent / "plugin_pkg"))
from chunkmill_kv.reader import KVReader  # noqa: E402

COVERED: set[str] = set()


def covers(cls: type) -> type:
    COVERED.add(cls.reader.name)
    return cls


@covers
class TestCSV(ReaderContract):
    reader = CSVReader

    def make_files(self, tmp_path: Path) -> list[Path]:
        rnd = random.Random(3)
        lines = ["id,name,note,value"] + [
            f'{i},user{i},"{rnd.choice(["a", "b, c", "two" + chr(10) + "lines", ""])}",'
            f"{rnd.random():.4f}" for i in range(40)]
        path = tmp_path / "a.csv"
        path.write_text("\n".join(lines) + "\n")
        return [path]


@covers
class TestTSV(ReaderContract):
    reader = TSVReader

    def make_files(self, tmp_path: Path) -> list[Path]:
        path = tmp_path / "a.tsv"
        path.write_text("id\tname\n" + "".join(f"{i}\tn{i}\n" for i in range(40)))
        return [path]


@covers
class TestJSONL(ReaderContract):
    reader = JSONLReader

    def make_files(self, tmp_path: Path) -> list[Path]:
        path = tmp_path / "a.jsonl"
        path.write_text("".join(json.dumps({"id": i, "tags": ["x"] * (i % 3),
                                            "nested": {"k": i * 0.5}}) + "\n"
                                for i in range(40)))
        return [path]


@covers
class TestHDF5(ReaderContract):
    reader = HDF5Reader
    small_chunk_size = 256

    def make_files(self, tmp_path: Path) -> list[Path]:
        import h5py

        path = tmp_path / "a.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("sensors/temp", data=np.arange(200, dtype="f8"), chunks=(20,))
            rec = np.zeros(50, dtype=[("a", "i4"), ("b", "S4")])
            rec["a"] = np.arange(50)
            f.create_dataset("records", data=rec, chunks=(10,))
            f.create_dataset("grid", data=np.arange(120).reshape(30, 4), chunks=(5, 4))
        return [path]


@covers
class TestZarr(ReaderContract):
    reader = ZarrReader
    small_chunk_size = 128

    def make_files(self, tmp_path: Path) -> list[Path]:
        import zarr

        path = tmp_path / "a.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        arr = group.create_array("temp", shape=(100,), chunks=(10,), dtype="f8")
        arr[:] = np.arange(100.0)
        return [path]


@covers
class TestFITS(ReaderContract):
    reader = FITSReader
    small_chunk_size = 100

    def make_files(self, tmp_path: Path) -> list[Path]:
        from astropy.io import fits

        path = tmp_path / "a.fits"
        cols = [fits.Column(name="x", format="J", array=np.arange(60)),
                fits.Column(name="y", format="D", array=np.arange(60) / 2)]
        fits.HDUList([fits.PrimaryHDU(),
                      fits.BinTableHDU.from_columns(cols, name="EVENTS")]).writeto(path)
        return [path]


@covers
class TestMP4(ReaderContract):
    reader = MP4Reader

    def make_files(self, tmp_path: Path) -> list[Path]:
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg not installed (apt-get install ffmpeg; .ci/run installs it)")
        path = tmp_path / "a.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                        "testsrc=duration=0.5:size=32x32:rate=10", "-pix_fmt", "yuv420p",
                        str(path)], check=True, timeout=60)
        return [path]


@covers
class TestImage(ReaderContract):
    reader = ImageReader

    def make_files(self, tmp_path: Path) -> list[Path]:
        from PIL import Image

        path = tmp_path / "a.png"
        Image.new("RGB", (8, 8), "red").save(path)
        return [path]


@covers
class TestBinary(ReaderContract):
    reader = BinaryReader
    claims_anything = True
    small_chunk_size = 1 << 20

    def make_files(self, tmp_path: Path) -> list[Path]:
        path = tmp_path / "a.bin"
        path.write_bytes(random.Random(1).randbytes(3 << 20))
        return [path]


def _columnar_sample(rows: int) -> pa.Table:
    """Nested, decimal and zoned-time columns (their own tests: tests/test_reader_columnar.py)."""
    from test_reader_columnar import sample

    return sample(rows)


@covers
class TestParquet(ReaderContract):
    reader = ParquetReader
    small_chunk_size = 1024  # one row group per chunk

    def make_files(self, tmp_path: Path) -> list[Path]:
        import pyarrow.parquet as pq

        path = tmp_path / "a.parquet"
        pq.write_table(_columnar_sample(300), path, row_group_size=60)
        return [path]


@covers
class TestArrowIPC(ReaderContract):
    reader = ArrowIPCReader
    small_chunk_size = 1024  # one record batch per chunk

    def make_files(self, tmp_path: Path) -> list[Path]:
        from test_reader_columnar import write_ipc_file, write_ipc_stream

        write_ipc_file(_columnar_sample(300), tmp_path / "a.arrow", 60, compression="zstd")
        write_ipc_stream(_columnar_sample(300), tmp_path / "b.arrows", 60)
        return [tmp_path / "a.arrow", tmp_path / "b.arrows"]


@covers
class TestORC(ReaderContract):
    reader = ORCReader
    small_chunk_size = 1024  # one stripe per chunk

    def make_files(self, tmp_path: Path) -> list[Path]:
        import pyarrow.orc as orc

        t = _columnar_sample(3000)
        t = t.set_column(1, "name", t["name"].cast(pa.string()))  # ORC has no dictionaries
        orc.write_table(t, str(tmp_path / "a.orc"), stripe_size=1024, batch_size=500,
                        compression="uncompressed")
        return [tmp_path / "a.orc"]


class TestKVPlugin(ReaderContract):
    reader = KVReader
    registered = False  # installed only while tests/test_plugins.py runs

    def make_files(self, tmp_path: Path) -> list[Path]:
        path = tmp_path / "a.kv"
        path.write_bytes(b"KV1\n" + b"".join(f"k{i}=v{i}\n".encode() for i in range(30)))
        return [path]


def test_every_builtin_reader_has_a_contract_test() -> None:
    assert COVERED == set(BUILTIN), set(BUILTIN) ^ COVERED
