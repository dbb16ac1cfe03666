"""Turn the user's inputs (files, directories, globs, fsspec URLs) into fingerprinted sources.

Directories are walked recursively; names starting with ``.`` or ``_`` are skipped (the Hive and
Spark convention for hidden and metadata files). The same holds for what a glob matches below
its directory (unless the pattern itself names such files: ``'data/_*.csv'``) and for an input
argument whose own name is hidden, so ``dir/``, ``'dir/*'`` and the shell's expansion of
``dir/*`` give the same files. chunkmill's own output is never an input: OUT itself, and any
directory holding ``_chunkmill/`` (an earlier OUT), wherever it lies, is skipped, and an input
inside one is skipped too.

Each file gets a *home*, the directory that names its table (`pipeline.planning.grouping`):
the input directory for a walk, the directory above a glob's first pattern character, the
file's own directory for a file named as an argument; hive partition directories
(``day=2024-01-01``) are climbed out of. A file reached in several ways takes the shallowest
home, so the order of the arguments does not matter.

Local walks never follow symlinked directories, so symlink loops cannot trap a run.
A file reached through a symbolic link is read only when the link leads inside the input
roots (the directories of the input arguments), unless ``follow_symlinks``; an input argument
that is itself a link is taken as given. A refused link and a directory that cannot be listed
are not skipped silently: each becomes a failed input (an ``_errors`` row, exit 1).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import SourceNotFound, UsageError
from pipeline.output.layout import STATE_DIR, table_name
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

log = logging.getLogger("chunkmill.discover")

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
    home: str = ""
    """The directory that names the file's table (see the module docstring)."""
    named: bool = False
    """Given by name as an input argument (not found by a walk or a pattern)."""


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


def _is_partition_dir(name: str) -> bool:
    key, eq, _ = name.partition("=")
    return bool(eq and key)


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
    home: str = ""
    """The directory that names the files' table (a file argument: its directory)."""
    named: bool = False
    """The argument is a file named as such."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of what is never an input: hidden names, chunkmill's own output."""
    dropped: bool = False
    """The argument itself is never an input (its own name is hidden, or it is chunkmill
    output), or every file its pattern matched is not."""


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


class _Outputs:
    """Where chunkmill's own output lies: the OUT of this run, and any directory that holds
    ``_chunkmill/`` (an earlier OUT, under whatever name or path it is reached)."""

    def __init__(self, outs: Iterable[str], storage_options: dict[str, Any]) -> None:
        self.outs: set[str] = set()
        for out in outs:
            try:
                fs, path = url_to_fs(out, **storage_options)
            except (ValueError, ImportError):
                continue
            self.outs.add(self._key(fs, path))
        self.known: dict[str, bool] = {}

    @staticmethod
    def _key(fs: fsspec.AbstractFileSystem, path: str) -> str:
        if _is_local(fs):
            return "file://" + os.path.realpath(path)
        return fs.unstrip_protocol(path.rstrip("/"))

    def is_output(self, fs: fsspec.AbstractFileSystem, path: str,
                  entries: Iterable[str] | None = None) -> bool:
        """``path`` is OUT or holds chunkmill's state (``entries``: its subdirectories' names,
        when a walk has listed them already)."""
        key = self._key(fs, path)
        if key in self.outs:
            return True
        if entries is not None:
            return STATE_DIR in entries
        if key not in self.known:
            try:
                self.known[key] = bool(fs.isdir(posixpath.join(path, STATE_DIR)))
            except Exception:  # noqa: BLE001 - cannot tell: not an output as far as we know
                self.known[key] = False
        return self.known[key]

    def holding(self, fs: fsspec.AbstractFileSystem, path: str) -> str | None:
        """The output directory that ``path`` is or lies in, if any."""
        here = os.path.abspath(path) if _is_local(fs) else path.rstrip("/")
        while here:
            if self.is_output(fs, here):
                return here
            parent = posixpath.dirname(here)
            if parent == here:
                return None
            here = parent
        return None

    @staticmethod
    def why(path: str, output: str) -> str:
        where = "" if output.rstrip("/") == path.rstrip("/") else f" inside {output}"
        return (f"{path}: chunkmill output{where} (it holds {STATE_DIR}/ or is --out): never "
                "an input")


def _walk(fs: fsspec.AbstractFileSystem, root: str, links: _LinkRule,
          refused: list[tuple[str, str]], outputs: _Outputs,
          skipped: list[tuple[str, str]]) -> Iterator[str]:
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
        if outputs.is_output(fs, dirpath, dirnames):
            dirnames[:] = []
            skipped.append((dirpath, outputs.why(dirpath, dirpath)))
            continue
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


def _glob_root(path: str) -> str:
    """The directory above a pattern's first pattern character."""
    while any(c in path for c in _GLOB_CHARS):
        path = posixpath.dirname(path)
    return path


def _hidden_below(match: str, root: str, pattern: str) -> bool:
    """A match with a hidden name below the pattern's directory, which the pattern did not
    ask for (``'data/*'`` skips ``data/_SUCCESS``; ``'data/_*'`` matches it)."""
    below = posixpath.relpath(match, root) if root else match
    asked = any(_hidden(part) for part in posixpath.relpath(pattern, root).split("/"))
    return not asked and any(_hidden(part) for part in below.split("/"))


def _home(fs: fsspec.AbstractFileSystem, directory: str) -> str:
    """``directory`` as a home: out of hive partition directories, in the form of
    `Source.path` (an absolute local path, or a URL)."""
    if _is_local(fs):
        directory = os.path.abspath(directory)
    else:
        directory = directory.rstrip("/")
    while _is_partition_dir(posixpath.basename(directory)):
        parent = posixpath.dirname(directory)
        if parent == directory or not parent:
            break
        directory = parent
    return directory if _is_local(fs) else fs.unstrip_protocol(directory)


def _own_name(path: str) -> str:
    """The name an argument gives itself (``.`` and ``..`` are not names)."""
    name = posixpath.basename(path.rstrip("/"))
    return "" if name in (".", "..") else name


def expand(arg: str, storage_options: dict[str, Any] | None = None, *,
           roots: Iterable[str] | None = None, follow_symlinks: bool = False,
           outputs: Iterable[str] = ()) -> Expansion:
    """The files of one input argument, their default table and home, and what was refused
    or skipped.

    ``roots``: the directories links may lead into (default: the argument's own root);
    ``outputs``: OUT directories, never read (nor is any directory holding ``_chunkmill/``).
    """
    storage_options = storage_options or {}
    try:
        fs, path = url_to_fs(arg, **storage_options)
    except (ValueError, ImportError) as exc:
        raise UsageError(f"{arg}: cannot open this location ({exc})") from exc
    own = outputs if isinstance(outputs, _Outputs) else _Outputs(outputs, storage_options)
    links = _LinkRule(roots if roots is not None else [input_root(arg, storage_options)],
                      follow_symlinks)
    # A path that exists is taken literally, even when its name holds [ ] * or ?.
    is_glob = any(c in path for c in _GLOB_CHARS) and not fs.exists(path)
    refused: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    if is_glob:
        root = _glob_root(path)
        found = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not found:
            raise SourceNotFound(f"{arg}: the pattern matched no files")
        files = []
        for p in found:
            output = own.holding(fs, posixpath.dirname(p))
            if _hidden_below(p, root, path):
                skipped.append((p, f"{p}: a hidden name (starting with '_' or '.'): never an "
                                   "input"))
            elif output is not None:
                skipped.append((p, own.why(p, output)))
            else:
                files.append(p)
        if _is_local(fs):
            files = [p for p in files if links.allows(p, refused)]
        return Expansion(fs, files, _table_name(arg, path, False, True), refused,
                         _home(fs, root), False, skipped, dropped=not files and not refused)
    if not fs.exists(path):
        raise SourceNotFound(f"{arg}: no such file or directory")
    is_dir = fs.isdir(path)
    directory = path if is_dir else posixpath.dirname(path)
    home = _home(fs, directory)
    table = _table_name(arg, path, is_dir, False)
    if _hidden(_own_name(path)):
        return Expansion(fs, [], table, home=home, dropped=True, skipped=[(
            path, f"{path}: a hidden name (starting with '_' or '.'): never an input, as in "
                  "directory walks")])
    output = own.holding(fs, path)
    if output is not None:
        return Expansion(fs, [], table, home=home, dropped=True,
                         skipped=[(path, own.why(path, output))])
    if is_dir:
        files = list(_walk(fs, path, links, refused, own, skipped))
        return Expansion(fs, files, table, refused, home, False, skipped)
    return Expansion(fs, [path], table, home=home, named=True)


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


def file_info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """``fs.info(path)``, with what `fingerprint` and discovery use of it from one ``os.stat``
    for a local file: fsspec's local ``info`` costs 7x the stat (54 against 8 us a file)."""
    if not _is_local(fs):
        return fs.info(path)
    st = os.stat(path)  # follows a link, as fsspec's size, mtime and inode do
    kind = ("directory" if stat.S_ISDIR(st.st_mode) else
            "file" if stat.S_ISREG(st.st_mode) else "other")
    return {"name": path, "size": st.st_size, "type": kind, "mtime": st.st_mtime,
            "ino": st.st_ino}


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
    try:
        # One stat: ``fs.isdir`` is ``info`` again (a stat per small file adds up).
        info = file_info(fs, path)
        if info.get("type") == "directory":
            return _describe_directory(fs, path, url, file_id, table, forced, storage_options)
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
    again = describe_file(fs, path, found.source.table, fmt, storage_options)
    again.home, again.named = found.home, found.named
    return again


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
             follow_symlinks: bool = False, outputs: Iterable[str] = ()) -> list[Discovered]:
    """All input files, deduplicated, in input order; raises SourceNotFound for a bad input.

    What was found but cannot be read (a directory that cannot be listed, a link out of the
    input roots) comes back as a `Discovered` with its error, after the readable files.
    ``outputs``: OUT directories, never read as inputs. Raises SourceNotFound too when every
    argument is skipped (a hidden name, chunkmill output), since nothing would be read.
    """
    storage_options = storage_options or {}
    inputs = list(inputs)
    if fmt is not None:
        try:
            get_reader(fmt)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from exc
    roots = [input_root(arg, storage_options) for arg in inputs]
    own = _Outputs(outputs, storage_options)
    jobs: dict[str, _Job] = {}
    refused: list[Discovered] = []
    seen: set[str] = set()
    skipped: list[tuple[str, str]] = []
    args_left = 0
    for arg in inputs:
        found = expand(arg, storage_options, roots=roots, follow_symlinks=follow_symlinks,
                       outputs=own)
        skipped += found.skipped
        args_left += not found.dropped
        for path in found.files:
            key = _url(found.fs, path)
            job = _Job(found.fs, path, table or found.table, found.home, found.named)
            if key not in jobs:
                jobs[key] = job
            elif job.rank < jobs[key].rank:
                # Reached twice (a file inside a directory also given): the shallowest home
                # wins, whatever the order of the arguments.
                jobs[key] = replace(jobs[key], home=job.home, named=job.named)
            seen.add(key)
        for path, why in found.refused:
            key = _url(found.fs, path)
            if key not in seen:
                seen.add(key)
                refused.append(_refused(found.fs, path, table or found.table, why,
                                        storage_options))
    for _, why in skipped:
        log.info("chunkmill: skipped %s", why)
    if inputs and not args_left:
        raise SourceNotFound("no input left: " + "; ".join(why for _, why in skipped[:3])
                             + ("; ..." if len(skipped) > 3 else ""))
    work = list(jobs.values())

    def batch(part: list[_Job]) -> list[Discovered]:
        return [_with_retries(job, fmt, storage_options, skip, retries) for job in part]

    if all(_is_local(job.fs) for job in work):
        # A local stat and 64 KiB read is mostly Python: threads only fight for the GIL
        # (README, "Measurements behind design choices").
        return batch(work) + refused
    # Threads hide remote latency; batches keep the hand-over cost down.
    size = max(1, min(64, len(work) // max(1, threads * 4)))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parts = pool.map(batch, [work[i:i + size] for i in range(0, len(work), size)])
        return [found for part in parts for found in part] + refused


@dataclass(frozen=True, slots=True)
class _Job:
    """One file to fingerprint and sniff, and where it was found."""

    fs: fsspec.AbstractFileSystem
    path: str
    table: str
    home: str
    named: bool

    @property
    def rank(self) -> tuple[int, bool, str]:
        return len(self.home), self.named, self.home


def _refused(fs: fsspec.AbstractFileSystem, path: str, table: str, why: str,
             storage_options: dict[str, Any]) -> Discovered:
    """A failed input for something found but not read (it gets an ``_errors`` row)."""
    url = _url(fs, path)
    source = Source(url, 0, None, stable_id(url), "", table, None,
                    tuple(sorted(storage_options.items())))
    return Discovered(source, None, why, home=_home(fs, posixpath.dirname(path)))


def _with_retries(job: _Job, fmt: str | None, storage_options: dict[str, Any],
                  skip: SkipCheck | None, retries: int) -> Discovered:
    """describe_file, again after a transient failure (it reports errors, never raises)."""

    def attempt() -> Discovered:
        found = describe_file(job.fs, job.path, job.table, fmt, storage_options, skip)
        if found.error is not None and found.transient:
            raise _TransientDiscovery(found)
        return found

    try:
        found = retrying(attempt, retries)
    except _TransientDiscovery as failed:
        found = failed.found
    found.home, found.named = job.home, job.named
    return found


class _TransientDiscovery(Exception):  # noqa: N818 - carries a result, not a program error
    transient = True

    def __init__(self, found: Discovered) -> None:
        super().__init__(found.error)
        self.found = found


__all__ = ["Discovered", "Expansion", "discover", "rediscover", "expand", "input_root",
           "fingerprint", "COMPRESSION_SUFFIXES"]
