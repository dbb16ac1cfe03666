"""Planning: discover inputs, describe every file, unify schemas per table, split into chunks.

Nothing here reads bulk data: readers look at headers and a bounded sample only, so planning a
500 GB input costs about as much as planning a 1 GB one.
"""

from __future__ import annotations

import html
import json
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from fsspec.core import url_to_fs

from pipeline.errors import UsageError
from pipeline.options import IngestOptions, PlanOptions, as_paths
from pipeline.planning.describe import PlannedFile, describe_all
from pipeline.planning.discover import Discovered, SkipCheck, discover, rediscover
from readers import get_reader
from readers.base import ChunkSpec
from readers.errors import one_line
from readers.options import ReaderOptions
from readers.widening import no_nulls, unify


@dataclass(slots=True)
class Plan:
    """What a run would do: files, formats, chunks, bytes and the unified table schemas."""

    files: list[PlannedFile]
    schemas: dict[str, pa.Schema]
    reader_options: dict[str, ReaderOptions] = field(default_factory=dict)
    """Each reader's options for this plan's files, by reader name."""

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
                 f"{_human(self.total_bytes)}"]
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


def build_plan(paths: Sequence[str], options: PlanOptions, *,
               partition_by: Sequence[str] = (),
               skip: SkipCheck | None = None,
               known: dict[str, pa.Schema] | None = None,
               unskip: Callable[[list[Discovered]], set[str]] | None = None,
               settle: Callable[[dict[str, pa.Schema]], dict[str, pa.Schema]] | None = None,
               ) -> Plan:
    """Discover, describe (in parallel threads), unify schemas, then plan every file's chunks.

    ``skip(file_id, fingerprint)`` lets a run pass over unchanged files before reading them;
    ``known`` holds the schemas the tables already have in OUT (unified first, so their
    column order and types win where the new data fits them); ``settle`` may then change the
    unified schemas (a Delta table keeps its column types) before chunks are planned.
    """
    paths = as_paths(paths)
    settings = options.reader_settings(tuple(input_root(p) for p in paths))
    found = discover(paths, table=options.table, fmt=options.format,
                     storage_options=dict(options.storage_options), skip=skip,
                     retries=options.retries)
    if unskip is not None:
        # Unchanged files that must be read all the same (they share a fragment with a
        # changed file): sniff them now.
        again = unskip(found)
        found = [rediscover(f, options.format, dict(options.storage_options))
                 if f.skipped and f.source.file_id in again else f for f in found]
    reader_options = {name: get_reader(name).configure(settings)
                      for name in {f.reader for f in found if f.reader}}
    files = describe_all(found, reader_options, options.retries)
    by_table: dict[str, list[pa.Schema]] = {}
    for f in files:
        if f.description:
            for table, schema in f.description.tables.items():
                by_table.setdefault(table, []).append(schema)
    known = known or {}
    # A column no file had a value for (header-only files) is text.
    schemas = {table: no_nulls(unify([known[table], *group] if table in known else group))
               for table, group in by_table.items()}
    if settle is not None:
        schemas = settle(schemas)
    _check_partitioning(schemas, tuple(partition_by))
    # One schema object per (table, columns): bundle tasks carry each member's description,
    # and pickle writes a shared object once.
    ordered: dict[tuple[str, tuple[str, ...]], pa.Schema] = {}

    def unified(table: str, own: pa.Schema) -> pa.Schema:
        key = (table, tuple(own.names))
        if key not in ordered:
            ordered[key] = _ordered(schemas[table], own)
        return ordered[key]

    for f in files:
        if f.description is None:
            continue
        # Every chunk parses straight into the table's unified types.
        f.description.tables = {t: unified(t, s) for t, s in f.description.tables.items()}
        try:
            f.chunks = get_reader(f.reader)().plan(f.source, f.description,
                                                   reader_options[f.reader])
        except Exception as exc:
            f.error = f"{f.source.path}: cannot plan chunks: {one_line(exc)}"
    return Plan(files, schemas, reader_options)


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
    opts = IngestOptions.from_kwargs(options.pop("out", "out"), **options)
    return build_plan(as_paths(paths), opts.plan, partition_by=opts.output.partition_by)
