"""The one retry policy: transient I/O failures are tried again, data errors never are.

Exponential backoff with full jitter (tenacity's ``wait_random_exponential``: uniform in
[0, min(cap, base * 2**attempt)]), so many workers that lost the same network link do not
come back in lockstep. Used at discovery, header reads and chunk reads.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # imported at the first transient failure: most runs never have one
    from tenacity import Retrying

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """I/O trouble that may pass (network, timeouts), not a property of the data."""
    if getattr(exc, "transient", False) or isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | EOFError):
        return False
    if type(exc).__module__.startswith(("aiohttp", "botocore", "gcsfs", "adlfs")):
        return True
    # A plain OSError from a filesystem call; pyarrow's parse errors are ArrowInvalid instead.
    return type(exc) is OSError


def policy(retries: int, base: float = 0.5, cap: float = 30.0,
           before_retry: Callable[[], None] | None = None) -> Retrying:
    """Up to ``retries`` more attempts after transient failures; the last error is raised.

    ``before_retry`` runs before each new attempt (to drop what the failed one wrote).
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    return Retrying(retry=retry_if_exception(is_transient),
                    stop=stop_after_attempt(max(0, retries) + 1),
                    wait=wait_random_exponential(multiplier=base, max=cap),
                    before_sleep=(lambda _state: before_retry()) if before_retry else None,
                    reraise=True)


def retrying(fn: Callable[[], T], retries: int, base: float = 0.5,
             before_retry: Callable[[], None] | None = None) -> T:
    """``fn()``, called again after transient failures, at most ``retries`` more times
    (`policy`; ``before_retry`` runs before each new attempt)."""
    # The first attempt outside tenacity: its bookkeeping per call was a fifth of discovering
    # a small file, and importing it a tenth of a small job's start-up. After a transient
    # failure the rest run under the policy with the same waits (uniform up to base, then
    # 2 x base, ...: tenacity's doubling, one step on).
    try:
        return fn()
    except Exception as exc:
        if retries <= 0 or not is_transient(exc):
            raise
    if before_retry is not None:
        before_retry()
    time.sleep(random.uniform(0, base))
    return policy(retries - 1, 2 * base, before_retry=before_retry)(fn)


__all__ = ["is_transient", "policy", "retrying"]
