"""FITS structure without astropy: header cards, HDU geometry, column formats, table plans.

A FITS file is a chain of HDUs. Each HDU is a header of 2880-byte blocks holding 80-character
cards up to ``END``, then a data unit of ``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1*...*NAXISn)``
bytes padded to a multiple of 2880. Everything here works from header bytes only; the data
decoding lives in `readers.fits`. Validation is strict on the numbers that size allocations
(BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT, TFIELDS, TFORM repeat counts): a hostile header raises
`FITSError` naming the HDU and the byte offset instead of asking for gigabytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from readers.errors import BadFile, ErrorCode

BLOCK = 2880
CARD = 80
#: Largest header we parse (about 100,000 cards); real headers are a few hundred cards.
MAX_HEADER_BYTES = 8 << 20
#: Cards per HDU kept in the catalog (the rest are counted, not stored).
CATALOG_CARDS = 300
BITPIX_TYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
_COMMENTARY = {"COMMENT", "HISTORY", ""}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?$")


class FITSError(BadFile):
    """The file breaks the FITS rules at a known place (``offset`` is a byte offset)."""

    code = ErrorCode.BAD_HEADER


def _parse_value(text: str) -> Any:
    """The value of one card (after ``= ``): str, bool, int, float, or the raw text."""
    text = text.strip()
    if text.startswith("'"):
        out, i = [], 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1: i + 2] == "'":  # '' is an escaped quote
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(text[i])
            i += 1
        return "".join(out).rstrip()
    value = text.split("/", 1)[0].strip()
    if value in ("T", "F"):
        return value == "T"
    if _NUMBER.match(value):
        if re.match(r"^[+-]?\d+$", value):
            return int(value)
        return float(value.replace("D", "E").replace("d", "e"))
    return value or None


def parse_cards(raw: bytes) -> list[tuple[str, Any]]:
    """(keyword, value) for every card before ``END``; COMMENT/HISTORY keep their text."""
    cards: list[tuple[str, Any]] = []
    for i in range(0, len(raw) - CARD + 1, CARD):
        card = raw[i: i + CARD].decode("ascii", "replace")
        key = card[:8].rstrip()
        if key == "END":
            break
        if key == "HIERARCH" and "=" in card:
            name, _, rest = card[9:].partition("=")
            cards.append((" ".join(name.split()), _parse_value(rest)))
        elif key == "CONTINUE" and cards and isinstance(cards[-1][1], str):
            prev_key, prev = cards[-1]
            if prev.endswith("&"):  # the long-string convention: glue the pieces together
                more = _parse_value(card[8:])
                cards[-1] = (prev_key, prev[:-1] + (more if isinstance(more, str) else ""))
        elif key in _COMMENTARY or card[8:10] != "= ":
            cards.append((key, card[8:].rstrip()))
        else:
            cards.append((key, _parse_value(card[10:])))
    return cards


def read_header(read: Callable[[int, int], bytes], offset: int, file_size: int
                ) -> tuple[bytes, int]:
    """Raw header bytes starting at ``offset`` and the header's padded length in bytes.

    ``read(a, b)`` returns bytes ``[a, b)``. Reads 2 blocks, then twice as many each time (most
    headers are 1-3 blocks; reading far ahead would re-read data units on files of many small
    HDUs); raises `FITSError` when the file ends before ``END`` or the header passes
    `MAX_HEADER_BYTES`.
    """
    buf = bytearray()
    pos, step = offset, 2 * BLOCK
    while True:
        if pos >= file_size:
            raise FITSError(f"header at byte {offset} has no END card before the end of the "
                            f"file ({len(buf)} bytes read)", offset)
        if len(buf) >= MAX_HEADER_BYTES:
            raise FITSError(f"header at byte {offset} has no END card in its first "
                            f"{MAX_HEADER_BYTES} bytes", offset)
        piece = read(pos, min(pos + step, file_size))
        if not piece:
            raise FITSError(f"header at byte {offset} is cut short at byte {pos}", pos)
        start = len(buf)
        buf += piece
        pos += len(piece)
        step = min(2 * step, 64 * BLOCK)
        for card_at in range(start - start % CARD, len(buf) - CARD + 1, CARD):
            if buf[card_at: card_at + 8] == b"END     ":
                length = (card_at // BLOCK + 1) * BLOCK
                if offset + length > file_size:
                    raise FITSError(f"header at byte {offset} ends in an incomplete block "
                                    f"(needs {length} bytes, file has "
                                    f"{file_size - offset})", offset)
                return bytes(buf[:length]), length


@dataclass(slots=True)
class HDU:
    """Geometry and key facts of one HDU, from its header alone."""

    index: int
    kind: str
    """primary, image, bintable, table, groups, or the XTENSION value lower-cased."""
    header_offset: int
    data_offset: int
    data_size: int
    """Bytes of data proper (without the padding to 2880)."""
    bitpix: int
    naxis: tuple[int, ...]
    pcount: int
    gcount: int
    cards: list[tuple[str, Any]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    """First value of every non-commentary keyword."""

    @property
    def next_offset(self) -> int:
        return self.data_offset + -(-self.data_size // BLOCK) * BLOCK

    @property
    def extname(self) -> str | None:
        value = self.header.get("EXTNAME")
        return str(value).strip() if value is not None else None

    def catalog(self) -> dict[str, Any]:
        """A JSON-ready summary for the catalog: geometry plus (a capped set of) cards."""
        cards: dict[str, Any] = {}
        for key, value in self.cards[:CATALOG_CARDS]:
            text = str(value).strip()
            if key in _COMMENTARY:  # keyword-less cards count as comments; blank ones are spacing
                if text:
                    cards.setdefault(key or "COMMENT", []).append(text)
            else:
                cards.setdefault(key, value)
        return {"index": self.index, "type": self.kind, "extname": self.extname,
                "extver": self.header.get("EXTVER"), "bitpix": self.bitpix,
                "naxis": list(self.naxis), "pcount": self.pcount, "gcount": self.gcount,
                "header_offset": self.header_offset, "data_offset": self.data_offset,
                "data_size": self.data_size, "card_count": len(self.cards),
                "cards_truncated": len(self.cards) > CATALOG_CARDS, "cards": cards}


def _int(header: dict[str, Any], key: str, where: str, offset: int, default: int | None = None,
         lo: int | None = None, hi: int | None = None) -> int:
    value = header.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FITSError(f"{where}: {key} must be an integer, found {value!r}", offset)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FITSError(f"{where}: {key} = {value} is outside [{lo}, {hi}]", offset)
    return value


def parse_hdu(index: int, raw: bytes, header_offset: int, header_len: int) -> HDU:
    """Validate the mandatory keywords of one header and compute its data unit's size."""
    cards = parse_cards(raw)
    where = f"HDU {index} (header at byte {header_offset})"
    header: dict[str, Any] = {}
    for key, value in cards:
        if key not in _COMMENTARY:
            header.setdefault(key, value)
    first = cards[0][0] if cards else ""
    if index == 0 and first != "SIMPLE":
        raise FITSError(f"{where}: first card is {first!r}, not SIMPLE", header_offset)
    if index > 0 and first != "XTENSION":
        raise FITSError(f"{where}: first card is {first!r}, not XTENSION", header_offset)
    bitpix = _int(header, "BITPIX", where, header_offset)
    if bitpix not in BITPIX_TYPES:
        raise FITSError(f"{where}: BITPIX = {bitpix} is not one of 8, 16, 32, 64, -32, -64",
                        header_offset)
    naxis_n = _int(header, "NAXIS", where, header_offset, lo=0, hi=999)
    naxis = tuple(_int(header, f"NAXIS{i}", where, header_offset, lo=0)
                  for i in range(1, naxis_n + 1))
    pcount = _int(header, "PCOUNT", where, header_offset, default=0, lo=0)
    gcount = _int(header, "GCOUNT", where, header_offset, default=1, lo=0)
    if index == 0:
        groups = header.get("GROUPS") is True and naxis_n > 0 and naxis[0] == 0
        kind = "groups" if groups else "primary"
    else:
        kind = str(header.get("XTENSION", "")).strip().lower() or "unknown"
    if kind == "groups":
        elements = 1
        for n in naxis[1:]:
            elements *= n
        size = abs(bitpix) // 8 * gcount * (pcount + elements)
    elif naxis_n == 0:
        size = 0
    else:
        elements = 1
        for n in naxis:
            elements *= n
        size = abs(bitpix) // 8 * gcount * (pcount + elements)
    if kind in ("bintable", "table"):
        if bitpix != 8 or naxis_n != 2 or gcount != 1:
            raise FITSError(f"{where}: a {kind.upper()} needs BITPIX = 8, NAXIS = 2 and "
                            f"GCOUNT = 1 (found {bitpix}, {naxis_n}, {gcount})", header_offset)
        _int(header, "TFIELDS", where, header_offset, lo=0, hi=999)
    return HDU(index, kind, header_offset, header_offset + header_len, size, bitpix, naxis,
               pcount, gcount, cards, header)


# --- column formats --------------------------------------------------------------------------

#: BINTABLE type code -> (numpy dtype of one element, bytes per element).
BIN_CODES: dict[str, tuple[str, int]] = {
    "L": ("u1", 1), "X": ("u1", 1), "B": ("u1", 1), "I": (">i2", 2), "J": (">i4", 4),
    "K": (">i8", 8), "A": ("S1", 1), "E": (">f4", 4), "D": (">f8", 8), "C": (">f4", 8),
    "M": (">f8", 16), "P": (">i4", 8), "Q": (">i8", 16),
}
_BIN_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])(.*)$")
_ASCII_TFORM = re.compile(r"^\s*([AIFED])(\d+)(?:\.(\d+))?\s*$")


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: where it sits in a row and how to decode it."""

    name: str
    code: str
    """BINTABLE type code, or A/I/F/E/D for ASCII tables."""
    repeat: int
    """Elements per row (characters for A; bits for X; 1 for P/Q)."""
    offset: int
    """Byte offset of the field within a row."""
    width: int
    """Bytes the field takes in a row."""
    element: str | None = None
    """Element type of a P/Q (variable-length) column."""
    scale: float = 1.0
    zero: float = 0.0
    null: Any = None
    decimals: int = 0
    """ASCII tables: implied decimals of F/E/D fields without a decimal point."""
    tform: str = ""
    unit: str | None = None


def bin_tform(tform: str, where: str, offset: int) -> tuple[int, str, str | None, int]:
    """(repeat, code, P/Q element code, bytes per row) of a BINTABLE TFORM value."""
    m = _BIN_TFORM.match(tform.upper())
    if not m:
        raise FITSError(f"{where}: cannot parse TFORM {tform!r}", offset)
    repeat = int(m.group(1)) if m.group(1) else 1
    code, rest = m.group(2), m.group(3).strip()
    element = None
    if code in "PQ":
        if repeat > 1:
            raise FITSError(f"{where}: TFORM {tform!r} repeats a descriptor", offset)
        em = re.match(r"^([LXBIJKAEDCM])", rest)
        if not em:
            raise FITSError(f"{where}: TFORM {tform!r} has no element type", offset)
        element = em.group(1)
    size = BIN_CODES[code][1]
    width = -(-repeat // 8) if code == "X" else repeat * size
    return repeat, code, element, width


def table_columns(hdu: HDU) -> list[Column]:
    """The columns of a BINTABLE or ASCII TABLE HDU, validated against NAXIS1."""
    h, where, at = hdu.header, f"HDU {hdu.index} (header at byte {hdu.header_offset})", \
        hdu.header_offset
    row_bytes = hdu.naxis[0]
    cols: list[Column] = []
    pos = 0
    for i in range(1, int(h.get("TFIELDS", 0)) + 1):
        tform = h.get(f"TFORM{i}")
        if not isinstance(tform, str):
            raise FITSError(f"{where}: TFORM{i} is missing", at)
        name = str(h.get(f"TTYPE{i}") or f"col{i}").strip() or f"col{i}"
        scale, zero = h.get(f"TSCAL{i}", 1.0), h.get(f"TZERO{i}", 0.0)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (scale, zero)):
            raise FITSError(f"{where}: TSCAL{i}/TZERO{i} must be numbers", at)
        null = h.get(f"TNULL{i}")
        unit = h.get(f"TUNIT{i}")
        unit = None if unit is None else str(unit)
        if hdu.kind == "bintable":
            repeat, code, element, width = bin_tform(tform, where, at)
            cols.append(Column(name, code, repeat, pos, width, element, float(scale),
                               float(zero), null, tform=tform, unit=unit))
            pos += width
        else:
            m = _ASCII_TFORM.match(tform.upper())
            if not m:
                raise FITSError(f"{where}: cannot parse ASCII TFORM{i} {tform!r}", at)
            tbcol = _int(h, f"TBCOL{i}", where, at, lo=1, hi=max(1, row_bytes))
            width = int(m.group(2))
            if tbcol - 1 + width > row_bytes:
                raise FITSError(f"{where}: column {i} (TBCOL {tbcol}, width {width}) runs past "
                                f"NAXIS1 = {row_bytes}", at)
            cols.append(Column(name, m.group(1), width, tbcol - 1, width, None, float(scale),
                               float(zero), None if null is None else str(null).strip(),
                               int(m.group(3) or 0), tform, unit))
    if hdu.kind == "bintable" and pos != row_bytes:
        raise FITSError(f"{where}: the TFORMs add up to {pos} bytes per row, NAXIS1 says "
                        f"{row_bytes}", at)
    return cols


# --- HDUs -> tables ---------------------------------------------------------------------------
#: HDUs walked per file; more are counted in the catalog as not read.
MAX_HDUS = 10_000
_BITPIX_CODE = {8: "B", 16: "I", 32: "J", 64: "K", -32: "E", -64: "D"}
_VARLEN_OK = set("LBIJKAED")


@dataclass(frozen=True, slots=True)
class Part:
    """One HDU that feeds a table: what a chunk needs to decode its rows."""

    hdu: int
    table: str
    kind: str
    """bintable, table (ASCII) or image."""
    data_offset: int
    row_bytes: int
    rows: int
    """Rows (image lines: NAXIS2 * NAXIS3 * ...)."""
    columns: tuple[Column, ...] = ()
    names: tuple[str, ...] = ()
    heap_offset: int = 0
    heap_size: int = 0
    heap_per_row: int = 0
    image: Column | None = None
    """Images: pixel type (code B/I/J/K/E/D) with BSCALE/BZERO/BLANK."""
    plane_rows: int = 1
    """Images: lines per plane (NAXIS2); 0 when NAXIS < 3 (no plane column)."""


def clean_name(name: str) -> str:
    """A table name from an EXTNAME: lower case, ``[a-z0-9_]`` only, no leading underscore."""
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")


def unique_names(names: list[str]) -> tuple[str, ...]:
    """Unique, case-insensitively (DuckDB folds case); never the sink's ``_file_id``."""
    seen: set[str] = {"_file_id"}
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate.lower())
        out.append(candidate)
    return tuple(out)


def walk(read: Callable[[int, int], bytes], size: int, path: str
         ) -> tuple[list[HDU], list[tuple[str, str, int | None]], list[str]]:
    """Every HDU header from byte 0, with (error type, message, offset) problems and notes.

    Stops at the first header that does not parse or data unit the file is too short for; a
    broken primary header raises instead (nothing in the file can be trusted then).
    """
    hdus: list[HDU] = []
    problems: list[tuple[str, str, int | None]] = []
    notes: list[str] = []
    offset = 0
    while offset < size:
        if len(hdus) >= MAX_HDUS:
            notes.append(f"stopped after {MAX_HDUS} HDUs at byte {offset}")
            break
        if hdus and read(offset, offset + 8) != b"XTENSION":
            notes.append(f"{size - offset} trailing bytes after the last HDU (byte {offset})")
            break
        try:
            raw, length = read_header(read, offset, size)
            hdu = parse_hdu(len(hdus), raw, offset, length)
        except FITSError as exc:
            if not hdus:
                raise FITSError(f"{path}: primary header: {exc}", exc.offset) from exc
            problems.append(("BadHeader", f"HDU {len(hdus)}: {exc}", exc.offset))
            break
        hdus.append(hdu)
        if hdu.data_offset + hdu.data_size > size:
            problems.append(("TruncatedDataUnit", f"HDU {hdu.index} ({hdu.kind}"
                             f"{', ' + hdu.extname if hdu.extname else ''}): data unit at byte "
                             f"{hdu.data_offset} declares {hdu.data_size} bytes but the file "
                             f"holds only {size - hdu.data_offset}", hdu.data_offset))
            break
        offset = hdu.next_offset
    return hdus, problems, notes


def make_part(hdu: HDU, table: str, size: int, limit: int, notes: list[str]) -> Part | None:
    """The decoding plan of one HDU, or None when it feeds no table.

    A data unit the file is too short for feeds nothing (`walk` reported it): a short file and a
    corrupt NAXISn look the same, and the bytes after a corrupt header are not rows.
    """
    if hdu.data_offset + hdu.data_size > size:
        return None
    line = hdu.naxis[0] * abs(hdu.bitpix) // 8 if hdu.naxis else 0
    if hdu.kind in ("bintable", "table", "primary", "image") and line > limit:
        raise FITSError(f"rows (image lines) of {line} bytes exceed max_record_bytes = {limit}",
                        hdu.header_offset)
    if hdu.kind in ("bintable", "table"):
        row_bytes, nrows = hdu.naxis
        columns = table_columns(hdu)
        keep = []
        for col in columns:
            if col.code in "PQ" and col.element not in _VARLEN_OK:
                notes.append(f"HDU {hdu.index}: column {col.name} ({col.tform}) left out: "
                             f"variable-length {col.element} arrays are not supported")
            elif col.repeat == 0:
                notes.append(f"HDU {hdu.index}: column {col.name} has repeat 0, left out")
            else:
                keep.append(col)
        rows = nrows if row_bytes else 0
        theap = hdu.header.get("THEAP", row_bytes * nrows)
        if not isinstance(theap, int) or not 0 <= theap <= row_bytes * nrows + hdu.pcount:
            raise FITSError(f"HDU {hdu.index}: THEAP {theap!r} is outside the data unit",
                            hdu.header_offset)
        heap_size = row_bytes * nrows + hdu.pcount - theap
        return Part(hdu.index, table, hdu.kind, hdu.data_offset, row_bytes, rows, tuple(keep),
                    unique_names([c.name for c in keep]), hdu.data_offset + theap, heap_size,
                    hdu.pcount // max(nrows, 1))
    if hdu.kind in ("primary", "image") and hdu.naxis and hdu.data_size:
        code = _BITPIX_CODE[hdu.bitpix]
        h = hdu.header
        scale, zero, blank = h.get("BSCALE", 1.0), h.get("BZERO", 0.0), h.get("BLANK")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (scale, zero)):
            raise FITSError(f"HDU {hdu.index}: BSCALE/BZERO must be numbers", hdu.header_offset)
        pix = Column("value", code, 1, 0, abs(hdu.bitpix) // 8, None, float(scale), float(zero),
                     blank if code in "BIJK" and isinstance(blank, int) else None)
        row_bytes = hdu.naxis[0] * pix.width
        plane_rows = hdu.naxis[1] if len(hdu.naxis) >= 3 else 0
        return Part(hdu.index, table, "image", hdu.data_offset, row_bytes,
                    hdu.data_size // row_bytes, image=pix, plane_rows=plane_rows)
    if hdu.data_size:
        notes.append(f"HDU {hdu.index} ({hdu.kind}) holds {hdu.data_size} bytes not read "
                     f"(only tables and images are)")
    return None


def table_name(hdu: HDU, used: set[str]) -> str:
    """EXTNAME cleaned, or ``hdu<N>``; a name already used in this file gets ``_<EXTVER>`` (or
    ``_hdu<N>``) appended."""
    name = clean_name(hdu.extname or "") or f"hdu{hdu.index}"
    if name in used:
        extver = hdu.header.get("EXTVER")
        alt = f"{name}_{extver}" if isinstance(extver, int) else ""
        name = alt if alt and alt not in used else f"{name}_hdu{hdu.index}"
    used.add(name)
    return name

