"""Issue 20, delimited text: regressions for hangs, lost rows and slow paths found by probing.

Each test names the issue item it guards. Readers are driven in-process (`conftest.run_reader`,
exactly as the runner settles a file) unless the item is about the whole run.
"""

from __future__ import annotations

import time

import pyarrow as pa
from conftest import run_reader

from readers.widening import conform


# --- item 8: wide files are linear in their columns -----------------------------------------------
def test_conform_is_linear_in_columns() -> None:
    """Name lookups in lists per column made 100,000 columns take hours."""
    n = 30_000
    column = pa.array([7], pa.int64())
    table = pa.Table.from_arrays([column] * n, names=[f"c{i}" for i in range(n)])
    schema = pa.schema([("extra", pa.string())] + [(f"c{i}", pa.int64()) for i in range(n)])
    started = time.perf_counter()
    out = conform(table, schema)
    assert time.perf_counter() - started < 10
    assert out.schema == schema and out.column(n).to_pylist() == [7]
    assert out.column("extra").to_pylist() == [None]


def test_wide_csv_reads_in_linear_time(tmp_path) -> None:
    """5,000 columns x 20 rows took 80 s (10,000: 170 s); pyarrow itself needs ~1 s here."""
    n = 20_000
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(n)) + "\n"
                    + ",".join(str(i) for i in range(n)) + "\n")
    started = time.perf_counter()
    got, rejected, _ = run_reader(str(path), "csv")
    assert time.perf_counter() - started < 30
    assert not rejected and got.num_columns == n and got.column(n - 1).to_pylist() == [n - 1]
