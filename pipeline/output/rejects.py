"""The ``_errors`` table: one row per rejected record, chunk or file, with its raw bytes."""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output.columns import int64_array, repeated_text, text_array
from pipeline.output.layout import ERRORS_DIR, STATE_DIR, path_text
from pipeline.output.store import codec
from pipeline.output.writer import Fragment, SinkSpec
from readers.base import Rejected

ERRORS_SCHEMA = pa.schema([
    ("file_id", pa.string()), ("path", pa.string()), ("chunk", pa.int64()),
    ("byte_offset", pa.int64()), ("kind", pa.string()), ("error_type", pa.string()),
    ("message", pa.string()), ("raw", pa.binary()), ("run_id", pa.string()),
])


def without_path(message: str, path: str) -> str:
    """``message`` without ``path``, which the row's ``path`` column holds: readers and the
    runner name the file (``/data/x.csv: chunk 3 at offset 96: ...``) for logs and the run
    summary, where it is needed. A path quoted inside a message becomes its file name."""
    if not path:
        return message
    message = message.replace(f"{path}: ", "")
    return message.replace(path, posixpath.basename(path.rstrip("/")) or path)


def errors_table(rows: Iterable[tuple[str, str, int | None, Rejected]], run_id: str) -> pa.Table:
    """The ``_errors`` rows for (file_id, path, chunk index, rejection) tuples."""
    rows = list(rows)
    # Paths (also inside messages) that are not UTF-8 are shown with \xNN escapes.
    return pa.Table.from_arrays([
        text_array([r[0] for r in rows]), text_array([path_text(r[1]) for r in rows]),
        int64_array([r[2] for r in rows]), int64_array([r[3].byte_offset for r in rows]),
        text_array([r[3].kind for r in rows]), text_array([r[3].error_type for r in rows]),
        text_array([path_text(without_path(r[3].message, r[1])) for r in rows]),
        text_array([r[3].raw for r in rows], pa.binary()),
        repeated_text(run_id, len(rows)),
    ], schema=ERRORS_SCHEMA)


def stage_errors(spec: SinkSpec, name: str, table: pa.Table) -> Fragment:
    """Stage an ``_errors`` fragment (committed with the chunk's data fragments)."""
    store = spec.store
    staged = store.path(STATE_DIR, "staging", spec.run_id, ERRORS_DIR,
                        f"{name}.{uuid.uuid4().hex[:8]}.parquet")
    with store.open_write(staged) as f:
        pq.write_table(table, f, compression=codec(spec.compression))
    store.sync(staged)
    return Fragment(ERRORS_DIR, "", staged, store.path(ERRORS_DIR, f"{name}.parquet"),
                    table.num_rows)


