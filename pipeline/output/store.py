"""The output root: one interface over a local disk (`LocalStore`) and any fsspec filesystem
(`FsspecStore`), so nothing else in chunkmill asks which one it has.

Local paths take the fast, durable route: Arrow's own files (written without the GIL), fsync,
``os.replace``, ``O_APPEND``. Other filesystems go through fsspec, where a file is committed
when it closes and an append is a rewrite.
"""

from __future__ import annotations

import errno
import functools
import glob as globmod
import os
import posixpath
import shutil
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from pipeline.errors import UsageError
from pipeline.faults import crash_point

if TYPE_CHECKING:  # imported where tables are written: `chunkmill status` needs no pyarrow
    import pyarrow as pa

#: fsyncs in flight at once when many files must become durable together.
SYNC_THREADS = 16
#: From this many files on, `LocalStore.sync_many` makes them durable with one ``syncfs(2)``
#: per filesystem instead of an fsync each (git's ``core.fsyncMethod=batch`` idea): a file of
#: thousands of small datasets writes a fragment and a schema file per table.
BATCH_SYNC_FILES = 32

T = TypeVar("T")


def codec(compression: str) -> str | None:
    """pyarrow's name for a ``--compression`` value."""
    return None if compression == "none" else compression


class Store(ABC):
    """OUT on some filesystem: paths under its root, atomic writes, durable renames."""

    local: bool
    """True for a local disk (exclusive create, fsync, O_APPEND work)."""
    filesystem: Any = None
    """What pyarrow's readers take as ``filesystem=`` (None: the local disk)."""

    def __init__(self, url: str, root: str, storage_options: dict[str, Any]) -> None:
        self.url = url
        self.root = root
        self.storage_options = storage_options

    def __reduce__(self):  # noqa: ANN204 - rebuilt from its URL on workers
        return (open_store, (self.url, self.storage_options))

    def path(self, *parts: str) -> str:
        """The path of ``parts`` under the root."""
        return posixpath.join(self.root, *[p for p in parts if p])

    def rel(self, path: str) -> str:
        """``path`` relative to the root (the form the journal keeps)."""
        return path[len(self.root):].lstrip("/")

    @abstractmethod
    def makedirs(self, path: str) -> None: ...

    @abstractmethod
    def open_write(self, path: str) -> Any:
        """A new binary file to write; `sync` it after closing to make it durable."""

    @abstractmethod
    def open_read(self, path: str) -> BinaryIO: ...

    def sync(self, path: str) -> None:  # noqa: B027 - remote stores commit on close
        """Make a closed file durable (remote stores commit when the file closes)."""

    def sync_many(self, paths: Sequence[str]) -> None:
        """`sync` every one of ``paths`` (a chunk's fragments, the tables' schema files)."""
        for path in paths:
            self.sync(path)

    @abstractmethod
    def replace(self, src: str, dst: str) -> None:
        """Move ``src`` over ``dst``, atomically where the filesystem allows it."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete a file; no error if it is not there."""

    @abstractmethod
    def rmtree(self, path: str) -> None: ...

    @abstractmethod
    def glob(self, pattern: str) -> list[str]: ...

    @abstractmethod
    def append(self, path: str, data: bytes, sync: bool = True) -> None:
        """Add ``data`` at the end of ``path`` (created if missing), durably unless ``sync``
        is False (then a crash of the machine, not of the process, may lose it). Lines stay
        lines: ``data`` ending in a newline starts on a line of its own."""

    @abstractmethod
    def create_exclusive(self, path: str, data: bytes) -> None:
        """Write ``path`` only if it does not exist yet, atomically; `FileExistsError` if it
        does. On object stores this is a conditional write (S3 ``If-None-Match: *``)."""

    def uri(self, path: str) -> str:
        """``path`` as a URL other libraries (delta-rs) open: a local path, or
        ``protocol://...``."""
        return path

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as f:
            return f.read()

    @staticmethod
    def temp_name(path: str) -> str:
        """A sibling name no reader picks up: hidden (pyarrow, Spark) and not ``*.parquet``."""
        head, tail = posixpath.split(path)
        return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        self.write_many_atomic([(path, data)])

    def write_many_atomic(self, items: Sequence[tuple[str, bytes]]) -> None:
        """`write_bytes_atomic` for many files: all written, then synced together, then
        renamed in place (each file is whole or absent, as with one)."""
        temps = [self._write_temp(path, data) for path, data in items]
        self.sync_many(temps)
        for tmp, (path, _) in zip(temps, items, strict=True):
            self.replace(tmp, path)

    def _write_temp(self, path: str, data: bytes) -> str:
        """``data`` written whole (not yet synced) beside ``path``; returns the temp name."""
        tmp = self.temp_name(path)
        with self.open_write(tmp) as f:
            f.write(data)
        return tmp

    def write_table_atomic(self, path: str, table: pa.Table, compression: str = "zstd") -> None:
        import pyarrow.parquet as pq

        tmp = self.temp_name(path)
        with self.open_write(tmp) as f:
            pq.write_table(table, f, compression=codec(compression))
        self.sync(tmp)
        crash_point("before_rename")
        self.replace(tmp, path)


class LocalStore(Store):
    local = True

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def open_write(self, path: str) -> Any:
        # Arrow's own buffered file, not a Python one: pyarrow's Parquet writer then writes
        # without the GIL, where a Python file object made every page write wait for it.
        import pyarrow as pa

        return self._in_dir(path, lambda: pa.output_stream(path, compression=None,
                                                           buffer_size=1 << 20))

    def _in_dir(self, path: str, make: Callable[[], T]) -> T:
        """``make()``, which creates ``path``; again after making its directory if it was missing.

        The directory is there nearly always (a staging directory takes a chunk's every
        fragment): made only on demand, not before each file (a file of thousands of small
        datasets has a table directory and files in it for each)."""
        try:
            return make()
        except FileNotFoundError:
            self.makedirs(posixpath.dirname(path))
        return make()

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def sync(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)  # fsync works on any descriptor of the file
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temp(self, path: str, data: bytes) -> str:
        # Small blobs (schema files, one per table): Python's own file, a fifth of the cost
        # of opening Arrow's buffered stream. Written one after another (`write_many_atomic`):
        # on a pool, handing out thousands of such writes cost more than they do (lock waits
        # in the submitting thread).
        tmp = self.temp_name(path)
        with self._in_dir(tmp, lambda: open(tmp, "wb")) as f:
            f.write(data)
        return tmp

    def sync_many(self, paths: Sequence[str]) -> None:
        if len(paths) < 2:
            super().sync_many(paths)
            return
        if len(paths) >= BATCH_SYNC_FILES and sync_filesystems(paths):
            return
        # Concurrent fsyncs share the filesystem's journal commits: one after another, each
        # waits for its own, which made a file of thousands of small datasets (a fragment and
        # a schema file per table) spend most of its time waiting on the disk.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(SYNC_THREADS, len(paths))) as pool:
            list(pool.map(self.sync, paths))

    def replace(self, src: str, dst: str) -> None:
        try:
            os.replace(src, dst)
            return
        except FileNotFoundError:
            if not os.path.exists(src):
                raise
        self.makedirs(posixpath.dirname(dst))  # the first file of a new table or partition
        os.replace(src, dst)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def remove(self, path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def glob(self, pattern: str) -> list[str]:
        if pattern.startswith(self.root):  # OUT's own name is no pattern: /data/run[2]/out
            pattern = globmod.escape(self.root) + pattern[len(self.root):]
        return sorted(globmod.glob(pattern, recursive=True))

    def append(self, path: str, data: bytes, sync: bool = True) -> None:
        fd = self._in_dir(path, lambda: os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT,
                                                0o644))
        try:
            size = os.fstat(fd).st_size
            if size and data.endswith(b"\n") and os.pread(fd, 1, size - 1) != b"\n":
                # A kill in the middle of a long write leaves its line without an end: this
                # one would join it and be lost with it (a journal entry, a commit).
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def create_exclusive(self, path: str, data: bytes) -> None:
        # Written whole beside the target, then linked in: link() fails if the name exists,
        # so no reader ever sees the object half-written.
        tmp = self.temp_name(path)
        self.makedirs(posixpath.dirname(path))
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        finally:
            os.remove(tmp)


class FsspecStore(Store):
    local = False

    def __init__(self, url: str, root: str, storage_options: dict[str, Any], fs: Any) -> None:
        super().__init__(url, root, storage_options)
        self.fs = fs
        self.filesystem = fs

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def open_write(self, path: str) -> Any:
        self.makedirs(posixpath.dirname(path))
        return self.fs.open(path, "wb")

    def open_read(self, path: str) -> BinaryIO:
        return self.fs.open(path, "rb")

    def replace(self, src: str, dst: str) -> None:
        self.makedirs(posixpath.dirname(dst))
        self.fs.mv(src, dst)

    def exists(self, path: str) -> bool:
        self.fs.invalidate_cache(path)  # another process (worker, run) may have written it
        return self.fs.exists(path)

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def glob(self, pattern: str) -> list[str]:
        self.fs.invalidate_cache()  # listings cached by s3fs would hide other writers' objects
        return sorted(self.fs.glob(pattern))

    def append(self, path: str, data: bytes, sync: bool = True) -> None:
        # A rewrite: fine for small state files, never used for the journal (see journal.py).
        old = self.fs.cat_file(path) if self.fs.exists(path) else b""
        if old and not old.endswith(b"\n") and data.endswith(b"\n"):
            data = b"\n" + data
        self.write_bytes_atomic(path, old + data)

    def create_exclusive(self, path: str, data: bytes) -> None:
        self.makedirs(posixpath.dirname(path))
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise
        except TypeError as exc:  # an fsspec filesystem without exclusive create
            raise NotImplementedError(f"{self.url}: no exclusive create on this store") from exc
        self.fs.invalidate_cache(posixpath.dirname(path))

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)


@functools.cache
def _syncfs() -> Any:
    """libc's ``syncfs`` (Linux 5.8 on), or None where there is none. Older kernels return
    success even when writing a file back failed: an fsync per file is the only safe way."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if tuple(int(p) for p in os.uname().release.split(".")[:2]) < (5, 8):
            return None
    except ValueError:  # a release string this cannot read: do not guess
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def sync_filesystems(paths: Sequence[str]) -> bool:
    """Make ``paths`` (closed files) durable with one ``syncfs(2)`` per filesystem holding
    them; False, having done nothing, where the system has no ``syncfs``.

    syncfs writes back and waits for every dirty page and inode of the filesystem, theirs
    among them, and (Linux 5.8 on) reports a writeback error of any file on it as fsync
    would: an error raises `OSError` just the same.
    """
    import ctypes

    syncfs = _syncfs()
    if syncfs is None:
        return False
    devices: dict[int, str] = {}
    for folder in {posixpath.dirname(p) for p in paths}:
        devices.setdefault(os.stat(folder).st_dev, folder)
    for folder in devices.values():
        fd = os.open(folder, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                err = ctypes.get_errno()
                if err == errno.ENOSYS:  # a kernel (or sandbox) without it
                    return False
                raise OSError(err, f"syncfs: {os.strerror(err)}", folder)
        finally:
            os.close(fd)
    return True


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """The store for ``url`` (a directory or an fsspec URL)."""
    options = dict(storage_options or {})
    if "://" not in url and "::" not in url:
        # A plain path, as fsspec's local filesystem reads it, without importing fsspec
        # (and asyncio with it): `chunkmill status` of a local OUT needs neither.
        return LocalStore(url, os.path.abspath(os.path.expanduser(url)), options)
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url, **options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return LocalStore(url, os.path.abspath(root), options)
    if any(c in root for c in "*?["):
        # fsspec's mv, rm and glob read them as a pattern: `out[1]` would also match `out1`,
        # another output, whose files a run would then list, or delete.
        raise UsageError(f"{url}: an output on an object store cannot have *, ? or [ in its "
                         "path (fsspec reads them as a pattern); choose another name")
    return FsspecStore(url, root, options, fs)


__all__ = ["Store", "LocalStore", "FsspecStore", "open_store", "codec"]
