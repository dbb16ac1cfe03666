"""Retries for transient I/O: exponential backoff with full jitter; data errors never retry."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import TransientError

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """I/O trouble that may pass (network, timeouts), not a property of the data."""
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | EOFError):
        return False
    if type(exc).__module__.startswith(("aiohttp", "botocore", "gcsfs", "adlfs")):
        return True
    # A plain OSError from a filesystem call; pyarrow's parse errors are ArrowInvalid instead.
    return type(exc) is OSError


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): uniform in [0, base * 2^attempt]."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def retrying(fn: Callable[[], T], retries: int, base: float = 0.5) -> T:
    """``fn()``, called again after transient failures, at most ``retries`` more times."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= retries or not is_transient(exc):
                raise
            time.sleep(backoff(attempt, base))
            attempt += 1
