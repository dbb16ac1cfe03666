"""What each table holds: declared types, derived columns, the user's transform, partitions.

Planning hands every chunk its file's schema in the types it must parse into, so declared
types (``--schema``) take effect in the parser itself: a value that does not fit is rejected
there (``TypeMismatch``, with its byte offset) like any other. This module decides, per table:

- the **input schema**: unified from the files (and from the schemas remembered in OUT), then
  the declared types, which win over both;
- the **output schema**: the input schema plus derived columns, then whatever ``transform``
  returns for it (found at plan time on an empty table, or on a small sample if need be);
- the `TableHook` the workers apply to every parsed batch to get from one to the other;
- a first **partition count estimate** from a sample, so ``--partition-by`` on a key-like
  column stops before anything is written (the runner enforces the exact limit later).

Declared types apply to the tables read by the text readers (CSV, TSV, JSON lines), which
parse straight into the planned types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.execution.hook import TableHook, Transform, function_name
from pipeline.options import PlanOptions
from pipeline.planning.derive import Derivation
from pipeline.planning.describe import PlannedFile
from pipeline.planning.types import reader_type, type_name
from readers import get_reader
from readers._text import TextReader
from readers.options import ReaderOptions

#: Bytes of text read at plan time for a sample (transform schema, partition estimate)...
SAMPLE_BYTES = 1 << 20
#: ... from at most this many files (each costs a parse set-up).
SAMPLE_FILES = 16
#: A sample whose partition values are at least this unique is taken as a key column.
KEY_LIKE = 0.9
#: ... once it has at least this many rows.
KEY_LIKE_MIN_ROWS = 200


@dataclass(slots=True)
class TableShapes:
    """The plan-time decisions of this module, for one plan."""

    inputs: dict[str, pa.Schema]
    """Per table: the unified schema in the declared types (what readers parse into, but for
    `reader_type`)."""
    outputs: dict[str, pa.Schema] = field(default_factory=dict)
    """Per table: what is written (derived columns added, transform applied)."""
    hook: TableHook = field(default_factory=TableHook)


def is_text_reader(name: str | None) -> bool:
    return name is not None and issubclass(get_reader(name), TextReader)


def _described(files: Sequence[PlannedFile]) -> list[PlannedFile]:
    return [f for f in files if f.description is not None]


def known_inputs(known: Mapping[str, pa.Schema], options: PlanOptions) -> dict[str, pa.Schema]:
    """The remembered (output) schemas as far as they describe *input* columns.

    Derived columns are computed, not read; with a transform, the output says nothing about
    the input columns (the transform's output is compared with it afterwards instead).
    """
    if options.transform is not None:
        return {}
    derived = {d.name for d in options.derive}
    return {t: pa.schema([f for f in s if f.name not in derived]) for t, s in known.items()}


def declare(schemas: dict[str, pa.Schema], files: Sequence[PlannedFile],
            options: PlanOptions, remembered: Mapping[str, pa.Schema] | None = None
            ) -> dict[str, pa.Schema]:
    """The unified schemas with the declared types in place (usage errors for what is wrong).

    A declared column must be in every file of every text table that has it, and in at least
    one; with ``allow_missing_columns`` files without it read it as NULL, and a column no
    table has is added to every text table. A column of a table OUT already has
    (``remembered``) is no typo even when this run reads no file of that table.
    """
    declared = options.schema
    if not declared:
        return schemas
    files = _described(files)
    text = {t for f in files if is_text_reader(f.reader) for t in f.description.tables}
    out = dict(schemas)
    for column, kind in declared.items():
        holders = [t for t in schemas if column in schemas[t].names]
        text_holders = [t for t in holders if t in text]
        if holders and not text_holders:
            raise UsageError(f"--schema {column}: declared types apply to CSV, TSV and JSON "
                             f"lines tables; {column} is a column of {', '.join(holders)}")
        if not text_holders and _remembered(column, remembered):
            continue  # its table's files are unchanged since they were ingested with it
        if not text_holders:
            if not options.allow_missing_columns or not text:
                listing = "; ".join(f"{t}: {', '.join(s.names)}" for t, s in schemas.items()
                                    if t in text) or "no CSV, TSV or JSON lines table"
                raise UsageError(f"--schema {column}: no table has a column {column!r} "
                                 f"({listing}); pass --allow-missing-columns to add it as "
                                 "NULL")
            text_holders = sorted(text)
        for table in text_holders:
            lacking = [f.source.path for f in files if table in f.description.tables
                       and column not in f.description.tables[table].names]
            if lacking and not options.allow_missing_columns:
                more = f" (and {len(lacking) - 1} more file(s))" if len(lacking) > 1 else ""
                raise UsageError(f"--schema {column}: {lacking[0]}{more} has no column "
                                 f"{column!r} (table {table}); pass --allow-missing-columns "
                                 "to read it as NULL there")
            schema = out[table]
            if column in schema.names:
                i = schema.get_field_index(column)
                out[table] = schema.set(i, pa.field(column, kind))
            else:
                out[table] = schema.append(pa.field(column, kind))
    return out


def select_columns(files: Sequence[PlannedFile], options: PlanOptions) -> None:
    """Keep only the ``--columns`` of every text file's tables (in the order given).

    The readers parse what their description names: the CSV reader converts only those
    columns, the JSON lines reader parses only those fields. A column that no CSV, TSV or
    JSON lines file has is a usage error (a typo would otherwise give a table of NULLs).
    """
    columns = options.columns
    if not columns:
        return
    text = [f for f in _described(files) if is_text_reader(f.reader)]
    present: dict[str, set[str]] = {}
    for f in text:
        for table, schema in f.description.tables.items():
            present.setdefault(table, set()).update(schema.names)
    for column in columns:
        if not any(column in names for names in present.values()):
            listing = "; ".join(f"{t}: {', '.join(sorted(n))}" for t, n in present.items())
            raise UsageError(f"--columns {column}: no CSV, TSV or JSON lines table has a "
                             f"column {column!r} ({listing or 'no such table in the inputs'})")
    for f in text:
        f.description.tables = {
            t: pa.schema([s.field(c) for c in columns if c in s.names], metadata=s.metadata)
            for t, s in f.description.tables.items()}


def _remembered(column: str, remembered: Mapping[str, pa.Schema] | None) -> bool:
    return any(column in s.names for s in (remembered or {}).values())


def parse_schema(table: str, schema: pa.Schema, options: PlanOptions) -> pa.Schema:
    """The types the readers parse ``table`` into (declared dates come as timestamps)."""
    if not options.schema:
        return schema
    return pa.schema([pa.field(f.name, reader_type(f.type)) if f.name in options.schema
                      else f for f in schema])


def derived_columns(schemas: Mapping[str, pa.Schema], derive: Sequence[Derivation],
                    remembered: Mapping[str, pa.Schema] | None = None
                    ) -> dict[str, tuple[Derivation, ...]]:
    """Per table, the derivations whose source column it has (usage errors for clashes; a
    derivation of a table OUT already has, ``remembered``, is fine when no file of it is
    read this run)."""
    if not derive:
        return {}
    out: dict[str, tuple[Derivation, ...]] = {}
    used = set()
    for table, schema in schemas.items():
        names = set(schema.names)
        chosen = []
        for d in derive:
            if d.column not in names:
                continue
            if d.name in schema.names:
                raise UsageError(f"--derive {d.spec}: table {table} already has a column "
                                 f"{d.name!r}; choose another name")
            d.output_type(schema.field(d.column).type)  # a usage error when it cannot apply
            chosen.append(d)
            used.add(d.name)
        if chosen:
            out[table] = tuple(chosen)
    unused = [d for d in derive if d.name not in used
              and not _remembered(d.name, remembered) and not _remembered(d.column, remembered)]
    if unused:
        listing = "; ".join(f"{t}: {', '.join(s.names)}" for t, s in schemas.items())
        raise UsageError(f"--derive {unused[0].spec}: no table has a column "
                         f"{unused[0].column!r} ({listing})")
    return out


def with_derived(schema: pa.Schema, derivations: Sequence[Derivation]) -> pa.Schema:
    for d in derivations:
        schema = schema.append(pa.field(d.name, d.output_type(schema.field(d.column).type)))
    return schema


def shape_tables(inputs: dict[str, pa.Schema], files: Sequence[PlannedFile],
                 reader_options: Mapping[str, ReaderOptions], options: PlanOptions,
                 remembered: Mapping[str, pa.Schema] | None = None) -> TableShapes:
    """Output schemas and the worker hook (``files`` already carry their parse schemas)."""
    convert = {t: {f.name: f.type for f in s if f.name in options.schema
                   and reader_type(f.type) != f.type}
               for t, s in inputs.items()}
    convert = {t: c for t, c in convert.items() if c}
    derive = derived_columns(inputs, options.derive, remembered)
    outputs = {t: with_derived(s, derive.get(t, ())) for t, s in inputs.items()}
    hook = TableHook(convert=convert, derive=derive, inputs=inputs if derive else {})
    if options.transform is not None:
        _check_picklable(options.transform)
        found = {}
        for table, schema in outputs.items():
            found[table] = transform_schema(
                options.transform, table, schema,
                lambda t=table: sample_rows(files, t, reader_options, hook))
        outputs = found
        hook = TableHook(convert=convert, derive=derive, transform=options.transform,
                         transform_schemas=found, inputs=inputs)
    return TableShapes(inputs, outputs, hook)


def _check_picklable(fn: Transform) -> None:
    import cloudpickle

    try:
        cloudpickle.dumps(fn)
    except Exception as exc:
        raise UsageError(f"transform {function_name(fn)} cannot be pickled (cloudpickle: "
                         f"{type(exc).__name__}: {exc}); it runs in the workers, so it may only "
                         "refer to picklable objects") from exc


def transform_schema(fn: Transform, table: str, schema: pa.Schema,
                     sample: Callable[[], pa.Table | None]) -> pa.Schema:
    """What ``fn`` returns for ``table``: from an empty table, else from a sample of rows.

    The sample (up to `SAMPLE_BYTES` of the table's first text file) is used when the empty
    table makes ``fn`` raise, or gives a column of type ``null``.
    """
    name = function_name(fn)
    out, problem = _call(fn, schema.empty_table())
    if out is None or any(pa.types.is_null(f.type) for f in out.schema):
        rows = sample()
        if rows is not None and rows.num_rows:
            out, problem = _call(fn, rows)
        if out is None:
            raise UsageError(f"transform {name} on table {table}: {problem}")
    nulls = [f.name for f in out.schema if pa.types.is_null(f.type)]
    if nulls:
        raise UsageError(f"transform {name} on table {table}: column(s) {', '.join(nulls)} "
                         "have type null (no value to tell their type): cast them")
    return out.schema.remove_metadata()


def _call(fn: Transform, rows: pa.Table) -> tuple[pa.Table | None, str]:
    try:
        out = fn(rows)
    except Exception as exc:  # noqa: BLE001 - reported (or retried on a sample) by the caller
        return None, f"raised {type(exc).__name__}: {exc}"
    if isinstance(out, pa.RecordBatch):
        out = pa.Table.from_batches([out])
    if not isinstance(out, pa.Table):
        return None, f"returned {type(out).__name__}, not a pyarrow.Table"
    return out, ""


def sample_rows(files: Sequence[PlannedFile], table: str,
                reader_options: Mapping[str, ReaderOptions], hook: TableHook,
                budget: int = SAMPLE_BYTES) -> pa.Table | None:
    """Rows of ``table`` from the head of its first uncompressed text files, hooked up to
    (not including) the transform; None when no file can give a cheap sample."""
    got, _ = _sample(files, table, reader_options, budget)
    if got is None:
        return None
    return hook.before_transform(table, got)


def _sample(files: Sequence[PlannedFile], table: str,
            reader_options: Mapping[str, ReaderOptions], budget: int
            ) -> tuple[pa.Table | None, int]:
    """(raw rows, bytes they came from), reading whole first chunks of up to ``budget``."""
    from pipeline.execution.task import read_chunk

    pieces: list[pa.Table] = []
    sampled = 0
    tried = 0
    for f in _described(files):
        if sampled >= budget or tried >= SAMPLE_FILES:
            break
        if (f.error or f.skipped or table not in f.description.tables
                or not is_text_reader(f.reader) or f.source.compression):
            continue
        tried += 1
        reader = get_reader(f.reader)()
        opts = reader_options[f.reader].but(chunk_size=max(1, budget - sampled))
        try:
            chunks = reader.plan(f.source, f.description, opts)
            if not chunks:
                continue
            held: list[pa.Table] = []
            read_chunk(reader, f.source, chunks[0], f.description, opts, 0,
                       lambda t, rows, held=held: held.append(rows) if t == table else None,
                       held.clear)
        except Exception:  # noqa: BLE001 - a sample is a hint; the run reports real errors
            continue
        pieces += held
        sampled += chunks[0].length
    if not pieces:
        return None, 0
    return pa.concat_tables(pieces, promote_options="permissive"), sampled


def estimate_partitions(shapes: TableShapes, files: Sequence[PlannedFile],
                        reader_options: Mapping[str, ReaderOptions],
                        partition_by: tuple[str, ...], limit: int) -> None:
    """Stop (usage error) when a sample shows a table would get more than ``limit``
    partitions: more distinct values than that in the sample itself, or a key-like column
    (nearly every sampled row its own value) in more rows than that."""
    if not partition_by or limit <= 0:
        return
    for table, schema in shapes.outputs.items():
        if not all(c in schema.names for c in partition_by):
            continue
        raw, sampled = _sample(files, table, reader_options, SAMPLE_BYTES)
        if raw is None or not raw.num_rows:
            continue
        try:
            rows = shapes.hook.apply(table, raw)
            distinct = rows.group_by(list(partition_by)).aggregate([]).num_rows
        except Exception:  # noqa: BLE001 - the workers report a failing transform properly
            continue
        total = sum(f.source.size for f in _described(files)
                    if table in f.description.tables and not f.error and not f.skipped)
        estimate = rows.num_rows * total / max(sampled, 1)
        if distinct > limit:
            raise UsageError(too_many_message(table, partition_by, schema, limit,
                                              f"a sample of {rows.num_rows:,} rows already "
                                              f"has {distinct:,} distinct values"))
        if (rows.num_rows >= KEY_LIKE_MIN_ROWS and distinct >= KEY_LIKE * rows.num_rows
                and estimate > limit):
            raise UsageError(too_many_message(
                table, partition_by, schema, limit,
                f"{distinct:,} of {rows.num_rows:,} sampled rows have values of their own, "
                f"about {estimate:,.0f} rows in all"))


def too_many_message(table: str, partition_by: Sequence[str], schema: pa.Schema | None,
                     limit: int, why: str) -> str:
    """The usage error of the partition guard, with a --derive that would fit."""
    return (f"--partition-by {','.join(partition_by)}: table {table} would get more than "
            f"{limit:,} partitions in this run (--max-partitions; {why}); partition by a "
            f"coarser key instead, e.g. {suggest_derive(partition_by, schema)}, or raise "
            "--max-partitions")


def suggest_derive(partition_by: Sequence[str], schema: pa.Schema | None) -> str:
    column = partition_by[-1]
    kind = schema.field(column).type if schema is not None and column in schema.names else None
    if kind is not None and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        return f"--derive day=date({column}) --partition-by day"
    bucket = f"--derive {column}_bucket=bucket({column}, 64) --partition-by {column}_bucket"
    if kind is not None and pa.types.is_string(kind):
        return (f"{bucket} (or, if {column} holds timestamps, --schema {column}=timestamp "
                f"--derive day=date({column}))")
    if kind is not None and not (pa.types.is_integer(kind) or pa.types.is_binary(kind)):
        return f"--derive day=date(ts) with a timestamp column ({column} is {type_name(kind)})"
    return bucket


__all__ = ["TableShapes", "declare", "select_columns", "parse_schema", "shape_tables",
           "sample_rows", "estimate_partitions", "too_many_message", "known_inputs",
           "is_text_reader"]
