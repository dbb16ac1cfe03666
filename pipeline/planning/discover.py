"""Turn the user's inputs (files, directories, globs, fsspec URLs) into fingerprinted sources.

Directories are walked recursively; names starting with ``.`` or ``_`` are skipped (the Hive and
Spark convention for hidden and metadata files, which also keeps a previous OUT out of the
inputs). Local walks never follow symlinked directories, so symlink loops cannot trap a run.
A file reached through a symbolic link is read only when the link leads inside the input
roots (the directories of the input arguments), unless ``follow_symlinks``; an input argument
that is itself a link is taken as given. A refused link and a directory that cannot be listed
are not skipped silently: each becomes a failed input (an ``_errors`` row, exit 1).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import SourceNotFound, UsageError
from pipeline.output.layout import table_name
from pipeline.retry import is_transient, retrying
from readers import (
    COMPRESSION_SUFFIXES,
    detect,
    detect_compression,
    detect_directory,
    get_reader,
    strip_compression_suffix,
)
from readers.base import Source, read_head, stable_id

SNIFF_BYTES = 64 * 1024
_GLOB_CHARS = set("*?[")


@dataclass(slots=True)
class Discovered:
    """One input file and the reader chosen for it (or why none could be)."""

    source: Source
    reader: str | None
    error: str | None = None
    skipped: bool = False
    """Unchanged since its last ingest: not sniffed, not read."""
    transient: bool = False
    """The error may pass on retry (network trouble)."""


#: Called with (file_id, fingerprint): True skips the file before any of its bytes are read.
SkipCheck = Callable[[str, str], bool]


def _table_name(arg: str, path: str, is_dir: bool, is_glob: bool) -> str:
    """Default table: a directory's name, a glob's directory, or a file's stem."""
    p = PurePosixPath(path.rstrip("/"))
    if is_glob:
        parent = p.parent
        while any(c in parent.name for c in _GLOB_CHARS) and parent != parent.parent:
            parent = parent.parent
        name = parent.name
    elif is_dir:
        name = p.name
    else:
        name = PurePosixPath(strip_compression_suffix(p.name)).name.split(".")[0]
    return table_name(name.strip("._") or "data")


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


@dataclass(slots=True)
class Expansion:
    """What one input argument stands for."""

    fs: fsspec.AbstractFileSystem
    files: list[str]
    table: str
    """Default table name of its files."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of what was found but cannot be read: unlistable directories, links
    leading out of the input roots."""


class _LinkRule:
    """Which local files reached through symbolic links may be read."""

    def __init__(self, roots: Iterable[str], follow: bool) -> None:
        self.follow = follow
        self.roots = sorted({os.path.realpath(r) for r in roots})

    def allows(self, path: str, refused: list[tuple[str, str]]) -> bool:
        if self.follow:
            return True
        target = os.path.realpath(path)
        if target == os.path.abspath(path) or any(
                target == r or target.startswith(r.rstrip(os.sep) + os.sep)
                for r in self.roots):
            return True
        refused.append((path, f"{path}: a symbolic link to {target}, outside the input "
                              "directories: not read (--follow-symlinks reads it)"))
        return False


def _walk(fs: fsspec.AbstractFileSystem, root: str, links: _LinkRule,
          refused: list[tuple[str, str]]) -> Iterator[str]:
    """Files below ``root``, and whole directories that a reader claims (a Zarr store)."""

    def unlistable(exc: OSError) -> None:
        where = exc.filename if isinstance(exc.filename, str) else root
        refused.append((where, f"{where}: cannot list this directory: "
                               f"{exc.strerror or type(exc).__name__}"))

    if _is_local(fs):
        # never follow links to directories: no symlink loops
        walker = os.walk(root, followlinks=False, onerror=unlistable)
    else:
        walker = fs.walk(root, on_error=unlistable)
    for dirpath, dirnames, filenames in walker:
        if detect_directory(set(filenames)) is not None:
            dirnames[:] = []
            yield dirpath
            continue
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if not _hidden(name):
                full = posixpath.join(dirpath, name)
                if not _is_local(fs):
                    yield full
                elif os.path.isfile(full) and (not os.path.islink(full)
                                               or links.allows(full, refused)):
                    # (not isfile: a dangling link, a fifo.) Walks do not enter linked
                    # directories, so only a file's own name can be a link.
                    yield full


def expand(arg: str, storage_options: dict[str, Any] | None = None, *,
           roots: Iterable[str] | None = None, follow_symlinks: bool = False) -> Expansion:
    """The files of one input argument, their default table, and what was refused.

    ``roots``: the directories links may lead into (default: the argument's own root).
    """
    try:
        fs, path = url_to_fs(arg, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise UsageError(f"{arg}: cannot open this location ({exc})") from exc
    links = _LinkRule(roots if roots is not None else [input_root(arg, storage_options)],
                      follow_symlinks)
    # A path that exists is taken literally, even when its name holds [ ] * or ?.
    is_glob = any(c in path for c in _GLOB_CHARS) and not fs.exists(path)
    refused: list[tuple[str, str]] = []
    if is_glob:
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not files:
            raise SourceNotFound(f"{arg}: the pattern matched no files")
        if _is_local(fs):
            files = [p for p in files if links.allows(p, refused)]
        return Expansion(fs, files, _table_name(arg, path, False, True), refused)
    if not fs.exists(path):
        raise SourceNotFound(f"{arg}: no such file or directory")
    if fs.isdir(path):
        files = list(_walk(fs, path, links, refused))
        return Expansion(fs, files, _table_name(arg, path, True, False), refused)
    return Expansion(fs, [path], _table_name(arg, path, False, False))


def input_root(arg: str, storage_options: dict[str, Any] | None = None) -> str:
    """The directory an input argument lives in: itself for a directory, else its parent
    (for a glob, the directory above its first pattern character)."""
    try:
        fs, path = url_to_fs(arg, **(storage_options or {}))
    except (ValueError, ImportError):
        return arg  # `expand` says what is wrong with it
    if not fs.exists(path):
        while any(c in path for c in _GLOB_CHARS):
            path = posixpath.dirname(path)
    if not fs.isdir(path):
        path = posixpath.dirname(path)
    return os.path.abspath(path) if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    if _is_local(fs):
        return "file://" + os.path.abspath(path)
    return fs.unstrip_protocol(path)


def fingerprint(info: dict[str, Any]) -> str:
    """Size, mtime and the filesystem's own change tokens (inode, ETag): no data is read.

    So a re-run over unchanged files costs one ``stat`` each. A rewrite that keeps the size and
    restores the mtime goes unnoticed, as with make and rsync; ``--force`` re-reads everything.
    """
    tokens = [info.get("size"), _mtime(info)]
    tokens += [info.get(k) for k in ("ino", "ETag", "etag", "md5", "generation", "version_id")
               if info.get(k) is not None]
    return hashlib.blake2b(repr(tokens).encode(), digest_size=16).hexdigest()


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def describe_file(fs: fsspec.AbstractFileSystem, path: str, table: str, forced: str | None,
                  storage_options: dict[str, Any], skip: SkipCheck | None = None) -> Discovered:
    """Fingerprint one file and pick its reader from magic bytes (suffix as tie-breaker)."""
    url = _url(fs, path)
    file_id = stable_id(url)
    options = tuple(sorted(storage_options.items()))
    if fs.isdir(path):
        return _describe_directory(fs, path, url, file_id, table, forced, storage_options)
    try:
        info = fs.info(path)
        size = int(info.get("size") or 0)
        mtime = _mtime(info)
        fp = fingerprint(info)
        stored = Source(url, size, mtime, file_id, fp, table, None, options)
        if skip is not None and skip(file_id, fp):
            return Discovered(stored, None, skipped=True)
        head = stored.read_range(0, SNIFF_BYTES)
        compression = detect_compression(head, path)
        inner_head, inner_path = head, path
        if compression:
            inner_path = strip_compression_suffix(path)
            with fs.open(path, "rb", compression=compression) as f:
                inner_head = read_head(f, SNIFF_BYTES)
    except Exception as exc:  # zlib.error, LZMAError, permissions, ...: this file fails alone
        source = Source(url, 0, None, file_id, "", table, None, options)
        return Discovered(source, None, f"{path}: cannot read: {type(exc).__name__}: {exc}",
                          transient=is_transient(exc))
    source = Source(url, size, mtime, file_id, fp, table, compression, options)
    if forced:
        cls = get_reader(forced)
    else:
        cls = detect(inner_head, inner_path)
    if cls is None:
        return Discovered(source, None, f"{path}: no reader recognises this file")
    if compression and not cls.streams_compressed:
        return Discovered(source, cls.name,
                          f"{path}: the {cls.name} reader cannot read {compression} streams")
    return Discovered(source, cls.name)


def rediscover(found: Discovered, fmt: str | None, storage_options: dict[str, Any]
               ) -> Discovered:
    """A skipped file discovered again, sniffed this time."""
    fs, path = url_to_fs(found.source.url, **storage_options)
    return describe_file(fs, path, found.source.table, fmt, storage_options)


def _describe_directory(fs: fsspec.AbstractFileSystem, path: str, url: str, file_id: str,
                        table: str, forced: str | None, storage_options: dict[str, Any]
                        ) -> Discovered:
    """A directory-shaped input (a Zarr store): size and fingerprint over all its files."""
    h = hashlib.blake2b(digest_size=16)
    size = 0
    mtime: float | None = None
    names: set[str] = set()
    for full, info in sorted(fs.find(path, detail=True).items()):
        rel = full[len(path.rstrip("/")) + 1:]
        names.add(rel.split("/")[0])
        file_size = int(info.get("size") or 0)
        file_mtime = _mtime(info)
        size += file_size
        mtime = file_mtime if mtime is None or (file_mtime or 0) > mtime else mtime
        h.update(f"{rel}:{file_size}:{file_mtime}\n".encode())
    source = Source(url, size, mtime, file_id, h.hexdigest(), table, None,
                    tuple(sorted(storage_options.items())))
    cls = get_reader(forced) if forced else detect_directory(names)
    if cls is None:
        return Discovered(source, None, f"{path}: no reader recognises this directory")
    return Discovered(source, cls.name)


def discover(inputs: Iterable[str], *, table: str | None = None, fmt: str | None = None,
             storage_options: dict[str, Any] | None = None, threads: int = 8,
             skip: SkipCheck | None = None, retries: int = 2,
             follow_symlinks: bool = False) -> list[Discovered]:
    """All input files, deduplicated, in input order; raises SourceNotFound for a bad input.

    What was found but cannot be read (a directory that cannot be listed, a link out of the
    input roots) comes back as a `Discovered` with its error, after the readable files.
    """
    storage_options = storage_options or {}
    inputs = list(inputs)
    if fmt is not None:
        try:
            get_reader(fmt)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from exc
    roots = [input_root(arg, storage_options) for arg in inputs]
    jobs: list[tuple[fsspec.AbstractFileSystem, str, str]] = []
    refused: list[Discovered] = []
    seen: set[str] = set()
    for arg in inputs:
        found = expand(arg, storage_options, roots=roots, follow_symlinks=follow_symlinks)
        for path in found.files:
            key = _url(found.fs, path)
            if key not in seen:
                seen.add(key)
                jobs.append((found.fs, path, table or found.table))
        for path, why in found.refused:
            key = _url(found.fs, path)
            if key not in seen:
                seen.add(key)
                refused.append(_refused(found.fs, path, table or found.table, why,
                                        storage_options))

    def batch(part: list[tuple[fsspec.AbstractFileSystem, str, str]]) -> list[Discovered]:
        return [_with_retries(job, fmt, storage_options, skip, retries) for job in part]

    if all(_is_local(fs) for fs, _, _ in jobs):
        # A local stat and 64 KiB read is mostly Python: threads only fight for the GIL
        # (README, "Measurements behind design choices").
        return batch(jobs) + refused
    # Threads hide remote latency; batches keep the hand-over cost down.
    size = max(1, min(64, len(jobs) // max(1, threads * 4)))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parts = pool.map(batch, [jobs[i:i + size] for i in range(0, len(jobs), size)])
        return [found for part in parts for found in part] + refused


def _refused(fs: fsspec.AbstractFileSystem, path: str, table: str, why: str,
             storage_options: dict[str, Any]) -> Discovered:
    """A failed input for something found but not read (it gets an ``_errors`` row)."""
    url = _url(fs, path)
    source = Source(url, 0, None, stable_id(url), "", table, None,
                    tuple(sorted(storage_options.items())))
    return Discovered(source, None, why)


def _with_retries(job: tuple[fsspec.AbstractFileSystem, str, str], fmt: str | None,
                  storage_options: dict[str, Any], skip: SkipCheck | None,
                  retries: int) -> Discovered:
    """describe_file, again after a transient failure (it reports errors, never raises)."""

    def attempt() -> Discovered:
        found = describe_file(*job, fmt, storage_options, skip)
        if found.error is not None and found.transient:
            raise _TransientDiscovery(found)
        return found

    try:
        return retrying(attempt, retries)
    except _TransientDiscovery as failed:
        return failed.found


class _TransientDiscovery(Exception):  # noqa: N818 - carries a result, not a program error
    transient = True

    def __init__(self, found: Discovered) -> None:
        super().__init__(found.error)
        self.found = found


__all__ = ["Discovered", "Expansion", "discover", "rediscover", "expand", "input_root",
           "fingerprint", "COMPRESSION_SUFFIXES"]
