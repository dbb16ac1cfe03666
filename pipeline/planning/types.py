"""Declared column types (``--schema COL=TYPE``, ``schema=``): names, parsing, reader types.

Type names are DuckDB's (``duckdb_types()``), case-insensitive, so ``--schema`` reads like
DuckDB's ``read_csv(types={...})``; the Arrow spellings ``int64``, ``float64``, ``date32`` and
``timestamptz`` are accepted as well. Where the two disagree DuckDB wins: ``int8`` is BIGINT
(8 bytes, as in PostgreSQL), ``float`` is FLOAT (4 bytes); use ``tinyint`` and ``double``.
In Python a pyarrow type (``pa.int8()``) is never ambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from pipeline.errors import UsageError

_UTC = "UTC"

#: name -> Arrow type, grouped by DuckDB's logical type (the first name is the canonical one).
_GROUPS: list[tuple[tuple[str, ...], pa.DataType]] = [
    (("varchar", "string", "text", "char", "bpchar", "nvarchar", "utf8"), pa.string()),
    (("bigint", "int64", "int8", "long"), pa.int64()),
    (("integer", "int32", "int4", "int", "signed"), pa.int32()),
    (("smallint", "int16", "int2", "short"), pa.int16()),
    (("tinyint", "int1"), pa.int8()),
    (("ubigint", "uint64"), pa.uint64()),
    (("uinteger", "uint32"), pa.uint32()),
    (("usmallint", "uint16"), pa.uint16()),
    (("utinyint", "uint8"), pa.uint8()),
    (("double", "float64", "float8"), pa.float64()),
    (("float", "float32", "float4", "real"), pa.float32()),
    (("boolean", "bool", "logical"), pa.bool_()),
    (("date", "date32"), pa.date32()),
    (("timestamp", "datetime", "timestamp_us"), pa.timestamp("us")),
    (("timestamp_s",), pa.timestamp("s")),
    (("timestamp_ms",), pa.timestamp("ms")),
    (("timestamp_ns",), pa.timestamp("ns")),
    (("timestamptz", "timestamp with time zone"), pa.timestamp("us", tz=_UTC)),
    (("timestamptz_ns",), pa.timestamp("ns", tz=_UTC)),
    (("blob", "binary", "bytea", "varbinary"), pa.binary()),
]
TYPE_NAMES: dict[str, pa.DataType] = {name: t for names, t in _GROUPS for name in names}
#: DuckDB's ``DECIMAL`` without arguments.
DEFAULT_DECIMAL = (18, 3)
_DECIMAL = re.compile(r"^(?:decimal|numeric|dec)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?$")


def known_types() -> str:
    """The accepted names, for messages: one per logical type with its aliases."""
    groups = [f"{names[0]} ({', '.join(names[1:])})" if len(names) > 1 else names[0]
              for names, _ in _GROUPS]
    return "; ".join(groups + ["decimal(P,S) (numeric, dec; P <= 38)"])


def parse_type(text: str | pa.DataType, column: str = "") -> pa.DataType:
    """The Arrow type of a type name (``"decimal(10,2)"``, ``"varchar"``) or a pyarrow type."""
    if isinstance(text, pa.DataType):
        return text
    if not isinstance(text, str):
        raise UsageError(f"--schema {column}: a type name or a pyarrow type, not {text!r}")
    name = " ".join(text.strip().lower().split())
    if name in TYPE_NAMES:
        return TYPE_NAMES[name]
    match = _DECIMAL.match(name)
    if match:
        precision = int(match.group(1)) if match.group(1) else DEFAULT_DECIMAL[0]
        scale = int(match.group(2)) if match.group(2) else (
            0 if match.group(1) else DEFAULT_DECIMAL[1])
        if not 1 <= precision <= 38 or scale > precision:
            raise UsageError(f"--schema {column}={text}: decimal(P,S) needs 1 <= P <= 38 and "
                             "S <= P")
        return pa.decimal128(precision, scale)
    where = f" for column {column!r}" if column else ""
    raise UsageError(f"--schema: unknown type {text!r}{where}; known types: {known_types()}")


def type_name(t: pa.DataType) -> str:
    """The canonical name of an Arrow type (its DuckDB name where there is one)."""
    for names, candidate in _GROUPS:
        if candidate == t:
            return names[0]
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    return str(t)


def _split_top(text: str) -> list[str]:
    """``"a=int,b=decimal(10,2)"`` -> ``["a=int", "b=decimal(10,2)"]`` (commas in () stay)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_schema(value: Any) -> dict[str, pa.DataType]:
    """Declared types from every accepted form, in the order given.

    ``"a=int64,b=decimal(10,2)"``, a list of such strings (``--schema`` is repeatable), a
    mapping of column names to type names or pyarrow types, or a ``pyarrow.Schema``.
    """
    if value is None:
        return {}
    if isinstance(value, pa.Schema):
        return {f.name: f.type for f in value}
    if isinstance(value, Mapping):
        return {str(k): parse_type(v, str(k)) for k, v in value.items()}
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise UsageError(f"schema=: a mapping, a pyarrow.Schema or 'COL=TYPE,...', not "
                         f"{type(value).__name__}")
    out: dict[str, pa.DataType] = {}
    for item in value:
        if isinstance(item, tuple) and len(item) == 2:  # (name, type) pairs
            out[str(item[0])] = parse_type(item[1], str(item[0]))
            continue
        for part in _split_top(str(item)):
            column, eq, kind = part.partition("=")
            if not eq or not column.strip() or not kind.strip():
                raise UsageError(f"--schema {part!r}: expected COL=TYPE (e.g. zip=varchar)")
            out[column.strip()] = parse_type(kind, column.strip())
    return out


def reader_type(declared: pa.DataType) -> pa.DataType:
    """The type the text readers parse a declared column into.

    Dates are parsed as timestamps and cut to their day in the worker (`execution.hook`):
    pyarrow's JSON reader cannot parse a date string at all, and DuckDB reads
    ``2024-01-02 10:00:00`` into a DATE column as 2024-01-02, which pyarrow's CSV date
    parser refuses.
    """
    if pa.types.is_date(declared):
        return pa.timestamp("us")
    return declared


__all__ = ["TYPE_NAMES", "known_types", "parse_type", "parse_schema", "type_name",
           "reader_type"]
