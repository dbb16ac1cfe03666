"""A reader that reads nothing, for planning and scheduling at scale (`bench_scale.py`).

Every file is planned as ``ceil(size / chunk_size)`` chunks without opening it, and each chunk
yields one row (its index) without reading a byte, so a run over sparse files measures what
chunkmill itself costs per chunk: planning, the task window, reconciling, journaling and
committing. It is registered like any plugin, through the ``chunkmill.readers`` entry-point
group: `register` writes the entry point's metadata into a directory put on ``sys.path`` (and
``PYTHONPATH``, for worker processes and the CLI), as ``pip install`` of a package would.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.options import ReaderOptions

NAME = "scale"
SCHEMA = pa.schema([("chunk", pa.int64())])
DIST = "chunkmill_scale_bench-0.dist-info"


class ScaleReader(Reader):
    """Chunks of ``chunk_size`` bytes, each one row (the chunk's index); no byte is read."""

    name = NAME
    suffixes = (".scale",)
    threads_ok = True  # reads nothing: the embedded cluster may run it in threads

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        return 0  # chosen with format="scale" only

    def describe(self, source: Source, options: ReaderOptions) -> Description:
        return Description({source.table: SCHEMA})

    def plan(self, source: Source, description: Description,
             options: ReaderOptions) -> list[ChunkSpec]:
        step = options.chunk_size
        return [ChunkSpec(source.file_id, i, off, min(step, source.size - off),
                          weight=min(step, source.size - off))
                for i, off in enumerate(range(0, source.size, step))]

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: ReaderOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        ctx.advance(chunk.offset + chunk.length)
        yield source.table, pa.table([pa.array([chunk.index], pa.int64())], schema=SCHEMA)


def register(where: str | os.PathLike[str]) -> None:
    """Register `ScaleReader` as the ``scale`` reader plugin (metadata under ``where``)."""
    dist = Path(where) / DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chunkmill-scale-bench\n"
                                   "Version: 0\n")
    (dist / "entry_points.txt").write_text(f"[chunkmill.readers]\n{NAME} = "
                                           "scale_reader:ScaleReader\n")
    here = str(Path(__file__).resolve().parent)
    for path in (here, str(Path(where).resolve())):
        if path not in sys.path:
            sys.path.insert(0, path)
        parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if path not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([path, *filter(None, parts)])
    importlib.invalidate_caches()
    import readers

    readers.clear_cache()


def make_inputs(directory: str | os.PathLike[str], files: int, chunks_per_file: int,
                chunk_size: int) -> list[Path]:
    """``files`` sparse files of ``chunks_per_file * chunk_size`` bytes (no block written)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    size = chunks_per_file * chunk_size
    paths = []
    for i in range(files):
        path = root / f"part-{i:07d}.scale"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as f:
                f.truncate(size)
        paths.append(path)
    return paths


__all__ = ["ScaleReader", "register", "make_inputs", "NAME"]
