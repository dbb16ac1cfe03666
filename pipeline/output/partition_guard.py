"""The partition guard: ``--partition-by`` stops before it floods OUT with directories.

A high-cardinality column (an id, a raw timestamp) given to ``--partition-by`` would write one
directory per value. The limit (``--max-partitions``, 10,000 per table and run by default) is
checked three times, each one cheaper to stop at than the next:

1. at plan time, from a sample (`planning.tables.estimate_partitions`);
2. in the worker: a chunk whose own rows reach more partitions than the limit stops writing
   (`TooManyPartitions`, raised by the fragment writer) and reports it in its manifest;
3. on the client, exactly: every manifest names its fragments' partitions, and the run stops
   (a usage error, exit 2) before a commit would bring a table past the limit. Staged
   fragments are not in OUT; the next run clears them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class TooManyPartitions(Exception):  # noqa: N818 - a stop signal, reported as a usage error
    """A chunk's rows alone reach more partitions of ``table`` than the limit."""

    chunkmill_code = "TooManyPartitions"

    def __init__(self, table: str, count: int, limit: int) -> None:
        super().__init__(table, count, limit)
        self.table, self.count, self.limit = table, count, limit

    def __str__(self) -> str:
        return (f"table {self.table}: one chunk alone has rows for more than {self.limit:,} "
                "partitions")


class PartitionGuard:
    """Counts the partition directories this run writes per table; raises past the limit."""

    def __init__(self, limit: int, message: Callable[[str, str], str]) -> None:
        self.limit = limit
        self.message = message
        """``message(table, why)`` -> the usage error's text (with a --derive suggestion)."""
        self.seen: dict[str, set[str]] = {}

    def check(self, parts: Iterable[tuple[str, str]]) -> str | None:
        """Add ``(table, partition dir)`` pairs; the error text once a table is past the
        limit, else None. Unpartitioned fragments (dir ``""``) do not count."""
        if self.limit <= 0:
            return None
        for table, rel in parts:
            if not rel:
                continue
            seen = self.seen.setdefault(table, set())
            seen.add(rel)
            if len(seen) > self.limit:
                return self.message(table, f"{len(seen):,} partitions written so far")
        return None


__all__ = ["TooManyPartitions", "PartitionGuard"]
