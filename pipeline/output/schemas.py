"""The schema each table of OUT was last written with (``_chunkmill/schemas.json``)."""

from __future__ import annotations

import base64
import json

import pyarrow as pa

from pipeline.output.layout import STATE_DIR
from pipeline.output.store import Store


class SchemaStore:
    """The schema each table of OUT was last written with (``_chunkmill/schemas.json``).

    A later run unifies its files with it, so new fragments keep the table's established types
    when the new data fits them (an int column stays double once it has been double).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = store.path(STATE_DIR, "schemas.json")

    def load(self) -> dict[str, pa.Schema]:
        if not self.store.exists(self.path):
            return {}
        raw = json.loads(self.store.read_bytes(self.path))
        return {table: pa.ipc.read_schema(pa.py_buffer(base64.b64decode(blob)))
                for table, blob in raw.items()}

    def save(self, schemas: dict[str, pa.Schema]) -> None:
        raw = {table: base64.b64encode(schema.serialize().to_pybytes()).decode()
               for table, schema in sorted(schemas.items())}
        self.store.write_bytes_atomic(self.path, json.dumps(raw, indent=1).encode())
