"""Exactly-once: kill runs with SIGKILL anywhere, lose workers, re-run; retries and timeouts."""

from __future__ import annotations

import gzip
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import duckdb
import fsspec
import psutil
import pytest
from conftest import thorough
from fsspec.implementations.local import LocalFileSystem

import pipeline
from pipeline.output.lock import OutputLock
from pipeline.output.store import open_store

COLUMNS = "id BIGINT, user VARCHAR, event VARCHAR, value DOUBLE, note VARCHAR"
FRAGMENT = re.compile(r"^[0-9a-f]{16}-\d{6}\.parquet$")


def make_inputs(root, files: int = 4, rows: int = 30000, compress_last: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(7)
    for n in range(files):
        lines = ["id,user,event,value,note"]
        for i in range(rows):
            note = rnd.choice(["ok", "two\nlines", 'a "q"', ""])
            lines.append(f'{n * rows + i},u{rnd.randint(0, 99)},{rnd.choice("abc")},'
                         f'{rnd.random():.4f},"{note.replace(chr(34), chr(34) * 2)}"')
        data = ("\n".join(lines) + "\n").encode()
        if n == files - 1 and compress_last:
            (root / f"f{n}.csv.gz").write_bytes(gzip.compress(data))
        else:
            (root / f"f{n}.csv").write_bytes(data)


def source_hash(root) -> tuple:
    """Order-independent hash of every source row, computed by DuckDB from the inputs."""
    return duckdb.sql(
        f"select count(*), sum(hash(id, user, event, value, note)::hugeint) from read_csv("
        f"{sorted(str(p) for p in root.iterdir())}, header=true, allow_quoted_nulls=false, "
        f"columns={{"
        + ", ".join(f"'{c.split()[0]}': '{c.split()[1]}'" for c in COLUMNS.split(", "))
        + "})").fetchall()[0]


def output_hash(out, table: str) -> tuple:
    return duckdb.sql(
        f"select count(*), sum(hash(id, user, event, value, note)::hugeint) from read_parquet("
        f"'{out}/{table}/**/*.parquet', hive_partitioning=true)").fetchall()[0]


def visible_files(out, table: str) -> list[str]:
    return [f for _, _, files in os.walk(out / table) for f in files
            if not f.startswith(("_common_metadata", "._common_metadata.tmp-"))]


def run_cli(args: list[str], crash_at: str | None = None, kill_after: float | None = None
            ) -> int:
    env = dict(os.environ)
    if crash_at:
        env["CHUNKMILL_CRASH_AT"] = crash_at
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=300)
    _wait_group_gone(proc.pid)
    return proc.returncode


def _wait_group_gone(pgid: int) -> None:
    """Every process of the killed run (client, scheduler, nannies, workers) is gone."""
    deadline = time.time() + 20
    while time.time() < deadline:
        alive = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of the killed run survive: {alive}")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.timeout(600)
def test_sigkill_anywhere_then_resume_is_exactly_once(tmp_path) -> None:
    src = tmp_path / "in"
    make_inputs(src)
    expected = source_hash(src)
    args = ["ingest", str(src), "--out", str(tmp_path / "out"), "--table", "t",
            "--chunk-size", "256KB",
            "--workers", "2", "--partition-by", "event", "--no-progress"]
    kills = [("before_commit", None), ("mid_commit", None), ("catalog", None),
             ("before_rename", None), (None, 1.5), (None, 3.0)]
    if not thorough():
        kills = [("mid_commit", None), ("before_rename", None), (None, 1.5)]
    for crash_at, delay in kills:
        code = run_cli(args, crash_at=crash_at, kill_after=delay)
        # whatever a killed run left, readers never see a temp or staged file
        assert all(FRAGMENT.match(f) for f in visible_files(tmp_path / "out", "t")), crash_at
        if code == 0:
            continue  # the run finished before the kill landed
        assert code == -signal.SIGKILL, (crash_at, delay, code)
    assert run_cli(args) == 0
    assert output_hash(tmp_path / "out", "t") == expected
    # and a run after a clean one changes nothing
    assert run_cli(args) == 0
    assert output_hash(tmp_path / "out", "t") == expected


def test_worker_loss_mid_run_is_exactly_once(tmp_path) -> None:
    from distributed import Client, LocalCluster

    src = tmp_path / "in"
    make_inputs(src, files=3, rows=60000)
    expected = source_hash(src)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        result: dict = {}

        def ingest() -> None:
            result["report"] = pipeline.ingest([str(src)], out=str(tmp_path / "out"), table="t",
                                               chunk_size="128KB",
                                               scheduler=cluster.scheduler_address)

        worker = threading.Thread(target=ingest)
        worker.start()
        time.sleep(1.5)
        os.kill(pids[0], signal.SIGKILL)  # the nanny restarts it; its chunks run elsewhere
        worker.join(timeout=300)
    assert result["report"].ok
    assert output_hash(tmp_path / "out", "t") == expected


def _in_dask_task() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


class FlakyFileSystem(LocalFileSystem):
    """Local files whose first opens fail like a network hiccup (or hang, for timeouts)."""

    protocol = "flaky"
    failures: dict[str, int] = {}
    hang: float = 0.0
    """Seconds an open of ``hang.csv`` by a chunk task hangs. Only chunk reads (on a Dask
    worker) hang: discovery and describe opens have no timeout of their own, and hanging
    them only added ``hang`` seconds each to the test before any chunk ran."""

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001, ANN202
        path = self._strip_protocol(path)
        if self.hang and path.endswith("hang.csv") and _in_dask_task():
            time.sleep(self.hang)
        left = self.failures.get(path, 0)
        if left:
            self.failures[path] = left - 1
            raise OSError(f"flaky: connection reset reading {path}")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky():
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.failures = {}
    FlakyFileSystem.hang = 0.0
    yield FlakyFileSystem
    FlakyFileSystem.failures = {}


@pytest.fixture(scope="module")
def threads_cluster():
    from distributed import LocalCluster

    # one process: the test-registered filesystem is visible to the workers
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_transient_errors_are_retried_parse_errors_are_not(tmp_path, flaky,
                                                           threads_cluster) -> None:
    (tmp_path / "a.csv").write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(100)))
    path = str(tmp_path / "a.csv")
    # describe opens the file once; chunk reads are the next opens: fail two of them
    flaky.failures[path] = 0
    report = pipeline.ingest([f"flaky://{path}"], out=str(tmp_path / "o1"),
                             scheduler=threads_cluster, retries=3)
    assert report.rows == 100
    flaky.failures[path] = 2
    report = pipeline.ingest([f"flaky://{path}"], out=str(tmp_path / "o2"),
                             scheduler=threads_cluster, retries=3)
    assert report.ok and report.rows == 100 and report.errors == 0
    assert flaky.failures[path] == 0
    flaky.failures[path] = 5
    report = pipeline.ingest([f"flaky://{path}"], out=str(tmp_path / "o3"),
                             scheduler=threads_cluster, retries=1, force=True)
    assert report.errors == 1 and report.rows == 0 and report.files == {"failed": 1}
    assert flaky.failures[path] == 3  # one try plus exactly one retry
    (message,) = duckdb.sql(f"select message from '{tmp_path}/o3/_errors/*.parquet'").fetchall()
    assert "connection reset" in message[0] and "a.csv" in message[0]


def test_transient_classification() -> None:
    import pyarrow as pa

    from pipeline.retry import is_transient, retrying

    assert is_transient(OSError("reset")) and is_transient(TimeoutError())
    assert is_transient(ConnectionResetError("lost worker"))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(
        pa.ArrowInvalid("CSV parse error"))
    calls = []

    def parse_error() -> None:
        calls.append(1)
        raise pa.ArrowInvalid("deterministic")

    with pytest.raises(pa.ArrowInvalid):
        retrying(parse_error, retries=5, base=0.001)
    assert len(calls) == 1  # parse errors are never retried


def test_hung_chunk_times_out_and_the_run_goes_on(tmp_path, flaky, threads_cluster) -> None:
    (tmp_path / "hang.csv").write_text("x\n1\n")
    (tmp_path / "fine.csv").write_text("x\n2\n")
    started = time.monotonic()
    flaky.hang = 0.0
    plan_ok = pipeline.plan([f"flaky://{tmp_path}/"])
    assert len(plan_ok.files) == 2
    flaky.hang = 3.0
    report = pipeline.ingest([f"flaky://{tmp_path}/fine.csv", f"flaky://{tmp_path}/hang.csv"],
                             out=str(tmp_path / "o"), table="t", scheduler=threads_cluster,
                             chunk_timeout=1.0)
    assert report.rows == 1
    assert any("timed out" in m for (m,) in duckdb.sql(
        f"select message from '{tmp_path}/o/_errors/*.parquet'").fetchall())
    assert time.monotonic() - started < 60


def test_stale_lock_is_taken_over(tmp_path, shared_scheduler) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    lock = open_store(str(tmp_path / "o")).path("_chunkmill", "lock.json")
    os.makedirs(os.path.dirname(lock))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        f.write(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}", "started": 1}}')
    report = pipeline.ingest([str(tmp_path / "a.csv")], out=str(tmp_path / "o"),
                             scheduler=shared_scheduler)
    assert report.ok and not os.path.exists(lock)
    with OutputLock(open_store(str(tmp_path / "o"))), pytest.raises(pipeline.OutputLocked):
        pipeline.ingest([str(tmp_path / "a.csv")], out=str(tmp_path / "o"),
                        scheduler=shared_scheduler)


def test_many_unchanged_files_are_not_read_again(tmp_path, shared_scheduler) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:04d}.csv").write_text(f"id,v\n{i},{i * 2}\n")
    out = str(tmp_path / "o")
    first = pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler)
    assert first.files == {"ok": 300}
    # Same size and mtime, different bytes: a re-run that read the data would notice.
    target = src / "f0007.csv"
    stat = target.stat()
    target.write_text("id,v\n8,99\n")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    started = time.monotonic()
    again = pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler)
    elapsed = time.monotonic() - started
    assert again.files == {"unchanged": 300} and again.chunks == 0
    print(f"re-run over 300 unchanged files: {elapsed:.2f}s")
    forced = pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler, force=True)
    assert forced.files == {"ok": 300}


def test_prune_forgets_deleted_inputs(tmp_path, shared_scheduler) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text("x\n1\n")
    (src / "b.csv").write_text("x\n2\n")
    out = str(tmp_path / "o")
    pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler)
    (src / "b.csv").unlink()
    kept = pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler)
    assert kept.files == {"unchanged": 1}
    rows = duckdb.sql(f"select sum(x) from '{out}/src/*.parquet'").fetchall()[0][0]
    assert rows == 3  # without --prune, rows of deleted inputs stay
    pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler, prune=True)
    assert duckdb.sql(f"select sum(x) from '{out}/src/*.parquet'").fetchall()[0][0] == 1
    paths = duckdb.sql(f"select path from '{out}/_catalog/*.parquet'").fetchall()
    assert [os.path.basename(p) for (p,) in paths] == ["a.csv"]


def test_interrupted_file_resumes_at_its_missing_chunks(tmp_path) -> None:
    """Killed (SIGKILL) after 60 % of a file's chunks were staged: the re-run reads only the
    missing chunks, reuses the staged ones, and the output equals an uninterrupted run's."""
    src, out, whole = tmp_path / "in", tmp_path / "out", tmp_path / "whole"
    make_inputs(src, files=1, rows=40000, compress_last=False)  # ~1.5 MB, quoted newlines
    args = ["ingest", str(src / "f0.csv"), "--table", "t", "--chunk-size", "32KiB"]
    plan = pipeline.plan([str(src / "f0.csv")], chunk_size="32KiB")
    total = len(plan.chunks)
    assert total >= 20
    assert run_cli([*args, "--out", str(out)], crash_at=f"staged:{int(total * 0.6)}") != 0
    assert not visible_files(out, "t") if (out / "t").exists() else True  # nothing committed
    report = pipeline.ingest([str(src / "f0.csv")], out=str(out), table="t",
                             chunk_size="32KiB")
    assert report.ok and report.files == {"ok": 1}
    assert report.chunks_reused >= int(total * 0.6) - 2  # the last tick's may be lost
    assert len(report.chunk_records) <= total - report.chunks_reused + 2  # reruns of guesses
    pipeline.ingest([str(src / "f0.csv")], out=str(whole), table="t", chunk_size="32KiB")
    assert output_hash(out, "t") == output_hash(whole, "t") == source_hash(src)
    assert sorted(visible_files(out, "t")) == sorted(visible_files(whole, "t"))
    assert not list((out / "_chunkmill").glob("staging/**/*.parquet"))


def test_staged_chunks_of_a_changed_file_are_not_reused(tmp_path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src, files=1, rows=20000, compress_last=False)
    args = ["ingest", str(src / "f0.csv"), "--table", "t", "--chunk-size", "32KiB",
            "--out", str(out)]
    assert run_cli(args, crash_at="staged:5") != 0
    with open(src / "f0.csv", "a") as f:  # the file changed: its staged chunks are stale
        f.write("999999,u1,a,0.5,\"late\"\n")
    report = pipeline.ingest([str(src / "f0.csv")], out=str(out), table="t",
                             chunk_size="32KiB")
    assert report.ok and report.chunks_reused == 0
    assert output_hash(out, "t") == source_hash(src)


def test_a_chunk_read_is_retried_after_transient_failures_only(tmp_path) -> None:
    """`read_chunk` itself: an OSError restarts the chunk (dropping what it wrote) up to
    ``retries`` times, and the manifest and the rejection count the attempts."""
    import pyarrow as pa

    from pipeline.execution.task import read_chunk
    from readers.base import ChunkSpec, Description
    from readers.options import ReaderOptions
    from readers.testing import source_of

    (tmp_path / "a.csv").write_text("x\n1\n")
    source = source_of(str(tmp_path / "a.csv"))

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures = failures

        def read(self, source, chunk, description, options, ctx):
            yield "a", pa.table({"x": [1]})
            if self.failures:
                self.failures -= 1
                raise OSError("connection reset")

    def attempt(failures: int, retries: int):
        written, resets = [], []
        manifest, ctx = read_chunk(Flaky(failures), source, ChunkSpec(source.file_id, 0, 0, 4),
                                   Description({}, {}), ReaderOptions(), retries,
                                   lambda table, rows: written.append(rows.num_rows),
                                   lambda: (resets.append(1), written.clear()))
        return manifest, ctx, written, resets

    manifest, ctx, written, resets = attempt(failures=1, retries=1)
    assert manifest.attempts == 2 and not ctx.rejected and written == [1] and resets == [1]
    manifest, ctx, written, resets = attempt(failures=2, retries=1)
    assert manifest.attempts == 2 and len(resets) == 1
    (rejected,) = ctx.rejected
    assert rejected.kind == "chunk" and "connection reset (after 1 retries)" in rejected.message
    manifest, ctx, _, resets = attempt(failures=0, retries=3)
    assert manifest.attempts == 1 and not resets and not ctx.rejected
