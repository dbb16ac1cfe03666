"""Switch Arrow's process-wide default memory pool, and put it back.

Used by :class:`~pipeline.pressure.plugin.PressurePlugin` on each worker and by the runner for
the client's run; see the plugin's ``arrow_pool`` parameter for why jemalloc is the default.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("chunkmill.pressure")

__all__ = ["ARROW_DECAY_MS", "default_pool_name", "restore_default_pool", "set_jemalloc_decay",
           "switch_default_pool"]

ARROW_DECAY_MS = 1000
"""How long Arrow's jemalloc keeps freed pages for reuse before returning them (its own
setting, ``je_arrow_malloc_conf`` in Arrow's ``memory_pool.cc``)."""


def switch_default_pool(backend: str | None) -> tuple[Any, Any] | None:
    """Make ``backend`` ("jemalloc", "mimalloc", "system") Arrow's default memory pool.

    Returns ``(replaced_pool, new_pool)`` for :func:`restore_default_pool`, or None when
    nothing was switched: no ``backend``, ``ARROW_DEFAULT_MEMORY_POOL`` set (the user
    chose), already the default, or not built into this pyarrow.
    """
    if not backend or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return None
    try:
        import pyarrow as pa

        current = pa.default_memory_pool()
        if current.backend_name == backend:
            return None
        pool = getattr(pa, f"{backend}_memory_pool")()
        # Buffers remember the pool they came from, so switching is safe with
        # live data: old buffers are still freed by the old pool.
        pa.set_memory_pool(pool)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        logger.info("Arrow memory pool %r not available: %s", backend, exc)
        return None
    return current, pool


def restore_default_pool(replaced: Any, ours: Any) -> None:
    """Undo :func:`switch_default_pool`: make ``replaced`` the default again."""
    import pyarrow as pa

    # The pool is process-wide: leave it alone if someone switched it since.
    if pa.default_memory_pool().backend_name == ours.backend_name:
        pa.set_memory_pool(replaced)


def default_pool_name() -> str | None:
    """Backend name of Arrow's current default memory pool; None without pyarrow."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    return pa.default_memory_pool().backend_name


def set_jemalloc_decay(ms: int) -> bool:
    """Have jemalloc return Arrow's freed pages after ``ms`` (Arrow's own: `ARROW_DECAY_MS`)
    in the arenas it creates from now on, which threads started later get. False when Arrow's
    default pool is not jemalloc: nothing was changed."""
    if default_pool_name() != "jemalloc":
        return False
    import pyarrow as pa

    try:
        pa.jemalloc_set_decay_ms(ms)
    except (NotImplementedError, pa.ArrowException) as exc:
        logger.info("jemalloc decay not set: %s", exc)
        return False
    return True
