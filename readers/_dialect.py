"""The dialect of a delimited text file: how its bytes split into records and fields.

Chosen once per file at describe time (from the user's options, the rest sniffed from the head)
and shipped to every chunk in `readers._text.TextState`, so every chunk of a file parses the
same way and the record-boundary grammar (`readers._boundaries.Grammar`) matches the parser.
The choice is recorded in the catalog's per-file metadata (``metadata.dialect``).
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, fields
from typing import Any

from readers._boundaries import OUT, Grammar, _next_line_end, transfer

#: Delimiters the sniffer chooses among, in order of preference when they tie.
CANDIDATES = (",", ";", "\t", "|")
#: Records of the head the sniffer looks at.
SNIFF_RECORDS = 50


@dataclass(frozen=True, slots=True)
class Dialect:
    """One file's CSV dialect (the names of DuckDB's ``read_csv`` options in brackets)."""

    delimiter: str = ","
    """Field delimiter (``delim``)."""
    quote: str | None = '"'
    """Quote character; None: no quoting at all (``quote=''``)."""
    escape: str | None = None
    """Makes the next character literal, inside quotes and out (``escape``); None: quotes
    are escaped by doubling them only."""
    header: bool = True
    skip_rows: int = 0
    """Lines skipped before the header (``skip``)."""
    comment: str | None = None
    """Lines starting with it are skipped (``comment``; whole lines only)."""
    null_values: tuple[str, ...] = ("",)
    """Unquoted values read as NULL (``nullstr``)."""
    null_padding: bool = False
    """Records with fewer fields get NULLs for the missing ones (``null_padding``)."""
    sniffed: tuple[str, ...] = ()
    """The fields chosen by the sniffer rather than given."""

    def grammar(self) -> Grammar:
        return Grammar(quote=ord(self.quote) if self.quote else None,
                       delimiter=ord(self.delimiter),
                       escape=ord(self.escape) if self.escape else None)

    def as_metadata(self) -> dict[str, Any]:
        # Not dataclasses.asdict (a deep copy per field): called once per small file.
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["null_values"] = list(self.null_values)
        out["sniffed"] = list(self.sniffed)
        return out


def check_char(name: str, value: str | None, allow_empty: bool = False) -> str | None:
    """A one-character option, checked (``--quote ''`` turns quoting off)."""
    if value is None or (allow_empty and value == ""):
        return value
    if len(value) != 1 or value in "\r\n" or ord(value) > 0x7F:
        raise ValueError(f"--{name.replace('_', '-')} {value!r}: must be one ASCII character "
                         "other than a line end")
    return value


def skip_lines(head: bytes, n: int) -> int:
    """Offset just past the first ``n`` lines of ``head`` (``\\n``, ``\\r\\n`` or a lone
    ``\\r``; quotes aside, as DuckDB's ``skip`` counts them), or len(head)."""
    at = 0
    for _ in range(n):
        nl = head.find(b"\n", at)
        cr = head.find(b"\r", at, nl if nl >= 0 else len(head))
        if cr >= 0 and cr + 1 != nl:
            at = cr + 1
        elif nl >= 0:
            at = nl + 1
        else:
            return len(head)
    return at


def skip_blank_and_comments(head: bytes, comment: str | None) -> int:
    """Offset of the first line that is neither empty nor a comment."""
    at = 0
    mark = comment.encode() if comment else None
    while at < len(head):
        if head[at] in (0x0A, 0x0D):
            at += 1
        elif mark is not None and head.startswith(mark, at):
            at = skip_lines(head[at:], 1) + at
        else:
            break
    return at


def sniff_delimiter(sample: bytes, quote: str | None, escape: str | None,
                    comment: str | None, default: str) -> str | None:
    """The candidate delimiter that splits the sample's records most consistently.

    Like DuckDB's sniffer and Python's ``csv.Sniffer``: per candidate, the first record's
    field count (the header's, which every row must match) and how many records have it;
    among candidates giving more than one field there, and agreeing with at least half of
    the records, the most consistent wins, then the one with more fields, then the earlier
    candidate. None when no candidate qualifies (a one-column file keeps the default).
    """
    text = sample.decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    if comment:
        lines = [ln for ln in lines if not ln.startswith(comment)]
    text = "".join(lines)
    best: tuple[int, int, int] | None = None
    chosen = None
    for rank, cand in enumerate(dict.fromkeys((default, *CANDIDATES))):
        try:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=cand,
                                quotechar=quote or None, escapechar=escape,
                                quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
                                doublequote=True, strict=False)
            widths = [len(row) for row in itertools.islice(reader, SNIFF_RECORDS) if row]
        except csv.Error:
            continue
        if not widths or widths[0] < 2:
            continue
        width = widths[0]
        agree = widths.count(width)
        if 2 * agree < len(widths):
            continue
        score = (agree, width, -rank)
        if best is None or score > best:
            best, chosen = score, cand
    return chosen


def blank_comments(data: Any, grammar: Grammar, comment: str) -> bytes | None:
    """``data`` (which starts at a record start) with each comment line turned into line ends,
    which the parser skips as empty lines, so every byte keeps its offset. None when it has
    no comment line. A comment line is one whose first character, at a record start (not
    inside a quoted value), is ``comment``."""
    mark = comment.encode()
    raw = bytes(data)
    cands = [0] if raw.startswith(mark) else []
    for end in (b"\n", b"\r"):
        at = raw.find(end + mark)
        while at >= 0:
            cands.append(at + 1)
            at = raw.find(end + mark, at + 1)
    if not cands:
        return None
    out = bytearray(raw)
    pos, state = 0, OUT
    for c in sorted(set(cands)):
        if c < pos:
            continue
        if grammar.quote is not None:
            moves = transfer(out, pos, c, grammar, len(out), True)
            state = moves.apply(state) if moves is not None else state
            pos = c
        if state != OUT:
            continue
        end = _next_line_end(out, c, len(out), True, grammar.cr)
        end = len(out) if end < 0 else end
        out[c:end] = b"\n" * (end - c)
        pos = end
    return bytes(out)
