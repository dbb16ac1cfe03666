"""chunkmill's error hierarchy: one root, mixed with the matching built-in, one exit code each.

Errors cross process boundaries (workers -> client), so every class pickles with its message.
Errors about input files are the readers' (`readers.errors`); these are the run's own.
"""

from __future__ import annotations


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


class OutputLocked(ChunkmillError, RuntimeError):
    """Another live run holds the lock on this output directory."""

    exit_code = 4


class RejectedRecord(ChunkmillError, ValueError):
    """``pipeline.read`` met a record it cannot turn into a row (``on_bad="error"``)."""
