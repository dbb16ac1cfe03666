"""Modules imported on first attribute access.

Format detection imports every reader class to ask its ``sniff``; without this, a client
ingesting CSV would import h5py, zarr and Pillow (a quarter of a second and 20 MiB) only to
learn that no file needs them. A plain proxy rather than ``importlib.util.LazyLoader``: the
latter's first access is not thread-safe before Python 3.12.3 (gh-114763), and workers run
several threads; ``import_module`` takes the import lock.
"""

from __future__ import annotations

import importlib
from typing import Any


class _Deferred:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


def deferred(name: str) -> Any:
    """A stand-in for ``import name`` that imports it when an attribute is first read."""
    return _Deferred(name)
