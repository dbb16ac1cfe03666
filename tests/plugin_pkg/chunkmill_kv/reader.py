"""A complete chunkmill reader for a made-up format: a ``KV1`` magic line, then ``key=value``.

    KV1
    colour=red
    size=3

Each line becomes a row of the file's default table (columns ``key`` and ``value``). The file is
split into byte ranges of ``chunk_size``; a line belongs to the range holding its first byte, so
ranges can be read independently and in parallel. Lines without ``=`` go to ``_errors``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import BadFile
from readers.options import ReaderOptions

MAGIC = b"KV1\n"
SCHEMA = pa.schema([("key", pa.string()), ("value", pa.string())])


class KVReader(Reader):
    """``key=value`` lines after a ``KV1`` magic line."""

    name = "kv"
    suffixes = (".kv",)

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        return 95 if head.startswith(MAGIC) else 0  # magic bytes: near certain

    def describe(self, source: Source, options: ReaderOptions) -> Description:
        if source.read_range(0, len(MAGIC)) != MAGIC:
            raise BadFile("byte 0: missing the KV1 magic line", offset=0)
        return Description({source.table: SCHEMA}, {"version": 1})

    def plan(
        self, source: Source, description: Description, options: ReaderOptions
    ) -> list[ChunkSpec]:
        step = options.chunk_size
        return [
            ChunkSpec(
                source.file_id,
                i,
                off,
                min(step, source.size - off),
                weight=min(step, source.size - off),
            )
            for i, off in enumerate(range(len(MAGIC), source.size, step))
        ]

    def read(
        self,
        source: Source,
        chunk: ChunkSpec,
        description: Description,
        options: ReaderOptions,
        ctx: ChunkContext,
    ) -> Iterator[tuple[str, pa.Table]]:
        keys: list[str] = []
        values: list[str] = []
        end = chunk.offset + chunk.length
        with source.open() as f:  # opened here, on the worker: file handles do not pickle
            f.seek(chunk.offset - 1)
            if f.read(1) != b"\n":
                f.readline()  # a line started in the previous range: it belongs there
            pos = f.tell()
            while pos < end:
                line = f.readline()
                if not line:
                    break
                key, sep, value = line.rstrip(b"\r\n").decode("utf-8", "replace").partition("=")
                if sep:
                    keys.append(key)
                    values.append(value)
                else:
                    ctx.reject(
                        error_type="KVSyntax",
                        byte_offset=pos,
                        raw=line,
                        message=f"{source.path}: line without '=' at byte {pos}",
                    )
                pos += len(line)
        if keys:
            yield source.table, pa.table([keys, values], schema=SCHEMA)
