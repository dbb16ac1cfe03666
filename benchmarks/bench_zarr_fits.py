"""Zarr and FITS -> Parquet: ``chunkmill ingest`` against a single-process loop per format.

The sibling of `bench_hdf5.py` (same measurement, same table): generates (once, cached) under
the scratch directory

- a Zarr v3 store of two 1-D arrays, ``signal`` (float64) and ``counts`` (int32), half the
  size each, chunks of 1 Mi rows, no compression;
- a FITS file of one BINTABLE ``EVENTS`` (id int64, ts float64, value float32, flag uint8,
  name 8A);

and compares chunkmill with what a user would write by hand in one process: zarr + pyarrow
(``row`` index and the array's column, as chunkmill writes them) and astropy's memory-mapped
table + pyarrow (the table's columns; chunkmill adds no ``row`` to FITS tables). Rows written
are checked against the inputs.

    python benchmarks/bench_zarr_fits.py --size-gb 2 --configs 2x1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hdf5 import REPO, Result, run_baseline, run_chunkmill  # noqa: E402

GENERATOR_VERSION = 1
CHUNK = 1 << 20  # rows per Zarr chunk
EVENT = np.dtype([("id", ">i8"), ("ts", ">f8"), ("value", ">f4"), ("flag", "u1"),
                  ("name", "S8")])

ZARR_BASELINE = r"""
import sys, zarr, numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, out, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = zarr.open_group(src, mode="r")
for name in ("signal", "counts"):
    arr = root[name]
    rows_per = max(arr.chunks[0], block // arr.dtype.itemsize // arr.chunks[0] * arr.chunks[0])
    writer = None
    for a in range(0, arr.shape[0], rows_per):
        b = min(a + rows_per, arr.shape[0])
        table = pa.table({"row": pa.array(np.arange(a, b, dtype=np.int64)),
                          name: pa.array(arr[a:b])})
        if writer is None:
            writer = pq.ParquetWriter(f"{out}/{name}.parquet", table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
"""

FITS_BASELINE = r"""
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from astropy.io import fits
src, out, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
with fits.open(src, memmap=True) as hdus:
    data = hdus["EVENTS"].data
    rows_per = max(1, block // data.dtype.itemsize)
    writer = None
    for a in range(0, len(data), rows_per):
        part = data[a:a + rows_per]
        cols = {}
        for field in part.dtype.names:
            col = np.asarray(part[field])
            col = col.astype(col.dtype.newbyteorder("=")) if col.dtype.kind != "S" else col
            cols[field] = (pa.array(col).cast(pa.string()) if col.dtype.kind == "S"
                           else pa.array(col))
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(f"{out}/events.parquet", table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
"""


def generate_zarr(path: Path, size_gb: float) -> int:
    """The Zarr store (reused when its sidecar matches); its total row count."""
    import zarr

    n = int(size_gb * 1e9) // 2 // 8
    expect = {"version": GENERATOR_VERSION, "rows": n}
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == expect:
        return n + n
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(42)
    root = zarr.open_group(str(path), mode="w")
    sig = root.create_array("signal", shape=(n,), chunks=(CHUNK,), dtype="f8", compressors=None)
    cnt = root.create_array("counts", shape=(n,), chunks=(CHUNK,), dtype="i4", compressors=None)
    for a in range(0, n, 8 * CHUNK):
        b = min(a + 8 * CHUNK, n)
        sig[a:b] = rng.standard_normal(b - a)
        cnt[a:b] = rng.poisson(100, b - a).astype("i4")
    meta.write_text(json.dumps(expect))
    return n + n


def generate_fits(path: Path, size_gb: float) -> int:
    """The FITS file (reused when its sidecar matches); its row count."""
    from astropy.io import fits

    n = int(size_gb * 1e9) // EVENT.itemsize
    expect = {"version": GENERATOR_VERSION, "rows": n}
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == expect:
        return n
    rng = np.random.default_rng(42)
    # Header first, then the rows appended block by block: never the whole table in memory.
    cols = fits.ColDefs([fits.Column("id", "K"), fits.Column("ts", "D"),
                         fits.Column("value", "E"), fits.Column("flag", "B"),
                         fits.Column("name", "8A")])
    header = fits.BinTableHDU.from_columns(cols, nrows=0, name="EVENTS").header
    header["NAXIS2"] = n
    with open(path, "wb") as f:
        f.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        f.write(header.tostring().encode("ascii"))
        step = 1 << 20
        for a in range(0, n, step):
            b = min(a + step, n)
            block = np.empty(b - a, dtype=EVENT)
            block["id"] = np.arange(a, b)
            block["ts"] = 1.7e9 + np.arange(a, b) / 1000
            block["value"] = rng.standard_normal(b - a).astype("f4")
            block["flag"] = rng.integers(0, 4, b - a)
            block["name"] = np.char.add(b"n", (np.arange(a, b) % 100_000).astype("S7"))
            f.write(block.tobytes())
        f.write(b"\0" * (-f.tell() % 2880))
    meta.write_text(json.dumps(expect))
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0, help="bytes of each input")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/chunkmill-bench-arrays"))
    ap.add_argument("--configs", default=f"{os.cpu_count() or 1}x1",
                    help="chunkmill cluster shapes WORKERSxTHREADS, comma separated")
    ap.add_argument("--chunk-size", default="64MiB")
    ap.add_argument("--formats", default="zarr,fits")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from pipeline.config import parse_size

    block = parse_size(args.chunk_size)
    results: list[tuple[Result, int, int]] = []
    formats = [f.strip() for f in args.formats.split(",")]
    load = os.getloadavg()[0]
    for fmt in formats:
        if fmt == "zarr":
            src = args.scratch / f"bench_{args.size_gb:g}GB.zarr"
            expected = generate_zarr(src, args.size_gb)
            size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
            tables, script, name = ["signal", "counts"], ZARR_BASELINE, "zarr+pyarrow loop"
        else:
            src = args.scratch / f"bench_{args.size_gb:g}GB.fits"
            expected = generate_fits(src, args.size_gb)
            size = src.stat().st_size
            tables, script, name = ["events"], FITS_BASELINE, "astropy+pyarrow loop"
        results.append((run_baseline(src, args.scratch / f"out-{fmt}-baseline", block,
                                     script, name), expected, size))
        for config in args.configs.split(","):
            results.append((run_chunkmill(src, args.scratch / f"out-{fmt}-{config}",
                                          config.strip(), args.chunk_size, tuple(tables),
                                          f"chunkmill {fmt}"),
                            expected, size))
    print(f"\nZarr/FITS inputs of {args.size_gb:g} GB each, chunk size {args.chunk_size}, "
          f"{os.cpu_count()} cores; 1-min load average at start {load:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}\n")
    print("| tool | config | wall s | MB/s | CPU s | peak RSS MiB | rows ok | Parquet MiB |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for r, expected, size in results:
        ok = "yes" if r.rows == expected and r.exit_code == 0 else f"NO ({r.rows:,})"
        print(f"| {r.tool} | {r.config} | {r.wall_s:.1f} | {size / 1e6 / r.wall_s:.0f} | "
              f"{r.cpu_s:.1f} | {r.peak_rss_mib:.0f} | {ok} | {r.output_mib:.0f} |")
    if args.json:
        args.json.write_text(json.dumps([dict(asdict(r), expected_rows=e, input_bytes=s)
                                         for r, e, s in results], indent=2))
    return 0 if all(r.exit_code == 0 and r.rows == e for r, e, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
