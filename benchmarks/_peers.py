"""Run one peer tool (DuckDB, Polars or dask.dataframe) on one input: the measured child process.

Invoked by ``benchmarks/run.py`` as ``python benchmarks/_peers.py TOOL --format csv|jsonl --out
DIR [--partition-by COL] INPUT`` where INPUT is a file or a glob. Imports only the library under
test, so the measured memory is that library's own. Every tool writes zstd Parquet with its
default settings otherwise (threads, memory limits, type inference).

Exit 0 on success; 3 with an ``N/A: ...`` line when the installed version cannot do the case;
anything else is a failure (the traceback is in the run's log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOT_APPLICABLE = 3


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


RUNNERS = {"duckdb": run_duckdb, "polars": run_polars, "dask": run_dask}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=sorted(RUNNERS))
    parser.add_argument("input", help="a file or a glob")
    parser.add_argument("--format", choices=("csv", "jsonl"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--partition-by")
    args = parser.parse_args(argv)
    try:
        RUNNERS[args.tool](args.format, args.input, args.out, args.partition_by)
    except NotApplicable as exc:
        print(f"N/A: {exc}", file=sys.stderr)
        return NOT_APPLICABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
