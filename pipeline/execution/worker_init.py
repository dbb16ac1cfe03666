"""Preloaded into the embedded cluster's worker processes (``LocalCluster(preload=...)``)."""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT: a Ctrl-C on the terminal is the client's to handle (it stops the run and
    shuts the workers down); a worker acting on it would only die with a traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
