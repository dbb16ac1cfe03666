"""FITS reader: tables and images cross-checked against astropy (used here only), hostile headers.

Files are written with astropy into tmp_path, ingested through `pipeline.ingest`, read back with
duckdb/pyarrow and compared value by value with what astropy reads. Broken headers, absurd sizes
and truncated data units must end as ``_errors`` rows (or a ``failed`` file) quickly.
"""

from __future__ import annotations

import json
import random
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import pipeline
from readers._fits_cards import BLOCK, FITSError, parse_cards
from readers.base import ChunkContext, Source
from readers.fits import FITSReader

fits = pytest.importorskip("astropy.io.fits")
N = 1000
#: Rows over all tables of `make_file`: events, primary lines, cube lines, scaled, uint16, ascii.
TOTAL_ROWS = N + 40 + 60 + 10 + 6 + 10


def events_hdu() -> Any:
    """A BINTABLE with every fixed TFORM, scaling, unsigned, TNULL and two heap columns."""
    rng = np.random.default_rng(0)
    cols = [
        fits.Column(name="idx", format="K", array=np.arange(N)),
        fits.Column(name="flag", format="L", array=rng.random(N) > 0.5),
        fits.Column(name="b", format="B", array=rng.integers(0, 255, N).astype(np.uint8)),
        fits.Column(name="i", format="I", array=rng.integers(-3000, 3000, N).astype(np.int16)),
        fits.Column(name="j", format="J", array=rng.integers(0, 9, N).astype(np.int32), null=7),
        fits.Column(name="e", format="E", unit="keV", array=rng.random(N).astype(np.float32)),
        fits.Column(name="d", format="D", array=rng.random(N)),
        fits.Column(name="s", format="10A", array=np.array([f"n{i}" for i in range(N)])),
        fits.Column(name="v3", format="3E", array=rng.random((N, 3)).astype(np.float32)),
        fits.Column(name="u16", format="I", bzero=32768,
                    array=rng.integers(0, 65535, N).astype(np.uint16)),
        fits.Column(name="u32", format="J", bzero=2**31,
                    array=rng.integers(0, 2**32 - 1, N).astype(np.uint32)),
        fits.Column(name="u64", format="K", bzero=2**63,
                    array=rng.integers(0, 2**63, N).astype(np.uint64) * 2),
        fits.Column(name="sc", format="J", array=rng.integers(0, 100, N).astype(np.int32)),
        fits.Column(name="x", format="11X", array=rng.random((N, 11)) > 0.5),
        fits.Column(name="c", format="C", array=(rng.random(N) + 1j * rng.random(N))
                    .astype(np.complex64)),
        fits.Column(name="pj", format="PJ()", array=np.array(
            [np.arange(i % 5, dtype=np.int32) for i in range(N)], dtype=object)),
        fits.Column(name="pa", format="PA()", array=np.array(
            ["x" * (i % 4) for i in range(N)], dtype=object)),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    hdu.header["TSCAL13"] = 0.5  # astropy cannot write scaled columns from physical values
    hdu.header["TZERO13"] = 10.0
    return hdu


def make_file(path: Path) -> Path:
    rng = np.random.default_rng(1)
    primary = fits.PrimaryHDU(rng.random((40, 50)).astype(np.float32))
    primary.header["OBSERVER"] = "O'Hara"
    primary.header["HISTORY"] = "made by a test"
    cube = fits.ImageHDU(rng.integers(0, 1000, (3, 20, 30)).astype(np.int16), name="SCI")
    scaled = fits.ImageHDU(np.arange(200, dtype=np.int16).reshape(10, 20), name="SCI")
    scaled.header["EXTVER"] = 2
    scaled.header["BSCALE"] = 2.0
    scaled.header["BZERO"] = 1.0
    scaled.header["BLANK"] = 5
    unsigned = fits.ImageHDU(np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000,
                             name="U16 image")
    ascii_table = fits.TableHDU.from_columns([
        fits.Column(name="a", format="I6", array=np.arange(10)),
        fits.Column(name="f", format="E12.4", array=np.arange(10) / 3),
        fits.Column(name="t", format="A8", array=np.array(["ab", "cd"] * 5))], name="ASC")
    fits.HDUList([primary, events_hdu(), cube, scaled, unsigned, ascii_table]).writeto(path)
    return path


def ingest(paths: list[Path], out: Path, scheduler: str, **options: Any) -> pipeline.RunReport:
    """On the tests' shared cluster (worker processes, as an embedded cluster would be for
    FITS), planned as one worker would be; no cluster start-up of its own per call."""
    return pipeline.ingest([str(p) for p in paths], out=str(out), workers=1, progress=False,
                           scheduler=scheduler, **options)


def table(out: Path, name: str) -> pa.Table:
    return ds.dataset(str(out / name), format="parquet", partitioning="hive").to_table()


def catalog(out: Path) -> dict[str, dict[str, Any]]:
    rows = duckdb.sql(f"select path, status, rows, metadata, error_count, tables "
                      f"from read_parquet('{out}/_catalog/*.parquet')").fetchall()
    return {Path(p).name: {"status": s, "rows": r, "metadata": json.loads(m), "errors": e,
                           "tables": t} for p, s, r, m, e, t in rows}


def errors(out: Path) -> list[dict[str, Any]]:
    if not list((out / "_errors").glob("*.parquet")):
        return []
    return duckdb.sql(f"select * exclude (raw) from read_parquet('{out}/_errors/*.parquet')"
                      ).df().to_dict("records")


def read_all(path: Path, **options: Any) -> tuple[dict[str, pa.Table], ChunkContext]:
    """describe -> plan -> read every chunk in this process; rejections gathered in one ctx."""
    src = Source("file://" + str(path), path.stat().st_size, None, "f", "fp", "t")
    reader = FITSReader()
    opts = reader.configure(options)
    desc = reader.describe(src, opts)
    ctx = ChunkContext(src, None)
    out: dict[str, list[pa.Table]] = {}
    for chunk in reader.plan(src, desc, opts):
        for name, t in reader.read(src, chunk, desc, opts, ctx):
            out.setdefault(name, []).append(t)
    return {k: pa.concat_tables(v) for k, v in out.items()}, ctx


def bounded_read(path: Path) -> tuple[dict[str, pa.Table], ChunkContext]:
    tracemalloc.start()
    try:
        return read_all(path)
    finally:
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
        tracemalloc.stop()


def card(text: str) -> bytes:
    return text.ljust(80).encode()


def header(*cards: str) -> bytes:
    raw = b"".join(card(c) for c in cards) + card("END")
    return raw.ljust(-(-len(raw) // BLOCK) * BLOCK, b" ")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, shared_scheduler: str) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fits")
    src = make_file(root / "obs.fits")
    out = root / "out"
    report = ingest([src], out, shared_scheduler, chunk_size=7000)  # several chunks per table
    assert report.files == {"ok": 1}, report
    return src, out


# --- against astropy ---------------------------------------------------------------------------
def test_bintable_matches_astropy(lake: tuple[Path, Path]) -> None:
    src, out = lake
    got = table(out, "events").sort_by("idx")
    with fits.open(src) as f:
        data = f["EVENTS"].data
        expect = {name: data[name] for name in data.names}
    schema = got.schema
    assert schema.field("flag").type == pa.bool_()
    assert schema.field("b").type == pa.uint8()
    assert schema.field("i").type == pa.int16()
    assert schema.field("u16").type == pa.uint16()
    assert schema.field("u32").type == pa.uint32()
    assert schema.field("u64").type == pa.uint64()
    assert schema.field("e").type == pa.float32()
    assert schema.field("sc").type == pa.float64()
    assert schema.field("v3").type == pa.list_(pa.float32(), 3)
    assert schema.field("x").type == pa.list_(pa.bool_(), 11)
    assert schema.field("pj").type == pa.list_(pa.int32())
    assert got.num_rows == N
    for name in ("idx", "flag", "b", "i", "e", "d", "u16", "u32", "u64", "sc"):
        np.testing.assert_array_equal(got[name].to_numpy(), expect[name], err_msg=name)
    j = got["j"].to_pylist()
    assert j == [None if v == 7 else int(v) for v in expect["j"]]  # TNULL -> null
    assert got["s"].to_pylist() == [str(v) for v in expect["s"]]
    np.testing.assert_array_equal(np.array(got["v3"].to_pylist()), expect["v3"])
    np.testing.assert_array_equal(np.array(got["x"].to_pylist()), expect["x"])
    c = np.array(got["c"].to_pylist())
    np.testing.assert_array_equal(c[:, 0] + 1j * c[:, 1], expect["c"])
    assert [list(v) for v in got["pj"].to_pylist()] == [list(v) for v in expect["pj"]]
    assert got["pa"].to_pylist() == ["".join(np.asarray(v).astype(str)) for v in expect["pa"]]


def image(out: Path, name: str) -> pa.Table:
    t = table(out, name)
    keys = [("plane", "ascending")] if "plane" in t.column_names else []
    return t.sort_by(keys + [("row", "ascending")])


def test_images_match_astropy(lake: tuple[Path, Path]) -> None:
    src, out = lake
    with fits.open(src) as f:
        primary, cube, scaled, unsigned = (f[i].data for i in (0, 2, 3, 4))
        assert f[3].header["EXTVER"] == 2
    got = image(out, "hdu0")
    assert got.schema.field("value").type == pa.list_(pa.float32())
    np.testing.assert_array_equal(np.array(got["value"].to_pylist()), primary)
    assert got["row"].to_pylist() == list(range(40))
    got = image(out, "sci")
    assert got.column_names[:2] == ["row", "plane"]
    np.testing.assert_array_equal(np.array(got["value"].to_pylist()).reshape(cube.shape), cube)
    got = image(out, "sci_2")  # second SCI extension: EXTVER 2
    assert got.schema.field("value").type == pa.list_(pa.float32())
    values = np.array([[np.nan if v is None else v for v in row]
                       for row in got["value"].to_pylist()], dtype=np.float32)
    np.testing.assert_array_equal(values, scaled)  # BLANK -> null here, NaN in astropy
    assert sum(v is None for row in got["value"].to_pylist() for v in row) == 1
    got = image(out, "u16_image")
    assert got.schema.field("value").type == pa.list_(pa.uint16())
    np.testing.assert_array_equal(np.array(got["value"].to_pylist()), unsigned)


def test_ascii_table_matches_astropy(lake: tuple[Path, Path]) -> None:
    src, out = lake
    got = table(out, "asc").sort_by("a")
    with fits.open(src) as f:
        data = f["ASC"].data
    assert got.schema.field("a").type == pa.int64()
    assert got["a"].to_pylist() == list(data["a"])
    np.testing.assert_allclose(got["f"].to_numpy(), data["f"])
    assert got["t"].to_pylist() == list(data["t"])


def test_catalog_metadata(lake: tuple[Path, Path]) -> None:
    _, out = lake
    [row] = catalog(out).values()
    meta = row["metadata"]
    assert row["status"] == "ok" and meta["errors"] == []
    assert sorted(row["tables"]) == ["asc", "events", "hdu0", "sci", "sci_2", "u16_image"]
    assert meta["hdu_count"] == 6
    hdus = meta["hdus"]
    assert [h["type"] for h in hdus] == ["primary", "bintable", "image", "image", "image",
                                         "table"]
    assert hdus[0]["cards"]["OBSERVER"] == "O'Hara"
    assert hdus[0]["cards"]["HISTORY"] == ["made by a test"]
    assert hdus[0]["naxis"] == [50, 40] and hdus[0]["bitpix"] == -32
    assert hdus[1]["extname"] == "EVENTS" and hdus[1]["table"] == "events"
    assert hdus[1]["data_offset"] % BLOCK == 0 and hdus[1]["naxis"][1] == N
    assert {"name": "e", "tform": "E", "unit": "keV"} in hdus[1]["columns"]
    assert row["rows"] == TOTAL_ROWS


def test_chunks_read_only_their_bytes(lake: tuple[Path, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src_path, _ = lake
    src = Source("file://" + str(src_path), src_path.stat().st_size, None, "f", "fp", "t")
    reader = FITSReader()
    opts = reader.configure({"chunk_size": 7000})
    desc = reader.describe(src, opts)
    chunks = reader.plan(src, desc, opts)
    assert len([c for c in chunks if c.table == "events"]) > 5
    reads: list[tuple[int, int]] = []
    real = Source.read_range

    def recording(self: Source, a: int, b: int) -> bytes:
        reads.append((a, b))
        return real(self, a, b)

    monkeypatch.setattr(Source, "read_range", recording)
    rows = 0
    for chunk in chunks:
        reads.clear()
        for _, t in reader.read(src, chunk, desc, opts, ChunkContext(src, chunk)):
            rows += t.num_rows
        assert reads == [(chunk.offset, chunk.offset + chunk.length)]
        assert chunk.length <= 7000
    assert rows == TOTAL_ROWS


def test_sniff() -> None:
    assert FITSReader.sniff(b"SIMPLE  =                    T", "x.dat") >= 90
    assert 0 < FITSReader.sniff(b"garbage", "x.fits") < 40
    assert FITSReader.sniff(b"a,b\n", "x.csv") == 0


def test_card_parsing() -> None:
    raw = b"".join([
        card("SIMPLE  =                    T / conforms"),
        card("NAME    = 'it''s a ''quote'''    / comment"),
        card("LONG    = 'abc&'"), card("CONTINUE  'def'"),
        card("EXPO    =              1.5D+03"), card("NEG     =                  -42"),
        card("HIERARCH ESO DET CHIP = 'CCD 1'"), card("COMMENT hello"),
        card("END"), card("AFTER   = 1"),
    ])
    cards = dict(parse_cards(raw))
    assert cards["SIMPLE"] is True
    assert cards["NAME"] == "it's a 'quote'"
    assert cards["LONG"] == "abcdef"
    assert cards["EXPO"] == 1500.0 and cards["NEG"] == -42
    assert cards["ESO DET CHIP"] == "CCD 1"
    assert cards["COMMENT"] == "hello"
    assert "AFTER" not in cards


def test_ascii_table_nulls_implied_decimals_and_bad_cells(tmp_path: Path) -> None:
    rows = [b"    1      1234", b"    2       5.5", b"   x1       2.0", b" -999     1.5D2"]
    data = b"".join(rows).ljust(BLOCK, b" ")
    path = tmp_path / "ascii.fits"
    path.write_bytes(
        header("SIMPLE  =                    T", "BITPIX  =                    8",
               "NAXIS   =                    0")
        + header("XTENSION= 'TABLE   '", "BITPIX  =                    8",
                 "NAXIS   =                    2", "NAXIS1  =                   15",
                 "NAXIS2  =                    4", "PCOUNT  =                    0",
                 "GCOUNT  =                    1", "TFIELDS =                    2",
                 "TTYPE1  = 'n       '", "TFORM1  = 'I5      '", "TBCOL1  =                    1",
                 "TNULL1  = '-999    '", "TTYPE2  = 'f       '", "TFORM2  = 'F10.2   '",
                 "TBCOL2  =                    6")
        + data)
    tables, ctx = read_all(path)
    got = tables["hdu1"]
    assert got["n"].to_pylist() == [1, 2, None]
    assert got["f"].to_pylist() == [12.34, 5.5, 150.0]  # no point: F10.2 implies 2 decimals
    [bad] = ctx.rejected
    assert bad.raw == rows[2] and bad.byte_offset == 2 * BLOCK + 2 * 15
    assert "row 2: column n: not a number" in bad.message


def test_heap_out_of_row_order(tmp_path: Path) -> None:
    """Descriptors that do not follow row order are read through bounded windows."""
    arrays = [np.arange(i, dtype=np.int16) for i in range(6)]
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="v", format="PI()", array=np.array(
        arrays, dtype=object))], name="VAR")
    path = tmp_path / "var.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path) as f:
        start = f[1]._data_offset
    data = bytearray(path.read_bytes())
    rows = [bytes(data[start + 8 * i: start + 8 * i + 8]) for i in range(6)]
    order = [5, 3, 4, 0, 2, 1]
    data[start: start + 48] = b"".join(rows[i] for i in order)
    data[start + 8: start + 16] = rows[4]  # two rows may share heap bytes
    path.write_bytes(bytes(data))
    tables, ctx = read_all(path)
    expect = [list(arrays[i]) for i in order]
    expect[1] = list(arrays[4])
    assert tables["var"]["v"].to_pylist() == expect and not ctx.rejected


def test_q_descriptors_cannot_overflow(tmp_path: Path) -> None:
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="q", format="QD()", array=np.array(
        [np.arange(i, dtype=float) for i in range(4)], dtype=object))], name="Q")
    path = tmp_path / "q.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path) as f:
        start = f[1]._data_offset
    data = bytearray(path.read_bytes())
    data[start + 16: start + 32] = np.array([2**61, 0], ">i8").tobytes()  # 2^64 bytes: wraps
    data[start + 32: start + 48] = np.array([1, 2**63 - 1], ">i8").tobytes()
    path.write_bytes(bytes(data))
    tables, ctx = bounded_read(path)
    assert tables["q"]["q"].to_pylist() == [[], [0.0, 1.0, 2.0]]
    assert len(ctx.rejected) == 2


# --- hostile files -----------------------------------------------------------------------------
def set_card(data: bytearray, key: str, value: str, start: int = 0) -> None:
    """Overwrite the first card ``key`` at or after ``start`` with ``key = value``."""
    at = data.find(key.ljust(8).encode() + b"=", start)
    assert at >= 0 and at % 80 == 0, key
    data[at: at + 80] = f"{key:<8}= {value:>20}".ljust(80).encode()


@pytest.fixture(scope="module")
def hostile(lake: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Path]:
    src, _ = lake
    good = src.read_bytes()
    root = tmp_path_factory.mktemp("hostile")
    with fits.open(src) as f:
        events_data = f["EVENTS"]._data_offset
        events_header = f["EVENTS"]._header_offset
        cube_header = f["SCI"]._header_offset
        row_bytes = f["EVENTS"].header["NAXIS1"]
    files: dict[str, bytes] = {}
    files["truncated_table.fits"] = good[: events_data + 300 * row_bytes + 50]
    files["truncated_header.fits"] = good[:1000]  # END is there, the block is not complete
    files["no_end.fits"] = good[:400]
    big = bytearray(good)
    set_card(big, "NAXIS2", str(10**15), events_header)
    files["naxis2_huge.fits"] = bytes(big)
    axes = bytearray(good)
    set_card(axes, "NAXIS", "1000")
    files["naxis_1000.fits"] = bytes(axes)
    bitpix = bytearray(good)
    set_card(bitpix, "BITPIX", "7", cube_header)
    files["bitpix_7.fits"] = bytes(bitpix)
    tform = bytearray(good)
    set_card(tform, "TFORM4", "'2J      '", events_header)  # rows no longer add up to NAXIS1
    files["tform_mismatch.fits"] = bytes(tform)
    desc = bytearray(good)
    pj = row_bytes - 16  # PJ and PA descriptors are the last 16 bytes of a row
    for row, (count, offset) in {3: (5, 10**9), 4: (2**31 - 1, 0), 5: (-1, 0)}.items():
        at = events_data + row * row_bytes + pj
        desc[at: at + 8] = np.array([count, offset], ">i4").tobytes()
    files["bad_descriptors.fits"] = bytes(desc)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
def test_hostile_files_end_as_errors(hostile: dict[str, Path], tmp_path: Path,
                                     shared_scheduler: str) -> None:
    out = tmp_path / "out"
    ingest(list(hostile.values()), out, shared_scheduler)
    cat = catalog(out)
    errs = errors(out)

    def errors_of(name: str) -> list[dict[str, Any]]:
        return [e for e in errs if Path(e["path"]).name == name]

    trunc = errors_of("truncated_table.fits")
    assert cat["truncated_table.fits"]["status"] == "partial"
    [unit] = [e for e in trunc if e["error_type"] == "TruncatedDataUnit"]
    assert "HDU 1 (bintable, EVENTS): data unit at byte" in unit["message"]
    assert unit["byte_offset"] % BLOCK == 0 and unit["kind"] == "chunk"
    assert len(trunc) == 1 and cat["truncated_table.fits"]["rows"] == 40  # primary only
    assert cat["truncated_header.fits"]["status"] == "failed"
    assert "primary header: header at byte 0 ends in an incomplete block" in \
        errors_of("truncated_header.fits")[0]["message"]
    assert cat["no_end.fits"]["status"] == "failed"
    assert "has no END card before the end of the file" in errors_of("no_end.fits")[0]["message"]
    [huge] = errors_of("naxis2_huge.fits")
    assert cat["naxis2_huge.fits"]["status"] == "partial"
    assert cat["naxis2_huge.fits"]["rows"] == 40  # no garbage rows from the later HDUs
    assert f"declares {10**15 * 94 + 9500} bytes but the file holds only" in huge["message"]
    assert cat["naxis_1000.fits"]["status"] == "failed"
    assert "NAXIS = 1000 is outside [0, 999]" in errors_of("naxis_1000.fits")[0]["message"]
    bad = errors_of("bitpix_7.fits")
    assert cat["bitpix_7.fits"]["status"] == "partial" and bad[0]["error_type"] == "BadHeader"
    assert "BITPIX = 7" in bad[0]["message"] and bad[0]["byte_offset"] > 0
    assert "add up to" in errors_of("tform_mismatch.fits")[0]["message"]
    rows = errors_of("bad_descriptors.fits")
    assert cat["bad_descriptors.fits"]["status"] == "partial"
    assert sorted(e["message"].split(" row ")[1].split(":")[0] for e in rows) == ["3", "4", "5"]
    assert all(e["kind"] == "record" and "descriptor" in e["message"] for e in rows)
    assert cat["bad_descriptors.fits"]["rows"] == TOTAL_ROWS - 3


@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
def test_flipped_header_bytes_never_escape(lake: tuple[Path, Path], tmp_path: Path) -> None:
    """Random flips in the headers: describe raises FITSError or every chunk reads."""
    src, _ = lake
    good = src.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(src) as f:
            headers = [(h._header_offset, h._data_offset) for h in f]
    rng = random.Random(3)
    path = tmp_path / "flip.fits"
    reader = FITSReader()
    for _ in range(150):
        data = bytearray(good)
        lo, hi = headers[rng.randrange(len(headers))]
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(lo, hi)] = rng.choice(b"0123456789-+.'= ETX")
        path.write_bytes(bytes(data))
        src = Source("file://" + str(path), len(data), None, "f", "fp", "t")
        try:
            desc = reader.describe(src, reader.configure({"chunk_size": 1 << 20}))
        except FITSError:
            continue
        for chunk in reader.plan(src, desc, reader.configure({"chunk_size": 1 << 20})):
            for _, t in reader.read(src, chunk, desc, reader.configure({}),
                                    ChunkContext(src, chunk)):
                assert t.schema == desc.tables[chunk.table]
