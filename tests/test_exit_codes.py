"""Exit codes for what goes wrong around a run: a full disk, a read-only OUT, a file that
vanishes mid-run, a reader of the output that goes away."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.cli import run
from readers.csv import CSVReader


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space "
                                "left on device")


def test_disk_full_while_writing_rows_is_an_environment_error(tmp_path, monkeypatch,
                                                              capsys) -> None:
    (tmp_path / "a.csv").write_text("a,b\n" + "1,2\n" * 1000)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", _enospc)
    code = run(["ingest", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o"),
                "--no-progress", "--small-file-size", "0"])
    err = capsys.readouterr().err
    assert code == 74, err
    assert f"cannot write the output {tmp_path / 'o'}: No space left on device" in err
    assert "Traceback" not in err and "internal error" not in err
    assert "Compute Failed" not in err  # the task returned the error: no Dask retries, no noise
    # Bundled small files stop the same way.
    code = run(["ingest", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o2"),
                "--no-progress"])
    assert code == 74
    # Space again: the same command finishes the job.
    monkeypatch.undo()
    code = run(["ingest", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o"),
                "--no-progress", "--small-file-size", "0", "-q"])
    assert code == 0


@contextlib.contextmanager
def _tmpfs(path, options: str):
    os.makedirs(path, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                         capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(180)
def test_real_full_and_read_only_outputs(tmp_path) -> None:
    src = tmp_path / "big.csv"
    src.write_text("a,b\n" + "".join(f"{i},{os.urandom(12).hex()}\n" for i in range(60_000)))
    with _tmpfs(tmp_path / "full", "size=512k") as full:
        res = _cli("ingest", str(src), "--out", str(full / "o"))
    assert res.returncode == 74, res.stderr
    assert "No space left on device" in res.stderr and "Traceback" not in res.stderr
    assert "arrow" not in res.stderr.lower()
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        res = _cli("ingest", str(src), "--out", str(ro / "o"))
    assert res.returncode == 74, res.stderr
    assert f"cannot write the output {ro / 'o'}" in res.stderr
    assert "Read-only file system" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("small_file_size", [0, 4 << 20])
def test_a_file_deleted_after_planning_is_failed(tmp_path, monkeypatch, small_file_size) -> None:
    real = CSVReader.plan

    def plan(self, source, description, options):  # noqa: ANN001, ANN202
        chunks = real(self, source, description, options)
        if source.path.endswith("gone.csv"):
            os.remove(source.path)
        return chunks

    monkeypatch.setattr(CSVReader, "plan", plan)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "gone.csv").write_text("a,b\n" + "1,2\n" * 500)
    (tmp_path / "in" / "kept.csv").write_text("a,b\n3,4\n")
    report = pipeline.ingest([str(tmp_path / "in")], out=str(tmp_path / "o"), progress=False,
                             chunk_size=1000, small_file_size=small_file_size)
    assert report.exit_code == 1 and report.files == {"ok": 1, "failed": 1}
    assert "gone.csv" in report.failures[0]


def test_a_closed_pipe_is_not_an_error(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("a\n1\n")
    out = str(tmp_path / "o")
    assert _cli("ingest", str(tmp_path / "a.csv"), "--out", out).returncode == 0
    for args in (["status", out], ["status", out, "--json"], ["plan", str(tmp_path / "a.csv")]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line (`| head` finished)
        with os.fdopen(write, "wb") as stdout:
            res = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], stdout=stdout,
                                 stderr=subprocess.PIPE, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "BrokenPipe" not in res.stderr and "internal error" not in res.stderr
        assert "Exception ignored" not in res.stderr
