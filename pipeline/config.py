"""chunkmill's settings inside Dask's configuration, and byte sizes as users write them.

The defaults ship in ``chunkmill.yaml`` next to this module and are merged into Dask's config on
first use (``dask.config.update_defaults``), so the usual Dask ways of overriding a setting apply:
a YAML file, ``DASK_CHUNKMILL__...`` environment variables, ``dask.config.set``. Values are
read when an options object is built, never at import time.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pipeline.errors import UsageError

_YAML = os.path.join(os.path.dirname(__file__), "chunkmill.yaml")


@functools.cache
def _shipped() -> dict[str, Any]:
    """chunkmill.yaml, merged into Dask's config on first use: importing dask costs more than
    a whole ``chunkmill status``, which needs no setting. (Merged defaults never override what
    the user set, whenever they set it.)"""
    import dask.config
    import yaml

    with open(_YAML) as f:
        shipped = yaml.safe_load(f)
    dask.config.update_defaults(shipped)
    return shipped


def get(key: str) -> Any:
    """The current value of ``chunkmill.<key>`` (``ingest.chunk-size``, ``pressure.high``)."""
    import dask.config

    shipped = _shipped()
    try:
        return dask.config.get(f"chunkmill.{key}")
    except KeyError:  # merged inside a dask.config.set block, which took the key away on exit
        return dask.config.get(f"chunkmill.{key}", config=shipped)


def parse_size(value: str | int | float) -> int:
    """Bytes from ``64MB`` (10**6), ``64MiB`` (2**20), ``1.5G`` or a number."""
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(value))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"not a size: {value!r} (try 64MB, 1GiB or a number of bytes)") from exc


def format_size(nbytes: float) -> str:
    """``33554432`` -> ``32.00 MiB``."""
    from dask.utils import format_bytes

    return format_bytes(int(nbytes))


__all__ = ["get", "parse_size", "format_size"]
