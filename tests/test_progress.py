"""The progress line: what it says, and that it stays quiet when nobody watches."""

from __future__ import annotations

import io

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
