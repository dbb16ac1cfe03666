"""chunkmill's error hierarchy: one root, mixed with the matching built-in, one exit code each.

Errors cross process boundaries (workers -> client), so every class pickles with its message.
Errors about input files are the readers' (`readers.errors`); these are the run's own.
"""

from __future__ import annotations

import errno
import os


class ChunkmillError(Exception):
    """Root of all chunkmill errors."""

    exit_code = 1

    def __reduce__(self):  # noqa: ANN204 - keep subclasses picklable with their message
        return (type(self), self.args)


class UsageError(ChunkmillError, ValueError):
    """The user asked for something impossible (bad option, bad value)."""

    exit_code = 2


class SourceNotFound(UsageError, FileNotFoundError):
    """An input path, directory or glob matched nothing."""


class MissingDependency(ChunkmillError, ImportError):
    """An optional dependency is not installed; the message says what to ``pip install``."""

    exit_code = 2


class OutputLocked(ChunkmillError, RuntimeError):
    """Another live run holds the lock on this output directory."""

    exit_code = 4


#: errno values that say the output cannot be written at all: no retry helps, and no other file
#: would fare better.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EFBIG})


class OutputUnwritable(ChunkmillError, OSError):
    """OUT cannot be written: disk full, quota, read-only, permission denied. The run stops;
    once the cause is fixed, the same command resumes it."""

    exit_code = 74  # EX_IOERR (sysexits.h)

    @classmethod
    def about(cls, exc: BaseException, out: str) -> OutputUnwritable | None:
        """The error to stop the run with, if ``exc`` says the output (under ``out``) cannot
        be written. A permission error on some other path (an input) is not about OUT."""
        if isinstance(exc, OutputUnwritable):
            return exc
        if not isinstance(exc, OSError) or exc.errno not in OUTPUT_ERRNOS:
            return None
        where = exc.filename if isinstance(exc.filename, str) else out
        if exc.errno in (errno.EACCES, errno.EPERM) and not (
                where == out or where.startswith(out.rstrip("/") + "/")):
            return None
        return cls(f"cannot write the output {where}: {os.strerror(exc.errno)}; fix that, "
                   "then run the same command again to resume")


class RejectedRecord(ChunkmillError, ValueError):
    """``pipeline.read`` met a record it cannot turn into a row (``on_bad="error"``)."""
