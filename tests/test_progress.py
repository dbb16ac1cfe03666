"""The progress line: what it says, and that it stays quiet when nobody watches."""

from __future__ import annotations

import io
import re

import pytest

import pipeline
from pipeline.report.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_on_a_terminal() -> None:
    out = Tty()
    p = Progress(3, 10, 100_000_000, stream=out, interval=0)
    p.update(chunks=4, nbytes=40_000_000, files=1, pressure="HIGH")
    line = p.line()
    assert "files 1/3" in line and "chunks 4/10" in line and "memory HIGH" in line
    assert "MB/s" in line and "ETA" in line
    p.close()
    assert out.getvalue().endswith("\n") and "\r" in out.getvalue()


def test_quiet_when_not_a_tty() -> None:
    out = io.StringIO()
    p = Progress(1, 1, 10, stream=out)
    p.update(chunks=1, nbytes=10, files=1)
    p.close()
    assert out.getvalue() == ""


def test_progress_line_counts_running_chunks_and_shows_rows_rejected_elapsed() -> None:
    out = Tty()
    p = Progress(1, 3, 30_000_000, stream=out, interval=0)
    p.live("c0", 100.0, 4_000_000, 1000, 2)
    p.live("c1", 100.0, 2_000_000, 500, 0)
    line = p.line()
    assert "chunks 0/3" in line and "6 MB/30 MB" in line and "1,500 rows" in line
    assert "2 rejected" in line and "elapsed" in line and "ETA -" not in line
    p.chunk_done("c0", 100.0, nbytes=10_000_000, rows=2500, rejected=3)
    p.live("c0", 100.0, 4_000_000, 1000, 2)  # a report that arrives after the chunk ended
    line = p.line()
    assert "chunks 1/3" in line and "12 MB/30 MB" in line and "3,000 rows" in line
    assert "3 rejected" in line
    p.live("c0", 200.0, 1_000_000, 10, 0)  # the chunk runs again (a later attempt): it counts
    assert "13 MB/30 MB" in p.line()


def _slow(table):  # about 0.2 s per parse block: each chunk takes a while
    import time

    time.sleep(0.2)
    return table


def _big_csv(path, mb: int) -> int:
    pad = "x" * 180
    rows = 0
    with open(path, "w") as f:
        f.write("id,user,value,note\n")
        while f.tell() < mb * 1_000_000:
            f.write("".join(f"{rows + i},u{i % 97},{i},{pad}\n" for i in range(20_000)))
            rows += 20_000
        f.write("1,2,3,4,5,6\n")  # one rejected record, in the last chunk
    return rows


@pytest.mark.parametrize("where", ["threads", "scheduler", "small job"])
def test_progress_moves_before_the_first_chunk_ends(tmp_path, capsys, request, where) -> None:
    """Bytes and rows of running chunks show per parse block, on the in-process worker, on
    an external cluster's worker processes (reports travel as scheduler events) and in a
    small job without a cluster (reports go straight to the client's progress line)."""
    src = tmp_path / "big.csv"
    rows = _big_csv(src, 17)  # chunks of two parse blocks, and a small one
    extra = ({"scheduler": request.getfixturevalue("shared_scheduler")}
             if where == "scheduler" else {"layout": "threads"} if where == "threads" else {})
    report = pipeline.ingest(str(src), out=str(tmp_path / "out"), chunk_size="8MiB",
                             transform=_slow, progress=True, **extra)
    assert report.rows == rows and report.errors == 1 and report.chunks == 3
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").split("\n")
             if line.startswith("\x1b[Kfiles")]
    early = [line for line in lines if "chunks 0/3" in line and " 0 rows" not in line]
    assert early, lines  # rows and bytes moved while no chunk had finished
    # (bytes read "0 MB/20 MB"; the rate "0 MB/s" may well show on a first, small block)
    assert not any(re.search(r"\| 0 MB/[\d,.]+ [MG]B", line) for line in early)
    assert f"{rows:,} rows | 1 rejected" in lines[-1] and "elapsed" in lines[-1]
