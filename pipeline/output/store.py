"""The output root: one interface over a local disk and any fsspec filesystem.

Local paths take the fast, durable route (Arrow's own files, fsync, ``os.replace``); anything
else goes through fsspec, where a file is committed when it closes.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline.faults import crash_point


class Store:
    """The output root on any fsspec filesystem, with fast, durable paths for local disks."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = root
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(root, **self.storage_options)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.local = protocol in ("file", "local")
        if self.local:
            self.root = os.path.abspath(self.root)

    def __reduce__(self):  # noqa: ANN204 - rebuild from the URL on workers
        return (Store, (self.url, self.storage_options))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *[p for p in parts if p])

    def makedirs(self, path: str) -> None:
        if self.local:
            os.makedirs(path, exist_ok=True)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def open_write(self, path: str):  # noqa: ANN201 - binary output stream
        """A new file to write; `sync` it after closing to make it durable.

        On local disks this is Arrow's own buffered file, not a Python one: pyarrow's Parquet
        writer then writes without the GIL, where a Python file object made every page write
        wait for it (7 % of a worker thread's time on plain CSV).
        """
        self.makedirs(posixpath.dirname(path))
        if self.local:
            return pa.output_stream(path, compression=None, buffer_size=1 << 20)
        return self.fs.open(path, "wb")

    def sync(self, path: str) -> None:
        """Flush a closed local file to disk (fsync works on any descriptor of the file);
        remote stores commit when the file closes."""
        if not self.local:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        """Move ``src`` over ``dst`` atomically where the filesystem allows it."""
        self.makedirs(posixpath.dirname(dst))
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def remove(self, path: str) -> None:
        try:
            if self.local:
                os.remove(path)
            else:
                self.fs.rm(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        if not self.exists(path):
            return
        if self.local:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            self.fs.rm(path, recursive=True)

    @staticmethod
    def temp_name(path: str) -> str:
        """A sibling name no reader picks up: hidden (pyarrow, Spark) and not ``*.parquet``."""
        head, tail = posixpath.split(path)
        return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        tmp = self.temp_name(path)
        with self.open_write(tmp) as f:
            f.write(data)
        self.sync(tmp)
        self.replace(tmp, path)

    def write_table_atomic(self, path: str, table: pa.Table, compression: str = "zstd") -> None:
        tmp = self.temp_name(path)
        with self.open_write(tmp) as f:
            pq.write_table(table, f, compression=codec(compression))
        self.sync(tmp)
        crash_point("before_rename")
        self.replace(tmp, path)

    def glob(self, pattern: str) -> list[str]:
        if self.local:
            import glob

            return sorted(glob.glob(pattern, recursive=True))
        return sorted(self.fs.glob(pattern))


def codec(compression: str) -> str | None:
    return None if compression == "none" else compression


