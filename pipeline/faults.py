"""Crash points for the resume tests: ``CHUNKMILL_CRASH_AT=<name>`` SIGKILLs the whole run.

Production runs never set the variable; the kill tests use it to stop a run at the moments
that matter most (half-way through a commit, during the catalog write) instead of hoping a
random delay lands there.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """Kill this process group with SIGKILL if the test asked for a crash here."""
    if os.environ.get("CHUNKMILL_CRASH_AT") == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)
