"""Type widening: one schema from many, by column name (shared by readers and the pipeline).

Widening (applied pairwise, order-independent):

- null + T -> T
- any two integer types -> int64; integer + floating -> float64; two floating -> float64
- date32 + naive timestamp -> timestamp; timestamps of different units -> the finer unit (same
  zone)
- list<A> + list<B> -> list<widen(A, B)> (also fixed-size lists of different sizes); struct
  fields are unified by name the same way
- anything else that differs (bool + int, number + string, ...) -> string; so do a naive and
  a UTC-aware timestamp, and a date and a UTC-aware timestamp (which instant a naive time means
  is unknown; DuckDB's sniffers make such a column VARCHAR too, and pyarrow's CSV inference
  text)

Values that do not fit the widened type are rejected into ``_errors`` when parsed, never nulled.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.types as pt

_UNITS = ["s", "ms", "us", "ns"]


def widen(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest type both ``a`` and ``b`` values fit into, by the rules above."""
    if a == b:
        return a
    if pt.is_null(a):
        return b
    if pt.is_null(b):
        return a
    if pt.is_integer(a) and pt.is_integer(b):
        return pa.int64()
    if (pt.is_integer(a) or pt.is_floating(a)) and (pt.is_integer(b) or pt.is_floating(b)):
        return pa.float64()
    if pt.is_timestamp(a) and pt.is_timestamp(b):
        if a.tz != b.tz:
            return pa.string()
        return pa.timestamp(max(a.unit, b.unit, key=_UNITS.index), tz=a.tz)
    if pt.is_timestamp(a) and pt.is_date(b) and a.tz is None:
        return a
    if pt.is_date(a) and pt.is_timestamp(b) and b.tz is None:
        return b
    if _listlike(a) and _listlike(b):  # fixed-size lists of other sizes become plain lists
        return pa.list_(widen(a.value_type, b.value_type))
    if pt.is_struct(a) and pt.is_struct(b):
        return pa.struct(list(unify([pa.schema(list(a)), pa.schema(list(b))])))
    return pa.string()


def _listlike(t: pa.DataType) -> bool:
    return pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t)


def unify(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """Union by name in first-seen column order, widening types that differ."""
    fields: dict[str, pa.DataType] = {}
    # Small files described together share one schema object: 10,000 files are a few
    # schemas. (Held here, so no id is reused by a new schema while unifying.)
    seen: dict[int, pa.Schema] = {}
    for schema in schemas:
        if id(schema) in seen:
            continue
        seen[id(schema)] = schema
        for field in schema:
            prev = fields.get(field.name)
            fields[field.name] = field.type if prev is None else widen(prev, field.type)
    return pa.schema([(name, typ) for name, typ in fields.items()])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones as nulls, types cast."""
    # One name -> position map: looking names up in ``column_names`` per column made a
    # table of 100,000 columns take hours.
    position = {name: i for i, name in enumerate(table.column_names)}
    columns = []
    for field in schema:
        i = position.get(field.name)
        if i is None:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(i)
        columns.append(col if col.type == field.type else col.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def no_nulls(schema: pa.Schema) -> pa.Schema:
    """Types no value decided, or Parquet cannot store, become text, at any depth.

    A column (or list element, or struct field) no value gave a type to (all-null samples,
    header-only files, ``[]``) is string, so that later values still fit it; so is a struct
    without fields (``{}`` in every sampled value), which Parquet cannot write: JSON values
    there keep their JSON text (``{"a":1}`` -> ``'{"a":1}'``).
    """
    return pa.schema([f.with_type(_storable(f.type)) for f in schema])


def _storable(t: pa.DataType) -> pa.DataType:
    if pt.is_null(t) or (pt.is_struct(t) and t.num_fields == 0):
        return pa.string()
    if pt.is_list(t) or pt.is_large_list(t):
        value = _storable(t.value_type)
        return t if value == t.value_type else pa.list_(t.value_field.with_type(value))
    if pt.is_struct(t):
        fields = [f.with_type(_storable(f.type)) for f in t]
        return t if all(f.type == g.type for f, g in zip(fields, t, strict=True)) \
            else pa.struct(fields)
    return t
