"""Small jobs run in this process without a Dask cluster (issue 21 item 4): the same output
as on the embedded cluster, and distributed is never imported for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import pytest

import pipeline
from pipeline.execution.task import worker_name
from pipeline.pressure.arrow_pool import ARROW_DECAY_MS
from pipeline.report import plots
from pipeline.runner import SMALL_JOB_DECAY_MS


def _inputs(root) -> list[str]:
    """Small files (bundled), a file of several chunks, bad records, JSON lines, an empty
    file and one that is not text at all."""
    logs = root / "logs"
    logs.mkdir()
    for n in range(6):
        (logs / f"part-{n}.csv").write_text(
            "id,event,note\n" + "".join(f'{n * 100 + i},{"ab"[i % 2]},"x{i}"\n'
                                        for i in range(100)))
    (logs / "bad.csv").write_text("id,event,note\n1,a,ok\n2,b\n3,a,ok,extra\n4,b,fine\n")
    (logs / "empty.csv").write_text("")
    big = root / "big.csv"
    big.write_text("id,event,text\n" + "".join(f'{i},{"abc"[i % 3]},"row\n{i}"\n'
                                               for i in range(6000)))
    events = root / "events.jsonl"
    events.write_text("".join(json.dumps({"k": i, "v": f"s{i}"}) + "\n" for i in range(500))
                      + "{broken\n")
    return [str(logs), str(big), str(events)]


def _outputs(out) -> dict[str, object]:
    """What a run wrote, minus what differs between any two runs (run ids, times)."""
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out)
                   for f in fs if not os.path.relpath(d, out).startswith("_chunkmill"))
    tables = {}
    for table in ("logs", "big", "events"):
        tables[table] = duckdb.sql(
            f"select * exclude (_file_id), _file_id from read_parquet('{out}/{table}/**/"
            "*.parquet', hive_partitioning=true, union_by_name=true) order by all").fetchall()
    catalog = duckdb.sql(
        f"select * exclude (run_id, ingested_at, duration_s, metadata), metadata from "
        f"read_parquet('{out}/_catalog/*.parquet') order by path").fetchall()
    errors = duckdb.sql(
        f"select * exclude (run_id) from read_parquet('{out}/_errors/*.parquet') "
        "order by all").fetchall()
    return {"files": files, "tables": tables, "catalog": catalog, "errors": errors}


@pytest.mark.timeout(240)
def test_small_job_in_process_writes_what_the_cluster_writes(tmp_path) -> None:
    inputs = _inputs(tmp_path)
    kwargs = {"chunk_size": "32KB", "partition_by": ["event"], "progress": False}
    alone = pipeline.ingest(inputs, out=str(tmp_path / "alone"), **kwargs)
    cluster = pipeline.ingest(inputs, out=str(tmp_path / "cluster"), small_job_size=0,
                              **kwargs)
    # where the tasks ran: this process's threads, or the in-process Dask worker
    assert {r.worker for r in alone.chunk_records} == {worker_name()}
    assert {r.worker.partition("://")[0] for r in cluster.chunk_records} == {"inproc"}
    assert {r.thread for r in alone.chunk_records} <= {f"chunkmill_{i}" for i in range(64)}

    a, c = _outputs(tmp_path / "alone"), _outputs(tmp_path / "cluster")
    assert a == c
    assert len(a["tables"]["big"]) == 6000 and len(a["tables"]["events"]) == 500
    assert len(a["errors"]) == 3  # two bad CSV records, one bad JSON line
    assert any(f.startswith("logs/") and "bundle-" in f for f in a["files"])
    for report in (alone, cluster):
        assert (report.rows, report.errors, report.chunks) == (alone.rows, 3, alone.chunks)
        assert report.files == alone.files and report.exit_code == 0

    # the run record the HTML report reads: memory points around every chunk, pressure
    saved = plots.load_report(tmp_path / "alone")
    assert set(saved) == set(plots.load_report(tmp_path / "cluster"))
    times = [p.time for p in alone.memory_timeline if p.worker == worker_name()]
    assert len(times) >= 2 and min(times) <= min(r.started for r in alone.chunk_records)
    assert max(times) >= max(r.finished for r in alone.chunk_records)
    assert set(alone.pressure) == {worker_name()} and alone.pauses == 0
    plots.save_html(saved, tmp_path / "run.html")
    assert (tmp_path / "run.html").stat().st_size > 0

    # resume and unchanged files work the same way in process
    again = pipeline.ingest(inputs, out=str(tmp_path / "alone"), **kwargs)
    assert again.files == {"unchanged": sum(alone.files.values())} and not again.chunk_records


def _modules_after(code: str, home) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["HOME"] = str(home)
    run = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(sorted(m for m in"
                          " ('dask', 'distributed', 'distributed.deploy', 'tenacity',"
                          " 'pyarrow.compute')"
                          " if m in sys.modules))"],
                         capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr
    return set(eval(run.stdout.strip().splitlines()[-1]))


@pytest.mark.timeout(240)
def test_a_small_job_does_not_import_distributed(tmp_path) -> None:
    """Neither the CLI nor the API imports distributed for a small text job; a job above
    ``--small-job-size`` (here: any) starts the cluster as before. Neither imports tenacity
    (a tenth of a small job's start-up) before a read fails, nor pyarrow.compute (an eighth:
    see readers/_compute.py), numbers with leading zeros in the file included."""
    (tmp_path / "in.csv").write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(999))
                                     + "007,1\n")
    cli = ("from pipeline.cli import run\n"
           f"assert run(['ingest', {str(tmp_path / 'in.csv')!r}, '--out', "
           f"{str(tmp_path / 'o1')!r}, '-q']) == 0")
    # Nor Dask, while no source of Dask settings exists (none in this HOME or environment)
    dask = {"dask"} if _system_dask_settings() else set()
    assert _modules_after(cli, tmp_path) == dask
    api = ("import pipeline\n"
           f"r = pipeline.ingest({str(tmp_path / 'in.csv')!r}, out={str(tmp_path / 'o2')!r})\n"
           "assert r.ok and r.rows == 1000")
    assert _modules_after(api, tmp_path) == dask
    big = ("from pipeline.cli import run\n"
           f"assert run(['ingest', {str(tmp_path / 'in.csv')!r}, '--out', "
           f"{str(tmp_path / 'o3')!r}, '-q', '--small-job-size', '1KB']) == 0\n"
           # the CLI's levels for distributed's loggers reached Dask's config before
           # distributed read them, at its import during the run
           "import logging\n"
           "assert logging.getLogger('distributed').level == logging.CRITICAL\n"
           "assert logging.getLogger('distributed.client').level == logging.CRITICAL")
    assert _modules_after(big, tmp_path) == {"dask", "distributed", "distributed.deploy"}


def _system_dask_settings() -> bool:
    """Whether Dask's config directories outside HOME hold a file (then Dask is imported
    to read it)."""
    from pipeline import config

    home = os.path.join(os.path.expanduser("~"), ".config", "dask")
    return any(os.path.isfile(p) or (os.path.isdir(p) and os.listdir(p))
               for p in config.dask_config_paths() if p != home)


@pytest.mark.parametrize(("options", "alone"), [
    ({}, True),
    ({"small_job_size": "100B"}, False),   # more bytes than that: the cluster
    ({"layout": "threads"}, False),        # an explicit layout: the cluster
    ({"workers": 1}, False),               # worker processes asked for
])
def test_which_jobs_run_in_process(tmp_path, options, alone) -> None:
    (tmp_path / "in.csv").write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    report = pipeline.ingest(str(tmp_path / "in.csv"), out=str(tmp_path / "o"),
                             progress=False, **options)
    assert report.ok and report.rows == 100
    assert ({r.worker for r in report.chunk_records} == {worker_name()}) is alone


def _pool_seen_by_run(tmp_path, env: dict[str, str]) -> list[str]:
    """The allocator env var and Arrow's pool, as ``pipeline.cli.main`` leaves them for a run
    (``run`` replaced by a probe), in a fresh interpreter."""
    probe = ("import os, sys\nimport pipeline.cli as cli\n"
             "def run():\n    import pyarrow as pa\n"
             "    print(os.environ.get('ARROW_DEFAULT_MEMORY_POOL'),"
             " pa.default_memory_pool().backend_name,"
             " os.environ.get('JE_ARROW_MALLOC_CONF'))\n    return 0\n"
             "cli.run = run\ncli.main()\n")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ARROW_DEFAULT_MEMORY_POOL", "JE_ARROW_MALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="jemalloc: Linux wheels")
def test_the_cli_chooses_jemalloc_before_arrow_loads_unless_the_user_chose(tmp_path) -> None:
    # ... and has it return freed pages for real (no MADV_FREE), unless the user set jemalloc
    assert _pool_seen_by_run(tmp_path, {}) == ["jemalloc", "jemalloc", "muzzy_decay_ms:0"]
    assert _pool_seen_by_run(tmp_path, {"JE_ARROW_MALLOC_CONF": "dirty_decay_ms:0"}) == [
        "jemalloc", "jemalloc", "dirty_decay_ms:0"]
    assert _pool_seen_by_run(tmp_path, {"ARROW_DEFAULT_MEMORY_POOL": "system"}) == [
        "system", "system", "None"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="jemalloc: Linux wheels")
@pytest.mark.parametrize(("options", "decays"), [
    ({}, [SMALL_JOB_DECAY_MS, ARROW_DECAY_MS]),  # a small job, and Arrow's own after it
    ({"layout": "threads"}, []),                 # on the cluster: Arrow's own all along
])
def test_a_small_job_has_jemalloc_return_freed_pages_sooner(tmp_path, monkeypatch, options,
                                                            decays) -> None:
    import pyarrow as pa

    set_to = []
    monkeypatch.setattr(pa, "jemalloc_set_decay_ms", set_to.append)
    (tmp_path / "in.csv").write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(100)))
    report = pipeline.ingest(str(tmp_path / "in.csv"), out=str(tmp_path / "o"),
                             progress=False, **options)
    assert report.ok and report.rows == 100
    assert set_to == decays


def test_a_run_puts_arrows_default_pool_back(tmp_path) -> None:
    """An ingest from Python switches Arrow's pool for planning and its tasks, then restores
    the caller's (the pool is process-wide: a notebook keeps its own)."""
    import pyarrow as pa

    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        assert pipeline.ingest(str(tmp_path / "in.csv"), out=str(tmp_path / "o")).ok
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(before)


def test_jemalloc_is_named_only_when_the_installed_pyarrow_has_it(tmp_path, monkeypatch) -> None:
    """Naming a pool pyarrow lacks prints a warning in every process: the build header says."""
    import importlib.machinery
    import importlib.util

    from pipeline.cli import _arrow_has_jemalloc

    def installed(header: str | None) -> None:
        root = tmp_path / f"pyarrow{len(list(tmp_path.iterdir()))}"
        (root / "include" / "arrow" / "util").mkdir(parents=True)
        if header is not None:
            (root / "include" / "arrow" / "util" / "config.h").write_text(header)
        spec = importlib.machinery.ModuleSpec("pyarrow", None, is_package=True)
        spec.submodule_search_locations = [str(root)]
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)

    installed("#define ARROW_MIMALLOC\n#define ARROW_JEMALLOC\n")
    assert _arrow_has_jemalloc()
    installed("#define ARROW_MIMALLOC\n/* #undef ARROW_JEMALLOC */\n")
    assert not _arrow_has_jemalloc()
    installed(None)
    assert not _arrow_has_jemalloc()


def test_the_cli_skips_interpreter_teardown_only_when_nothing_is_left_running(tmp_path) -> None:
    """After a run the CLI leaves by ``os._exit`` (teardown costs a tenth of a small job's
    start-up), with the atexit handlers run and every line it printed delivered; a live
    non-daemon thread or child process keeps the usual shutdown."""
    probe = ("import sys, threading, multiprocessing, pipeline.cli as cli\n"
             "print(cli._nothing_left_running())\n"
             "go = threading.Event(); t = threading.Thread(target=go.wait); t.start()\n"
             "print(cli._nothing_left_running())\n"
             "go.set(); t.join(); print(cli._nothing_left_running())\n"
             "p = multiprocessing.get_context('spawn').Process(target=sorted, args=([],))\n"
             "p.start(); print(cli._nothing_left_running()); p.join()\n"
             "print(cli._nothing_left_running())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["True", "False", "True", "False", "True"]
    # after an interrupt (exit code 130), a thread that never ends is not waited for; the
    # atexit handlers still run
    stuck = ("import atexit, sys, threading, pipeline.cli as cli\n"
             "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
             "def interrupted():\n"
             "    threading.Thread(target=threading.Event().wait).start()\n"
             "    return 130\n"
             "cli.run = interrupted\ncli.main()\n")
    res = subprocess.run([sys.executable, "-c", stuck], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 130 and res.stderr.strip() == "atexit ran", res.stderr
    # the whole of a long report reaches a pipe, the exit code is the run's, and atexit
    # handlers run, after a small job and after one on the embedded cluster
    for n in range(300):
        (tmp_path / f"f{n:03}.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bad.csv").write_bytes(b"a,b\n\xff\xfe\x00\x01\n")
    for n, extra in enumerate([[], ["--small-job-size", "0"]]):
        main = ("import atexit, sys, pipeline.cli as cli\n"
                "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
                f"sys.argv = ['chunkmill', 'ingest', {str(tmp_path)!r}, '--out', "
                f"{str(tmp_path / f'o{n}')!r}, '--json', *{extra!r}]\ncli.main()\n")
        res = subprocess.run([sys.executable, "-c", main], capture_output=True, text=True,
                             timeout=180)
        report = json.loads(res.stdout)
        assert len(res.stdout) > 65536 and res.returncode == report["exit_code"] == 1
        assert res.stderr.rstrip().endswith("atexit ran"), res.stderr


@pytest.fixture
def caller_gc():
    """The caller's collector: nothing frozen, thresholds (650, 9, 8); the test process's
    own settings are back afterwards."""
    import gc

    before = gc.get_threshold()
    gc.unfreeze()  # whatever froze before, the test starts with nothing frozen
    gc.set_threshold(650, 9, 8)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_run_eases_the_collector_and_hands_it_back(tmp_path, caller_gc) -> None:
    """During a run the young generation is collected less often and what existed before is
    frozen (see `pipeline.runner._Collector`); afterwards the caller's settings are back,
    and a caller's own freeze is neither extended nor undone."""
    import gc

    from pipeline.runner import GC_GEN0

    inputs = _inputs(tmp_path)
    seen: list[tuple[int, int]] = []

    def look(table):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return table

    pipeline.ingest(inputs, out=str(tmp_path / "out"), transform=look, progress=False)
    assert seen and all(t == GC_GEN0 and frozen > 0 for t, frozen in seen)
    assert gc.get_threshold() == (650, 9, 8)
    assert gc.get_freeze_count() == 0

    seen.clear()
    gc.freeze()
    mine = gc.get_freeze_count()
    pipeline.ingest(inputs, out=str(tmp_path / "out2"), transform=look, progress=False)
    # (Frozen objects that die leave the count: it may only shrink.)
    assert seen and all(0 < frozen <= mine for _, frozen in seen)
    assert 0 < gc.get_freeze_count() <= mine and gc.get_threshold() == (650, 9, 8)


_TWO_RUNS: dict[str, object] = {}
"""What the two runs' transforms share (transforms must pickle: module-level names do)."""


def _a_waits_for_b(table):
    assert _TWO_RUNS["b_inside"].wait(60)
    return table


def _b_waits_for_a(table):
    import gc

    _TWO_RUNS["b_inside"].set()
    if _TWO_RUNS["a_done"].wait(60) and not _TWO_RUNS["during"]:  # A has ended, B runs
        _TWO_RUNS["during"].append((gc.get_threshold()[0], gc.get_freeze_count()))
    return table


@pytest.mark.timeout(120)
def test_runs_in_two_threads_hand_the_collector_back_once_both_end(tmp_path, caller_gc
                                                                  ) -> None:
    """Runs in several threads share the eased collector: the first to end leaves it eased
    for the other, the last hands back the caller's threshold and unfreezes."""
    import gc
    import threading

    from pipeline.runner import GC_GEN0

    inputs = _inputs(tmp_path)
    during: list[tuple[int, int]] = []
    a_done = threading.Event()
    _TWO_RUNS.update(b_inside=threading.Event(), a_done=a_done, during=during)
    failures: list[BaseException] = []

    def run(name: str, transform, done: threading.Event | None) -> None:
        try:
            pipeline.ingest(inputs, out=str(tmp_path / name), transform=transform,
                            progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            if done is not None:
                done.set()

    try:
        threads = [threading.Thread(target=run, args=("a", _a_waits_for_b, a_done)),
                   threading.Thread(target=run, args=("b", _b_waits_for_a, None))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        assert not failures, failures
        assert during and during[0][0] == GC_GEN0 and during[0][1] > 0
        assert gc.get_threshold() == (650, 9, 8) and gc.get_freeze_count() == 0
    finally:
        _TWO_RUNS.clear()
