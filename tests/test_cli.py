"""The command line as users and schedulers meet it: real subprocesses, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest


def chunkmill(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_ingest_on_embedded_cluster(tmp_path) -> None:
    src = tmp_path / "big.csv"
    src.write_text("id,event,text\n" + "".join(
        f'{i},{"ab"[i % 2]},"row\n{i}"\n' for i in range(5000)))
    res = chunkmill("ingest", str(src), "--out", str(tmp_path / "lake"), "--partition-by",
                    "event", "--chunk-size", "8KB", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "1 ok" in res.stdout and "5,000 rows" in res.stdout
    assert "Traceback" not in res.stderr
    # Dask's own INFO chatter stays out of a user's terminal (shown with -v)
    assert "Scheduler at" not in res.stderr and "Registering Worker plugin" not in res.stderr
    n = duckdb.sql(f"select count(*), count(distinct event) from read_parquet("
                   f"'{tmp_path}/lake/big/**/*.parquet', hive_partitioning=true)").fetchall()
    assert n == [(5000, 2)]


def test_json_report_for_schedulers(tmp_path, shared_scheduler) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    res = chunkmill("ingest", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"),
                    "--scheduler", shared_scheduler, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["rows"] == 2 and report["exit_code"] == 0
    assert report["chunk_records"][0]["worker"].startswith("tcp://")


@pytest.mark.parametrize("layout", ["--workers=1", "--layout=threads"])
def test_bad_row_that_is_not_utf8_prints_no_traceback(tmp_path, layout) -> None:
    """pyarrow cannot hand a non-UTF-8 bad row to the row handler and prints the failed
    decode as "Exception ignored ..." with a traceback; the row is rejected all the same."""
    src = tmp_path / "bad.csv"
    head = b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(3000))
    src.write_bytes(head + b"9,y,\xf2\xff\n10,z\n")
    out = tmp_path / "o"
    res = chunkmill("ingest", str(src), "--out", str(out), "--format", "csv", layout,
                    "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "3,001 rows, 1 rejected" in res.stdout, res.stdout
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    errors = duckdb.sql(f"select byte_offset, raw from '{out}/_errors/*.parquet'").fetchall()
    assert errors == [(len(head), b"9,y,\xf2\xff\n")]


@pytest.mark.parametrize("args,needle", [
    (["ingest", "nope/missing.csv", "--out", "o"], "nope/missing.csv: no such file"),
    (["ingest", "x.csv", "--out", "o", "--chunk-size", "lots"], "not a size"),
    (["ingest", "x.csv", "--out", "o", "--compression", "rar"], "invalid choice"),
    (["ingest", "x.csv", "--out", "o", "--layout", "fibers"], "invalid choice"),
    (["ingest", "x.csv", "--out", "o", "--threads-per-worker", "0"], "at least 1"),
    (["ingest", "x.csv"], "--out"),
    (["ingest", "x.csv", "--out", "o", "--format", "nosuch"], "no reader named 'nosuch'"),
    (["ingest", "x.csv", "--out", "o", "--partition-by", "nocol"], "--partition-by nocol"),
    (["ingest", "x.csv", "--out", "o", "--scheduler", "tcp://127.0.0.1:1"], "cannot connect"),
    (["ingest", "x.csv", "--out", "x.csv"], "--out x.csv is a file"),
    (["ingest", "x.csv", "--out", "x.csv/sub"], "which is a file"),
])
def test_user_mistakes_get_one_clear_line(tmp_path, monkeypatch, capsys, args, needle
                                         ) -> None:
    from pipeline import cli

    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    if needle == "cannot connect":
        # Nothing listens there: distributed retries the refused connection until the
        # client's timeout (5 s) runs out. One second ends it the same way, sooner.
        from pipeline.execution import cluster

        client = cluster.Client
        monkeypatch.setattr(cluster, "Client",
                            lambda *args, **kwargs: client(*args, **{**kwargs, "timeout": "1s"}))
    try:  # in this process (an interpreter start per case costs the suite seconds)
        code = cli.run(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert "Traceback" not in err


def test_a_user_mistake_from_the_command_line_is_one_line(tmp_path) -> None:
    res = chunkmill("ingest", "nope/missing.csv", "--out", "o", cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.strip().splitlines() == [
        "chunkmill: error: nope/missing.csv: no such file or directory"] or (
        "nope/missing.csv: no such file" in res.stderr and "Traceback" not in res.stderr)


@pytest.mark.parametrize("verbose", [False, True])
def test_dask_and_tornado_errors_show_only_with_verbose(verbose) -> None:
    # distributed's own logging config gives tornado.application a level of its own; a Ctrl-C
    # racing distributed.sync once printed tornado's "Exception in callback" traceback there.
    code = f"""
import logging
from pipeline.cli import _configure_logging, build_parser
args = build_parser().parse_args(["ingest", "x.csv", "--out", "o"] + {["-v"] if verbose else []})
_configure_logging(args)
import distributed  # a run that starts a cluster imports it after the logging is set up
for name in ("tornado.application", "distributed.client", "distributed.worker", "bokeh"):
    logging.getLogger(name).error("noise from %s", name)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert ("noise from tornado.application" in res.stderr) is verbose, res.stderr
    assert ("noise from distributed.client" in res.stderr) is verbose, res.stderr


def test_version() -> None:
    from importlib.metadata import version

    res = chunkmill("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"chunkmill {version('chunkmill')}"


def test_failed_file_exits_nonzero_with_summary(tmp_path, shared_scheduler) -> None:
    (tmp_path / "good.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    res = chunkmill("ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--scheduler",
                    shared_scheduler)
    assert res.returncode == 1
    assert "FAILED" in res.stderr and "bad.csv.gz" in res.stderr
    assert "Traceback" not in res.stderr
    rows = duckdb.sql(f"select path, status from '{tmp_path}/o/_catalog/*.parquet' "
                      "order by path").fetchall()
    assert [r[1] for r in rows] == ["failed", "ok"]


def test_plan_is_a_dry_run(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("a,b\n" + "1,2\n" * 1000)
    (tmp_path / "in" / ".hidden.csv").write_text("a,b\n1,2\n")
    res = chunkmill("plan", str(tmp_path / "in"), "--chunk-size", "1KB", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    (f,) = plan["files"]
    assert f["format"] == "csv" and f["chunks"] == 4 and f["tables"] == ["in"]
    assert not (tmp_path / "out").exists()
    res = chunkmill("plan", str(tmp_path / "in"), "--chunk-size", "1KB")
    assert "1 file(s), 4.0 KB, 4 chunk(s)\n" in res.stdout
    assert "table in (1 file(s), 4.0 KB): a: int64, b: int64" in res.stdout
    assert "->" not in res.stdout  # no OUT was given


def test_plan_of_many_small_files_is_a_summary(tmp_path) -> None:
    """2,000 small files: totals per format and table, the tasks bundling makes of them,
    and 20 files by name; --json keeps every file."""
    src = tmp_path / "logs"
    src.mkdir()
    for i in range(2000):
        (src / f"f{i:04d}.csv").write_text(f"a,b\n{i},x\n")
    (src / "x.jsonl").write_text('{"a": 1, "b": "y"}\n')  # same columns: one table
    res = chunkmill("plan", str(src))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) < 30, res.stdout
    head = lines[0]
    assert head.startswith("Plan: 2001 file(s), ") and "2001 chunk(s) in " in head, head
    assert int(head.split(" in ")[1].split()[0]) < 20  # bundled into a few tasks
    assert "  format csv: 2000 file(s)" in res.stdout and "  format jsonl: 1 file(s)" in res.stdout
    assert "table logs (2001 file(s)" in res.stdout
    assert "  ... 1981 more file(s) (--json lists all)" in lines
    plan = json.loads(chunkmill("plan", str(src), "--json").stdout)
    assert len(plan["files"]) == 2001 and plan["chunks"] == 2001 and plan["tasks"] < 20


def test_output_lock_refuses_second_run(tmp_path) -> None:
    from pipeline.output.lock import OutputLock
    from pipeline.output.store import open_store

    (tmp_path / "a.csv").write_text("a\n1\n")
    with OutputLock(open_store(str(tmp_path / "o"))):
        res = chunkmill("ingest", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o"))
    assert res.returncode == 4 and "in use by another chunkmill run" in res.stderr


def test_status_and_report_commands(tmp_path, shared_scheduler) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    out = str(tmp_path / "o")
    chunkmill("ingest", str(tmp_path), "--out", out, "--scheduler", shared_scheduler)
    res = chunkmill("status", out)
    assert res.returncode == 1  # a file failed
    assert "1 done, 0 pending, 1 failed" in res.stdout
    info = json.loads(chunkmill("status", out, "--json").stdout)
    assert info["totals"] == {"done": 1, "failed": 1}
    res = chunkmill("report", out, "--html", str(tmp_path / "r.html"))
    assert "2 rows" in res.stdout and (tmp_path / "r.html").stat().st_size > 10_000
    res = chunkmill("status", str(tmp_path / "nothing-here"))
    assert res.returncode == 2 and "not a chunkmill output directory" in res.stderr


def test_status_imports_neither_dask_nor_pandas(tmp_path, shared_scheduler) -> None:
    """``chunkmill status`` only reads OUT: importing distributed (or dask, or pandas through
    pyarrow.dataset) would cost it seconds of start-up."""
    import pipeline

    (tmp_path / "a.csv").write_text("x\n1\n")
    out = str(tmp_path / "o")
    pipeline.ingest([str(tmp_path / "a.csv")], out=out, scheduler=shared_scheduler)
    code = ("import sys; from pipeline import cli; code = cli.run(['status', sys.argv[1]]); "
            "print([m for m in ('distributed', 'dask', 'pandas') if m in sys.modules]); "
            "sys.exit(code)")
    res = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "1 done, 0 pending, 0 failed" in res.stdout
    assert res.stdout.splitlines()[-1] == "[]"


def test_status_of_a_live_run_says_it_is_live(tmp_path) -> None:
    """``chunkmill status`` during a run: live (pid, host, start, progress), no advice to
    re-run; then the run finishes as if nobody had looked."""
    import os
    import signal
    import time

    from pipeline.report.status import status

    src, out = tmp_path / "big.csv", tmp_path / "o"
    src.write_text("id,event,note\n" + "".join(f'{i},{"abc"[i % 3]},"n {i}"\n'
                                                for i in range(60000)))
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ingest", str(src), "--out",
                            str(out), "--chunk-size", "32KiB", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        live = None
        while run.poll() is None and not (live and live["chunks_staged"]):
            if (out / "_chunkmill").exists():
                live = status(str(out))["live"]
            time.sleep(0.02)
        assert live and live["chunks_staged"], ("the run ended before status saw it",
                                                run.communicate())
        os.killpg(run.pid, signal.SIGSTOP)  # hold it still while we look
        try:
            res = chunkmill("status", str(out))
            info = json.loads(chunkmill("status", str(out), "--json").stdout)
            again = chunkmill("ingest", str(src), "--out", str(out), "--chunk-size", "32KiB")
        finally:
            os.killpg(run.pid, signal.SIGCONT)
        assert res.returncode == 1, res.stderr  # not finished yet
        assert f"is live: pid {run.pid} on " in res.stdout, res.stdout
        assert "chunk(s) staged" in res.stdout and "re-run" not in res.stdout, res.stdout
        lock = json.loads((out / "_chunkmill" / "lock.json").read_text())
        assert info["live"]["pid"] == run.pid and info["live"]["run_id"] == lock["run"]
        assert info["live"]["files_planned"] == 1 and info["live"]["chunks_staged"] >= 1
        assert again.returncode == 4 and f"pid {run.pid}" in again.stderr  # what status said
        assert run.wait(timeout=120) == 0, run.communicate()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    res = chunkmill("status", str(out))
    assert res.returncode == 0 and "is live" not in res.stdout and "finished" in res.stdout
    assert json.loads(chunkmill("status", str(out), "--json").stdout)["live"] is None
