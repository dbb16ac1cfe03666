"""Options of an ingest, one typed, frozen record per layer, with one source of defaults.

The CLI flags, the Python keyword arguments and these fields share their names
(``--chunk-size`` / ``chunk_size=``). Defaults that users tune come from Dask's configuration
(``chunkmill.ingest.*``, shipped in ``chunkmill.yaml``; see `pipeline.config`), read when an
options object is built. Each layer gets only its own record: planning a `PlanOptions`, the
cluster a `ClusterOptions`, the writers an `OutputOptions`; readers get their own typed
options built from `PlanOptions.reader_settings`. Nothing here is mutated after construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pipeline import config
from pipeline.errors import UsageError
from pipeline.output.layout import MAX_TABLE_BYTES, table_name
from readers.options import DialectOptions

if TYPE_CHECKING:  # pyarrow loads with the first option that needs it, not with the CLI
    import pyarrow as pa

    from pipeline.planning.derive import Derivation

COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")
TABLE_FORMATS = ("hive", "delta")
LAYOUTS = ("auto", "processes", "threads")


def _size(key: str) -> Any:
    return field(default_factory=lambda: config.parse_size(config.get(f"ingest.{key}")))


def _setting(key: str) -> Any:
    return field(default_factory=lambda: config.get(f"ingest.{key}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanOptions(DialectOptions):
    """What the inputs are and how they are split into chunks (planning); the CSV/TSV dialect
    fields come from `readers.options.DialectOptions`."""

    table: str | None = None
    """Table name for single-table inputs (default: the input's name)."""
    format: str | None = None
    """Force a reader instead of sniffing."""
    chunk_size: int = _size("chunk-size")
    small_file_size: int = _size("small-file-size")
    """Files up to this size share tasks and fragments with others (0: never)."""
    max_record_bytes: int = _size("max-record-bytes")
    retries: int = _setting("retries")
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    follow_symlinks: bool = False
    """Read files reached through symbolic links that lead outside the input roots."""

    # --- what the tables hold: declared types, derived columns, transform (planning/tables) --
    schema: Mapping[str, pa.DataType] = field(default_factory=dict)
    """Declared column types (``--schema COL=TYPE``): a mapping of names to type names or
    pyarrow types, a ``pyarrow.Schema``, or ``"COL=TYPE,..."`` text (see `planning.types`)."""
    allow_missing_columns: bool = False
    """A declared column missing from a file is NULL there (else a usage error)."""
    derive: tuple[Derivation, ...] = ()
    """Derived columns (``--derive NAME=FUNC(COL)``), computed in the worker per batch."""
    transform: Callable[[pa.Table], pa.Table] | None = None
    """A function applied in the worker to every parsed table (after derived columns)."""

    # --- how text is read ---------------------------------------------------------------------
    columns: tuple[str, ...] = ()
    """Keep only these columns of CSV/TSV/JSON-lines tables (``--columns a,b,c``; empty: all)."""
    encoding: str | None = None
    """Character encoding of CSV/TSV/JSON-lines inputs, transcoded to UTF-8 while reading
    (``--encoding latin-1``; None: UTF-8, and a file that is not UTF-8 fails)."""

    def __post_init__(self) -> None:
        if self.table is not None and table_name(self.table) != self.table:
            raise UsageError(
                f"--table {self.table!r}: not a table name (letters, digits, '-', '_' and "
                "'.', not starting with '_' or '.', at most "
                f"{MAX_TABLE_BYTES} bytes); e.g. --table {table_name(self.table)}")
        for name in ("chunk_size", "small_file_size", "max_record_bytes"):
            object.__setattr__(self, name, config.parse_size(getattr(self, name)))
        if self.chunk_size < 1:
            raise UsageError("--chunk-size must be at least 1 byte")
        self._check_dialect()
        if not (isinstance(self.schema, dict) and not self.schema):  # {} needs no pyarrow
            from pipeline.planning.types import parse_schema

            object.__setattr__(self, "schema", parse_schema(self.schema))
        if self.derive != ():
            from pipeline.planning.derive import parse_derive

            object.__setattr__(self, "derive", parse_derive(self.derive))
        object.__setattr__(self, "columns", _names(self.columns, "--columns"))
        if self.encoding is not None:
            object.__setattr__(self, "encoding", _encoding(self.encoding))
        missing = [c for c in self.schema if self.columns and c not in self.columns]
        if missing:
            raise UsageError(f"--schema {missing[0]}: not among --columns "
                             f"{','.join(self.columns)}")
        if self.transform is not None and not callable(self.transform):
            raise UsageError(f"transform= must be a function of a pyarrow.Table, not "
                             f"{type(self.transform).__name__}")

    def _check_dialect(self) -> None:
        try:
            normalised = self.checked_dialect()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    def output_token(self) -> list[Any]:
        """The settings above that change what is written (empty when none is given), so a
        file ingested under others is read again rather than taken as unchanged."""
        token: list[Any] = []
        dialect = self.dialect_settings()
        if dialect:
            token.append({k: list(v) if isinstance(v, tuple) else v
                          for k, v in dialect.items()})
        if self.schema:
            from pipeline.planning.types import type_name

            token.append({c: type_name(t) for c, t in self.schema.items()})
        if self.allow_missing_columns:
            token.append("allow-missing-columns")
        if self.derive:
            token.append([d.spec for d in self.derive])
        if self.transform is not None:
            token.append(transform_token(self.transform))
        if self.columns:
            token.append({"columns": list(self.columns)})
        if self.encoding:
            token.append({"encoding": self.encoding})
        return token

    def reader_settings(self, input_roots: Sequence[str]) -> dict[str, Any]:
        """The flat settings every reader picks its own options from (`Reader.configure`)."""
        return {"chunk_size": self.chunk_size, "max_record_bytes": self.max_record_bytes,
                "header": self.header, "input_roots": tuple(input_roots),
                "encoding": self.encoding,
                **self.dialect_settings()}


def _names(value: str | Sequence[str], flag: str) -> tuple[str, ...]:
    """Column names from ``"a,b"``, ``["a", "b"]`` or repeated ``["a,b", "c"]`` (deduplicated,
    in order)."""
    parts = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise UsageError(f"{flag}: column names are text, not {type(part).__name__}")
        names += [n.strip() for n in part.split(",") if n.strip()]
    if parts and not names:
        raise UsageError(f"{flag}: no column name given")
    return tuple(dict.fromkeys(names))


def _encoding(name: str) -> str | None:
    """The codec's canonical name ("utf-8" needs no transcoding; see `TextOptions.recoded`)."""
    import codecs

    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError):
        raise UsageError(f"--encoding {name!r}: not an encoding Python knows (e.g. latin-1, "
                         "cp1252, utf-16)") from None
    if info.name in ("utf-8", "utf-8-sig"):  # a UTF-8 BOM is skipped anyway
        return "utf-8"  # said explicitly: bad records are rejected, the head is not checked
    try:
        "a,\n".encode(info.name).decode(info.name)
    except (LookupError, UnicodeError, TypeError):
        raise UsageError(f"--encoding {name!r}: not a text encoding") from None
    return info.name


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterOptions:
    """Where chunk tasks run: an existing scheduler, or the embedded cluster's shape."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    """Default: 1 per worker process; one per core for the threads layout."""
    layout: str = _setting("layout")
    """Embedded cluster: "processes", "threads" (one worker in this process) or "auto"."""
    memory_limit: str | int | None = _setting("memory-limit")
    dashboard: bool = False
    dashboard_address: str | None = None
    """Where the dashboard listens (default 127.0.0.1:8787); giving it starts the dashboard."""
    small_job_size: int = _size("small-job-size")
    """A text job reading at most this many bytes runs in this process, with no Dask cluster
    (0: never; see `pipeline.execution.placement`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "small_job_size", config.parse_size(self.small_job_size))
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise UsageError("--threads-per-worker must be at least 1")
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputOptions:
    """Where and how rows are written."""

    out: str
    compression: str = _setting("compression")
    partition_by: tuple[str, ...] = ()
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    table_format: str = _setting("table-format")
    """"hive" (plain Parquet fragments kept by chunkmill's journal) or "delta" (Delta Lake
    tables: each file's commit is one Delta transaction)."""

    # --- partition guard --------------------------------------------------------------------
    max_partitions: int = _setting("max-partitions")
    """Most partitions ``--partition-by`` may create per table and run (0: no limit)."""

    def __post_init__(self) -> None:
        if not self.out:
            raise UsageError("--out is required")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}")
        if self.max_partitions < 0:
            raise UsageError("--max-partitions must be 0 (no limit) or more")
        if self.table_format not in TABLE_FORMATS:
            raise UsageError(f"--table-format must be one of {', '.join(TABLE_FORMATS)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestOptions:
    """Everything `pipeline.ingest` and ``chunkmill ingest`` accept, by layer.

    Build it with `from_kwargs` (the flat names of the CLI and the Python API).
    """

    plan: PlanOptions
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    output: OutputOptions
    retries: int = _setting("retries")
    """Retries of a chunk after a transient I/O error or a lost worker."""
    chunk_timeout: float | None = None
    window: int | None = None
    """Chunk tasks in flight (default: ``window-per-thread`` x worker threads)."""
    progress: bool | None = None
    """A progress line (None: only on a terminal, or a widget in Jupyter)."""
    force: bool = False
    prune: bool = False

    @classmethod
    def from_kwargs(cls, out: str | os.PathLike[str], **kwargs: Any) -> IngestOptions:
        """Options from the flat keyword names (``partition_by=``, ``workers=``, ...)."""
        layers = {"plan": PlanOptions, "cluster": ClusterOptions, "output": OutputOptions}
        own = {f.name for f in fields(cls)} - set(layers)
        known = own | {f.name for layer in layers.values() for f in fields(layer)}
        unknown = set(kwargs) - known
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        partition_by = kwargs.get("partition_by") or ()
        if isinstance(partition_by, str):
            partition_by = [c for c in partition_by.split(",")]
        kwargs["partition_by"] = tuple(c.strip() for c in partition_by if c.strip())
        if kwargs["partition_by"] and "chunk_size" not in kwargs:
            # Partitioning writes one fragment per value and chunk: bigger chunks, fewer files.
            kwargs["chunk_size"] = config.get("ingest.partitioned-chunk-size")
        kwargs["out"] = os.fspath(out)
        if "storage_options" in kwargs:
            kwargs["storage_options"] = dict(kwargs["storage_options"])
        built = {name: layer(**{f.name: kwargs[f.name] for f in fields(layer)
                                if f.name in kwargs})
                 for name, layer in layers.items()}
        return cls(**built, **{k: v for k, v in kwargs.items() if k in own})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def transform_token(fn: Callable[..., Any]) -> str:
    """Names a transform by its code: editing the function's body re-reads the files."""
    parts = [getattr(fn, "__module__", ""), getattr(fn, "__qualname__", type(fn).__qualname__)]
    code = getattr(fn, "__code__", None)
    if code is not None:
        parts.append(_code_text(code))
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).hexdigest()


def _code_text(code: Any) -> str:
    """Bytecode, constants and names; nested functions by their own code (no addresses)."""
    consts = [_code_text(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return f"{code.co_code.hex()}:{consts}:{code.co_names}"


def as_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``--storage-option key=value`` pairs as fsspec storage options.

    A value that reads as JSON (``true``, ``3``, ``{"region_name": "eu-west-1"}``) is taken as
    that value, anything else as text.
    """
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option {pair!r}: expected key=value")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


__all__ = ["IngestOptions", "PlanOptions", "ClusterOptions", "OutputOptions", "COMPRESSIONS",
           "LAYOUTS", "TABLE_FORMATS", "as_paths", "parse_storage_options"]
