"""Staged chunks that outlive their run, so an interrupted file resumes where it stopped.

A chunk task writes its fragments under ``OUT/_chunkmill/staging/``; once the client has its
manifest, it journals a ``staged`` entry: the fragments, row and error counts, the reader's
facts, and a *token* of everything that decides what the chunk's fragments hold (the file's
fingerprint, the output options, the reader and its options, the chunk's bounds and
selector, the schemas it was parsed into, the partitioning and codec). A later run that plans
the same chunk with the same token, and finds every staged file still there, takes the entry
as the chunk's result instead of reading it again; anything else is redone. Reconciliation
then checks reused and new chunks alike, exactly as within one run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
from dataclasses import fields
from typing import Any

from pipeline.execution.task import ChunkManifest
from pipeline.output.journal import StagedEntry
from pipeline.output.layout import STATE_DIR
from pipeline.output.store import Store
from pipeline.output.writer import Fragment, SinkSpec
from readers.base import ChunkSpec, Description, Source
from readers.options import ReaderOptions

STAGING = "staging"


def chunk_token(source: Source, reader: str, chunk: ChunkSpec, description: Description,
                options: ReaderOptions, sink: SinkSpec, config: str,
                cache: dict[tuple[str, ...], str] | None = None) -> str:
    """What decides the bytes of a chunk's fragments; equal tokens mean reusable fragments.

    ``cache``: one per file (its source, reader options, sink and config are the same for all
    its chunks), so the file's part, with its schemas serialized, is hashed once per set of
    tables rather than once per chunk.
    """
    if chunk.table is None:
        tables = tuple(description.tables)
        if len(tables) > 1:
            tables = tuple(sorted(tables))
    else:
        tables = (chunk.table,) if chunk.table in description.tables else ()
    base = cache.get(tables) if cache is not None else None
    if base is None:
        schemas = {t: description.tables[t].serialize().to_pybytes().hex() for t in tables}
        blob = json.dumps([source.fingerprint, config, reader, repr(options), schemas,
                           list(sink.partition_by), sink.compression, sink.row_group_rows,
                           sink.table_format])
        base = hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()
        if cache is not None:
            cache[tables] = base
    blob = f"{base}|{chunk.index}|{chunk.offset}|{chunk.length}|{chunk.table!r}|" \
        f"{chunk.selector!r}"
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def staged_entry(manifest: ChunkManifest, token: str, store: Store, run_id: str
                 ) -> dict[str, Any]:
    """The journal entry that lets a later run reuse ``manifest``'s staged fragments."""
    fragments = [_fragment_entry(f, store) for f in manifest.fragments]
    # The keys in this order, ints and text: what `StagedEntry` promises its encoder.
    return StagedEntry(
        event="staged", file_id=str(manifest.file_id), run=str(run_id),
        index=int(manifest.index), chunk_id=str(manifest.chunk_id), token=str(token),
        rows=int(manifest.rows), bytes_read=int(manifest.bytes_read),
        error_count=int(manifest.error_count), record_errors=int(manifest.record_errors),
        fragments=fragments, facts=_encode(manifest.facts))


_FRAGMENT_FIELDS = tuple(f.name for f in fields(Fragment))


def _fragment_entry(fragment: Fragment, store: Store) -> dict[str, Any]:
    """``asdict(fragment)`` with paths relative to OUT, without asdict's recursive deep copy
    (a chunk of hundreds of one-row tables journals as many fragments)."""
    entry = {name: getattr(fragment, name) for name in _FRAGMENT_FIELDS}
    entry.update(staged=store.rel(fragment.staged), final=store.rel(fragment.final))
    if fragment.values is not None:
        entry["values"] = dict(fragment.values)
    return entry


def reuse(entry: dict[str, Any] | None, token: str, store: Store) -> ChunkManifest | None:
    """The manifest ``entry`` stands for, if its token matches and its files are all there."""
    if entry is None or entry.get("token") != token:
        return None
    try:
        fragments = [Fragment(f["table"], f["partition"], store.path(f["staged"]),
                              store.path(f["final"]), int(f["rows"]), int(f["bytes"]),
                              f.get("values"), f.get("stats", ""), int(f.get("mtime", 0)))
                     for f in entry["fragments"]]
        facts = _decode(entry.get("facts"))
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError, AttributeError):
        return None  # written by another version: redo the chunk
    if not all(store.exists(f.staged) for f in fragments):
        return None
    return ChunkManifest(entry["chunk_id"], entry["file_id"], int(entry["index"]),
                         rows=int(entry["rows"]), bytes_read=int(entry["bytes_read"]),
                         fragments=fragments, error_count=int(entry["error_count"]),
                         record_errors=int(entry.get("record_errors", 0)),
                         facts=facts, worker="(staged by an earlier run)")


def clean_staging(store: Store, keep: set[str], runs: list[str] | None = None) -> None:
    """Delete staged files no reusable entry names (relative paths in ``keep``); only under
    the staging directories of ``runs``, if given (runs of other live writers keep theirs)."""
    if runs is not None:
        for run in runs:
            root = store.path(STATE_DIR, STAGING, run)
            for path in store.glob(store.path(STATE_DIR, STAGING, run, "**", "*")):
                if path.endswith(".parquet") and store.rel(path) not in keep:
                    store.remove(path)
            if not any(k.startswith(store.rel(root) + "/") for k in keep):
                store.rmtree(root)
        return
    root = store.path(STATE_DIR, STAGING)
    if not keep:
        store.rmtree(root)
        return
    for path in store.glob(store.path(STATE_DIR, STAGING, "**", "*")):
        if path.endswith(".parquet") and store.rel(path) not in keep:
            store.remove(path)


def kept_files(staged: dict[str, dict[int, dict[str, Any]]]) -> set[str]:
    """Relative paths of every staged file the journal's entries name."""
    return {f.get("staged") for chunks in staged.values() for e in chunks.values()
            for f in e.get("fragments", ())}


# Facts are the readers' own small dataclasses; pickled, but only reader classes and plain
# values may come back out of a journal (it is data on disk, not code).
_SAFE_BUILTINS = {"bytes", "bytearray", "set", "frozenset", "tuple", "list", "dict", "int",
                  "float", "str", "bool", "complex"}


class _FactsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module.split(".")[0] in ("readers", "numpy", "copyreg") or _is_reader_module(module):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in staged facts")


def _is_reader_module(module: str) -> bool:
    from readers import registry

    return any(cls.__module__.split(".")[0] == module.split(".")[0]
               for cls in registry().values())


def _encode(facts: Any) -> str | None:
    if facts is None:
        return None
    return base64.b64encode(pickle.dumps(facts, protocol=5)).decode()


def _decode(text: str | None) -> Any:
    if text is None:
        return None
    return _FactsUnpickler(io.BytesIO(base64.b64decode(text))).load()


__all__ = ["chunk_token", "staged_entry", "reuse", "clean_staging", "kept_files", "STAGING"]
