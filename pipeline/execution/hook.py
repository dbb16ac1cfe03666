"""The per-batch hook: what happens to every parsed Arrow table before it is partitioned.

One object, planned on the client (`planning.tables`) and pickled into every chunk task,
bundle task and lazy partition, applied to each (table, rows) a reader yields, in this order:

1. declared types the readers cannot parse straight into (a ``date`` column is parsed as a
   timestamp and cut to its day here: see `planning.types.reader_type`);
2. with derived columns or a transform: the batch takes its table's whole input schema (the
   table's column order; columns its file lacks as NULL), so both see the same columns in
   every batch of every file, as at plan time;
3. derived columns (``--derive``), appended in the order given;
4. the user's ``transform=`` function, whose output must keep the schema found at plan time.

A transform that raises, returns something other than a table, or returns other columns than
at plan time makes its chunk a ``chunk`` error naming the function (``TransformError``); the
run goes on with the other chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.planning.derive import Derivation
from readers.widening import conform

Transform = Callable[[pa.Table], pa.Table]


class TransformError(ValueError):
    """A ``transform=`` function failed on a batch or broke its plan-time schema."""

    chunkmill_code = "TransformError"


def function_name(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module and module != "__main__" else name


@dataclass(frozen=True, slots=True)
class TableHook:
    """Everything done to a parsed batch before it is written (small and picklable)."""

    convert: Mapping[str, Mapping[str, pa.DataType]] = field(default_factory=dict)
    """Per table: columns the readers parse into another type than declared, and the type."""
    derive: Mapping[str, tuple[Derivation, ...]] = field(default_factory=dict)
    """Per table: the derived columns it gets (those whose source column it has)."""
    transform: Transform | None = None
    transform_schemas: Mapping[str, pa.Schema] = field(default_factory=dict)
    """Per table: what ``transform`` returned at plan time (its output must keep it)."""
    inputs: Mapping[str, pa.Schema] = field(default_factory=dict)
    """Per table: the input schema (declared types) batches take before steps 3 and 4."""

    def __bool__(self) -> bool:
        return bool(self.convert or self.derive or self.transform)

    def before_transform(self, table: str, rows: pa.Table) -> pa.Table:
        """Steps 1 to 3: declared types, the table's input schema, derived columns."""
        for name, kind in self.convert.get(table, {}).items():
            if name in rows.column_names and rows.schema.field(name).type != kind:
                import pyarrow.compute as pc  # here, not at import: see readers/_compute.py

                i = rows.schema.get_field_index(name)
                # A timestamp cut to its date (DuckDB's cast of a datetime text to DATE).
                rows = rows.set_column(i, name, pc.cast(rows.column(name), kind, safe=False))
        if (self.derive or self.transform) and table in self.inputs:
            rows = conform(rows, self.inputs[table])
        for d in self.derive.get(table, ()):
            rows = rows.append_column(d.name, d.compute(rows.column(d.column)))
        return rows

    def apply(self, table: str, rows: pa.Table) -> pa.Table:
        rows = self.before_transform(table, rows)
        if self.transform is None:
            return rows
        return self.run_transform(table, rows)

    def run_transform(self, table: str, rows: pa.Table) -> pa.Table:
        name = function_name(self.transform)
        try:
            out = self.transform(rows)
        except Exception as exc:
            raise TransformError(f"transform {name} failed on a batch of table {table}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        if not isinstance(out, pa.Table):
            raise TransformError(f"transform {name} returned {type(out).__name__} for a batch "
                                 f"of table {table}, not a pyarrow.Table")
        expected = self.transform_schemas.get(table)
        return out if expected is None else conform_output(out, expected, name, table)


def conform_output(out: pa.Table, expected: pa.Schema, name: str, table: str) -> pa.Table:
    """``out`` with exactly ``expected``'s columns, or a `TransformError` saying what differs.

    The same names in the same order and the same types; a column that came back all-null
    typed ``null`` (``pa.array([None] * n)``) is taken as the planned type.
    """
    same = out.column_names == expected.names and all(
        f.type == e.type or pa.types.is_null(f.type) for f, e in zip(out.schema, expected,
                                                                     strict=True))
    if not same:
        got = ", ".join(f"{f.name}: {f.type}" for f in out.schema)
        want = ", ".join(f"{f.name}: {f.type}" for f in expected)
        raise TransformError(f"transform {name} returned columns ({got}) for a batch of table "
                             f"{table}; at plan time it returned ({want}): a transform must "
                             "return the same schema for every batch")
    if out.schema.equals(expected):
        return out
    columns = [c if c.type == e.type else c.cast(e.type)
               for c, e in zip(out.columns, expected, strict=True)]
    return pa.Table.from_arrays(columns, schema=expected)


__all__ = ["TableHook", "TransformError", "Transform", "function_name", "conform_output"]
