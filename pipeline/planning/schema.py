"""Table schemas across runs: what changed since OUT was last written."""

from __future__ import annotations

import pyarrow as pa


def schema_change(old: pa.Schema, new: pa.Schema) -> str:
    """What differs, in a few words: new columns and widened types."""
    added = [f.name for f in new if f.name not in old.names]
    widened = [f"{f.name} {old.field(f.name).type}->{f.type}" for f in new
               if f.name in old.names and old.field(f.name).type != f.type]
    parts = ([f"new columns {', '.join(added)}"] if added else []) + widened
    return "; ".join(parts) or "column order"
