"""Rare bad values stay cheap (issue 16, item 9): one CSV ingested with and without 0.01 % of
values that do not fit their column's type, in one run, wall time of each and their ratio.

Two files of the same rows are written under ``--scratch`` (never in the repository): in the
second, ``--bad-share`` of the values of the int64 column ``qty`` are ``3.5``. Each is ingested
by ``chunkmill ingest`` in its own process (default cluster, ``--force``), clean file first;
the bad values must come back as exactly that many ``TypeMismatch`` rows of ``_errors``.

    python benchmarks/bench_bad_values.py               # 1.5 M rows (~100 MB), under a minute
    python benchmarks/bench_bad_values.py --rows 4500000 --bad-share 0.0001
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parent.parent


def write_inputs(scratch: Path, rows: int, bad_share: float, seed: int = 16) -> tuple[Path, Path,
                                                                                      int]:
    """(clean file, file with bad values, number of bad values)."""
    rng = np.random.default_rng(seed)
    qty = pc.cast(pa.array(rng.integers(0, 10_000, rows)), pa.string())
    table = pa.table({
        "id": pa.array(np.arange(rows)),
        "ts": pc.cast(pa.array(1_700_000_000 + np.arange(rows), pa.timestamp("s")),
                      pa.string()),
        "user": pc.binary_join_element_wise("user", pc.cast(pa.array(rng.integers(0, 50_000,
                                                                                  rows)),
                                                            pa.string()), ""),
        "price": pa.array(np.round(rng.random(rows) * 100, 2)),
        "qty": qty,
        "event": pa.array(rng.choice(["view", "click", "buy"], rows)),
    })
    clean, dirty = scratch / "clean.csv", scratch / "bad_values.csv"
    options = pacsv.WriteOptions(quoting_style="none")
    pacsv.write_csv(table, clean, options)
    # The bad values start after the inference head, so qty is inferred as int64.
    n_bad = max(1, int(rows * bad_share))
    where = np.sort(rng.choice(np.arange(min(rows // 2, 40_000), rows), n_bad, replace=False))
    mask = np.zeros(rows, bool)
    mask[where] = True
    table = table.set_column(4, "qty", pc.if_else(pa.array(mask), "3.5", qty))
    pacsv.write_csv(table, dirty, options)
    return clean, dirty, n_bad


def ingest(path: Path, out: Path, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", str(path), "--out", str(out),
           "--table", "t", "--no-progress", "-q", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def rejected(out: Path) -> int:
    errors = list((out / "_errors").glob("*.parquet"))
    if not errors:
        return 0
    return duckdb.sql(f"select count(*) from read_parquet('{out}/_errors/*.parquet') "
                      "where error_type = 'TypeMismatch'").fetchall()[0][0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_500_000)
    p.add_argument("--bad-share", type=float, default=0.0001, help="0.0001 = 0.01 %%")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/chunkmill-bench/bad-values"))
    p.add_argument("extra", nargs="*", help="more chunkmill ingest options (after --)")
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    clean, dirty, n_bad = write_inputs(args.scratch, args.rows, args.bad_share)
    size = clean.stat().st_size / 1e6
    times = {}
    for name, path in (("clean", clean), ("bad values", dirty)):
        out = args.scratch / f"out-{path.stem}"
        times[name] = ingest(path, out, args.extra)
        got = rejected(out)
        want = n_bad if path == dirty else 0
        if got != want:
            print(f"{name}: {got} TypeMismatch rows in _errors, expected {want}")
            return 1
    ratio = times["bad values"] / times["clean"]
    print(f"{args.rows:,} rows, {size:.0f} MB, {n_bad} bad values "
          f"({100 * args.bad_share:g} %) in column qty (int64)")
    print("| file | wall s |\n| --- | --- |")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"ratio bad/clean: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
