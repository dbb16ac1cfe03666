"""Crash points for the resume tests: ``CHUNKMILL_CRASH_AT=<name>`` SIGKILLs the whole run.

Production runs never set the variable; the kill tests use it to stop a run at the moments
that matter most (half-way through a commit, during the catalog write) instead of hoping a
random delay lands there.
"""

from __future__ import annotations

import os
import signal

_PASSED: dict[str, int] = {}
_WANTED = os.environ.get("CHUNKMILL_CRASH_AT")
"""Read once: the tests set it in the environment of the processes they start, and a run
passes some crash points once per chunk."""


def crash_point(name: str) -> None:
    """Kill this process group with SIGKILL if the test asked for a crash here.

    ``CHUNKMILL_CRASH_AT=name`` kills the first time the run passes ``name``;
    ``CHUNKMILL_CRASH_AT=name:N`` the N-th time.
    """
    wanted = _WANTED
    if not wanted or wanted.split(":")[0] != name:
        return
    _PASSED[name] = _PASSED.get(name, 0) + 1
    if ":" not in wanted or _PASSED[name] >= int(wanted.split(":")[1]):
        os.killpg(os.getpgrp(), signal.SIGKILL)
