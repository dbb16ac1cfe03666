"""Memory pressure during a real ingest: outside pressure pauses the job, it resumes, and the
output is complete; a small worker memory limit does not get workers killed."""

from __future__ import annotations

import threading
import time

import dask
import duckdb
import psutil
import pytest
from balloon import Balloon

import pipeline
from pipeline.pressure.monitor import read_memory_usage


def make_csv(path, rows: int) -> None:
    path.write_text("id,event,text\n" + "".join(
        f'{i},{"abc"[i % 3]},"line {i}\nsecond, line"\n' for i in range(rows)))


def total(out, table: str) -> int:
    return duckdb.sql(f"select count(*) from read_parquet('{out}/{table}/**/*.parquet', "
                      "hive_partitioning=true)").fetchall()[0][0]


@pytest.mark.timeout(240)
def test_outside_pressure_pauses_then_resumes(tmp_path) -> None:
    make_csv(tmp_path / "in.csv", 60_000)
    balloon = Balloon(int(3.6 * 2**30))
    # Measured with the balloon up: 95 % of the limit (CRITICAL, pause), with ~5 % to spare
    # for memory that earlier tests' processes free meanwhile; 3.6 GB less is far below HIGH.
    used, _ = read_memory_usage()
    limit = int(used / 0.95)
    threading.Timer(6.0, balloon.close).start()  # the outside pressure goes away after 6 s
    try:
        started = time.monotonic()
        with dask.config.set({"chunkmill.pressure.limit": limit}):
            report = pipeline.ingest([str(tmp_path / "in.csv")], out=str(tmp_path / "o"),
                                     chunk_size="64KB", workers=2, partition_by=["event"])
        elapsed = time.monotonic() - started
    finally:
        balloon.close()
    assert report.ok and report.rows == 60_000 and total(tmp_path / "o", "in") == 60_000
    assert report.pauses >= 1
    levels = {e["new"] for e in report.pressure_events}
    assert levels & {"HIGH", "CRITICAL"}
    assert elapsed > 3  # it waited for the balloon to go instead of pushing on


@pytest.mark.timeout(240)
def test_small_worker_memory_limit_completes_without_restarts(tmp_path) -> None:
    make_csv(tmp_path / "in.csv", 400_000)  # ~12 MB with quoted newlines
    report = pipeline.ingest([str(tmp_path / "in.csv")], out=str(tmp_path / "o"),
                             chunk_size="4MB", workers=2, memory_limit="400MB",
                             partition_by=["event"])
    assert report.ok and total(tmp_path / "o", "in") == 400_000
    assert {r.worker for r in report.chunk_records} <= set(report.pressure)
    assert all(p["status"] == "running" for p in report.pressure.values())
    assert psutil.virtual_memory().available > 0
