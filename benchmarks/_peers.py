"""Run one peer tool (DuckDB, Polars, dask.dataframe or the bare-pyarrow floor) on one input.

The measured child process. Invoked by ``benchmarks/run.py`` as ``python benchmarks/_peers.py
TOOL --format csv|jsonl --out DIR [--partition-by COL] INPUT`` where INPUT is a file or a glob.
Imports only the library under test, so the measured memory is that library's own. DuckDB,
Polars and dask write zstd Parquet with their default settings otherwise (threads, memory
limits, type inference).

``pyarrow`` is not a product but a floor: the leanest hand-written hot path for the same job
on the stack chunkmill is built on (pyarrow's CSV/JSON readers and Parquet writer), to show
what that stack can do at best on this machine. ``--workers`` processes (default
``os.cpu_count()``, forked before pyarrow is imported) each take one task: a 64 MiB byte range
of the file, its end moved forward to the next newline, or (several input files) a group of
whole files, their headers checked and dropped and their bodies joined. The schema is inferred
once, by one worker, from the first 1 MiB of the input (cut at the last newline); every task
parses with it (``pyarrow.csv.read_csv`` / ``pyarrow.json.read_json``, ``use_threads=False``)
and writes one zstd Parquet file (``pyarrow.parquet.write_table``), or with ``--partition-by``
one file per partition value (``pyarrow.dataset.write_dataset``, hive directories). A CSV
whose first 1 MiB holds a ``"`` is not applicable: a cut at a raw newline cannot tell a record
end from a newline inside a quoted field. No error handling, no memory limit, no type options.

Exit 0 on success; 3 with an ``N/A: ...`` line when the installed version (or, for the floor,
its design) cannot do the case; anything else is a failure (the traceback is in the run's log).
"""

from __future__ import annotations

import argparse
import glob
import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import BinaryIO

NOT_APPLICABLE = 3
RANGE_BYTES = 64 * 2**20  # the pyarrow floor's byte range (and file group) size
SAMPLE_BYTES = 2**20  # the pyarrow floor infers its schema from this much of the input


class NotApplicable(Exception):
    """The installed version of the tool has no way to do this case."""


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def run_duckdb(fmt: str, src: str, out: Path, partition_by: str | None) -> None:
    import duckdb

    reader = (f"read_csv({_sql_str(src)})" if fmt == "csv"
              else f"read_json({_sql_str(src)}, format = 'newline_delimited')")
    options = "FORMAT parquet, COMPRESSION zstd"
    if partition_by:
        out.parent.mkdir(parents=True, exist_ok=True)
        target = out
        options += f", PARTITION_BY ({partition_by})"
    else:
        out.mkdir(parents=True, exist_ok=True)
        target = out / "out.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM {reader}) TO {_sql_str(str(target))} ({options})")
    con.close()


def run_polars(fmt: str, src: str, out: Path, partition_by: str | None) -> None:
    import polars as pl

    lf = pl.scan_csv(src) if fmt == "csv" else pl.scan_ndjson(src)
    if partition_by:
        if hasattr(pl, "PartitionBy"):  # polars >= 1.36 / 2.x
            target = pl.PartitionBy(str(out), key=partition_by)
        elif hasattr(pl, "PartitionByKey"):  # polars 1.2x
            target = pl.PartitionByKey(str(out), by=partition_by)
        else:
            raise NotApplicable(f"polars {pl.__version__} has no partitioned sink_parquet")
        lf.sink_parquet(target, compression="zstd", mkdir=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        lf.sink_parquet(out / "out.parquet", compression="zstd")


def run_dask(fmt: str, src: str, out: Path, partition_by: str | None) -> None:
    import dask.dataframe as dd

    if fmt == "csv":
        df = dd.read_csv(src, blocksize="64MB")
    else:
        df = dd.read_json(src, lines=True, blocksize=64_000_000)
    kwargs = {"partition_on": [partition_by]} if partition_by else {}
    df.to_parquet(str(out), compression="zstd", **kwargs)


# --------------------------------------------------------------------------------------------
# the bare-pyarrow floor: the parent process never imports pyarrow (it forks the workers, cuts
# the ranges and reads the 1 MiB sample with plain file reads); the workers do all Arrow work

Piece = tuple[str, int, int]  # path, start, end: bytes [start, end) of one input file


def _newline_after(f: BinaryIO, pos: int, size: int) -> int:
    """The offset just past the first newline at or after ``pos - 1`` (``size`` if none)."""
    f.seek(pos - 1)
    at = pos - 1
    while chunk := f.read(1 << 16):
        i = chunk.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(chunk)
    return size


def _byte_ranges(path: str) -> list[list[Piece]]:
    """One task per ~64 MiB range of ``path``, each end moved forward to the next newline."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + RANGE_BYTES < size:
            bounds.append(_newline_after(f, bounds[-1] + RANGE_BYTES, size))
    if bounds[-1] < size:
        bounds.append(size)
    return [[(path, a, b)] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _file_groups(paths: list[str], workers: int) -> list[list[Piece]]:
    """Whole files cut in order into ``max(workers, total / 64 MiB)`` groups of ~equal bytes."""
    sizes = [os.path.getsize(p) for p in paths]
    total = max(1, sum(sizes))
    n = max(1, min(len(paths), max(workers, math.ceil(total / RANGE_BYTES))))
    groups: list[list[Piece]] = [[] for _ in range(n)]
    start = 0
    for path, size in zip(paths, sizes, strict=True):
        groups[min(n - 1, start * n // total)].append((path, 0, size))
        start += size
    return [group for group in groups if group]


def _read_body(piece: Piece, header: bytes) -> memoryview:
    """The records in ``piece``: its bytes, without the file's header line if it starts at 0."""
    path, start, end = piece
    with open(path, "rb") as f:
        f.seek(start)
        data = memoryview(f.read(end - start))
    if header and start == 0:
        if data[: len(header)] != header:
            raise ValueError(f"{path}: the header differs from the first file's {header!r}")
        data = data[len(header):]
    return data


def _join_bodies(pieces: list[Piece], header: bytes) -> bytes:
    """The records of several pieces as one buffer (a newline ensured between them)."""
    parts: list[memoryview | bytes] = []
    for piece in pieces:
        body = _read_body(piece, header)
        if body:
            parts.append(body)
            if body[-1] != ord("\n"):
                parts.append(b"\n")
    return b"".join(parts)


def _sample(paths: list[str], header: bytes) -> bytes:
    """The header and the first 1 MiB of records (across files), cut at the last newline."""
    parts: list[memoryview | bytes] = []
    held = 0
    for path in paths:
        end = min(os.path.getsize(path), len(header) + SAMPLE_BYTES - held)
        body = _read_body((path, 0, end), header)
        parts.append(body)
        held += len(body)
        if held >= SAMPLE_BYTES:
            break
        if body and body[-1] != ord("\n"):
            parts.append(b"\n")
    data = b"".join(parts)
    return header + (data[: data.rfind(b"\n") + 1] or data)


def _pa_infer_schema(fmt: str, sample: bytes) -> bytes:
    """Worker: the schema pyarrow infers from ``sample``, serialised (the parent has no Arrow)."""
    import pyarrow as pa

    reader = pa.BufferReader(sample)
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        table = pa_csv.read_csv(reader, read_options=pa_csv.ReadOptions(use_threads=False))
    else:
        import pyarrow.json as pa_json

        table = pa_json.read_json(reader, read_options=pa_json.ReadOptions(use_threads=False))
    return table.schema.serialize().to_pybytes()


def _pa_task(index: int, pieces: list[Piece], *, fmt: str, header: bytes, schema_ipc: bytes,
             out: str, partition_by: str | None) -> int:
    """Worker: parse one task's bytes with the shared schema, write it; returns its rows."""
    import pyarrow as pa

    schema = pa.ipc.read_schema(pa.py_buffer(schema_ipc))
    data = _read_body(pieces[0], header) if len(pieces) == 1 else _join_bodies(pieces, header)
    if not data:
        return 0
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        table = pa_csv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pa_csv.ReadOptions(use_threads=False, column_names=schema.names),
            convert_options=pa_csv.ConvertOptions(column_types=schema))
    else:
        import pyarrow.json as pa_json

        table = pa_json.read_json(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pa_json.ReadOptions(use_threads=False),
            parse_options=pa_json.ParseOptions(explicit_schema=schema))
    del data
    if partition_by:
        import pyarrow.dataset as pa_ds

        pa_ds.write_dataset(
            table, out, format="parquet",
            partitioning=pa_ds.partitioning(pa.schema([table.schema.field(partition_by)]),
                                            flavor="hive"),
            basename_template=f"part-{index:05d}-{{i}}.parquet",
            file_options=pa_ds.ParquetFileFormat().make_write_options(compression="zstd"),
            existing_data_behavior="overwrite_or_ignore", use_threads=False)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, os.path.join(out, f"part-{index:05d}.parquet"), compression="zstd")
    return table.num_rows


def run_pyarrow(fmt: str, src: str, out: Path, partition_by: str | None,
                workers: int | None = None) -> None:
    paths = sorted(glob.glob(src))
    if not paths:
        raise FileNotFoundError(f"no input matches {src}")
    header = b""
    if fmt == "csv":
        with open(paths[0], "rb") as f:
            header = f.readline()
    sample = _sample(paths, header)
    if fmt == "csv" and b'"' in sample:
        raise NotApplicable("quoted fields in the first 1 MiB: byte ranges cut at raw newlines "
                            "cannot split a CSV with newlines inside quotes correctly")
    workers = workers or os.cpu_count() or 1
    tasks = _byte_ranges(paths[0]) if len(paths) == 1 else _file_groups(paths, workers)
    if partition_by:
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
    procs = max(1, min(workers, len(tasks)))
    # fork is safe here (this process has no Arrow threads) and the cheapest start
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
        schema_ipc = pool.submit(_pa_infer_schema, fmt, sample).result()
        task = partial(_pa_task, fmt=fmt, header=header, schema_ipc=schema_ipc, out=str(out),
                       partition_by=partition_by)
        rows = sum(pool.map(task, range(len(tasks)), tasks))
    print(f"pyarrow floor: {rows:,} rows from {len(paths):,} file(s) in {len(tasks):,} task(s) "
          f"on {procs} process(es)")


RUNNERS = {"duckdb": run_duckdb, "polars": run_polars, "dask": run_dask, "pyarrow": run_pyarrow}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=sorted(RUNNERS))
    parser.add_argument("input", help="a file or a glob")
    parser.add_argument("--format", choices=("csv", "jsonl"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--partition-by")
    parser.add_argument("--workers", type=int,
                        help="pyarrow only: worker processes (default os.cpu_count())")
    args = parser.parse_args(argv)
    runner = RUNNERS[args.tool]
    if args.tool == "pyarrow":
        runner = partial(run_pyarrow, workers=args.workers)
    try:
        runner(args.format, args.input, args.out, args.partition_by)
    except NotApplicable as exc:
        print(f"N/A: {exc}", file=sys.stderr)
        return NOT_APPLICABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
