"""A contract test kit every reader passes: subclass `ReaderContract` in your tests.

Like fsspec's ``tests/abstract`` and zarr's ``StoreTests``: the built-in readers each have a
subclass in chunkmill's tests, and a plugin author gets the same checks by writing::

    from readers.testing import ReaderContract
    from my_package.reader import KVReader

    class TestKVReader(ReaderContract):
        reader = KVReader

        def make_files(self, tmp_path):
            (tmp_path / "a.kv").write_bytes(b"KV1\\ncolour=red\\nsize=3\\n")
            return [tmp_path / "a.kv"]

What is checked: the class attributes and typed options; sniffing its own files; that sources,
descriptions, chunk plans and options pickle (they travel to workers); unique deterministic
chunk ids; that every yielded table is declared by ``describe`` with exactly that schema; that
the rows do not depend on the chunk size (after `read_settled`, as the pipeline runs them);
and that a damaged file (cut in half) gives a reader error or ``_errors`` rows, never another
exception. Needs pytest; nothing here imports the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from readers import registry
from readers.base import (
    ChunkContext,
    ChunkOutcome,
    ChunkSpec,
    Description,
    Reader,
    Rejected,
    RestartChunk,
    Source,
    stable_id,
)
from readers.errors import ErrorCode, error_code
from readers.options import ReaderOptions
from readers.settle import FileChunks, read_settled


def source_of(path: str | os.PathLike[str], table: str = "t") -> Source:
    """A `Source` for a local file or directory, as discovery would make it."""
    path = os.path.abspath(path)
    size = (sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
            if os.path.isdir(path) else os.path.getsize(path))
    url = "file://" + path
    return Source(url, size, os.path.getmtime(path), stable_id(url), f"fp-{size}", table)


@dataclass
class _Result:
    index: int
    outcome: ChunkOutcome
    tables: list[tuple[str, pa.Table]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def read_file(reader: Reader, source: Source, settings: dict[str, Any] | None = None
              ) -> tuple[Description, list[tuple[str, pa.Table]], list[Rejected], int]:
    """Describe, plan, read and reconcile one file in this process, as the pipeline would.

    Returns (description, yielded (table, rows) in chunk order, rejected, number of chunks).
    """
    options = reader.configure(settings or {})
    description = reader.describe(source, options)
    chunks = reader.plan(source, description, options)

    def run(chunk: ChunkSpec) -> _Result:
        opts = options
        for _ in range(2):
            ctx = ChunkContext(source, chunk)
            try:
                tables = list(reader.read(source, chunk, description, opts, ctx))
            except RestartChunk as restart:
                opts = opts.but(**restart.changes)
                continue
            return _Result(chunk.index, ChunkOutcome(ctx.facts), tables, ctx.rejected)
        raise AssertionError(f"chunk {chunk.index} asked for a second restart")

    file = read_settled(FileChunks(source, type(reader), description, list(chunks)), run)
    results = [file.results[c.index] for c in file.chunks]
    return (description, [t for r in results for t in r.tables],
            [e for r in results for e in r.rejected], len(chunks))


def _rows(pieces: Sequence[tuple[str, pa.Table]]) -> dict[str, pa.Table]:
    out: dict[str, list[pa.Table]] = {}
    for table, rows in pieces:
        out.setdefault(table, []).append(rows)
    return {t: pa.concat_tables(v).combine_chunks() for t, v in out.items()}


class ReaderContract:
    """Checks every reader must pass. Subclasses set `reader` and implement `make_files`."""

    reader: ClassVar[type[Reader]]
    settings: ClassVar[dict[str, Any]] = {}
    """Extra reader settings for every check (e.g. ``{"header": False}``)."""
    small_chunk_size: ClassVar[int] = 64
    """A chunk size that splits the sample files into several chunks."""
    registered: ClassVar[bool] = True
    """The reader is in the registry under its name (False for a plugin not installed)."""
    claims_anything: ClassVar[bool] = False
    """The reader sniffs any bytes (the binary fallback): skip the foreign-bytes check."""

    def make_files(self, tmp_path: Path) -> list[Path]:
        """Small valid files (or directory stores) of the format, with several records."""
        raise NotImplementedError

    @pytest.fixture
    def files(self, tmp_path: Path) -> list[Path]:
        made = self.make_files(tmp_path)
        assert made, "make_files must return at least one file"
        return made

    def sources(self, files: list[Path]) -> Iterator[tuple[Path, Source]]:
        for path in files:
            yield path, source_of(path)

    # --- the class --------------------------------------------------------------------------
    def test_identity_and_registry(self) -> None:
        cls = self.reader
        assert isinstance(cls.name, str) and cls.name.isidentifier()
        assert all(s.startswith(".") for s in cls.suffixes)
        if self.registered:
            assert registry().get(cls.name) is cls

    def test_options_are_typed_and_frozen(self) -> None:
        cls = self.reader
        assert issubclass(cls.options_type, ReaderOptions)
        options = cls.configure({"chunk_size": 1234, "no_such_setting": 1, **self.settings})
        assert isinstance(options, cls.options_type) and options.chunk_size == 1234
        with pytest.raises(dataclasses.FrozenInstanceError):
            options.chunk_size = 1  # type: ignore[misc]
        assert options.but(chunk_size=7).chunk_size == 7

    # --- its files --------------------------------------------------------------------------
    def test_sniffs_its_own_files(self, files: list[Path]) -> None:
        for path, _ in self.sources(files):
            if path.is_dir():
                names = {p.name for p in path.iterdir()}
                assert names & set(self.reader.directory_markers), path
                continue
            score = self.reader.sniff(path.read_bytes()[:65536], str(path))
            assert isinstance(score, int) and 0 < score <= 100, (path, score)

    def test_does_not_claim_foreign_bytes(self, tmp_path: Path) -> None:
        if self.claims_anything:
            return
        junk = bytes(range(256)) * 16
        assert self.reader.sniff(junk, str(tmp_path / "junk.unknown")) == 0

    def test_plan_pickles_and_ids_are_unique(self, files: list[Path]) -> None:
        reader = self.reader()
        options = reader.configure({"chunk_size": self.small_chunk_size, **self.settings})
        for _, source in self.sources(files):
            description = reader.describe(source, options)
            chunks = reader.plan(source, description, options)
            for obj in (source, description, options, chunks):
                assert pickle.loads(pickle.dumps(obj)) is not None
            assert len({c.id for c in chunks}) == len(chunks)
            assert len({c.index for c in chunks}) == len(chunks)
            assert all(c.file_id == source.file_id for c in chunks)
            assert all(c.table is None or c.table in description.tables for c in chunks)

    def test_yields_declared_tables_and_schemas(self, files: list[Path]) -> None:
        reader = self.reader()
        for _, source in self.sources(files):
            description, pieces, _, _ = read_file(reader, source, self.settings)
            for table, rows in pieces:
                assert table in description.tables, table
                assert rows.schema.equals(description.tables[table], check_metadata=False), (
                    table, rows.schema, description.tables[table])

    def test_rows_do_not_depend_on_the_chunk_size(self, files: list[Path]) -> None:
        reader = self.reader()
        for path, source in self.sources(files):
            _, whole, bad_whole, _ = read_file(reader, source,
                                               {**self.settings, "chunk_size": 1 << 30})
            _, split, bad_split, _ = read_file(reader, source, {
                **self.settings, "chunk_size": self.small_chunk_size})
            assert _rows(whole).keys() == _rows(split).keys(), path
            for table, rows in _rows(whole).items():
                assert rows.equals(_rows(split)[table]), (path, table)
            assert [(e.kind, e.error_type, e.byte_offset) for e in bad_whole] == [
                (e.kind, e.error_type, e.byte_offset) for e in bad_split], path

    def test_damaged_file_gives_reader_errors_only(self, files: list[Path],
                                                   tmp_path: Path) -> None:
        reader = self.reader()
        for path in files:
            if path.is_dir():
                continue
            data = path.read_bytes()
            cut = tmp_path / f"cut-{path.name}"
            cut.write_bytes(data[: len(data) // 2])
            try:
                _, _, rejected, _ = read_file(reader, source_of(cut), self.settings)
            except Exception as exc:  # noqa: BLE001 - the point is which kind it is
                assert error_code(exc) != ErrorCode.INTERNAL, repr(exc)
                continue
            for rejection in rejected:
                assert rejection.kind in ("record", "chunk", "file")
                assert rejection.error_type and rejection.message


__all__ = ["ReaderContract", "read_file", "source_of"]
