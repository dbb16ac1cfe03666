"""The ``_catalog`` table: one row per input file, with its status and format metadata."""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

CATALOG_SCHEMA = pa.schema([
    ("file_id", pa.string()), ("path", pa.string()), ("format", pa.string()),
    ("size_bytes", pa.int64()), ("mtime", pa.timestamp("us", tz="UTC")),
    ("fingerprint", pa.string()), ("status", pa.string()), ("tables", pa.list_(pa.string())),
    ("rows", pa.int64()), ("chunks", pa.int64()), ("error_count", pa.int64()),
    ("duration_s", pa.float64()), ("metadata", pa.string()), ("run_id", pa.string()),
    ("ingested_at", pa.timestamp("us", tz="UTC")),
])


@dataclass(slots=True)
class CatalogRow:
    """One file's row of the catalog (and of its journal record)."""

    file_id: str
    path: str
    format: str | None
    size_bytes: int
    mtime: float | None
    fingerprint: str
    status: str
    """``ok``, ``partial`` (some records or chunks rejected), ``failed`` or ``unchanged``."""
    tables: list[str]
    rows: int = 0
    chunks: int = 0
    error_count: int = 0
    duration_s: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    ingested_at: float = field(default_factory=time.time)

    def asdict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogRow:
        return cls(**{k: data[k] for k in CATALOG_SCHEMA.names if k in data})


def catalog_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The ``_catalog`` table; ``metadata`` is JSON text (query it with json_extract).

    Built by pyarrow's JSON reader against the fixed schema rather than ``from_pydict``: any
    conversion of Python objects imports pandas inside pyarrow, a third of a second and 40 MiB
    at the end of every run for a table of a few rows per file.
    """
    import datetime as dt

    if not rows:
        return CATALOG_SCHEMA.empty_table()

    def ts(value: float | None) -> str | None:
        return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).isoformat()

    lines = []
    for row in rows:
        record = {name: row.get(name) for name in CATALOG_SCHEMA.names}
        record["mtime"], record["ingested_at"] = ts(record["mtime"]), ts(record["ingested_at"])
        record["metadata"] = json.dumps(record["metadata"] or {}, default=str, sort_keys=True)
        lines.append(json.dumps(record, default=_json_scalar))
    # A record must fit one parse block (1 MiB by default); json.dumps output is ASCII.
    block = max(1 << 20, max(map(len, lines)) + 64)
    return pa_json.read_json(
        io.BytesIO("\n".join(lines).encode()), read_options=pa_json.ReadOptions(block_size=block),
        parse_options=pa_json.ParseOptions(explicit_schema=CATALOG_SCHEMA,
                                           unexpected_field_behavior="error"))


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


