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


class _Done:
    def __init__(self, result: object) -> None:
        self._result = result

    def result(self) -> object:
        return self._result

    def release(self) -> None:
        pass

    def add_done_callback(self, fn: object) -> None:
        fn(self)  # type: ignore[operator]


class _InstantClient:
    def submit(self, fn: object, task: object, **_: object) -> _Done:
        return _Done(fn(task))  # type: ignore[operator]


class _Watch:
    def window(self, base: int) -> int:
        return base


def test_a_stop_asked_during_the_rounds_interrupts_the_run_at_a_round() -> None:
    """The CLI's first Ctrl-C during the rounds only sets `STOP`: the run raises
    KeyboardInterrupt at the start of its next round, and still when the chunks running at
    the press were the last ones (a run that went on to finish them once exited 0)."""
    from pipeline.execution.scheduler import ROUNDS, STOP, DaskExecutor, Job, TaskScheduler

    for stop_at, jobs in ((2, 10), (10, 10)):
        finished: list[object] = []

        def done(payload: object, result: object, at: int = stop_at,
                 finished: list[object] = finished) -> None:
            assert ROUNDS.is_set()
            finished.append(payload)
            if len(finished) == at:
                STOP.set()  # what the CLI's signal handler does

        scheduler = TaskScheduler(DaskExecutor(_InstantClient()), 1,  # type: ignore[arg-type]
                                  _Watch())  # type: ignore[arg-type]
        scheduler.add(*(Job(0, str(i), str, i, str(i)) for i in range(jobs)))
        with pytest.raises(KeyboardInterrupt):
            scheduler.run(done, lambda: None)
        assert len(finished) == stop_at  # nothing submitted after the stop
        assert not ROUNDS.is_set() and not STOP.is_set()


def test_lazy_jobs_are_made_as_the_window_takes_them() -> None:
    from pipeline.execution.scheduler import DaskExecutor, Job, TaskScheduler

    made: list[str] = []
    finished: list[str] = []

    def jobs(name: str, priority: int, n: int) -> Iterator[Job]:
        for i in range(n):
            made.append(f"{name}{i}")
            yield Job(priority, f"{name}{i}", str, f"{name}{i}", f"{name}{i}")

    scheduler = TaskScheduler(DaskExecutor(_InstantClient()), 3,  # type: ignore[arg-type]
                              _Watch())  # type: ignore[arg-type]
    scheduler.add_lazy(jobs("a", 5, 1000))
    scheduler.add(Job(9, "x", str, "x", "x"))
    scheduler.add_lazy(jobs("b", 5, 4))
    scheduler.add_lazy(jobs("c", 7, 2))
    scheduler.add_lazy(jobs("empty", 8, 0))
    ahead: list[int] = []

    def done(payload: object, result: object) -> None:
        assert payload == result
        finished.append(str(payload))
        ahead.append(len(made) - len(finished))

    scheduler.run(done, lambda: None)
    # Higher priority first, equal priorities in the order added, as if added one by one.
    assert finished == (["x", "c0", "c1"] + [f"a{i}" for i in range(1000)]
                        + [f"b{i}" for i in range(4)])
    # Never more tasks made than the window holds, plus the next one of each lazy batch.
    assert max(ahead) <= 3 + 3


def test_run_report_keeps_a_bounded_sample_of_chunk_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from pipeline.report import run_report
    from pipeline.report.run_report import ChunkRecord, RunReport

    monkeypatch.setattr(run_report, "CHUNK_RECORDS", 50)
    report = RunReport("run-1", "out", 0.0)
    for i in range(10_000):
        report.add_chunk(ChunkRecord(f"c{i}", "p", "w", float(i), float(i + 1), 1, 1, 0))
    assert report.chunk_tasks == 10_000 and len(report.chunk_records) == 50
    kept = sorted(int(r.chunk_id[1:]) for r in report.chunk_records)
    assert kept[-1] > 5000 and kept[0] < 5000  # a sample of the whole run, not its start
    data = json.loads(report.to_json())
    assert "_sampler" not in data and len(data["chunk_records"]) == 50
    assert RunReport.from_dict(data).chunk_tasks == 10_000


def test_progress_forgets_long_finished_chunks() -> None:
    from pipeline.report.progress import ENDED_KEPT, Progress

    progress = Progress(1, 3 * ENDED_KEPT, 0, enabled=False)
    for i in range(3 * ENDED_KEPT):
        progress.chunk_done(f"c{i}", 1.0, nbytes=1, rows=1, rejected=0)
    assert len(progress._ended) <= ENDED_KEPT
    progress.live(f"c{3 * ENDED_KEPT - 1}", 1.0, 5, 5, 0)  # a late report of a recent chunk
    assert progress.totals() == (3 * ENDED_KEPT, 3 * ENDED_KEPT, 0)
