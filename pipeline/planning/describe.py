"""Describe every discovered file: headers and a bounded sample only, many at a time.

Small files go to their reader's `Reader.describe_many` in batches (one inference over many
files); the rest are described one by one in a thread pool. A file that cannot be described
fails alone, with its error; the others go on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.execution.placement import default_workers
from pipeline.output.layout import table_name
from pipeline.planning.discover import Discovered
from pipeline.retry import retrying
from readers import get_reader
from readers.base import ChunkSpec, Description, Source
from readers.errors import one_line
from readers.options import ReaderOptions

#: Files per `Reader.describe_many` call (a thread each).
DESCRIBE_BATCH = 512


@dataclass(slots=True)
class PlannedFile:
    """One input file: its reader, what it holds, and its chunks (or why it cannot be read)."""

    source: Source
    reader: str | None
    description: Description | None = None
    chunks: list[ChunkSpec] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    """Unchanged since the last run into the same OUT: nothing of it is read."""

    @property
    def tables(self) -> list[str]:
        """The tables the file feeds, by their names in OUT (`table_name`)."""
        return sorted({table_name(t) for t in self.description.tables}) if self.description \
            else []


def describe_all(found: list[Discovered], options: dict[str, ReaderOptions],
                 retries: int) -> list[PlannedFile]:
    """Describe every file that has a reader: in batches where the reader can, else alone.

    ``options`` holds each reader's options by reader name.
    """
    planned = [PlannedFile(f.source, f.reader, error=f.error, skipped=f.skipped) for f in found]
    by_reader: dict[str, list[int]] = {}
    for i, f in enumerate(found):
        if f.reader and not f.error and not f.skipped:
            by_reader.setdefault(f.reader, []).append(i)
    batches = [(name, idx[n:n + DESCRIBE_BATCH]) for name, idx in by_reader.items()
               for n in range(0, len(idx), DESCRIBE_BATCH) if len(idx) > 1]

    def batch(job: tuple[str, list[int]]) -> None:
        name, idx = job
        try:
            described = get_reader(name)().describe_many([found[i].source for i in idx],
                                                         options[name])
        except Exception:  # noqa: BLE001 - each file is then described on its own
            return
        for i, description in zip(idx, described, strict=True):
            planned[i].description = description

    def one(i: int) -> None:
        source, name = found[i].source, found[i].reader
        reader = get_reader(name)()
        try:
            planned[i].description = retrying(lambda: reader.describe(source, options[name]),
                                              retries)
        except Exception as exc:  # a bad file fails alone; the run goes on
            planned[i].error = f"{source.path}: cannot read its header: {one_line(exc)}"

    # Threads hide remote latency; on local files a describe is pyarrow parsing (no GIL) and
    # Python (the GIL), so more threads than cores only fight for it (README, "Measurements
    # behind design choices").
    local = all(f.source.local_path is not None for f in found)
    with ThreadPoolExecutor(max_workers=default_workers() if local else 8) as pool:
        list(pool.map(batch, batches))
        rest = [i for i, p in enumerate(planned)
                if p.description is None and not p.skipped and not p.error and p.reader]
        list(pool.map(one, rest))
    return planned


__all__ = ["PlannedFile", "describe_all", "DESCRIBE_BATCH"]
