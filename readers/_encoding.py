"""Text in other encodings than UTF-8 (``--encoding``), transcoded to UTF-8 while reading.

Two cases, decided by the codec:

- **ASCII-compatible single-byte encodings** (latin-1, cp1252, the iso8859 and most cp/mac
  families, koi8): every byte is one character and the ASCII bytes (line ends, quotes,
  delimiters) are themselves, so record boundaries are found in the file's own bytes and files
  are split into parallel chunks exactly as UTF-8 files are. Each parse block is transcoded on
  its own (at most 3x its size: a character becomes at most 3 UTF-8 bytes), and byte offsets in
  ``_errors`` stay offsets in the file. A byte the codec leaves undefined (cp1252 ``0x81``)
  passes through as that raw byte, so the record holding it is rejected as ``InvalidUTF8``
  like any invalid UTF-8 (never a silent replacement character).
- **Anything else** (utf-16, utf-32, shift_jis, gb18030, ...): a newline byte may be half of
  another character, so the file is read as one stream, transcoded by pyarrow's
  ``transcoding_input_stream`` (bounded memory, as a compressed file). Byte offsets in
  ``_errors`` are then offsets in the UTF-8 text, as they are in the decompressed stream of a
  compressed file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pyarrow as pa

from readers.errors import BadFile, ErrorCode


@lru_cache(maxsize=32)
def single_byte(encoding: str) -> bool:
    """Whether ``encoding`` maps each byte to one character, ASCII bytes to themselves."""
    try:
        for order in (range(256), range(255, -1, -1)):  # lead bytes would join their next
            if len(bytes(order).decode(encoding, "surrogateescape")) != 256:
                return False
        chars = bytes(range(256)).decode(encoding, "surrogateescape")
    except (LookupError, UnicodeError):
        return False
    return all((ord(c) == b) if b < 0x80 else (ord(c) >= 0x80)
               for b, c in enumerate(chars))


def to_utf8(data: Any, encoding: str) -> bytes:
    """A block of a single-byte encoding as UTF-8 (undefined bytes kept as they are)."""
    return bytes(data).decode(encoding, "surrogateescape").encode("utf-8", "surrogateescape")


def file_offset(utf8: bytes, position: int) -> int:
    """The offset in the single-byte original of ``position`` in its UTF-8 transcoding."""
    return len(utf8[:position].decode("utf-8", "surrogateescape"))


def transcoded(f: Any, encoding: str) -> Any:
    """A readable stream of ``f``'s text as UTF-8 (pyarrow transcodes it block by block)."""
    return pa.transcoding_input_stream(pa.PythonFile(f, mode="r"), encoding, "utf-8")


class NotUTF8(BadFile):
    """A text file that is not UTF-8 and was read without ``--encoding``."""

    code = ErrorCode.INVALID_UTF8


#: Share of a head's lines (per mille) with bytes that are not UTF-8 beyond which the file
#: is taken to be in another encoding. Below it, the file is UTF-8 with a few damaged
#: records, each rejected on its own (``InvalidUTF8``) while the others are kept.
BAD_LINES_PER_MILLE = 1


def check_utf8(head: bytes, path: str, at_eof: bool, nul_ok: bool = True) -> None:
    """Raise `NotUTF8` naming ``--encoding`` when ``head`` is not UTF-8: more than
    `BAD_LINES_PER_MILLE` of its lines hold bytes that are not UTF-8 or, with ``nul_ok=False``,
    a NUL byte (valid UTF-8, but in a text file the mark of UTF-16 or -32). A character cut at
    the end of a head that is not the whole file is fine; fewer bad lines are damaged
    records, rejected one by one."""
    nul = -1 if nul_ok else head.find(b"\x00")
    try:
        head.decode("utf-8")
        invalid = -1
    except UnicodeDecodeError as exc:
        cut = not at_eof and exc.reason == "unexpected end of data"
        invalid = -1 if cut else exc.start
    if invalid < 0 and nul < 0:
        return
    lines = head.split(b"\n")
    if not at_eof and len(lines) > 1:
        lines.pop()  # it may end inside a character
    bad = sum(1 for line in lines if not is_utf8(line) or (not nul_ok and b"\x00" in line))
    if bad * 1000 > len(lines) * BAD_LINES_PER_MILLE:
        at = min(a for a in (invalid, nul) if a >= 0)
        raise NotUTF8(f"{path}: not UTF-8 (byte 0x{head[at]:02X} at offset {at}); give its "
                      "encoding, e.g. --encoding latin-1, --encoding cp1252 or --encoding "
                      "utf-16 (encoding= in Python)", at)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


__all__ = ["is_utf8", "single_byte", "to_utf8", "file_offset", "transcoded", "NotUTF8",
           "check_utf8"]
