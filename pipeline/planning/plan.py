"""Planning: discover inputs, describe every file, unify schemas per table, split into chunks.

Nothing here reads bulk data: readers look at headers and a bounded sample only, so planning a
500 GB input costs about as much as planning a 1 GB one.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.execution.hook import TableHook
from pipeline.options import IngestOptions, PlanOptions, as_paths
from pipeline.output.layout import table_name
from pipeline.planning.describe import PlannedFile, describe_all
from pipeline.planning.discover import (
    Discovered,
    SkipCheck,
    discover,
    input_root,
    rediscover,
)
from pipeline.planning.tables import (
    declare,
    estimate_partitions,
    known_inputs,
    parse_schema,
    shape_tables,
)
from readers import get_reader
from readers.base import ChunkSpec
from readers.errors import one_line
from readers.options import ReaderOptions
from readers.widening import no_nulls, unify

LISTED_FILES = 20
"""Files a plan lists by name (``--json`` and `Plan.summary` give all)."""


@dataclass(slots=True)
class Plan:
    """What a run would do: files, formats, chunks, bytes and the unified table schemas."""

    files: list[PlannedFile]
    schemas: dict[str, pa.Schema]
    """What each table is written as (declared types, derived columns, transform output)."""
    reader_options: dict[str, ReaderOptions] = field(default_factory=dict)
    """Each reader's options for this plan's files, by reader name."""
    hook: TableHook = field(default_factory=TableHook)
    """What the workers do to every parsed batch (`execution.hook`)."""
    chunk_size: int = 0
    small_file_size: int = 0
    """The options that decide how small files are bundled into tasks (`tasks`)."""

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

    def tasks(self, threads: int | None = None) -> int:
        """Tasks an ingest would run: a chunk each, except that small files share a task
        (bundles; at least two per worker thread, ``threads`` of them: default one per core,
        as the embedded cluster has)."""
        from pipeline.execution.bundles import pack

        small, tasks = [], 0
        for f in self.files:
            if f.skipped or f.error:
                continue
            if (self.small_file_size > 0 and len(f.chunks) == 1 and f.reader
                    and get_reader(f.reader).bundles and f.source.size <= self.small_file_size):
                small.append(([f], f.source.size + 1))
            else:
                tasks += len(f.chunks)
        min_bundles = 2 * (threads or os.cpu_count() or 1)
        return tasks + len(pack(small, max(1, self.chunk_size), min_bundles))

    def to_json(self) -> str:
        return json.dumps({"files": self.summary(),
                           "tables": {t: str(s) for t, s in self.schemas.items()},
                           "chunks": len(self.chunks), "tasks": self.tasks(),
                           "bytes": self.total_bytes}, indent=2)

    def __repr__(self) -> str:
        return self.describe()

    def describe(self, max_files: int = LISTED_FILES) -> str:
        """Totals, then per format and per table, then at most ``max_files`` files (the
        failed ones first)."""
        rows = self.summary()
        chunks, tasks = len(self.chunks), self.tasks()
        lines = [f"Plan: {len(rows)} file(s), {_human(self.total_bytes)}, {chunks} chunk(s)"
                 + (f" in {tasks} task(s) (small files are read many to a task)"
                    if tasks != chunks else "")]
        skipped = sum(1 for r in rows if r["skipped"])
        failed = sum(1 for r in rows if r["error"])
        if skipped or failed:
            lines.append(f"  {skipped} unchanged since the last run, {failed} with errors")
        formats: dict[str, list[int]] = {}
        for r in rows:
            count = formats.setdefault(r["format"] or "?", [0, 0, 0])
            count[0] += 1
            count[1] += r["size_bytes"]
            count[2] += r["chunks"]
        for name, (n, size, nchunks) in sorted(formats.items()):
            lines.append(f"  format {name}: {n} file(s), {_human(size)}, {nchunks} chunk(s)")
        per_table: dict[str, list[int]] = {}
        for r in rows:
            for table in r["tables"]:
                count = per_table.setdefault(table, [0, 0])
                count[0] += 1
                count[1] += r["size_bytes"]
        for table, schema in self.schemas.items():
            n, size = per_table.get(table, (0, 0))
            cols = ", ".join(f"{f.name}: {f.type}" for f in schema)
            lines.append(f"  table {table} ({n} file(s), {_human(size)}): {cols}")
        ordered = sorted(rows, key=lambda r: not r["error"])  # errors are never cut off
        shown = ordered if len(ordered) <= max_files else ordered[:max_files]
        for row in shown:
            if row["skipped"]:
                status = "unchanged since the last run"
            elif row["error"]:
                status = f"ERROR {row['error']}"
            else:
                status = f"{row['chunks']} chunk(s), table {', '.join(row['tables'])}"
            comp = f" [{row['compression']}]" if row["compression"] else ""
            lines.append(f"  {row['path']}  {row['format'] or '?'}{comp}  "
                         f"{_human(row['size_bytes'])}  {status}")
        if len(shown) < len(rows):
            lines.append(f"  ... {len(rows) - len(shown)} more file(s) (--json lists all)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r["path"], r["format"], _human(r["size_bytes"]), r["chunks"],
                ", ".join(r["tables"]), r["error"] or "")) + "</tr>"
            for r in sorted(self.summary(), key=lambda r: not r["error"])[:LISTED_FILES])
        more = len(self.files) - LISTED_FILES
        rows += f"<tr><td colspan=6>... {more} more file(s)</td></tr>" if more > 0 else ""
        head = "".join(f"<th>{h}</th>" for h in
                       ("path", "format", "size", "chunks", "tables", "error"))
        return (f"<p><b>chunkmill plan</b>: {len(self.files)} files, {len(self.chunks)} chunks "
                f"in {self.tasks()} tasks, {_human(self.total_bytes)}</p>"
                f"<table><tr>{head}</tr>{rows}</table>")


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
               max_partitions: int = 0,
               settle: Callable[[dict[str, pa.Schema]], dict[str, pa.Schema]] | None = None,
               ) -> Plan:
    """Discover, describe (in parallel threads), unify schemas, then plan every file's chunks.

    ``skip(file_id, fingerprint)`` lets a run pass over unchanged files before reading them;
    ``known`` holds the schemas the tables already have in OUT (unified first, so their
    column order and types win where the new data fits them; declared types win over both);
    ``settle`` may then change the unified schemas (a Delta table keeps its column types)
    before chunks are planned. With ``partition_by``, a sample that shows a table would get
    more than ``max_partitions`` partitions is a usage error (0: no limit).
    """
    paths = as_paths(paths)
    storage_options = dict(options.storage_options)
    settings = options.reader_settings(tuple(input_root(p, storage_options) for p in paths))
    found = discover(paths, table=options.table, fmt=options.format,
                     storage_options=storage_options, skip=skip, retries=options.retries,
                     follow_symlinks=options.follow_symlinks)
    if unskip is not None:
        # Unchanged files that must be read all the same (they share a fragment with a
        # changed file): sniff them now.
        again = unskip(found)
        found = [rediscover(f, options.format, dict(options.storage_options))
                 if f.skipped and f.source.file_id in again else f for f in found]
    reader_options = {name: get_reader(name).configure(settings)
                      for name in {f.reader for f in found if f.reader}}
    files = describe_all(found, reader_options, options.retries)
    # Tables are named by `table_name`, whatever name the reader gave: no reader (plugins
    # included) is trusted to keep names inside OUT and off the reserved directories. The
    # descriptions keep the readers' own names (readers look their tables up by them).
    by_table: dict[str, list[pa.Schema]] = {}
    for f in files:
        if f.description:
            for table, schema in f.description.tables.items():
                by_table.setdefault(table_name(table), []).append(schema)
    remembered = known or {}
    known = known_inputs(remembered, options)
    # A column no file had a value for (header-only files) is text.
    schemas = {table: no_nulls(unify([known[table], *group] if table in known else group))
               for table, group in by_table.items()}
    schemas = declare(schemas, files, options, remembered)
    if settle is not None:
        schemas = settle(schemas)
    parsed = {table: parse_schema(table, schema, options) for table, schema in schemas.items()}
    # One schema object per (table, columns): bundle tasks carry each member's description,
    # and pickle writes a shared object once.
    ordered: dict[tuple[str, tuple[str, ...]], pa.Schema] = {}

    def unified(table: str, own: pa.Schema) -> pa.Schema:
        key = (table, tuple(own.names))
        if key not in ordered:
            ordered[key] = _ordered(parsed[table_name(table)], own)
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
    shapes = shape_tables(schemas, files, reader_options, options, remembered)
    _check_partitioning(shapes.outputs, tuple(partition_by))
    estimate_partitions(shapes, files, reader_options, tuple(partition_by), max_partitions)
    return Plan(files, shapes.outputs, reader_options, shapes.hook, options.chunk_size,
                options.small_file_size)


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
    return build_plan(as_paths(paths), opts.plan, partition_by=opts.output.partition_by,
                      max_partitions=opts.output.max_partitions)
