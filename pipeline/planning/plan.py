"""Planning: discover inputs, describe every file, unify schemas per table, split into chunks.

Nothing here reads bulk data: readers look at headers and a bounded sample only, so planning a
500 GB input costs about as much as planning a 1 GB one.
"""

from __future__ import annotations

import html
import json
import logging
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.execution.hook import TableHook
from pipeline.options import IngestOptions, PlanOptions, as_paths
from pipeline.output.journal import JournalState
from pipeline.output.layout import table_name
from pipeline.planning.describe import PlannedFile, describe_all
from pipeline.planning.discover import (
    Discovered,
    SkipCheck,
    discover,
    input_root,
    rediscover,
)
from pipeline.planning.grouping import HomeTables, Member, group_tables
from pipeline.planning.tables import (
    declare,
    estimate_partitions,
    known_inputs,
    parse_schema,
    select_columns,
    shape_tables,
)
from readers import get_reader
from readers.base import ChunkSpec
from readers.errors import one_line
from readers.options import ReaderOptions
from readers.widening import no_nulls, unify

log = logging.getLogger("chunkmill.plan")
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
    homes: list[HomeTables] = field(default_factory=list)
    """Which tables the files of each input directory make (`pipeline.planning.grouping`)."""
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

    def table_summary(self) -> dict[str, dict[str, Any]]:
        """Per table: its columns, its files and why they went there."""
        out: dict[str, dict[str, Any]] = {
            t: {"columns": [f"{f.name}: {f.type}" for f in s], "files": [], "rules": []}
            for t, s in self.schemas.items()}
        for f in sorted(self.files, key=lambda f: f.source.path):
            if f.description is None:
                continue
            rule = f.description.metadata.get("table_rule") or f"{f.reader} file structure"
            for table in f.tables:
                entry = out.setdefault(table, {"columns": [], "files": [], "rules": []})
                entry["files"].append(f.source.path)
                if rule not in entry["rules"]:
                    entry["rules"].append(rule)
        return out
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
                           "table_files": self.table_summary(),
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
        for table, info in self.table_summary().items():
            if info["files"]:
                lines.append(f"  table {table}: {len(info['files'])} file(s) "
                             f"({'; '.join(info['rules'])}): {_some(info['files'])}")
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


def _some(paths: list[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


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
               out: str | None = None,
               held: Mapping[str, tuple[str, str]] | None = None,
               fresh: bool = False) -> Plan:
    """Discover, describe (in parallel threads), group files into tables, unify schemas, then
    plan every file's chunks.

    ``skip(file_id, fingerprint)`` lets a run pass over unchanged files before reading them;
    ``known`` holds the schemas the tables already have in OUT (unified first, so their
    column order and types win where the new data fits them; declared types win over both);
    ``settle`` may then change the unified schemas (a Delta table keeps its column types)
    before chunks are planned. With ``partition_by``, a sample that shows a table would get
    more than ``max_partitions`` partitions is a usage error (0: no limit). ``out`` is never
    read as an input; ``held`` maps the id of each file OUT holds rows of (in a single-table
    format) to its ``(path, table)``, so files stay in their tables
    (`pipeline.planning.grouping`); ``fresh`` groups as on a first run (``--force``).
    """
    paths = as_paths(paths)
    storage_options = dict(options.storage_options)
    found = discover(paths, table=options.table, fmt=options.format,
                     storage_options=storage_options, skip=skip, retries=options.retries,
                     follow_symlinks=options.follow_symlinks,
                     outputs=[out] if out is not None else [])
    # Homes too: hive partition columns are found below the directory that names a table,
    # however its files were given.
    roots = {input_root(p, storage_options) for p in paths} | {f.home for f in found if f.home}
    settings = options.reader_settings(tuple(sorted(roots)))
    if unskip is not None:
        # Unchanged files that must be read all the same (they share a fragment with a
        # changed file): sniff them now.
        again = unskip(found)
        found = [rediscover(f, options.format, dict(options.storage_options))
                 if f.skipped and f.source.file_id in again else f for f in found]
    reader_options = {name: get_reader(name).configure(settings)
                      for name in {f.reader for f in found if f.reader}}
    files = describe_all(found, reader_options, options.retries)
    remembered = known or {}
    known = known_inputs(remembered, options)
    homes = _place_tables(files, found, options, known, held or {}, fresh)
    # Columns are chosen after grouping: files group by what they hold, not by the selection.
    select_columns(files, options)
    # Tables are named by `table_name`, whatever name the reader gave: no reader (plugins
    # included) is trusted to keep names inside OUT and off the reserved directories. The
    # descriptions keep the readers' own names (readers look their tables up by them).
    by_table: dict[str, list[pa.Schema]] = {}
    for f in sorted(files, key=lambda f: f.source.path):  # input order does not matter
        if f.description:
            for table, schema in f.description.tables.items():
                by_table.setdefault(table_name(table), []).append(schema)
    # A column no file had a value for (header-only files) is text.
    schemas = {table: no_nulls(unify([known[table], *group] if table in known else group))
               for table, group in sorted(by_table.items())}
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
    return Plan(files, shapes.outputs, reader_options, shapes.hook, homes,
                options.chunk_size, options.small_file_size)


def held_tables(state: JournalState) -> dict[str, tuple[str, str]]:
    """``file_id -> (path, table)`` of the files OUT holds rows of in a single-table format
    (what `build_plan` needs to keep files in their tables)."""
    held = {}
    for file_id, record in state.done.items():
        row = record.catalog
        tables = row.get("tables") or []
        if len(tables) != 1 or not row.get("path") or not row.get("format"):
            continue
        try:
            if not get_reader(row["format"]).single_table:
                continue
        except KeyError:  # a plugin no longer installed
            continue
        held[file_id] = (row["path"], tables[0])
    return held


def _single_table(f: PlannedFile) -> bool:
    """A file whose one table is the pipeline's to name (see `Reader.single_table`)."""
    return (f.description is not None and f.reader is not None
            and get_reader(f.reader).single_table
            and list(f.description.tables) == [f.source.table])


def _place_tables(files: list[PlannedFile], found: list[Discovered], options: PlanOptions,
                  known: Mapping[str, pa.Schema], held: Mapping[str, tuple[str, str]],
                  fresh: bool) -> list[HomeTables]:
    """Put each single-table file in its table (`group_tables`), renaming its description's
    one table; say which files went where."""
    members: dict[str, tuple[PlannedFile, Member]] = {}
    for f, d in zip(files, found, strict=True):
        if not _single_table(f):
            continue
        assert f.description is not None
        columns = tuple(f.description.tables[f.source.table].names)
        positional = not options.header and columns == tuple(f"f{i}" for i in
                                                             range(len(columns)))
        previous = held.get(f.source.file_id)
        members[f.source.path] = (f, Member(
            f.source.path, d.home or posixpath.dirname(f.source.path), columns, d.named,
            positional, previous[1] if previous else None))
    if not members:
        return []
    grouping = group_tables((m for _, m in members.values()), forced=options.table,
                            known={t: s.names for t, s in known.items()},
                            held=held.values(), fresh=fresh)
    for path, (f, _) in members.items():
        placement = grouping.placements[path]
        assert f.description is not None
        (schema,) = f.description.tables.values()
        f.source = replace(f.source, table=placement.table)
        # A new Description: describe_many may share one metadata dict between files.
        f.description = replace(f.description, tables={placement.table: schema},
                                metadata={**f.description.metadata,
                                          "table_rule": placement.rule})
    for home in grouping.homes:
        _log_home(home)
    return grouping.homes


def _log_home(home: HomeTables) -> None:
    def names(paths: list[str]) -> str:
        return _some([p[len(home.home):].lstrip("/") or p for p in paths])

    if home.split:
        log.warning("chunkmill: %s: files with columns that do not nest make %d tables: %s "
                    "(--table NAME puts them in one)", home.home, len(home.tables),
                    "; ".join(f"{t} ({names(p)})" for t, p in home.tables.items()))
    else:
        for table, paths in home.tables.items():
            log.info("chunkmill: %s: %d file(s) -> table %s (%s)", home.home, len(paths),
                     table, names(paths))


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
    """What ``ingest`` would do, without writing anything: files, formats, chunks, schemas,
    tables. With ``out=``, as an ingest into that OUT (see `plan_into`)."""
    out = options.pop("out", None)
    opts = IngestOptions.from_kwargs(out or "out", **options)
    return plan_into(as_paths(paths), opts, out)


def plan_into(paths: Sequence[str], options: IngestOptions, out: str | None) -> Plan:
    """The plan of an ingest into ``out``: OUT is not read as an input, and files OUT already
    holds keep their tables (its state is only read; nothing is written)."""
    known: dict[str, pa.Schema] = {}
    held: dict[str, tuple[str, str]] = {}
    if out is not None:
        from pipeline.output.journal import Journal
        from pipeline.output.schemas import SchemaStore
        from pipeline.output.store import open_store

        store = open_store(out, dict(options.output.storage_options))
        known = SchemaStore(store).load()
        held = held_tables(Journal(store).load())
    return build_plan(paths, options.plan, partition_by=options.output.partition_by,
                      max_partitions=options.output.max_partitions, known=known, out=out,
                      held=held, fresh=options.force)
