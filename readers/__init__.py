"""Reader registry: built-in readers and third-party plugins in one lazily loaded table.

Plugins register a `readers.base.Reader` subclass under the entry-point group
``chunkmill.readers``::

    [project.entry-points."chunkmill.readers"]
    myformat = "my_package.reader:MyReader"

Built-ins are listed here too, so a source checkout works without installed metadata. A plugin
that fails to import is skipped with a warning; the other readers still load.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from readers.base import Reader

__all__ = [
    "ChunkContext", "ChunkSpec", "Description", "Reader", "Rejected", "Source",
    "registry", "get_reader", "clear_cache", "detect", "detect_directory", "detect_compression",
    "COMPRESSION_SUFFIXES",
]

log = logging.getLogger("chunkmill.readers")

#: Re-exported from `readers.base` on first use: importing a light module of the package
#: (`readers.options`, which the CLI's options need) must not load pyarrow and fsspec.
_FROM_BASE = {"ChunkContext", "ChunkSpec", "Description", "Reader", "Rejected", "Source"}


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from readers import base

        return getattr(base, name)
    raise AttributeError(f"module 'readers' has no attribute {name!r}")

ENTRY_POINT_GROUP = "chunkmill.readers"

#: Built-in readers: name -> "module:Class" (imported only when first needed).
BUILTIN: dict[str, str] = {
    "csv": "readers.csv:CSVReader",
    "tsv": "readers.tsv:TSVReader",
    "jsonl": "readers.jsonl:JSONLReader",
    "hdf5": "readers.hdf5:HDF5Reader",
    "zarr": "readers.zarr:ZarrReader",
    "fits": "readers.fits:FITSReader",
    "mp4": "readers.mp4:MP4Reader",
    "image": "readers.image:ImageReader",
    "parquet": "readers.parquet:ParquetReader",
    "arrow": "readers.arrow_ipc:ArrowIPCReader",
    "orc": "readers.orc:ORCReader",
    "binary": "readers.binary:BinaryReader",
}

#: Whole-file compressions chunkmill can stream: (magic bytes, name, suffix).
_COMPRESSION_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
COMPRESSION_SUFFIXES: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


def _load(name: str, target: str) -> type[Reader] | None:
    from readers.base import Reader

    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # a broken plugin must not take the other readers down
        warnings.warn(f"chunkmill reader {name!r} ({target}) could not be loaded: {exc}",
                      RuntimeWarning, stacklevel=3)
        return None
    if not (isinstance(cls, type) and issubclass(cls, Reader)):
        warnings.warn(f"chunkmill reader {name!r} ({target}) is not a readers.base.Reader",
                      RuntimeWarning, stacklevel=3)
        return None
    return cls


@cache
def _targets() -> dict[str, str]:
    """name -> "module:Class": built-ins first, then entry points (a plugin may override)."""
    targets = dict(BUILTIN)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets[ep.name] = ep.value
    return targets


@cache
def registry() -> dict[str, type[Reader]]:
    """All readers by name, imported (format detection needs every reader's ``sniff``)."""
    loaded = {name: _load(name, target) for name, target in _targets().items()}
    return {name: cls for name, cls in loaded.items() if cls is not None}


@cache
def get_reader(name: str) -> type[Reader]:
    """The reader class registered under ``name``; KeyError lists the known names.

    Imports that reader's module only: a worker reading CSV chunks never pays for importing
    h5py, zarr and Pillow (half a second per process).
    """
    target = _targets().get(name)
    cls = _load(name, target) if target is not None else None
    if cls is None:
        raise KeyError(f"no reader named {name!r}; known: {', '.join(sorted(registry()))}")
    return cls


def clear_cache() -> None:
    """Forget loaded readers and entry points (after installing or removing a plugin)."""
    for cached in (_targets, registry, get_reader):
        cached.cache_clear()


def detect_compression(head: bytes, path: str) -> str | None:
    """Whole-file compression from magic bytes (suffix as a fallback for empty files)."""
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    if not head:
        for suffix, name in COMPRESSION_SUFFIXES.items():
            if path.endswith(suffix):
                return name
    return None


def strip_compression_suffix(path: str) -> str:
    for suffix in COMPRESSION_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def detect_directory(names: set[str]) -> type[Reader] | None:
    """The reader whose directory markers appear among ``names`` (a directory's entries)."""
    for cls in registry().values():
        if names.intersection(cls.directory_markers):
            return cls
    return None


def detect(head: bytes, path: str) -> type[Reader] | None:
    """The reader most confident about ``head`` (magic bytes beat suffixes); None if nobody."""
    best: tuple[int, str] | None = None
    for name, cls in registry().items():
        score = cls.sniff(head, path)
        if score > 0 and (best is None or score > best[0]):
            best = (score, name)
    return registry()[best[1]] if best else None
