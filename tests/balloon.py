"""A subprocess that holds real, touched memory: outside pressure for the pressure tests."""

from __future__ import annotations

import subprocess
import sys

BALLOON = r"""
import mmap, sys
n = int(sys.argv[1])
populate = getattr(mmap, "MAP_POPULATE", 0)
if populate:
    # Linux: the kernel faults every page of the private mapping in before mmap returns, so
    # the pages are really resident, in half the time of writing them one byte at a time.
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
else:
    # Multiplying a 1-byte bytearray writes every byte, so the pages are really resident
    # (bytearray(n) alone would be lazily-zeroed, untouched memory).
    buf = bytearray(b"\x01") * n
print("ready", flush=True)
sys.stdin.read()
"""


class Balloon:
    """A subprocess holding ``nbytes`` of touched memory until closed."""

    def __init__(self, nbytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BALLOON, str(nbytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"balloon failed to start: {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
