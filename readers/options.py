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


@dataclass(frozen=True, kw_only=True)
class DialectOptions:
    """The CSV/TSV dialect a user gives (DuckDB's ``read_csv`` names in brackets; None: the
    format's default, or sniffed). One definition for the pipeline's `PlanOptions` and the text
    readers' `TextOptions`: a mixin without ``__slots__``, so slotted option classes can combine
    it with `ReaderOptions`."""

    header: bool = True
    """The first record names the columns (``header``)."""
    delimiter: str | None = None
    """Field delimiter (``delim``); None: sniffed among ``,`` ``;`` tab ``|``."""
    quote: str | None = None
    """Quote character (``quote``); "" turns quoting off."""
    escape: str | None = None
    """Makes the next character literal (``escape``); None: quotes are escaped by doubling."""
    null_values: tuple[str, ...] | None = None
    """Unquoted values read as NULL (``nullstr``); default: the empty value."""
    skip_rows: int = 0
    """Lines skipped before the header (``skip``)."""
    comment: str | None = None
    """Lines starting with this character are skipped (``comment``)."""
    null_padding: bool = False
    """Records with missing trailing fields get NULLs instead of being rejected."""

    def checked_dialect(self) -> dict[str, Any]:
        """The dialect fields normalised (``"\\t"`` is a tab, ``"NA,null"`` two null values);
        ValueError names the option when one is not usable."""
        from readers._dialect import check_char

        delimiter = "\t" if self.delimiter in ("\\t", "tab") else self.delimiter
        for name, value in (("delimiter", delimiter), ("escape", self.escape),
                            ("comment", self.comment)):
            check_char(name, value)
        check_char("quote", self.quote, allow_empty=True)
        quote = '"' if self.quote is None else self.quote
        if delimiter is not None and delimiter in (quote, self.escape):
            raise ValueError(f"--delimiter {delimiter!r} is also the quote or escape character")
        null_values = self.null_values
        if isinstance(null_values, str):
            null_values = tuple(null_values.split(","))
        elif null_values is not None:
            null_values = tuple(str(v) for v in null_values)
        if self.skip_rows < 0:
            raise ValueError("--skip-rows must be 0 or more")
        return {"delimiter": delimiter, "null_values": null_values}

    def dialect_settings(self) -> dict[str, Any]:
        """The dialect options given (none: every file's own default or sniffed one)."""
        given = {"delimiter": self.delimiter, "quote": self.quote, "escape": self.escape,
                 "null_values": self.null_values, "skip_rows": self.skip_rows or None,
                 "comment": self.comment, "null_padding": self.null_padding or None}
        return {k: v for k, v in given.items() if v is not None}


__all__ = ["DialectOptions", "ReaderOptions"]
