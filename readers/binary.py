"""Binary reader: the fallback for every file no other reader recognises.

Table ``chunks`` holds one row per *block* of the file's stored bytes:

=========  =======  ==========================================================================
column     type     meaning
=========  =======  ==========================================================================
offset     int64    byte offset of the block in the file
length     int64    block length (`BLOCK_SIZE`, 1 MiB; the last block may be shorter)
hash       string   hex SHA-256 of the block
entropy    float64  Shannon entropy of the block's byte histogram, bits per byte (0..8)
=========  =======  ==========================================================================

Why 1 MiB blocks rather than one row per task chunk: duplicate data is found at 1 MiB
granularity across files (``GROUP BY hash``), entropy pinpoints the compressed or encrypted
regions of a file, and the rows do not depend on ``--chunk-size``: the same file gives the same
rows (and the same root digest) whatever chunk size a run used. Task chunks are whole multiples
of the block size (at least one block), so memory stays at one block buffer per task.

Why SHA-256: with SHA-NI it hashes faster than BLAKE2b (README, "Measurements behind design
choices"); it needs nothing beyond hashlib and every tool can check it.

Whole-file digest: per-block digests cannot be combined into the file's plain SHA-256, so the
catalog gets a Merkle-style root instead (`root_digest`): SHA-256 over the raw 32-byte block
digests concatenated in file order, with the block size recorded next to it. Anyone can
recompute it from the table: ``sha256(b"".join(bytes.fromhex(h) for h in hashes by offset))``.
Each chunk task reports its block digests in ``ctx.facts``; `summarize` folds them on the client.

The container of well-known formats chunkmill does not parse (zip, gzip, Parquet, Arrow, PDF,
SQLite, ELF, ...) is recognised from magic bytes and recorded in the catalog as ``container``.
Whole-file compressed inputs are hashed as stored (compressed) bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from readers.base import ChunkContext, ChunkOutcome, ChunkSpec, Description, Reader, Source
from readers.errors import ErrorCode
from readers.options import ReaderOptions

TABLE = "chunks"
SCHEMA = pa.schema([("offset", pa.int64()), ("length", pa.int64()), ("hash", pa.string()),
                    ("entropy", pa.float64())])
BLOCK_SIZE = 1 << 20
"""Bytes per row. Changing it changes every hash and the root digest (it is in the catalog)."""
ENTROPY_SLICE = 64 << 10
"""``np.bincount`` widens to int64: 8 bytes of scratch per input byte, so count in slices.
64 KiB slices keep that scratch in cache (faster than 1 MiB slices: README, "Measurements
behind design choices")."""
HASH_NAME = "sha256"
HEAD_BYTES = 4096
DIGEST_BYTES = 32  # SHA-256

#: (offset, magic, container name). First match wins, so longer magics come before prefixes.
MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"), (0, b"PK\x07\x08", "zip"),
    (0, b"\x1f\x8b", "gzip"), (0, b"BZh", "bz2"), (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"), (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"\xff\x06\x00\x00sNaPpY", "snappy"), (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"), (257, b"ustar", "tar"),
    (0, b"PAR1", "parquet"), (0, b"ARROW1", "arrow"), (0, b"FEA1", "feather-v1"),
    (0, b"ORC", "orc"), (0, b"Obj\x01", "avro"), (0, b"\x93NUMPY", "npy"),
    (0, b"\x89HDF\r\n\x1a\n", "hdf5"), (0, b"CDF\x01", "netcdf3"), (0, b"CDF\x02", "netcdf3"),
    (0, b"SIMPLE  =", "fits"), (0, b"SQLite format 3\x00", "sqlite"), (0, b"%PDF-", "pdf"),
    (0, b"\x7fELF", "elf"), (0, b"MZ", "pe"), (0, b"\xca\xfe\xba\xbe", "java-class/mach-o"),
    (0, b"\xcf\xfa\xed\xfe", "mach-o"), (0, b"\x00asm", "wasm"),
    (0, b"OggS", "ogg"), (0, b"fLaC", "flac"), (0, b"ID3", "mp3"),
    (0, b"\x1a\x45\xdf\xa3", "matroska"), (4, b"ftyp", "isobmff"),
    (0, b"\xff\xd8\xff", "jpeg"), (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"GIF8", "gif"),
    (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff"),
    (0, b"\xef\xbb\xbf", "text-utf8-bom"), (0, b"\xff\xfe", "text-utf16le"),
    (0, b"\xfe\xff", "text-utf16be"),
)
_RIFF = {b"WAVE": "wav", b"AVI ": "avi", b"WEBP": "webp"}
#: Containers that keep a magic at the end too: a missing trailer means a truncated file.
_TRAILERS = {"parquet": b"PAR1", "arrow": b"ARROW1"}


def container_of(head: bytes) -> str | None:
    """The well-known container format starting with ``head`` (None: unknown or plain text)."""
    if head[:4] == b"RIFF":
        return _RIFF.get(head[8:12], "riff")
    for offset, magic, name in MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:  # a character cut at the end of the sample is fine
            if exc.start >= len(head) - 3:
                return "text"
    return None


def entropy(data: memoryview | bytes, slice_bytes: int = ENTROPY_SLICE) -> float:
    """Shannon entropy of ``data`` in bits per byte, counting bytes in bounded slices."""
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size == 0:
        return 0.0
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, arr.size, slice_bytes):
        counts += np.bincount(arr[start:start + slice_bytes], minlength=256)
    p = counts[counts > 0] / arr.size
    return float(max(0.0, -(p * np.log2(p)).sum()))


def root_digest(chunk_digests: Iterable[bytes | str], chunk_size: int = BLOCK_SIZE) -> str:
    """Merkle-style whole-file digest: SHA-256 over the raw block digests in file order.

    ``chunk_digests`` are the per-block SHA-256 digests (raw 32 bytes or hex), ``chunk_size``
    the block size they were taken with; it does not enter the hash (the digests already
    depend on it) but is validated so a caller cannot mix up units.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    h = hashlib.new(HASH_NAME)
    for digest in chunk_digests:
        raw = bytes.fromhex(digest) if isinstance(digest, str) else bytes(digest)
        if len(raw) != h.digest_size:
            raise ValueError(f"expected {h.digest_size}-byte digests, got {len(raw)} bytes")
        h.update(raw)
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class BinaryOptions(ReaderOptions):
    """Options of the binary reader."""

    block_size: int = BLOCK_SIZE
    """Bytes per row (one hash and entropy each)."""


@dataclass(slots=True)
class BinaryFacts:
    """What a chunk reports for the file's root digest (`ChunkContext.facts`)."""

    block_digests: bytes
    """The SHA-256 of each of its blocks, concatenated."""
    first_block: int
    complete: bool
    """The chunk read all of its bytes (the file did not shrink)."""


def _read_full(f: Any, view: memoryview) -> int:
    """Fill ``view`` from ``f``; fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        if hasattr(f, "readinto"):
            n = f.readinto(view[got:])
        else:
            data = f.read(len(view) - got)
            n = len(data)
            view[got:got + n] = data
        if not n:
            break
        got += n
    return got


class BinaryReader(Reader):
    """Fallback reader: block hashes and entropy of any file, plus its container type."""

    name = "binary"
    options_type = BinaryOptions
    # A compressed input no other reader claims is still bytes to hash: we read it as stored.
    streams_compressed = True

    @classmethod
    def sniff(cls, head: bytes, path: str) -> int:
        return 1  # lowest confidence: every other reader that recognises the file wins

    def describe(self, source: Source, options: BinaryOptions) -> Description:
        head = source.read_range(0, HEAD_BYTES)
        container = container_of(head)
        meta: dict[str, Any] = {"container": container, "compression": source.compression,
                                "hash": HASH_NAME, "block_size": options.block_size,
                                "root_digest_method": f"{HASH_NAME} over the concatenated raw "
                                f"{HASH_NAME} digests of the blocks, in file order"}
        trailer = _TRAILERS.get(container or "")
        if trailer and not source.read_range(source.size - len(trailer), source.size) == trailer:
            meta["container_warning"] = (f"{container} file without its trailing "
                                         f"{trailer.decode()} magic: truncated?")
        if source.compression:
            meta["inner_container"] = self._inner_container(source)
        return Description({TABLE: SCHEMA}, meta)

    @staticmethod
    def _inner_container(source: Source) -> str | None:
        try:
            with source.open(source.compression) as f:
                return container_of(f.read(HEAD_BYTES))
        except (OSError, EOFError, ValueError):  # a broken stream is still bytes to hash
            return None

    def plan(self, source: Source, description: Description,
             options: BinaryOptions) -> list[ChunkSpec]:
        block = options.block_size
        chunk_size = options.chunk_size
        step = max(1, chunk_size // block) * block  # whole blocks: rows independent of chunking
        return [ChunkSpec(source.file_id, i, off, min(step, source.size - off), table=TABLE,
                          weight=min(step, source.size - off))
                for i, off in enumerate(range(0, source.size, step))]

    def read(self, source: Source, chunk: ChunkSpec, description: Description,
             options: BinaryOptions, ctx: ChunkContext) -> Iterator[tuple[str, pa.Table]]:
        block = options.block_size
        buf = memoryview(bytearray(min(block, max(chunk.length, 0))))
        offsets: list[int] = []
        lengths: list[int] = []
        hashes: list[str] = []
        entropies: list[float] = []
        digests = bytearray()
        pos, end = chunk.offset, chunk.offset + chunk.length
        with source.open() as f:  # stored bytes, never decompressed
            f.seek(pos)
            while pos < end:
                want = min(block, end - pos)
                got = _read_full(f, buf[:want])
                if got:
                    digest = hashlib.new(HASH_NAME, buf[:got]).digest()
                    digests += digest
                    offsets.append(pos)
                    lengths.append(got)
                    hashes.append(digest.hex())
                    entropies.append(entropy(buf[:got]))
                    pos += got
                if got < want:
                    ctx.reject(kind="chunk", error_type=ErrorCode.FILE_CHANGED, byte_offset=pos,
                               message=f"{source.path}: file ends at byte {pos}, but it had "
                                       f"{source.size} bytes when discovered")
                    break
        ctx.facts = BinaryFacts(bytes(digests), chunk.offset // block, pos >= end)
        if offsets:
            yield TABLE, pa.table([pa.array(offsets, pa.int64()), pa.array(lengths, pa.int64()),
                                   pa.array(hashes, pa.string()),
                                   pa.array(entropies, pa.float64())], schema=SCHEMA)

    def summarize(self, source: Source, description: Description, chunks: list[ChunkSpec],
                  outcomes: Sequence[ChunkOutcome]) -> dict[str, Any]:
        """Catalog metadata from all chunk facts of a file (client side): the root digest.

        ``outcomes`` are in the order of ``chunks``. Returns ``root_digest: None`` with the reason
        when a chunk is missing, failed or came back short.
        """
        block = int(description.metadata.get("block_size") or BLOCK_SIZE)
        expected, parts = 0, []
        for spec, outcome in zip(chunks, outcomes, strict=True):
            fact = outcome.facts
            if (not isinstance(fact, BinaryFacts) or not fact.complete
                    or fact.first_block != expected):
                return {"root_digest": None,
                        "root_digest_error": f"chunk {spec.index} at byte {spec.offset} did "
                                             f"not report all of its block digests"}
            parts.append(fact.block_digests)
            expected += len(fact.block_digests) // DIGEST_BYTES
        if expected * block < source.size:
            return {"root_digest": None, "root_digest_error": "blocks do not cover the file"}
        flat = b"".join(parts)
        digests = (flat[i:i + DIGEST_BYTES] for i in range(0, len(flat), DIGEST_BYTES))
        return {"root_digest": root_digest(digests, block), "blocks": expected}
