"""One error hierarchy for readers, with the stable codes that ``_errors.error_type`` holds.

Readers raise subclasses of `ReaderError` for what is wrong with a file (each class has an
explicit `code`, never derived from its Python name, so renaming a class cannot change what
users query), and reject single records with a code from `ErrorCode`. Errors cross process
boundaries (workers -> client), so every class pickles with its message and offset.
`error_code` names any exception a chunk can die of, ours or a library's.
"""

from __future__ import annotations

import zlib
from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    """Every ``error_type`` the built-in readers and the pipeline write to ``_errors``."""

    # one record
    FIELD_COUNT_MISMATCH = "FieldCountMismatch"
    TYPE_MISMATCH = "TypeMismatch"
    JSON_RECORD_ERROR = "JSONRecordError"
    INVALID_UTF8 = "InvalidUTF8"
    BAD_RECORD = "BadRecord"
    SAMPLE_OUTSIDE_FILE = "SampleOutsideFile"
    UNTERMINATED_QUOTE = "UnterminatedQuote"
    # a chunk or a part of a file
    RECORD_TOO_LONG = "RecordTooLong"
    DECOMPRESSION_LIMIT = "DecompressionLimit"
    CORRUPT_STREAM = "CorruptStream"
    TRUNCATED = "Truncated"
    FILE_CHANGED = "FileChanged"
    REFUSED = "Refused"
    UNSUPPORTED = "Unsupported"
    BAD_HEADER = "BadHeader"
    BAD_STRUCTURE = "BadStructure"
    PARSE_ERROR = "ParseError"
    IO_ERROR = "IOError"
    OUT_OF_MEMORY = "OutOfMemory"
    CHUNK_TIMEOUT = "ChunkTimeout"
    WORKER_LOST = "WorkerLost"
    INTERNAL = "InternalError"
    # a whole file
    FILE_ERROR = "FileError"


class ReaderError(Exception):
    """Root of the errors readers raise about their input; ``code`` goes to ``_errors``."""

    code: ClassVar[str] = ErrorCode.BAD_STRUCTURE
    transient: ClassVar[bool] = False
    """True when trying again may succeed (the pipeline retries those)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        """Byte offset in the file where the problem is, when known."""

    def __reduce__(self):  # noqa: ANN204 - keep subclasses picklable with message and offset
        return (type(self), (str(self), self.offset))


class BadFile(ReaderError, ValueError):
    """The file's structure is damaged or is not what its format says (headers, box tree)."""

    code = ErrorCode.BAD_STRUCTURE


class Truncated(ReaderError, ValueError):
    """The file ends before its structure says it should (or shrank while being read)."""

    code = ErrorCode.TRUNCATED


class Unsupported(ReaderError, ValueError):
    """A type or layout chunkmill cannot turn into Arrow columns."""

    code = ErrorCode.UNSUPPORTED


class RecordTooLong(ReaderError, ValueError):
    """No record boundary within ``max_record_bytes``: not the format we think, or a limit."""

    code = ErrorCode.RECORD_TOO_LONG


class DecompressionLimit(ReaderError, ValueError):
    """A stream inflates beyond the configured ratio: a likely decompression bomb."""

    code = ErrorCode.DECOMPRESSION_LIMIT


class FileChanged(ReaderError, ValueError):
    """The file changed between planning and reading."""

    code = ErrorCode.FILE_CHANGED


def _foreign_codes() -> tuple[tuple[tuple[type[BaseException], ...], str], ...]:
    import pyarrow as pa

    return (
        ((MemoryError,), ErrorCode.OUT_OF_MEMORY),
        ((TimeoutError,), ErrorCode.CHUNK_TIMEOUT),
        ((UnicodeError,), ErrorCode.INVALID_UTF8),
        ((zlib.error, EOFError), ErrorCode.CORRUPT_STREAM),
        ((pa.ArrowInvalid, pa.ArrowTypeError), ErrorCode.PARSE_ERROR),
        ((OSError,), ErrorCode.IO_ERROR),
    )


def error_code(exc: BaseException) -> str:
    """The stable ``_errors.error_type`` for ``exc``: its `ReaderError.code`, else by kind."""
    if isinstance(exc, ReaderError):
        return exc.code
    code = getattr(exc, "chunkmill_code", None)  # e.g. the pipeline's own errors
    if isinstance(code, str):
        return code
    if type(exc).__module__.startswith("lzma") or "Truncated" in str(exc)[:80]:
        return ErrorCode.CORRUPT_STREAM
    for kinds, name in _foreign_codes():
        if isinstance(exc, kinds):
            return name
    return ErrorCode.INTERNAL


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an error as one line of a log or an ``_errors`` row."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


__all__ = ["ErrorCode", "ReaderError", "BadFile", "Truncated", "Unsupported", "RecordTooLong",
           "DecompressionLimit", "FileChanged", "error_code", "one_line"]
