"""chunkmill's settings inside Dask's configuration, and byte sizes as users write them.

The defaults ship in ``chunkmill.yaml`` next to this module and are merged into Dask's config on
import (``dask.config.update_defaults``), so the usual Dask ways of overriding a setting apply:
a YAML file, ``DASK_CHUNKMILL__...`` environment variables, ``dask.config.set``. Values are
read when an options object is built, never at import time.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml
from dask.utils import format_bytes, parse_bytes

from pipeline.errors import UsageError

_YAML = os.path.join(os.path.dirname(__file__), "chunkmill.yaml")

with open(_YAML) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))


def get(key: str) -> Any:
    """The current value of ``chunkmill.<key>`` (``ingest.chunk-size``, ``pressure.high``)."""
    return dask.config.get(f"chunkmill.{key}")


def parse_size(value: str | int | float) -> int:
    """Bytes from ``64MB`` (10**6), ``64MiB`` (2**20), ``1.5G`` or a number."""
    try:
        return int(parse_bytes(value))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"not a size: {value!r} (try 64MB, 1GiB or a number of bytes)") from exc


def format_size(nbytes: float) -> str:
    """``33554432`` -> ``32.00 MiB``."""
    return format_bytes(int(nbytes))


__all__ = ["get", "parse_size", "format_size"]
