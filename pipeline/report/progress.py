"""Progress: files, chunks, bytes/s, ETA and memory pressure.

A status line on a terminal, a tqdm widget in Jupyter, nothing otherwise (cron, CI, pipes).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
        self.pressure = "NORMAL"
        self.started = time.monotonic()
        self.interval = interval
        self._last = 0.0

    def add_chunks(self, n: int) -> None:
        self.chunks += n

    def _widget(self, nbytes: int) -> None:
        self.bar.update(nbytes)
        self.bar.set_postfix_str(f"files {self.files_done}/{self.files} chunks "
                                 f"{self.chunks_done}/{self.chunks} memory {self.pressure}",
                                 refresh=False)

    def update(self, *, chunks: int = 0, nbytes: int = 0, files: int = 0,
               pressure: str | None = None) -> None:
        self.chunks_done += chunks
        self.bytes_done += nbytes
        self.files_done += files
        if pressure:
            self.pressure = pressure
        if self.bar is not None:
            self._widget(nbytes)
        self.draw()

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = self.bytes_done / elapsed
        left = max(0, self.total_bytes - self.bytes_done)
        eta = f"{left / rate:,.0f}s" if rate > 0 and left else "-"
        return (f"files {self.files_done}/{self.files} | chunks {self.chunks_done}/{self.chunks}"
                f" | {_mb(self.bytes_done)}/{_mb(self.total_bytes)} | {rate / 1e6:,.0f} MB/s"
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
