"""Names of things in OUT: the reserved directories, the record column every table has, the one
rule that turns any table name into a safe directory name, and how input paths are stored."""

from __future__ import annotations

import functools
import hashlib

FILE_ID = "_file_id"
"""Column of every record row: the stable id of its source file."""
STATE_DIR = "_chunkmill"
"""Run state: journal, lock, run reports, staging. Users read it through ``chunkmill status``."""
CATALOG_DIR = "_catalog"
ERRORS_DIR = "_errors"
RESERVED = (STATE_DIR, CATALOG_DIR, ERRORS_DIR)

MAX_TABLE_BYTES = 200
"""Longest table name (UTF-8 bytes); longer names are cut and end in a hash of the full name."""


@functools.lru_cache(maxsize=4096)
def table_name(name: str) -> str:
    """The directory name a table gets in OUT, whatever produced the name.

    Every table name passes through here: ``--table``, a file's stem, an HDF5 path, a FITS
    EXTNAME, a plugin's description. Letters and digits of any script, ``-``, ``_`` and ``.``
    stay; anything else (``/``, ``\\``, spaces, controls) becomes ``_``; leading ``.`` and
    ``_`` go, so no name is hidden, climbs out of OUT (``..``) or is one of the reserved
    ``_errors``, ``_catalog`` and ``_chunkmill``. The same name always gives the same result,
    and a result is its own result (readers' names that are already clean are unchanged).
    """
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip("._")
    cleaned = cleaned or "data"
    if len(cleaned.encode("utf-8")) > MAX_TABLE_BYTES:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"),
                                 digest_size=8).hexdigest()
        cut, size = [], 0
        for c in cleaned:
            size += len(c.encode("utf-8"))
            if size > MAX_TABLE_BYTES - len(digest) - 1:
                break
            cut.append(c)
        cleaned = "".join(cut) + "-" + digest
    return cleaned


def path_bytes(path: str) -> bytes:
    """The exact bytes of a path (POSIX names are bytes; Python keeps undecodable ones as
    lone surrogates, ``os.fsdecode``'s ``surrogateescape``)."""
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte
        return path.encode("utf-8", "surrogatepass")


def path_text(path: str) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 are shown as ``\\xNN``.

    What the ``path`` columns of ``_catalog`` and ``_errors`` hold. The catalog's
    ``path_bytes`` column keeps the exact bytes.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path_bytes(path).decode("utf-8", "backslashreplace")
