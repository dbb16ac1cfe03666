"""Image reader: catalog-only facts about JPEG, PNG, TIFF, WebP, GIF and BMP files.

Images feed no table: `describe` returns ``tables={}`` and puts the facts in the catalog's
``metadata`` (format, width, height, mode, frames, DPI, EXIF by tag name, GPS in decimal
degrees). Pixels are never decoded and only headers are read:

- Pillow opens JPEG/PNG/TIFF/GIF/BMP lazily (``Image.open`` reads headers only). We call the
  format's registered factory (``Image.OPEN``) rather than ``Image.open`` so Pillow's
  decompression-bomb check (``Image.MAX_IMAGE_PIXELS``), which guards *decoding* we never do,
  cannot fail a file or warn from a planning thread; the reader reports
  ``pixel_limit_exceeded`` in the metadata instead, for whoever decodes the file later.
- WebP is parsed here (RIFF chunk headers), because Pillow's WebP plugin reads the whole file and
  creates a decoder that allocates the full canvas at open.
- PNG EXIF is taken from an ``eXIf`` chunk before the pixel data only: Pillow's
  ``PngImageFile.getexif`` decodes the image to look for one after it.

Cheap integrity checks look at the file's tail (JPEG end-of-image marker, PNG ``IEND``, GIF
trailer, BMP/WebP declared sizes, TIFF strip/tile extents). A damaged file still gets its catalog
row; `plan` then returns one zero-length chunk whose `read` reports each problem to ``_errors``,
so the file ends ``partial`` instead of silently ``ok``. Healthy images plan no chunks.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import IO, Any

import pyarrow as pa

from readers._deferred import deferred
from readers.base import ChunkContext, ChunkSpec, Description, Reader, Source
from readers.errors import BadFile
from readers.options import ReaderOptions

Image = deferred("PIL.Image")
ExifTags = deferred("PIL.ExifTags")

#: Leading bytes -> Pillow format id. WebP (RIFF....WEBP) and BMP are checked separately.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
)
#: BITMAPINFOHEADER sizes a real BMP declares at byte 14 (guards the weak two-byte "BM" magic).
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp",
         "GIF": "image/gif", "BMP": "image/bmp"}

TAIL_BYTES = 64
MAX_TAGS = 256
MAX_TEXT = 1024
HEX_CAP = 64
MAX_WEBP_CHUNKS = 100_000
MAX_WEBP_EXIF = 1 << 20
#: Tags left out of ``exif``: sub-IFD pointers (expanded on their own) and TIFF data locators
#: (StripOffsets/StripByteCounts/TileOffsets/TileByteCounts: thousands of numbers, no facts).
#: Numbers fixed by the TIFF/EXIF standards (Pillow's ExifTags.IFD Exif, GPSInfo, Interop).
_SKIP_TAGS = {34665, 34853, 40965, 273, 279, 324, 325}


def image_format(head: bytes) -> str | None:
    """Pillow's format id for an image starting with ``head``, or None."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in \
            _BMP_DIB_SIZES:
        return "BMP"
    return None


# --- JSON-safe EXIF -----------------------------------------------------------------------------
def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON: rationals -> float, bytes -> text or capped hex, NaN -> None."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.rstrip("\x00")
        return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"
    if isinstance(value, bytes | bytearray):
        # A one-byte EXIF BYTE value (GPSAltitudeRef, ...) is a number, not text.
        return value[0] if len(value) == 1 else _bytes_text(bytes(value))
    if isinstance(value, Fraction) or hasattr(value, "denominator"):  # IFDRational
        try:
            number = float(value)
        except (ZeroDivisionError, ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    if depth < 4 and isinstance(value, tuple | list):
        return [jsonable(v, depth + 1) for v in value[:MAX_TAGS]]
    if depth < 4 and isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in list(value.items())[:MAX_TAGS]}
    return jsonable(str(value), depth)


def _bytes_text(raw: bytes) -> str:
    """Printable ASCII/UTF-8 as text (EXIF ``UserComment`` charset prefix removed), else hex."""
    for prefix, codec in ((b"ASCII\x00\x00\x00", "ascii"), (b"UNICODE\x00", "utf-16"),
                          (b"\x00" * 8, "ascii")):
        if raw.startswith(prefix) and len(raw) > 8:
            raw, codec_hint = raw[8:], codec
            break
    else:
        codec_hint = "utf-8"
    stripped = raw.rstrip(b"\x00 ")
    try:
        text = stripped.decode(codec_hint)
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return jsonable(text)
    capped = raw[:HEX_CAP].hex()
    return capped if len(raw) <= HEX_CAP else f"{capped}… ({len(raw)} bytes)"


def _named(ifd: Mapping[int, Any], names: Mapping[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, value in list(ifd.items())[:MAX_TAGS]:
        if tag in _SKIP_TAGS and names is ExifTags.TAGS:
            continue
        out[names.get(tag, f"Tag0x{tag:04X}")] = jsonable(value)
    return out


def _dms(value: Any) -> float | None:
    """Degrees, minutes, seconds (EXIF rationals) -> decimal degrees."""
    if not isinstance(value, tuple | list) or not value:
        return None
    parts = [jsonable(v) for v in value[:3]]
    if any(not isinstance(p, int | float) for p in parts):
        return None
    return sum(p / 60 ** i for i, p in enumerate(parts))


def _ref(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\x00 ").upper()


def gps_decimal(gps: Mapping[int, Any]) -> dict[str, Any]:
    """Latitude, longitude and altitude from a raw GPS IFD, signed by their Ref tags."""
    lat, lon = _dms(gps.get(2)), _dms(gps.get(4))
    if lat is not None:
        lat = -lat if _ref(gps.get(1)) == "S" else lat
        lat = lat if -90 <= lat <= 90 else None
    if lon is not None:
        lon = -lon if _ref(gps.get(3)) == "W" else lon
        lon = lon if -180 <= lon <= 180 else None
    alt = jsonable(gps.get(6))
    if not isinstance(alt, int | float):
        alt = None
    elif gps.get(5) in (1, b"\x01", "1"):  # AltitudeRef 1 = below sea level
        alt = -alt
    return {"latitude": None if lat is None else round(lat, 7),
            "longitude": None if lon is None else round(lon, 7),
            "altitude": None if alt is None else round(float(alt), 3),
            "tags": _named(gps, ExifTags.GPSTAGS)}


def exif_metadata(exif: Image.Exif) -> dict[str, Any]:
    """``exif`` (IFD0 + Exif sub-IFD by tag name) and ``gps`` entries for the catalog."""
    out: dict[str, Any] = {}
    named = _named(exif, ExifTags.TAGS)
    try:
        named.update(_named(exif.get_ifd(ExifTags.IFD.Exif), ExifTags.TAGS))
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except (OSError, ValueError, KeyError, TypeError, struct.error, SyntaxError) as exc:
        out["exif_error"] = f"{type(exc).__name__}: {exc}"
        gps = {}
    if named:
        out["exif"] = named
    if gps:
        out["gps"] = gps_decimal(gps)
    return out


# --- WebP, parsed from its RIFF chunks ----------------------------------------------------------
def webp_info(f: IO[bytes], size: int) -> tuple[dict[str, Any], bytes | None, list[str]]:
    """(facts, EXIF blob, problems) from chunk headers; reads only small chunk payloads."""
    head = f.read(12)
    declared = struct.unpack_from("<I", head, 4)[0] + 8
    problems = []
    if declared > size:
        problems.append(f"RIFF header declares {declared} bytes, file has {size}")
    facts: dict[str, Any] = {"width": None, "height": None, "mode": "RGB", "frames": 1,
                             "animated": False, "dpi": None}
    exif = None
    pos, frames, chunks, animated = 12, 0, 0, False
    end = min(declared, size)
    while pos + 8 <= end and chunks < MAX_WEBP_CHUNKS:
        f.seek(pos)
        fourcc, length = struct.unpack("<4sI", f.read(8))
        if pos + 8 + length > size:
            problems.append(f"chunk {fourcc!r} at byte {pos} runs past the end of the file")
            break
        body = f.read(min(length, 30)) if fourcc in (b"VP8X", b"VP8 ", b"VP8L") else b""
        if fourcc == b"VP8X" and len(body) >= 10:
            flags = body[0]
            animated = bool(flags & 0x02)
            facts["mode"] = "RGBA" if flags & 0x10 else "RGB"
            facts["width"] = 1 + int.from_bytes(body[4:7], "little")
            facts["height"] = 1 + int.from_bytes(body[7:10], "little")
        elif fourcc == b"VP8 " and len(body) >= 10 and facts["width"] is None:
            w, h = struct.unpack_from("<HH", body, 6)
            facts["width"], facts["height"] = w & 0x3FFF, h & 0x3FFF
        elif fourcc == b"VP8L" and len(body) >= 5 and facts["width"] is None:
            bits = int.from_bytes(body[1:5], "little")
            facts["width"], facts["height"] = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            facts["mode"] = "RGBA" if bits >> 28 & 1 else "RGB"
        elif fourcc == b"ANMF":
            frames += 1
        elif fourcc == b"EXIF" and length <= MAX_WEBP_EXIF:
            exif = f.read(length)
            exif = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        pos += 8 + length + (length & 1)
        chunks += 1
    if facts["width"] is None:
        raise BadFile("no VP8/VP8L/VP8X chunk with the image size"
                         + "".join(f"; {p}" for p in problems))
    facts["frames"] = frames if animated and frames else 1
    facts["animated"] = facts["frames"] > 1
    return facts, exif, problems


# --- integrity checks on the tail ---------------------------------------------------------------
def tail_problems(fmt: str, im: Image.Image | None, head: bytes, tail: bytes,
                  size: int) -> list[str]:
    """What the last bytes and the declared sizes say about truncation (no pixel data read)."""
    trimmed = tail.rstrip(b"\x00")
    if fmt == "JPEG" and not trimmed.endswith(b"\xff\xd9"):
        return ["no JPEG end-of-image marker (FFD9) at the end: truncated, or data appended"]
    if fmt == "PNG" and not trimmed.endswith(b"IEND\xaeB`\x82"):
        return ["no PNG IEND chunk at the end: truncated, or data appended"]
    if fmt == "GIF" and not trimmed.endswith(b";"):
        return ["no GIF trailer (3B) at the end: truncated"]
    if fmt == "BMP":
        declared = struct.unpack_from("<I", head, 2)[0]
        if declared > size:
            return [f"BMP header declares {declared} bytes, file has {size}"]
    if fmt == "TIFF" and im is not None:
        tags = getattr(im, "tag_v2", {})
        for offsets_tag, counts_tag in ((273, 279), (324, 325)):
            offsets, counts = (_as_tuple(tags.get(t)) for t in (offsets_tag, counts_tag))
            if offsets and counts:
                end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
                if end > size:
                    return [f"TIFF image data extends to byte {end}, file has {size}"]
    return []


def _as_tuple(value: Any) -> tuple:
    return (value,) if isinstance(value, int) else value if isinstance(value, tuple) else ()


class ImageReader(Reader):
    """Catalog-only reader for still and animated images; feeds no table."""

    name = "image"
    suffixes = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".gif", ".bmp")

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        return 90 if image_format(head) else 0

    def describe(self, source: Source, options: ReaderOptions) -> Description:
        head = source.read_range(0, 64)
        fmt = image_format(head)
        if fmt is None:
            raise BadFile("byte 0: not a JPEG, PNG, TIFF, WebP, GIF or BMP file", 0)
        tail = source.read_range(max(0, source.size - TAIL_BYTES), source.size)
        with source.open() as f:
            if fmt == "WEBP":
                meta, exif_blob, problems = webp_info(f, source.size)
                im = None
            else:
                im = _open_headers(f, fmt)
                meta = _pillow_facts(im)
                exif_blob, problems = None, []
            meta = {"format": fmt, "mime": _MIME[fmt], **meta}
            meta.update(_exif_facts(im, exif_blob, fmt))
            problems += tail_problems(fmt, im, head, tail, source.size)
        limit = Image.MAX_IMAGE_PIXELS
        pixels = (meta.get("width") or 0) * (meta.get("height") or 0)
        meta["pixels"] = pixels
        if limit and pixels > limit:
            meta["pixel_limit_exceeded"] = True  # harmless here (no decoding); a warning for users
            meta["pixel_limit"] = int(limit)
        if problems:
            meta["integrity"] = problems
        return Description({}, meta, state=tuple(problems))

    def plan(self, source: Source, description: Description,
             options: ReaderOptions) -> list[ChunkSpec]:
        if not description.state:
            return []
        # One empty chunk whose only job is to put the problems in _errors (see module doc).
        return [ChunkSpec(source.file_id, 0, 0, 0, selector="integrity")]

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: ReaderOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        for problem in description.state or ():
            ctx.reject(kind="file", error_type="ImageIntegrity", byte_offset=source.size,
                       message=f"{source.path}: {problem}")
        return iter(())


def _open_headers(f: IO[bytes], fmt: str) -> Image.Image:
    """Pillow's lazy open for one format, without the decompression-bomb check (see module doc)."""
    Image.init()
    factory, accept = Image.OPEN[fmt]
    f.seek(0)
    prefix = f.read(16)
    if accept and not accept(prefix):
        raise BadFile(f"byte 0: Pillow does not accept this as {fmt}", 0)
    f.seek(0)
    try:
        return factory(f, "")
    except (SyntaxError, IndexError, TypeError, KeyError, struct.error, EOFError,
            OSError) as exc:
        # Pillow signals a bad header with SyntaxError ("Truncated File Read" is an OSError);
        # say where we were when it gave up.
        at = f.tell() if not f.closed else "?"
        raise BadFile(f"unreadable {fmt} header (stopped near byte {at}): "
                         f"{type(exc).__name__}: {exc}") from exc


def _pillow_facts(im: Image.Image) -> dict[str, Any]:
    try:
        frames = int(getattr(im, "n_frames", 1))
    except (OSError, EOFError, ValueError, SyntaxError, struct.error):
        frames = None  # a damaged later frame; the header of the first one was fine
    dpi = im.info.get("dpi")
    facts: dict[str, Any] = {"width": im.width, "height": im.height, "mode": im.mode,
                             "frames": frames, "animated": bool(frames and frames > 1),
                             "dpi": _dpi(dpi)}
    for key in ("compression", "progressive", "interlace", "loop", "duration"):
        if key in im.info:
            facts[key] = jsonable(im.info[key])
    if im.info.get("icc_profile"):
        facts["icc_profile_bytes"] = len(im.info["icc_profile"])
    text = {k: v for k, v in im.info.items() if isinstance(v, str) and k != "compression"}
    if im.format == "PNG" and text:
        facts["text"] = jsonable(dict(list(text.items())[:32]))
    return facts


def _dpi(dpi: Any) -> list[float | None] | None:
    """DPI pair rounded to 0.1: PNG stores dots per metre, so 300 DPI reads back 299.9994."""
    if not isinstance(dpi, tuple | list) or not dpi:
        return None
    values = [jsonable(v) for v in dpi[:2]]
    return [round(v, 1) if isinstance(v, int | float) else None for v in values]


def _exif_facts(im: Image.Image | None, blob: bytes | None, fmt: str) -> dict[str, Any]:
    exif = Image.Exif()
    try:
        if im is None or fmt == "PNG":
            blob = blob if im is None else im.info.get("exif")
            if not blob:
                return {}
            exif.load(blob)
        else:
            exif = im.getexif()
    except (OSError, ValueError, SyntaxError, struct.error, TypeError) as exc:
        return {"exif_error": f"{type(exc).__name__}: {exc}"}
    return exif_metadata(exif) if len(exif) else {}
