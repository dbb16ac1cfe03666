"""Options shared by the CLI and the Python API: one name per idea, the CLI flag's name."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: str | int | float) -> int:
    """Bytes from ``64MB``, ``64MiB``, ``1.5G``, ``4096`` (MB = 10**6, MiB = 2**20)."""
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE.match(value)
    if not m:
        raise UsageError(f"not a size: {value!r} (try 64MB, 1GiB or a number of bytes)")
    number, prefix, suffix = m.groups()
    base = 1024 if "i" in suffix.lower() else 1000
    return int(float(number) * base ** _POWERS[prefix.lower()])


DEFAULT_CHUNK_SIZE = 32 * 2**20
#: Partitioning splits each chunk's rows over one fragment per value, and every fragment pays
#: its own dictionaries, footer and files: twice the chunk halves that (2 GB CSV by 6 values:
#: 9.2 -> 8.6 s, at 505 instead of 374 MiB peak).
PARTITIONED_CHUNK_SIZE = 64 * 2**20

COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")
LAYOUTS = ("auto", "processes", "threads")


@dataclass
class IngestOptions:
    """Everything `pipeline.ingest` and ``chunkmill ingest`` accept (same names)."""

    out: str
    table: str | None = None
    partition_by: tuple[str, ...] = ()
    chunk_size: int | str | None = None
    """Default `DEFAULT_CHUNK_SIZE`, or `PARTITIONED_CHUNK_SIZE` with ``partition_by``."""
    small_file_size: int = 4 * 2**20
    """Files up to this size share tasks and fragments with others (0: never)."""
    compression: str = "zstd"
    format: str | None = None
    header: bool = True
    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    """Default: 1 per worker process; one per core for the threads layout."""
    layout: str = "auto"
    """Embedded cluster: "processes", "threads" (one worker in this process) or "auto"."""
    memory_limit: str | int | None = "auto"
    dashboard: bool = False
    max_record_bytes: int = 16 * 2**20
    window: int | None = None
    retries: int = 2
    chunk_timeout: float | None = None
    prune: bool = False
    force: bool = False
    progress: bool | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    input_roots: tuple[str, ...] = ()
    """Set by planning: the directories the inputs live in (readers refuse links leaving them)."""

    def __post_init__(self) -> None:
        if isinstance(self.partition_by, str):
            self.partition_by = tuple(c.strip() for c in self.partition_by.split(",") if c.strip())
        else:
            self.partition_by = tuple(self.partition_by or ())
        if self.chunk_size is None:
            self.chunk_size = PARTITIONED_CHUNK_SIZE if self.partition_by else DEFAULT_CHUNK_SIZE
        self.chunk_size = parse_size(self.chunk_size)
        self.max_record_bytes = parse_size(self.max_record_bytes)
        self.small_file_size = parse_size(self.small_file_size)
        if self.chunk_size < 1:
            raise UsageError("--chunk-size must be at least 1 byte")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}")
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise UsageError("--threads-per-worker must be at least 1")
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}")
        if not self.out:
            raise UsageError("--out is required")

    @classmethod
    def from_kwargs(cls, out: str, **kwargs: Any) -> IngestOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return cls(out=os.fspath(out), **kwargs)

    def reader_options(self) -> dict[str, Any]:
        """The subset readers see (plain values only: it travels to every task)."""
        return {"chunk_size": self.chunk_size, "header": self.header,
                "max_record_bytes": self.max_record_bytes, "input_roots": self.input_roots}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]
