"""Typed reader options: what every reader is told, and what each reader adds of its own.

The pipeline hands every reader one flat mapping of settings (the user's options that concern
reading: chunk size, record limits, input roots, CSV dialect, ...). Each reader turns it into
its own frozen options object with `Reader.configure`, keeping only the fields it declares, so
a reader never sees a string key it did not ask for and a typo is a TypeError, not a silent
default. The defaults of reader-only knobs live here, on the fields; the user-facing ones
(chunk size, record limit) come from the pipeline's configuration with every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Self


@dataclass(frozen=True, slots=True, kw_only=True)
class ReaderOptions:
    """Options every reader understands. Readers subclass it to declare their own."""

    chunk_size: int = 32 << 20
    """Bytes (or decoded bytes of rows) per chunk task."""
    max_record_bytes: int = 16 << 20
    """The longest record a reader accepts; longer ones are errors, not memory spikes."""
    input_roots: tuple[str, ...] = ()
    """The directories the inputs were given as: links leading out of them are refused."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """The settings this class declares (None or absent: the field's default)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names and v is not None})

    def but(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (options are frozen: they travel to workers)."""
        return replace(self, **changes)


__all__ = ["ReaderOptions"]
