"""The Python API for notebooks: plan, read (lazy), ingest; and a real multi-process cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import duckdb
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.demo import make_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    make_sample(root, rows=6000)
    return root


def test_plan_is_inspectable(sample) -> None:
    plan = pipeline.plan([str(sample / "logs")], chunk_size="16KB")
    assert len(plan.files) == 2 and len(plan.chunks) > 5
    assert {f["format"] for f in plan.summary()} == {"csv"}
    assert "table logs (2 file(s), " in repr(plan) and "): id: int64" in repr(plan)
    assert "<table>" in plan._repr_html_()


def test_partitioned_jobs_default_to_twice_the_chunk(tmp_path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"id,kind\n" + b"1,a\n" * (70 * 2**20 // 4))  # 70 MiB
    plain = pipeline.plan([str(path)])
    partitioned = pipeline.plan([str(path)], partition_by=["kind"])
    chosen = pipeline.plan([str(path)], partition_by=["kind"], chunk_size="32MiB")
    assert [len(p.chunks) for p in (plain, partitioned, chosen)] == [3, 2, 3]


def test_read_is_lazy_and_matches_the_source(sample, tmp_path) -> None:
    path = sample / "logs" / "2026-11-a.csv"
    df = pipeline.read(str(path), chunk_size="16KB")
    assert df.npartitions > 10
    assert isinstance(df.dtypes["id"], pd.ArrowDtype)
    assert not (tmp_path / "out").exists()
    got = df.compute().sort_values("id").reset_index(drop=True)
    whole = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                           convert_options=pacsv.ConvertOptions(
                               null_values=[""], strings_can_be_null=True,
                               quoted_strings_can_be_null=False)).to_pandas()
    assert len(got) == len(whole)
    assert got["note"].fillna("<null>").tolist() == whole["note"].fillna("<null>").tolist()


def test_out_naming_a_file_is_a_usage_error(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    with pytest.raises(pipeline.UsageError, match="is a file"):
        pipeline.ingest([str(tmp_path / "a.csv")], out=str(tmp_path / "a.csv"))
    assert (tmp_path / "a.csv").read_text() == "x\n1\n"


def test_read_several_tables_needs_a_name(sample) -> None:
    with pytest.raises(pipeline.UsageError, match="several tables"):
        pipeline.read([str(sample / "events.jsonl"), str(sample / "users.tsv")])
    users = pipeline.read([str(sample / "events.jsonl"), str(sample / "users.tsv")],
                          table="users")
    assert len(users) == 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"the scheduler does not listen on port {port} (exit {proc.poll()})")


@pytest.mark.timeout(240)
def test_cli_on_a_real_dask_cluster_equals_embedded(sample, tmp_path) -> None:
    """`dask scheduler` + two `dask worker` processes on loopback, like a small real cluster."""
    dask_cli = shutil.which("dask") or os.path.join(os.path.dirname(sys.executable), "dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        # Workers and client connect once the scheduler listens: a refused connection makes
        # distributed retry with a doubling random back-off, which once cost 10 s of waiting
        # for a scheduler that had been up for most of it.
        _wait_listening(port, procs[0])
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask_cli, "worker", address, "--nthreads", "1", "--memory-limit", "1GB",
                 "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        common = [str(sample / "logs"), "--partition-by", "event", "--chunk-size", "64KB"]
        cluster = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", *common,
                                  "--out", str(tmp_path / "cluster"), "--scheduler", address,
                                  "--json"], capture_output=True, text=True, timeout=180)
        assert cluster.returncode == 0, cluster.stderr
        embedded = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", *common,
                                   "--out", str(tmp_path / "embedded")],
                                  capture_output=True, text=True, timeout=180)
        assert embedded.returncode == 0, embedded.stderr
        query = ("select count(*), sum(hash(id, ts, user, event, value, note)::hugeint) "
                 "from read_parquet('{}/logs/**/*.parquet', hive_partitioning=true)")
        assert duckdb.sql(query.format(tmp_path / "cluster")).fetchall() == \
            duckdb.sql(query.format(tmp_path / "embedded")).fetchall()
        import json

        report = json.loads(cluster.stdout)
        workers = {r["worker"] for r in report["chunk_records"]}
        assert len(workers) == 2  # the work really spread over both worker processes
        # the pressure plugin was installed on the external cluster's workers too
        assert set(report["pressure"]) == workers
        assert all(p["installed"] for p in report["pressure"].values())
    finally:
        # Workers first, while their scheduler is there to say goodbye to: a worker whose
        # scheduler is gone keeps trying it for seconds before it exits.
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_embedded_cluster_worker_settings(tmp_path) -> None:
    """Workers get the settings chunkmill relies on, not only the process that made them."""
    import dask

    from pipeline.execution.cluster import connect
    from pipeline.options import ClusterOptions

    def settings() -> tuple:
        return (dask.config.get("distributed.worker.memory.pause"),
                dask.config.get("distributed.worker.profile.enabled"))

    for dashboard, profile in ((False, False), (True, True)):
        with connect(ClusterOptions(workers=1, dashboard=dashboard)) as client:
            assert set(client.run(settings).values()) == {(False, profile)}


@pytest.mark.timeout(120)
def test_text_workers_import_only_what_text_needs(sample, tmp_path) -> None:
    """A text job's workers never import pandas, h5py, zarr or Pillow: each costs start-up time
    in every worker process (pandas alone half a second). Rejected records (``_errors``) and
    JSON values kept as text in a widened column (the per-line rescue) neither."""
    import sys as _sys

    from pipeline.execution.cluster import connect
    from pipeline.options import ClusterOptions

    names = ("pandas", "h5py", "zarr", "PIL")

    def heavy() -> list[str]:
        return [m for m in names if m in _sys.modules]

    def trace() -> None:
        """Record where a heavy module gets imported, for the failure message."""
        import traceback

        class Finder:
            stacks: list[str] = []

            def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN202
                if name in names:
                    Finder.stacks.append("".join(traceback.format_stack(limit=30)))

        _sys.meta_path.insert(0, Finder())
        _sys.chunkmill_import_trace = Finder.stacks

    with connect(ClusterOptions(workers=1)) as client:
        assert list(client.run(heavy).values()) == [[]]
        client.run(trace)
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n3,4,5\n6,7\n")
        mixed = tmp_path / "mixed.jsonl"  # "a" widens to string; 1 is kept as "1"; [1] rejected
        mixed.write_text('{"a": 1, "event": "x"}\n{"a": "y", "event": "x"}\n[1]\n')
        report = pipeline.ingest([str(sample / "logs"), str(bad), str(mixed)],
                                 out=str(tmp_path / "out"), partition_by=["event"],
                                 chunk_size="64KB", scheduler=client.scheduler.address,
                                 progress=False)
        errors = pq.read_table(tmp_path / "out" / "_errors").to_pylist()
        assert sorted((os.path.basename(e["path"]), e["byte_offset"]) for e in errors) == [
            ("bad.csv", 8), ("mixed.jsonl", mixed.read_bytes().index(b"[1]"))], errors
        assert report.ok and report.chunks > 1 and report.errors == 2
        rows = pq.read_table(tmp_path / "out" / "mixed", columns=["a"]).column("a")
        assert sorted(rows.to_pylist()) == ["1", "y"]
        stacks = list(client.run(lambda: _sys.chunkmill_import_trace).values())[0]
        assert list(client.run(heavy).values()) == [[]], stacks[0]


def test_text_client_imports_only_what_text_needs(sample, tmp_path) -> None:
    """The process running ``chunkmill ingest`` on CSV files never imports pandas, h5py, zarr or
    Pillow either: format detection asks every reader, and the catalog is built at the end."""
    code = (
        "import sys, pipeline\n"
        f"report = pipeline.ingest([{str(sample / 'logs')!r}], out={str(tmp_path / 'out')!r},"
        " workers=1, progress=False)\n"
        "assert report.ok, report\n"
        "print(sorted(m for m in ('pandas', 'h5py', 'zarr', 'PIL') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.timeout(180)
def test_layout_auto_runs_text_in_threads_and_other_formats_in_processes(sample, tmp_path
                                                                         ) -> None:
    """Text-only jobs run on one in-process worker (fast start, one interpreter); a job with
    an HDF5 file, or one that names its worker processes, gets worker processes."""
    import h5py
    import numpy as np

    def transports(report: pipeline.RunReport) -> set[str]:
        assert report.ok and report.chunk_records
        return {r.worker.partition("://")[0] for r in report.chunk_records}

    logs = str(sample / "logs")
    # (a small text job runs without a cluster: see tests/test_small_jobs.py)
    text = pipeline.ingest([logs], out=str(tmp_path / "text"), chunk_size="64KB",
                           progress=False, small_job_size=0)
    assert transports(text) == {"inproc"}
    expected = duckdb.sql(f"select count(*), sum(id) from read_parquet('{tmp_path}/text/logs/"
                          "**/*.parquet')").fetchall()
    named = pipeline.ingest([logs], out=str(tmp_path / "named"), chunk_size="64KB",
                            workers=1, progress=False)
    assert transports(named) == {"tcp"}
    assert duckdb.sql(f"select count(*), sum(id) from read_parquet('{tmp_path}/named/logs/"
                      "**/*.parquet')").fetchall() == expected == [(6000, sum(range(6000)))]

    with h5py.File(tmp_path / "grid.h5", "w") as f:
        f["values"] = np.arange(1000, dtype="f8")
    mixed = pipeline.ingest([logs, str(tmp_path / "grid.h5")], out=str(tmp_path / "mixed"),
                            progress=False)
    assert transports(mixed) == {"tcp"}
    forced = pipeline.ingest([logs], out=str(tmp_path / "forced"), layout="processes",
                             progress=False)
    assert transports(forced) == {"tcp"}
    with pytest.raises(pipeline.UsageError, match="--layout must be one of"):
        pipeline.ingest([logs], out=str(tmp_path / "bad"), layout="fibers")


def test_read_without_pandas_says_what_to_install(tmp_path) -> None:
    """pandas and dask.dataframe are an extra (``chunkmill[dataframe]``), needed by
    ``pipeline.read`` only: without them it says what to install; ingest still works."""
    import subprocess
    import sys

    (tmp_path / "a.csv").write_text("a\n1\n")
    script = f"""
import sys
sys.modules["pandas"] = None  # as on an install without the extra
import pipeline
try:
    pipeline.read([{str(tmp_path / 'a.csv')!r}])
except ImportError as exc:
    print(type(exc).__name__, exc)
report = pipeline.ingest([{str(tmp_path / 'a.csv')!r}], out={str(tmp_path / 'o')!r},
                         progress=False)
print("rows", report.rows)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert "MissingDependency" in res.stdout, res.stderr
    assert "pip install 'chunkmill[dataframe]'" in res.stdout
    assert "rows 1" in res.stdout
