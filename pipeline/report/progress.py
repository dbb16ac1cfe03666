"""Progress: files, chunks, bytes, rows, rejected records, elapsed time, ETA, memory pressure.

A status line on a terminal, a tqdm widget in Jupyter, nothing otherwise (cron, CI, pipes).
Running chunks count as far as they got (`live`, fed by the tasks' per-block reports, see
`pipeline.execution.live`), so the line moves before the first chunk finishes.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from typing import TextIO

ENDED_KEPT = 20_000
"""Finished chunks whose late per-block reports are still recognised as stale: far more than
run at once on any cluster (a report trails its chunk's end by moments, not by thousands of
chunks), and a run of a million chunks keeps no entry per chunk."""


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is not a TTY but a widget can show)."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        return type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:
        return False


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e10 else f"{n / 1e9:,.1f} GB"


def _clock(seconds: float) -> str:
    """``42s``, ``3:07``, ``1:02:09``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Progress:
    """Redraws one status line at most every ``interval`` seconds."""

    def __init__(self, files: int, chunks: int, total_bytes: int, *, enabled: bool | None = None,
                 stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.bar = None
        if enabled is None and not self.enabled and in_notebook():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="chunkmill")
        self.files, self.chunks, self.total_bytes = files, chunks, total_bytes
        self.files_done = self.chunks_done = self.bytes_done = 0
        self.rows_done = self.rejected_done = 0
        self.pressure = "NORMAL"
        self.started = time.monotonic()
        self.interval = interval
        self._last = 0.0
        self._lock = threading.Lock()  # live reports arrive on the Dask client's thread
        self._live: dict[str, tuple[float, int, int, int]] = {}
        """Running chunk id -> (attempt start, bytes, rows, rejected) so far."""
        self._ended: dict[str, float] = {}
        """Finished chunk id -> start of its last attempt: later reports of it are stale."""
        self._shown = 0

    def add_chunks(self, n: int) -> None:
        self.chunks += n

    def _widget(self) -> None:
        nbytes, rows, rejected = self.totals()
        self.bar.update(max(0, nbytes - self._shown))
        self._shown = max(self._shown, nbytes)
        self.bar.set_postfix_str(f"files {self.files_done}/{self.files} chunks "
                                 f"{self.chunks_done}/{self.chunks} rows {rows:,} rejected "
                                 f"{rejected:,} memory {self.pressure}", refresh=False)

    def update(self, *, chunks: int = 0, nbytes: int = 0, files: int = 0, rows: int = 0,
               rejected: int = 0, pressure: str | None = None) -> None:
        with self._lock:
            self._count(chunks, nbytes, files, rows, rejected)
        if pressure:
            self.pressure = pressure
        self._changed()

    def _count(self, chunks: int, nbytes: int, files: int, rows: int, rejected: int) -> None:
        """Add to the finished counts (the caller holds the lock)."""
        self.chunks_done += chunks
        self.bytes_done += nbytes
        self.files_done += files
        self.rows_done += rows
        self.rejected_done += rejected

    def _changed(self) -> None:
        if self.bar is not None:
            self._widget()
        self.draw()

    def live(self, chunk: str, started: float, nbytes: int, rows: int, rejected: int) -> None:
        """A running chunk's counts so far (the latest report of each chunk counts)."""
        with self._lock:
            if self._ended.get(chunk, float("-inf")) >= started:
                return  # arrived after the chunk (this attempt of it) was counted as done
            self._live[chunk] = (started, nbytes, rows, rejected)

    def chunk_done(self, chunk: str, started: float, *, nbytes: int, rows: int,
                   rejected: int) -> None:
        """A chunk finished: its live counts give way to its final ones."""
        with self._lock:
            self._live.pop(chunk, None)
            self._ended[chunk] = started
            if len(self._ended) > ENDED_KEPT:  # the oldest half: their reports came long ago
                for old in list(itertools.islice(self._ended, ENDED_KEPT // 2)):
                    del self._ended[old]
            self._count(1, nbytes, 0, rows, rejected)
        self._changed()

    def totals(self) -> tuple[int, int, int]:
        """(bytes, rows, rejected) of finished chunks and of running ones so far."""
        with self._lock:
            live = list(self._live.values())
            nbytes = self.bytes_done + sum(b for _, b, _, _ in live)
            rows = self.rows_done + sum(r for _, _, r, _ in live)
            rejected = self.rejected_done + sum(e for _, _, _, e in live)
        return min(nbytes, max(self.total_bytes, self.bytes_done)), rows, rejected

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        nbytes, rows, rejected = self.totals()
        rate = nbytes / elapsed
        left = max(0, self.total_bytes - nbytes)
        eta = _clock(left / rate) if rate > 0 and left else "-"
        return (f"files {self.files_done}/{self.files} | chunks {self.chunks_done}/{self.chunks}"
                f" | {_mb(nbytes)}/{_mb(self.total_bytes)} | {rate / 1e6:,.0f} MB/s"
                f" | {rows:,} rows | {rejected:,} rejected | {_clock(elapsed)} elapsed"
                f" | ETA {eta} | memory {self.pressure}")

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
