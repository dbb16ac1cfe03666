"""The reader interface: every format plugs into chunkmill through one small class.

A reader answers four questions about a file, each cheap to ask on the client except `read`:

- ``sniff(head, path)``: how sure am I that these leading bytes are mine? (0 = not mine)
- ``describe(source, options)``: which tables does the file hold, with which Arrow schemas, and
  what format-specific facts belong in the catalog? Reads headers/indexes only, never bulk data.
- ``plan(source, description, options)``: split the file into independent `ChunkSpec`s (byte
  ranges or array slices), each small enough for one Dask task.
- ``read(source, chunk, description, options, ctx)``: runs inside a worker and yields
  ``(table_name, pyarrow.Table)`` pieces for one chunk; rejected records go to ``ctx.reject``.

Readers that must check their chunks against each other after the fact (the text readers verify
record boundaries) override ``reconcile``. Everything here pickles: workers get a `Source` and a
`ChunkSpec`, never an open file handle. A reader's options are its own typed record (see
`readers.options`), and what a chunk learns (``ctx.facts``) and how a chunk is addressed
(``ChunkSpec.selector``) are the reader's own types too: only the reader interprets them, through
the hooks below. This package depends on nothing in ``pipeline``.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar

import fsspec
import pyarrow as pa

from readers.options import ReaderOptions

_json_text = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str

#: Cap on the raw bytes kept with one rejected record (the rest is dropped, the length is kept).
RAW_CAP = 4096


def pread_file(path: str, start: int, length: int) -> bytes:
    """``length`` bytes of a local file from ``start`` (fewer at its end), in three system calls.

    Python's buffered ``open`` makes about nine (fstat, ioctl, seeks, a read per buffer), each
    releasing the GIL: with two threads busy, every release waits to get it back, and reading
    10,000 files of 10 KB took 2.5x longer than this (README, "Measurements behind design
    choices").
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        got = 0
        while got < length:  # once, unless a read comes back short (Linux caps one at ~2 GiB)
            data = os.pread(fd, length - got, start + got)
            if not data:  # the end of the file
                break
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Source:
    """One input file, as a picklable reference that opens the same bytes on any worker."""

    url: str
    """fsspec URL (``file:///abs/path``, ``memory://x``, ``http://...``)."""
    size: int
    """Size in bytes at discovery time; readers never read past it."""
    mtime: float | None
    """Modification time (seconds since the epoch) when the filesystem reports one."""
    file_id: str
    """Stable id of the file: a hash of its URL, the same on every run."""
    fingerprint: str
    """Changes when the content changes: size, mtime and hashes of the head and tail."""
    table: str
    """Default table name for formats that hold one table (text files)."""
    compression: str | None = None
    """Stream compression (gzip, bz2, xz, zstd) when the file is compressed as a whole."""
    storage_options: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments for the fsspec filesystem, frozen so the record stays hashable."""

    @property
    def path(self) -> str:
        """The path users know the file by (no ``file://`` prefix for local files)."""
        return self.url.removeprefix("file://")

    @property
    def local_path(self) -> str | None:
        """The path on this machine's disk, or None for any other filesystem."""
        return self.url[len("file://"):] if self.url.startswith("file://") else None

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem and the path within it."""
        fs, path = fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        return fs, path

    def open(self, compression: str | None = None):  # noqa: ANN201 - fsspec file-like
        """Open the file for binary reading; with ``compression`` the stream is decompressed."""
        fs, path = self.filesystem()
        return fs.open(path, "rb", compression=compression)

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file (fewer at end of file)."""
        end = min(end, self.size)
        if end <= start:
            return b""
        local = self.local_path
        if local is None:
            fs, path = self.filesystem()
            return fs.cat_file(path, start=start, end=end)  # one ranged request, no read-ahead
        return pread_file(local, start, end - start)

    def open_stored(self) -> BinaryIO:
        """The stored bytes (never decompressed), for seeking and reading whole ranges.

        Local files are opened by the builtin ``open``: fsspec's URL parsing and
        file object cost twice the read of a 10 KB file, and a run over many small files
        reads each one three times (sniff, describe, parse).
        """
        if self.local_path is not None:
            return open(self.local_path, "rb")
        fs, path = self.filesystem()
        return fs.open(path, "rb")


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """One independent unit of work: a byte range or an array slice of one file."""

    file_id: str
    """The `Source.file_id` this chunk belongs to."""
    index: int
    """Position of the chunk within its file, from 0; names the fragment files."""
    offset: int
    """Nominal start: a byte offset, or the first row of an array slice."""
    length: int
    """Nominal length in bytes (or rows); the reader may move the real ends to record bounds."""
    table: str | None = None
    """Table the chunk feeds, for readers with several tables per file (None: the default)."""
    selector: Any = None
    """Reader-private, picklable detail (a dataset path, a parse hypothesis, ...): only the
    reader that planned the chunk reads it."""
    weight: int = 0
    """Bytes the chunk is expected to read; orders submission (largest first)."""

    @property
    def id(self) -> str:
        """Deterministic id: names the Dask key, the fragment files and the journal entry."""
        return f"{self.file_id}-{self.index:06d}"


@dataclass(slots=True)
class Description:
    """What `Reader.describe` learnt from a file's headers."""

    tables: dict[str, pa.Schema]
    """Arrow schema of every table the file feeds (before unification across files)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Format-specific, JSON-serialisable facts for the catalog's ``metadata`` column."""
    state: Any = None
    """Reader-private, picklable planning state (header length, column names, ...)."""


@dataclass(slots=True)
class Rejected:
    """A record, chunk or file that could not be turned into rows."""

    kind: str
    """``record``, ``chunk`` or ``file``."""
    error_type: str
    message: str
    byte_offset: int | None = None
    raw: bytes | None = None

    def capped(self) -> Rejected:
        if self.raw is not None and len(self.raw) > RAW_CAP:
            return Rejected(self.kind, self.error_type, self.message + f" (raw {len(self.raw)} "
                            f"bytes, first {RAW_CAP} kept)", self.byte_offset, self.raw[:RAW_CAP])
        return self


class ChunkContext:
    """Collects what a chunk read learns besides its rows: rejected records and small facts."""

    def __init__(self, source: Source, chunk: ChunkSpec) -> None:
        self.source = source
        self.chunk = chunk
        self.rejected: list[Rejected] = []
        self.facts: Any = None
        """The reader's own picklable record of what the chunk learnt, for its `reconcile`
        and `summarize` (None when it has nothing to say)."""
        self.consumed = 0
        """Bytes of the chunk's range the reader is done with, for a live progress line (see
        `advance`); a chunk counts whole when it ends, whether or not this moved."""

    def advance(self, offset: int) -> None:
        """The reader is done with the file's bytes before ``offset``: optional, for readers
        that parse a chunk block by block and can tell how far they got."""
        self.consumed = max(self.consumed, min(self.chunk.length, offset - self.chunk.offset))

    def reject(self, *, error_type: str, message: str, byte_offset: int | None = None,
               raw: bytes | None = None, kind: str = "record") -> None:
        """Send one bad record (or chunk) to the ``_errors`` table instead of failing the chunk."""
        self.rejected.append(Rejected(kind, error_type, message, byte_offset, raw).capped())


class RestartChunk(Exception):  # noqa: N818 - a request, not an error
    """Raised by ``read`` to throw away what it yielded so far and read the chunk again.

    The caller discards the chunk's output and calls ``read`` once more with
    ``options.but(**changes)`` (e.g. a streaming parse that met a bad value half-way switches
    to the whole-chunk parse that can isolate it). A second restart is an error.
    """

    def __init__(self, reason: str, changes: dict[str, Any]) -> None:
        super().__init__(reason, changes)
        self.reason = reason
        self.changes = changes


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What `Reader.reconcile` and `Reader.summarize` learn of one finished chunk."""

    facts: Any = None
    """The chunk's ``ctx.facts`` (the reader's own type)."""
    failed: bool = False
    """The chunk produced no rows of its own: it died, or timed out (an ``_errors`` row)."""


@dataclass(slots=True)
class Reconciliation:
    """What the client must do after checking a file's chunk outputs against each other."""

    rerun: list[ChunkSpec] = field(default_factory=list)
    """Chunks whose output is discarded and which run again with the given specs."""
    replace_plan: list[ChunkSpec] | None = None
    """When set, every chunk of the file is discarded and this plan runs instead."""
    note: str | None = None
    """Why, for the log and the catalog metadata."""


@dataclass(slots=True)
class TogetherRead:
    """Rows of several files parsed as one (see `Reader.read_together`)."""

    members: list[int]
    """Positions of the files in the call's ``members``."""
    table: str
    rows: pa.Table
    counts: list[int]
    """Rows of each file, in ``members`` order (they are consecutive in ``rows``)."""


class Reader(ABC):
    """Base class of all readers; subclasses set the class attributes and the four methods."""

    name: ClassVar[str]
    """Format name, used in the catalog and in ``--format`` (csv, jsonl, hdf5, ...)."""
    suffixes: ClassVar[tuple[str, ...]] = ()
    """File name suffixes that hint at this format (``.csv``); magic bytes win over them."""
    streams_compressed: ClassVar[bool] = False
    """True when the reader can consume a gzip/bz2/xz/zstd stream of its format."""
    reconciles: ClassVar[bool] = False
    """True when `reconcile` must see the chunk outputs of a file before they are committed."""
    bundles: ClassVar[bool] = False
    """True when a small file's one chunk may share a task and a fragment with other files'.
    Only for readers whose single-chunk plans never need `reconcile` to run them again."""
    directory_markers: ClassVar[tuple[str, ...]] = ()
    """File names that make a whole directory one input of this format (``zarr.json``)."""
    single_table: ClassVar[bool] = False
    """True when every file holds one table named `Source.table` (text, columnar formats):
    the pipeline then decides which files make one table, and its name, from their columns
    (``pipeline.planning.grouping``). Readers whose tables come from the file's own structure
    (HDF5 datasets, FITS HDUs) leave it False and keep their names."""
    options_type: ClassVar[type[ReaderOptions]] = ReaderOptions
    """The reader's typed options (a `ReaderOptions` subclass declaring its own fields)."""
    threads_ok: ClassVar[bool] = False
    """True when chunk tasks spend their time outside the GIL (pyarrow's C++ parsers) and in
    code that cannot crash the process: the embedded cluster may then run them in threads of
    the client's process (``layout="auto"``), which starts faster and holds one interpreter."""

    @classmethod
    @abstractmethod
    def sniff(cls, head: bytes, path: str) -> int:
        """Confidence 0-100 that a file starting with ``head`` is in this format."""

    @classmethod
    def configure(cls, settings: Mapping[str, Any]) -> ReaderOptions:
        """This reader's options from the pipeline's flat settings (see `readers.options`)."""
        return cls.options_type.from_settings(settings)

    @abstractmethod
    def describe(self, source: Source, options: ReaderOptions) -> Description:
        """Tables, schemas and catalog metadata, from headers and indexes only."""

    def describe_many(self, sources: Sequence[Source], options: ReaderOptions
                      ) -> list[Description | None]:
        """Describe many small files at once where that is cheaper than one by one.

        None for a file this path does not take: it then gets `describe` of its own (which
        reports its errors). The default takes none.
        """
        return [None] * len(sources)

    def read_together(self, members: Sequence[tuple[Source, ChunkSpec, Description]],
                      options: ReaderOptions) -> Iterator[TogetherRead]:
        """Read several small files' single chunks in one pass where that is cheaper.

        Yields what it read; members it does not take are read one by one with `read`. The
        default takes none.
        """
        return iter(())

    @abstractmethod
    def plan(self, source: Source, description: Description,
             options: ReaderOptions) -> list[ChunkSpec]:
        """Split the file into chunks; every chunk must be readable on its own."""

    @abstractmethod
    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: ReaderOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        """Yield ``(table, rows)`` for one chunk, in the schemas of ``description.tables``."""

    def chunk_description(self, description: Description, chunk: ChunkSpec) -> Description:
        """The part of ``description`` that `read` needs for ``chunk``: what its task carries.

        A file of thousands of tables (an HDF5 file of many small datasets) would otherwise
        ship every table's schema and every catalog fact with each of its tasks, a cost that
        grows with tables x tasks. The default is the whole description.
        """
        return description

    def reconcile(self, source: Source, description: Description, chunks: list[ChunkSpec],
                  outcomes: Sequence[ChunkOutcome]) -> Reconciliation:
        """Check a file's chunk results against each other before they are committed."""
        return Reconciliation()

    def standalone_problem(self, source: Source, chunk: ChunkSpec, facts: Any) -> str | None:
        """Why rows read from ``chunk`` alone (after `prepare`, never reconciled) cannot be
        trusted, or None. Lazy reads call it after each chunk."""
        return None

    def prepare(self, source: Source, description: Description,
                chunks: list[ChunkSpec]) -> list[ChunkSpec]:
        """Chunks that read correctly on their own, without `reconcile` (for lazy reads)."""
        return chunks

    def summarize(self, source: Source, description: Description, chunks: list[ChunkSpec],
                  outcomes: Sequence[ChunkOutcome]) -> dict[str, Any]:
        """Catalog metadata that only the finished chunks know (a whole-file digest, ...)."""
        return {}


#: Callables that drop a reader's idle caches (read buffers, ...) when memory runs short.
_IDLE_CACHES: list[Callable[[], None]] = []


def on_memory_pressure(release: Callable[[], None]) -> None:
    """Register ``release`` to be called by `release_idle_memory`."""
    _IDLE_CACHES.append(release)


def release_idle_memory() -> None:
    """Let every registered reader cache go (the pressure plugin calls it under pressure)."""
    for release in list(_IDLE_CACHES):
        release()


def read_head(f: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of ``f``.

    Uses ``read1`` where the stream has it, so a truncated or corrupt compressed stream still
    gives what decompressed before the damage (``read(n)`` would drop all of it).
    """
    head = bytearray()
    read = getattr(f, "read1", f.read)
    try:
        while len(head) < limit:
            piece = read(min(1 << 16, limit - len(head)))
            if not piece:
                break
            head += piece
    except (EOFError, OSError):
        if not head:
            raise
    return bytes(head)


def stable_id(*parts: object) -> str:
    """A short, deterministic hex id of ``parts`` (same value on every machine and run)."""
    # Byte for byte ``json.dumps([str(p) for p in parts])`` (ids are stored: they must never
    # change), without building an encoder per call: ids are made for every file found.
    blob = ("[" + ", ".join(map(_json_text, map(str, parts))) + "]").encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()
