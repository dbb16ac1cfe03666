"""benchmarks/bench_scale.py keeps working: its reader-plugin plan runs end to end with the
right counts (not a timing test; the numbers are in the README)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import readers

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    # register() puts the plugin on sys.path and PYTHONPATH: both are restored afterwards.
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    import bench_scale

    try:
        yield bench_scale
    finally:
        readers.clear_cache()


def test_simulated_plan_of_20000_chunks(bench: object, tmp_path: Path) -> None:
    result = bench.run("simulate", 200, 100, 4096, tmp_path)  # type: ignore[attr-defined]
    assert result["chunks"] == result["submitted"] == 20_000
    assert result["files_ok"] == 200 and result["failures"] == 0
    assert result["journal_bytes"] > 0 and result["commits"] >= 1


def test_plan_counts(bench: object, tmp_path: Path) -> None:
    result = bench.run("plan", 30, 70, 4096, tmp_path)  # type: ignore[attr-defined]
    assert result["chunks"] == 2100 and result["errors"] == 0


def test_real_cluster_writes_every_chunk_once(bench: object, tmp_path: Path) -> None:
    # The embedded default cluster (threads layout: the reader allows it); one row per chunk.
    result = bench.run("dask", 4, 25, 4096, tmp_path, keep=True)  # type: ignore[attr-defined]
    assert result["chunks"] == result["rows"] == 100
    assert result["files_ok"] == 4 and result["failures"] == 0
    (table,) = [p for p in Path(result["out"]).iterdir() if not p.name.startswith("_")]
    rows = duckdb.sql(f"select _file_id, count(*) n, count(distinct chunk) d, max(chunk) m "
                      f"from read_parquet('{table}/**/*.parquet') group by all").fetchall()
    assert len(rows) == 4 and all(r[1:] == (25, 25, 24) for r in rows), rows
