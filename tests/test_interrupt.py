"""Ctrl-C in a real terminal (a pseudo-terminal): the first stops the run in order and keeps
what is staged, the second quits at once; neither prints a traceback, and the re-run resumes.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import signal
import sys
import time
from pathlib import Path

import duckdb
import pytest

import pipeline

CHUNKS = re.compile(rb"chunks (\d+)/(\d+)")


def _csv(path: Path, mb: int) -> int:
    # One block of 20,000 random rows, written again and again under new ids: drawing the
    # random values of every one of the file's 2 million rows took most of this module's
    # set-up (the tests count rows; which values they hold does not matter to a Ctrl-C).
    rnd = random.Random(5)
    tails = [f',u{rnd.randint(0, 99)},{rnd.choice("abc")},{rnd.random():.5f},"n {i % 13}"\n'
             for i in range(20000)]
    rows = 0
    with open(path, "w") as f:
        f.write("id,user,event,value,note\n")
        while f.tell() < mb * 1_000_000:
            f.write("".join([f"{rows + i}{tail}" for i, tail in enumerate(tails)]))
            rows += len(tails)
    return rows


def _in_terminal(args: list[str], presses: int, after_chunks: int = 2,
                 timeout: float = 240) -> tuple[int, str]:
    """Run ``chunkmill args`` on a pty; press Ctrl-C ``presses`` times once ``after_chunks``
    chunks are done. Returns (exit code, everything printed)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-m", "pipeline.cli", *args])
    out, pressed, status = b"", None, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                pass
        done = [int(m.group(1)) for m in CHUNKS.finditer(out)]
        if pressed is None and done and max(done) >= after_chunks:
            for n in range(presses):
                os.write(fd, b"\x03")  # what the terminal sends for Ctrl-C
                if n + 1 < presses:
                    time.sleep(0.3)
            pressed = time.monotonic()
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"no exit within {timeout} s: {out[-2000:]!r}")
    try:
        while True:  # what is still buffered
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                break
            out += os.read(fd, 65536)
    except OSError:
        pass
    os.close(fd)
    assert pressed is not None, f"the run ended before Ctrl-C: {out[-2000:]!r}"
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("big") / "big.csv"
    return path, _csv(path, 60)


def _rows(out: Path) -> int:
    return duckdb.sql(f"select count(*) from '{out}/big/*.parquet'").fetchall()[0][0]


@pytest.mark.timeout(400)
# A small job (this 60 MB file) runs in this process; "0" puts it on the embedded Dask
# cluster, where a Ctrl-C once surfaced a traceback from inside distributed.
@pytest.mark.parametrize("small_job_size", ["256MiB", "0"])
def test_first_ctrl_c_stops_in_order_and_the_rerun_resumes(big, tmp_path,
                                                           small_job_size) -> None:
    path, rows = big
    out = tmp_path / "out"
    code, text = _in_terminal(
        ["ingest", str(path), "--out", str(out), "--chunk-size", "4MiB",
         "--small-job-size", small_job_size], presses=1)
    assert code == 130, text[-2000:]
    assert "stopping after the running chunks' current block" in text
    assert text.rstrip().endswith("run the same command again to resume"), text[-500:]
    assert "Traceback" not in text and "CancelledError" not in text
    # The message starts on a line of its own, not glued to the progress line.
    assert "\nchunkmill: interrupted" in text.replace("\r", "\n")
    report = pipeline.ingest([str(path)], out=str(out), chunk_size="4MiB")
    assert report.ok and report.chunks_reused >= 2
    assert _rows(out) == rows


@pytest.mark.timeout(400)
def test_second_ctrl_c_quits_at_once_without_a_traceback(big, tmp_path) -> None:
    path, rows = big
    out = tmp_path / "out"
    code, text = _in_terminal(
        ["ingest", str(path), "--out", str(out), "--chunk-size", "4MiB"], presses=2)
    assert code == 130, text[-2000:]
    assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]
    # The second press may land while the first stop is already printing its message: either
    # way the process ends with 130 and says how to resume.
    assert re.search(r"chunkmill: (stopped|interrupted); run the same command again to resume",
                     text), text[-500:]
    report = pipeline.ingest([str(path)], out=str(out), chunk_size="4MiB")  # OUT resumable
    assert report.ok
    assert _rows(out) == rows
