"""The ``_catalog`` table: one row per input file, with its status and format metadata."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from pipeline.output.columns import text_array, timestamp_array
from pipeline.output.layout import path_bytes, path_text

CATALOG_SCHEMA = pa.schema([
    ("file_id", pa.string()), ("path", pa.string()), ("path_bytes", pa.binary()),
    ("format", pa.string()),
    ("size_bytes", pa.int64()), ("mtime", pa.timestamp("us", tz="UTC")),
    ("fingerprint", pa.string()), ("status", pa.string()), ("last_status", pa.string()),
    ("tables", pa.list_(pa.string())),
    ("rows", pa.int64()), ("chunks", pa.int64()), ("error_count", pa.int64()),
    ("duration_s", pa.float64()), ("metadata", pa.string()), ("run_id", pa.string()),
    ("ingested_at", pa.timestamp("us", tz="UTC")),
])
"""``path`` is valid UTF-8 text (bytes of the name that are not UTF-8 shown as ``\\xNN``);
``path_bytes`` is the exact path. ``status`` says what the latest run did with the file
(``unchanged``: skipped), ``last_status`` the outcome of the file's latest ingest (``ok``,
``partial`` or ``failed``), so a skipped file that had rejected records still says so."""

#: Built from Python values apart from the JSON lines (`catalog_table`): ``metadata`` is
#: JSON text already, which a JSON line would escape and the reader unescape again.
_APART = ("path_bytes", "mtime", "ingested_at", "metadata")
_JSON_SCHEMA = pa.schema([f for f in CATALOG_SCHEMA if f.name not in _APART])


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
    last_status: str | None = None
    """The outcome of the latest ingest (default: ``status``, unless that is ``unchanged``)."""

    def asdict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy of every value was most of the commit's
        # time for 10,000 small files. The row owns its list and mapping; copy those.
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        row["tables"], row["metadata"] = list(self.tables), dict(self.metadata)
        return row

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogRow:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


_ROW_FIELDS = tuple(f.name for f in fields(CatalogRow))  # ``fields()`` builds a tuple per call


def catalog_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The ``_catalog`` table; ``metadata`` is JSON text (query it with json_extract).

    Built by pyarrow's JSON reader against the fixed schema rather than ``from_pydict``: any
    conversion of Python objects imports pandas inside pyarrow, a third of a second and 40 MiB
    at the end of every run for a table of a few rows per file.
    """
    if not rows:
        return CATALOG_SCHEMA.empty_table()

    # What json.dumps(..., default=...) builds on every call: made once for all the rows.
    encode_metadata = json.JSONEncoder(default=str, sort_keys=True).encode
    encode_record = json.JSONEncoder(default=_json_scalar).encode
    names = _JSON_SCHEMA.names
    lines = []
    paths = []
    metadata = []
    for row in rows:
        record = {name: row.get(name) for name in names}
        metadata.append(encode_metadata(row.get("metadata") or {}))
        if record["last_status"] is None and record["status"] != "unchanged":
            record["last_status"] = record["status"]
        # POSIX paths are bytes: a name that is not UTF-8 (Python holds its bytes as lone
        # surrogates) is shown escaped in ``path``, and kept exactly in ``path_bytes``.
        path = record["path"]
        paths.append(None if path is None else path_bytes(path))
        record["path"] = None if path is None else path_text(path)
        lines.append(encode_record(record))
    # A record must fit one parse block (1 MiB by default); json.dumps output is ASCII.
    block = max(1 << 20, max(map(len, lines)) + 64)
    table = pa_json.read_json(
        io.BytesIO("\n".join(lines).encode()), read_options=pa_json.ReadOptions(block_size=block),
        parse_options=pa_json.ParseOptions(explicit_schema=_JSON_SCHEMA,
                                           unexpected_field_behavior="error"))
    apart = {"path_bytes": text_array(paths, pa.binary()),
             "metadata": text_array(metadata),
             "mtime": timestamp_array([row.get("mtime") for row in rows]),
             "ingested_at": timestamp_array([row.get("ingested_at") for row in rows])}
    return pa.Table.from_arrays(
        [apart[f.name] if f.name in apart else table.column(f.name) for f in CATALOG_SCHEMA],
        schema=CATALOG_SCHEMA)


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


