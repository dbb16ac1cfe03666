"""chunkmill's settings inside Dask's configuration, and byte sizes as users write them.

The defaults ship in ``chunkmill.yaml`` next to this module and are merged into Dask's config on
first use (``dask.config.update_defaults``), so the usual Dask ways of overriding a setting apply:
a YAML file, ``DASK_CHUNKMILL__...`` environment variables, ``dask.config.set``. Values are
read when an options object is built, never at import time.

Importing Dask costs ~80 ms, an eighth of a small job's start-up, and a small job needs
nothing else from it. So while no source Dask reads could hold a setting (Dask not imported
yet, no ``DASK_*`` environment variable, no file in Dask's config directories), the shipped
values are the settings and Dask is not imported; any such source, and Dask's config decides.
"""

from __future__ import annotations

import contextlib
import functools
import os
import site
import sys
from collections.abc import Mapping
from typing import Any

from pipeline.errors import UsageError

_YAML = os.path.join(os.path.dirname(__file__), "chunkmill.yaml")

# dask.utils.byte_sizes, spelled out (tests/test_config.py holds parse_size equal to
# dask.utils.parse_bytes): "32MiB" in the shipped defaults is parsed by every run.
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50, "b": 1, "": 1}
_UNITS.update({k[0]: v for k, v in list(_UNITS.items()) if k and "i" not in k})
_UNITS.update({k[:-1]: v for k, v in list(_UNITS.items()) if k and "i" in k})


@functools.cache
def _shipped() -> dict[str, Any]:
    import yaml

    with open(_YAML) as f:  # libyaml's loader when PyYAML has it: 0.4 against 2.7 ms
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def dask_config():  # noqa: ANN201 - the dask.config module
    """dask.config with chunkmill.yaml merged in (merged defaults never override what the
    user set, whenever they set it)."""
    import dask.config

    dask.config.update_defaults(_shipped())
    return dask.config


def dask_settings_before_distributed(settings: dict[str, dict[str, Any]]) -> None:
    """Merge ``settings`` (``{"logging": {...}}``) into Dask's config before ``distributed``
    is first imported (it reads its loggers' levels from there then), without importing Dask
    now: a small job never imports either."""

    def merge() -> None:
        dask_config_ = dask_config()
        dask_config_.set({key: {**(dask_config_.get(key, default=None) or {}), **values}
                          for key, values in settings.items()})

    if "dask" in sys.modules:
        merge()
        return

    class BeforeDistributed:
        done = False

        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "distributed" and not self.done:
                self.done = True
                with contextlib.suppress(ValueError):  # another thread's lookup removed it
                    sys.meta_path.remove(self)
                merge()
            return None  # the usual finders find it

    sys.meta_path.insert(0, BeforeDistributed())


def dask_config_paths() -> list[str]:
    """Where Dask looks for YAML/JSON settings (``dask.config._get_paths``, same order)."""
    paths = [os.getenv("DASK_ROOT_CONFIG", "/etc/dask"),
             os.path.join(sys.prefix, "etc", "dask"),
             *[os.path.join(prefix, "etc", "dask") for prefix in site.PREFIXES],
             os.path.join(os.path.expanduser("~"), ".config", "dask")]
    if "DASK_CONFIG" in os.environ:
        paths.append(os.environ["DASK_CONFIG"])
    return list(reversed(list(dict.fromkeys(reversed(paths)))))


def _dask_may_hold_settings(env: Mapping[str, str] = os.environ) -> bool:
    """True unless no source Dask reads its config from could say anything."""
    if "dask" in sys.modules or any(name.startswith("DASK_") for name in env):
        return True
    for path in dask_config_paths():
        if os.path.isfile(path):
            return True
        try:
            names = os.listdir(path)
        except OSError:  # missing, or unreadable: Dask skips it too
            continue
        if any(os.path.splitext(n)[1].lower() in (".json", ".yaml", ".yml") for n in names):
            return True
    return False


def get(key: str) -> Any:
    """The current value of ``chunkmill.<key>`` (``ingest.chunk-size``, ``pressure.high``)."""
    shipped = _shipped()
    if not _dask_may_hold_settings():
        value: Any = shipped["chunkmill"]
        for part in key.split("."):
            value = value[part]
        return value
    try:
        return dask_config().get(f"chunkmill.{key}")
    except KeyError:  # merged inside a dask.config.set block, which took the key away on exit
        return dask_config().get(f"chunkmill.{key}", config=shipped)


def parse_size(value: str | int | float) -> int:
    """Bytes from ``64MB`` (10**6), ``64MiB`` (2**20), ``1.5G`` or a number: the grammar of
    ``dask.utils.parse_bytes``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        raise UsageError(f"not a size: {value!r} (try 64MB, 1GiB or a number of bytes)")
    text = value.replace(" ", "")
    if not any(c.isdigit() for c in text):
        text = f"1{text}"
    split = len(text)
    while split and text[split - 1].isalpha():
        split -= 1
    try:
        return int(float(text[:split]) * _UNITS[text[split:].lower()])
    except (ValueError, KeyError, OverflowError) as exc:
        raise UsageError(f"not a size: {value!r} (try 64MB, 1GiB or a number of bytes)") from exc


def parse_seconds(value: str | float | None) -> float:
    """Seconds from ``30``, ``30s``, ``2 minutes`` (``dask.utils.parse_timedelta``); 0 for
    none. Only a text value imports Dask."""
    if not value:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value) or 0.0)


def format_size(nbytes: float) -> str:
    """``33554432`` -> ``32.00 MiB``."""
    from dask.utils import format_bytes

    return format_bytes(int(nbytes))


__all__ = ["get", "parse_size", "parse_seconds", "format_size", "dask_config",
           "dask_config_paths", "dask_settings_before_distributed"]
