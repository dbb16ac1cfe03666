"""Image reader: catalog-only rows for JPEG/PNG/TIFF/WebP/GIF/BMP, EXIF and GPS, damaged files."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import duckdb
import pytest
from PIL import ExifTags, Image, ImageFile, TiffImagePlugin

import pipeline
from readers import detect
from readers.base import Source
from readers.image import ImageReader, gps_decimal, image_format, jsonable, webp_info

W, H = 64, 48


def make_exif() -> bytes:
    """EXIF with camera tags, an Exif sub-IFD and a GPS sub-IFD (Sydney, 12.5 m below sea)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Acme"
    exif[ExifTags.Base.Model] = "Cam 1"
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = "2024:01:02 03:04:05"
    sub[ExifTags.Base.UserComment] = b"ASCII\x00\x00\x00hello"
    sub[ExifTags.Base.MakerNote] = bytes(range(256)) * 2
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "S"
    gps[ExifTags.GPS.GPSLatitude] = (33.0, 51.0, 54.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (151.0, 12.0, 36.0)
    gps[ExifTags.GPS.GPSAltitudeRef] = b"\x01"
    gps[ExifTags.GPS.GPSAltitude] = 12.5
    return exif.tobytes()


def loaded_exif() -> Image.Exif:
    # Pillow's TIFF writer only writes sub-IFDs of an Exif that was loaded from bytes.
    exif = Image.Exif()
    exif.load(make_exif())
    return exif


def frames(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (W, H), (40 * i, 255 - 40 * i, 7 * i)) for i in range(n)]


def image_bytes(fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im = frames(1)[0]
    if fmt == "GIF":
        im = im.convert("P")
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def animated(fmt: str, n: int = 3) -> bytes:
    buf = io.BytesIO()
    first, *rest = frames(n)
    first.save(buf, fmt, save_all=True, append_images=rest, duration=100, loop=0)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels (Pillow would refuse to open it)."""
    png = bytearray(image_bytes("PNG"))
    struct.pack_into(">II", png, 16, 100_000, 100_000)
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def source_of(path: str) -> Source:
    return Source("file://" + os.path.abspath(path), os.path.getsize(path), None, "id", "fp", "t")


def describe(path: str) -> dict:
    return ImageReader().describe(source_of(path), ImageReader.configure({})).metadata


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    jpg = image_bytes("JPEG", exif=make_exif(), dpi=(300, 300))
    png = image_bytes("PNG", exif=make_exif(), dpi=(72, 72))
    return {
        "photo.jpg": jpg,
        "photo.png": png,
        "photo.tif": image_bytes("TIFF", exif=loaded_exif(), dpi=(150, 150)),
        "photo.webp": image_bytes("WEBP", exif=make_exif()),
        "flat.gif": image_bytes("GIF"),
        "flat.bmp": image_bytes("BMP"),
        "anim.gif": animated("GIF"),
        "anim.webp": animated("WEBP"),
        "renamed.dat": png,  # sniffed by magic, not suffix
        "cut_scan.jpg": jpg[: (jpg.rfind(b"\xff\xda") + len(jpg)) // 2],  # cut in the scan
        "cut_header.jpg": jpg[:120],  # cut inside the EXIF segment
        "flipped.png": png[:20] + bytes([png[20] ^ 0xFF]) + png[21:],  # IHDR checksum broken
        "bomb.png": bomb_png(),
    }


@pytest.fixture(scope="module")
def lake(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, bytes], shared_scheduler: str
) -> tuple[str, str]:
    src = tmp_path_factory.mktemp("images")
    for name, data in images.items():
        (src / name).write_bytes(data)
    out = str(tmp_path_factory.mktemp("lake") / "out")
    pipeline.ingest([str(src)], out=out, scheduler=shared_scheduler, progress=False)
    return str(src), out


def catalog(out: str) -> dict[str, dict]:
    rows = duckdb.sql(f"select * from '{out}/_catalog/*.parquet'").df().to_dict("records")
    return {os.path.basename(r["path"]): dict(r, metadata=json.loads(r["metadata"])) for r in rows}


def errors(out: str) -> list[dict]:
    return (
        duckdb.sql(f"select * from '{out}/_errors/*.parquet' order by path").df().to_dict("records")
    )


# --- end to end ---------------------------------------------------------------------------------
def test_healthy_images_are_catalog_only_rows(lake: tuple[str, str]) -> None:
    src, out = lake
    cat = catalog(out)
    healthy = [
        "photo.jpg",
        "photo.png",
        "photo.tif",
        "photo.webp",
        "flat.gif",
        "flat.bmp",
        "anim.gif",
        "anim.webp",
        "renamed.dat",
        "bomb.png",
    ]
    for name in healthy:
        row = cat[name]
        assert (row["format"], row["status"], row["rows"], row["chunks"], row["error_count"]) == (
            "image",
            "ok",
            0,
            0,
            0,
        ), name
        assert list(row["tables"]) == []
        if name == "bomb.png":
            continue  # Image.open refuses it (see test_decompression_bomb_is_reported_not_fatal)
        with Image.open(os.path.join(src, name)) as im:
            assert (row["metadata"]["width"], row["metadata"]["height"]) == im.size
            assert row["metadata"]["format"] == im.format
    # No table directory: only the catalog, errors and state live in OUT.
    assert sorted(os.listdir(out)) == ["_catalog", "_chunkmill", "_errors"]


def test_exif_and_gps_by_name(lake: tuple[str, str]) -> None:
    cat = catalog(lake[1])
    for name in ("photo.jpg", "photo.png", "photo.tif", "photo.webp"):
        meta = cat[name]["metadata"]
        exif = meta["exif"]
        assert exif["Make"] == "Acme" and exif["Model"] == "Cam 1", name
        assert exif["DateTimeOriginal"] == "2024:01:02 03:04:05", name
        assert exif["UserComment"] == "hello", name  # charset prefix removed
        assert exif["MakerNote"].endswith("… (512 bytes)"), name  # hex, capped
        assert all(not k.isdigit() for k in exif), name
        assert "ExifOffset" not in exif and "GPSInfo" not in exif
        assert "StripOffsets" not in exif
        gps = meta["gps"]
        assert gps["latitude"] == pytest.approx(-(33 + 51 / 60 + 54 / 3600)), name
        assert gps["longitude"] == pytest.approx(151 + 12 / 60 + 36 / 3600), name
        assert gps["altitude"] == -12.5, name
        assert gps["tags"]["GPSLatitudeRef"] == "S"
    assert cat["photo.jpg"]["metadata"]["dpi"] == [300, 300]
    assert cat["photo.png"]["metadata"]["dpi"] == [72, 72]
    assert cat["photo.tif"]["metadata"]["dpi"] == [150, 150]
    assert cat["photo.jpg"]["metadata"]["mode"] == "RGB"


def test_frames_and_sniffed_format(lake: tuple[str, str]) -> None:
    cat = catalog(lake[1])
    for name in ("anim.gif", "anim.webp"):
        assert cat[name]["metadata"]["frames"] == 3, name
        assert cat[name]["metadata"]["animated"] is True, name
    assert cat["flat.gif"]["metadata"]["frames"] == 1
    assert cat["renamed.dat"]["metadata"]["format"] == "PNG"
    assert cat["renamed.dat"]["metadata"]["mime"] == "image/png"


def test_decompression_bomb_is_reported_not_fatal(lake: tuple[str, str]) -> None:
    meta = catalog(lake[1])["bomb.png"]["metadata"]
    assert (meta["width"], meta["height"]) == (100_000, 100_000)
    assert meta["pixel_limit_exceeded"] is True
    assert meta["pixel_limit"] == Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(os.path.join(lake[0], "bomb.png"))  # what we side-step


def test_damaged_images(lake: tuple[str, str]) -> None:
    src, out = lake
    cat = catalog(out)
    errs = {os.path.basename(e["path"]): e for e in errors(out)}
    # Pixel data cut: the header still gives a catalog row, the damage an _errors row.
    row = cat["cut_scan.jpg"]
    assert (row["status"], row["rows"], row["error_count"]) == ("partial", 0, 1)
    assert row["metadata"]["width"] == W and row["metadata"]["integrity"]
    err = errs["cut_scan.jpg"]
    assert err["error_type"] == "ImageIntegrity" and "end-of-image" in err["message"]
    assert err["path"] not in err["message"] and err["byte_offset"] == os.path.getsize(
        os.path.join(src, "cut_scan.jpg")
    )
    # Header cut or corrupted: the file fails, with the file (path column) and the place
    # (message) named.
    for name, words in (("cut_header.jpg", "JPEG header"), ("flipped.png", "checksum")):
        assert cat[name]["status"] == "failed", name
        assert errs[name]["kind"] == "file" and words in errs[name]["message"], name
        assert errs[name]["path"].endswith(name) and "byte" in errs[name]["message"], name


# --- unit tests ---------------------------------------------------------------------------------
def test_sniff_by_magic(images: dict[str, bytes]) -> None:
    expected = {
        "photo.jpg": "JPEG",
        "photo.png": "PNG",
        "photo.tif": "TIFF",
        "photo.webp": "WEBP",
        "flat.gif": "GIF",
        "flat.bmp": "BMP",
        "renamed.dat": "PNG",
    }
    for name, fmt in expected.items():
        head = images[name][:64]
        assert image_format(head) == fmt
        assert ImageReader.sniff(head, "x.bin") == 90
        assert detect(head, "x.bin") is ImageReader
    big_endian_tiff = io.BytesIO()
    Image.new("L", (4, 4)).save(big_endian_tiff, "TIFF", tiffinfo={}, big_endian=True)
    assert image_format(big_endian_tiff.getvalue()) == "TIFF"
    for text in (b"BM is not a bitmap, just text\n" * 3, b"hello,world\n", b"", b"RIFF1234WAVE"):
        assert ImageReader.sniff(text, "x.bmp") == 0


def test_describe_never_decodes_pixels(
    tmp_path, images: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for name in (
        "photo.jpg",
        "photo.png",
        "photo.tif",
        "photo.webp",
        "anim.gif",
        "anim.webp",
        "flat.bmp",
        "bomb.png",
    ):
        path = tmp_path / name
        path.write_bytes(images[name])
        assert describe(str(path))["width"] in (W, 100_000)


def test_jsonable_values() -> None:
    assert jsonable(TiffImagePlugin.IFDRational(1, 0)) is None
    assert jsonable(TiffImagePlugin.IFDRational(3, 2)) == 1.5
    assert jsonable(float("nan")) is None
    assert jsonable(b"Canon\x00\x00") == "Canon"
    assert jsonable(b"\x02") == 2
    assert jsonable(b"\x00\x01\x02\xff") == "000102ff"
    binary = bytes(range(256)) * 4
    assert jsonable(binary).endswith("… (1024 bytes)") and len(jsonable(binary)) < 200
    assert jsonable(bytes(1000)) == ""  # NUL padding only
    assert jsonable("x" * 5000).endswith("…") and len(jsonable("x" * 5000)) == 1025
    assert jsonable({1: (b"a\x00", 2.5)}) == {"1": ["a", 2.5]}
    json.dumps(jsonable({"deep": [[[[[[b"\xff" * 3]]]]]]}), allow_nan=False)


def test_gps_refs_and_bad_values() -> None:
    north_west = {1: "N", 2: (10.0, 30.0, 0.0), 3: b"W", 4: (20.0, 0.0, 36.0), 5: 0, 6: 100.0}
    got = gps_decimal(north_west)
    assert (got["latitude"], got["longitude"], got["altitude"]) == (10.5, -20.01, 100.0)
    nonsense = {1: "N", 2: (400.0, 0.0, 0.0), 4: ("x",), 6: TiffImagePlugin.IFDRational(1, 0)}
    got = gps_decimal(nonsense)
    assert (got["latitude"], got["longitude"], got["altitude"]) == (None, None, None)


def test_webp_hostile_headers(tmp_path, images: dict[str, bytes]) -> None:
    webp = bytearray(images["photo.webp"])
    truncated = tmp_path / "cut.webp"
    truncated.write_bytes(webp[: len(webp) // 2])
    meta = describe(str(truncated))
    assert meta["width"] == W and any("RIFF header declares" in p for p in meta["integrity"])
    absurd = bytearray(webp)
    struct.pack_into("<I", absurd, 16, 0xFFFFFFF0)  # first chunk claims 4 GiB
    (tmp_path / "absurd.webp").write_bytes(absurd)
    with pytest.raises(ValueError, match="runs past the end"):
        describe(str(tmp_path / "absurd.webp"))
    # A 16384 x 16384 canvas is declared in 30 bytes; only the header is parsed, nothing is
    # allocated for pixels.
    vp8x = (
        b"VP8X"
        + struct.pack("<I", 10)
        + bytes([0x10, 0, 0, 0])
        + (16383).to_bytes(3, "little")
        + (16383).to_bytes(3, "little")
    )
    huge = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    with io.BytesIO(huge) as f:
        facts, exif, problems = webp_info(f, len(huge))
    assert (facts["width"], facts["height"], facts["mode"]) == (16384, 16384, "RGBA")
    assert exif is None and problems == []


@pytest.mark.timeout(300)  # a hang or blow-up, not speed: no wall-clock asserts
def test_hostile_tiff_headers_end_quickly(tmp_path, images: dict[str, bytes]) -> None:
    tif = bytearray(images["photo.tif"])
    ifd = struct.unpack_from("<I", tif, 4)[0]
    count = struct.unpack_from("<H", tif, ifd)[0]
    loop = bytearray(tif)
    struct.pack_into("<I", loop, ifd + 2 + 12 * count, ifd)  # next IFD = this IFD, forever
    absurd = bytearray(tif)
    struct.pack_into("<I", absurd, ifd + 2 + 12 * 4 + 4, 0x7FFFFFFF)  # a tag of 2^31 values
    cut = tif[:200]
    for name, data in (("loop.tif", loop), ("absurd.tif", absurd), ("cut.tif", cut)):
        path = tmp_path / name
        path.write_bytes(bytes(data))
        try:
            meta = describe(str(path))
        except ValueError as exc:
            assert "TIFF header" in str(exc) and "byte" in str(exc)
        else:
            assert meta["frames"] in (1, None)
