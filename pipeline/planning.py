"""Planning: discover inputs, describe every file, unify schemas per table, split into chunks.

Nothing here reads bulk data: readers look at headers and a bounded sample only, so planning a
500 GB input costs about as much as planning a 1 GB one.
"""

from __future__ import annotations

import html
import json
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from fsspec.core import url_to_fs

from pipeline.discover import Discovered, SkipCheck, discover
from pipeline.errors import UsageError
from pipeline.options import IngestOptions, as_paths
from pipeline.retry import retrying
from pipeline.schema import unify
from readers import get_reader
from readers.base import ChunkSpec, Description, Source


@dataclass(slots=True)
class PlannedFile:
    """One input file: its reader, what it holds, and its chunks (or why it cannot be read)."""

    source: Source
    reader: str | None
    description: Description | None = None
    chunks: list[ChunkSpec] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    """Unchanged since the last run into the same OUT: nothing of it is read."""

    @property
    def tables(self) -> list[str]:
        return sorted(self.description.tables) if self.description else []


@dataclass(slots=True)
class Plan:
    """What a run would do: files, formats, chunks, bytes and the unified table schemas."""

    files: list[PlannedFile]
    schemas: dict[str, pa.Schema]
    options: IngestOptions

    @property
    def chunks(self) -> list[ChunkSpec]:
        return [c for f in self.files for c in f.chunks]

    @property
    def total_bytes(self) -> int:
        return sum(f.source.size for f in self.files)

    def summary(self) -> list[dict[str, Any]]:
        """One plain dict per file (for tables, JSON and notebooks)."""
        return [{"path": f.source.path, "format": f.reader, "size_bytes": f.source.size,
                 "compression": f.source.compression, "tables": f.tables,
                 "chunks": len(f.chunks), "error": f.error, "skipped": f.skipped}
                for f in self.files]

    def to_json(self) -> str:
        return json.dumps({"files": self.summary(),
                           "tables": {t: str(s) for t, s in self.schemas.items()},
                           "chunks": len(self.chunks), "bytes": self.total_bytes}, indent=2)

    def __repr__(self) -> str:
        lines = [f"Plan: {len(self.files)} file(s), {len(self.chunks)} chunk(s), "
                 f"{_human(self.total_bytes)} -> {self.options.out}"]
        for row in self.summary():
            if row["skipped"]:
                status = "unchanged since the last run"
            elif row["error"]:
                status = f"ERROR {row['error']}"
            else:
                status = f"{row['chunks']} chunk(s) -> {', '.join(row['tables'])}"
            comp = f" [{row['compression']}]" if row["compression"] else ""
            lines.append(f"  {row['path']}  {row['format'] or '?'}{comp}  "
                         f"{_human(row['size_bytes'])}  {status}")
        for table, schema in self.schemas.items():
            cols = ", ".join(f"{f.name}: {f.type}" for f in schema)
            lines.append(f"  table {table}: {cols}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r["path"], r["format"], _human(r["size_bytes"]), r["chunks"],
                ", ".join(r["tables"]), r["error"] or "")) + "</tr>" for r in self.summary())
        head = "".join(f"<th>{h}</th>" for h in
                       ("path", "format", "size", "chunks", "tables", "error"))
        return (f"<p><b>chunkmill plan</b>: {len(self.files)} files, {len(self.chunks)} chunks, "
                f"{_human(self.total_bytes)}</p><table><tr>{head}</tr>{rows}</table>")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _describe(found: Discovered, options: IngestOptions) -> PlannedFile:
    planned = PlannedFile(found.source, found.reader, error=found.error, skipped=found.skipped)
    if found.error or found.reader is None:
        return planned
    reader = get_reader(found.reader)()
    opts = options.reader_options()
    try:
        planned.description = retrying(lambda: reader.describe(found.source, opts),
                                       options.retries)
    except Exception as exc:  # a bad file fails alone; the run goes on
        planned.error = f"{found.source.path}: cannot read its header: {_one_line(exc)}"
    return planned


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def build_plan(paths: Sequence[str], options: IngestOptions,
               skip: SkipCheck | None = None,
               known: dict[str, pa.Schema] | None = None) -> Plan:
    """Discover, describe (in parallel threads), unify schemas, then plan every file's chunks.

    ``skip(file_id, fingerprint)`` lets a run pass over unchanged files before reading them;
    ``known`` holds the schemas the tables already have in OUT (unified first, so their
    column order and types win where the new data fits them).
    """
    paths = as_paths(paths)
    options.input_roots = tuple(input_root(p) for p in paths)
    found = discover(paths, table=options.table, fmt=options.format,
                     storage_options=options.storage_options, skip=skip,
                     retries=options.retries)
    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(pool.map(lambda f: _describe(f, options), found))
    by_table: dict[str, list[pa.Schema]] = {}
    for f in files:
        if f.description:
            for table, schema in f.description.tables.items():
                by_table.setdefault(table, []).append(schema)
    known = known or {}
    schemas = {table: unify([known[table], *group] if table in known else group)
               for table, group in by_table.items()}
    _check_partitioning(schemas, options.partition_by)
    opts = options.reader_options()
    for f in files:
        if f.description is None:
            continue
        # Every chunk parses straight into the table's unified types.
        f.description.tables = {t: _ordered(schemas[t], s) for t, s in
                                f.description.tables.items()}
        try:
            f.chunks = get_reader(f.reader)().plan(f.source, f.description, opts)
        except Exception as exc:
            f.error = f"{f.source.path}: cannot plan chunks: {_one_line(exc)}"
    return Plan(files, schemas, options)


def input_root(arg: str) -> str:
    """The directory an input argument lives in: itself for a directory, else its parent."""
    fs, path = url_to_fs(arg)
    while any(c in path for c in "*?["):
        path = posixpath.dirname(path)
    if not fs.isdir(path):
        path = posixpath.dirname(path)
    local = fs.protocol in ("file", "local") or "file" in fs.protocol
    return os.path.abspath(path) if local else fs.unstrip_protocol(path)


def _ordered(unified: pa.Schema, own: pa.Schema) -> pa.Schema:
    """The unified types for the file's own columns (other columns are filled in as nulls)."""
    return pa.schema([unified.field(name) for name in own.names])


def _check_partitioning(schemas: dict[str, pa.Schema], partition_by: tuple[str, ...]) -> None:
    if not partition_by or not schemas:
        return
    if not any(all(c in s.names for c in partition_by) for s in schemas.values()):
        tables = "; ".join(f"{t}: {', '.join(s.names)}" for t, s in schemas.items())
        raise UsageError(f"--partition-by {','.join(partition_by)}: no table has "
                         f"{'this column' if len(partition_by) == 1 else 'these columns'} "
                         f"(columns are {tables})")


def plan(paths: str | Sequence[str], **options: Any) -> Plan:
    """What ``ingest`` would do, without writing anything: files, formats, chunks, schemas."""
    return build_plan(as_paths(paths), IngestOptions.from_kwargs(options.pop("out", "out"),
                                                                 **options))
