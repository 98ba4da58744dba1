"""Photo loading: type from content, limits before decoding, EXIF, modes, every error path."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from lorasynth.errors import LorasynthError
from lorasynth.faces.photos import PhotoLimits, load_photo, sniff_format


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (h, w, 1)),
            np.broadcast_to(y, (h, w, 1)),
            np.full((h, w, 1), 90, np.float32),
        ],
        axis=2,
    )
    return Image.fromarray(rgb.astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels and holds a few rows: a decompression bomb
    needs no more to make a naive loader allocate width * height bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_accepted_formats_load_as_rgb_uint8(tmp_path, fmt):
    image = gradient()
    path = tmp_path / "photo.bin"  # the name says nothing: the type comes from the bytes
    path.write_bytes(encode(image, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {})))
    loaded = load_photo(path)
    assert loaded.shape == (30, 40, 3) and loaded.dtype == np.uint8
    assert loaded.flags["C_CONTIGUOUS"]
    tolerance = 0 if fmt in ("PNG", "BMP") else 12
    assert np.abs(loaded.astype(int) - np.asarray(image, dtype=int)).mean() <= tolerance
    assert sniff_format(path.read_bytes()[:16]) == fmt


def test_type_comes_from_content_not_the_name(tmp_path):
    png_named_jpg = tmp_path / "really-a-png.jpg"
    png_named_jpg.write_bytes(encode(gradient(), "PNG"))
    np.testing.assert_array_equal(load_photo(png_named_jpg), np.asarray(gradient()))
    text_named_png = tmp_path / "notes.png"
    text_named_png.write_text("these are my notes, not a photo")
    with pytest.raises(LorasynthError, match=r"notes\.png: not a readable image .*b'these ar'"):
        load_photo(text_named_png)


@pytest.mark.parametrize(("fmt", "kind"), [("GIF", "GIF"), ("TIFF", "TIFF"), ("PDF", "PDF")])
def test_other_image_types_are_named_and_refused(tmp_path, fmt, kind):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(gradient().convert("RGB"), fmt))
    with pytest.raises(LorasynthError, match=rf"photo\.png: not a readable image .*it is {kind}"):
        load_photo(path)


def test_modes_become_rgb(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :6, 3] = 255  # left half opaque red, right half fully transparent
    out = load_photo(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, 0].tolist() == [200, 0, 0] and out[0, -1].tolist() == [255, 255, 255]

    grey16 = Image.fromarray(np.full((10, 10), 65535, np.uint16)).convert("I;16")
    assert load_photo(encode(grey16, "PNG"))[0, 0].tolist() == [255, 255, 255]

    palette = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert load_photo(encode(palette, "PNG")).shape == (30, 40, 3)
    assert load_photo(encode(gradient().convert("L"), "PNG")).shape == (30, 40, 3)
    assert load_photo(encode(gradient().convert("1"), "PNG")).shape == (30, 40, 3)
    assert load_photo(encode(gradient().convert("LA"), "PNG")).shape == (30, 40, 3)
    cmyk = load_photo(encode(gradient().convert("CMYK"), "JPEG", quality=95))
    assert np.abs(cmyk.astype(int) - np.asarray(gradient(), dtype=int)).mean() < 12


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape (left red, right blue); orientation 6 says "rotate 90° clockwise to view".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20, 0] = 255
    stored[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    shown = load_photo(path)
    assert shown.shape == (40, 20, 3)  # portrait, as a viewer shows it
    assert shown[5, 10, 0] > 200 and shown[5, 10, 2] < 60  # red on top after the rotation
    assert shown[-5, 10, 2] > 200 and shown[-5, 10, 0] < 60


def test_resize_to_size():
    out = load_photo(encode(gradient(), "PNG"), size=16)
    assert out.shape == (16, 16, 3)


def test_arrays_pass_through_and_are_checked():
    image = np.asarray(gradient())
    np.testing.assert_array_equal(load_photo(image), image)
    with pytest.raises(LorasynthError, match=r"\(H, W, 3\)"):
        load_photo(image[..., 0])
    with pytest.raises(LorasynthError, match="uint8"):
        load_photo(image.astype(np.float32))


def test_decompression_bombs_are_refused_without_decoding(tmp_path):
    # 9,000 x 9,000 = 81 MP: over lorasynth's 64 MP limit, under Pillow's own bomb check.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(9_000, 9_000))
    assert path.stat().st_size < 1_000
    start = time.perf_counter()
    with pytest.raises(LorasynthError, match=r"bomb\.png: 9000x9000 = 81\.0 MP is over the limit"):
        load_photo(path)
    assert time.perf_counter() - start < 0.5  # refused from the header, not decoded
    # 60,000 x 60,000 = 3.6 GP: Pillow itself refuses it on open; still one clear message.
    with pytest.raises(LorasynthError, match="decompression bomb"):
        load_photo(png_header_only(60_000, 60_000))
    with pytest.raises(LorasynthError, match=r"over the limit of 0\.0001 MP"):
        load_photo(encode(gradient(), "PNG"), limits=PhotoLimits(max_pixels=100))


def test_byte_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(gradient(), "PNG"))
    with pytest.raises(LorasynthError, match=r"big\.png: .* bytes is over the photo limit of 100"):
        load_photo(path, limits=PhotoLimits(max_bytes=100))
    with pytest.raises(LorasynthError, match="over the photo limit"):
        load_photo(path.read_bytes(), limits=PhotoLimits(max_bytes=100))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_and_corrupt_files_are_refused(tmp_path, fmt):
    data = encode(gradient(200, 150), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LorasynthError, match=rf"cut\.{fmt.lower()}: corrupt or truncated {fmt}"):
        load_photo(path)
    broken = tmp_path / "broken"
    broken.write_bytes(data[:16] + b"\x00" * 64)
    with pytest.raises(LorasynthError, match="broken: corrupt"):
        load_photo(broken)


def test_missing_empty_and_tiny(tmp_path):
    with pytest.raises(LorasynthError, match=r"nope\.jpg: no such photo"):
        load_photo(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(LorasynthError, match=r"empty\.jpg: empty file"):
        load_photo(tmp_path / "empty.jpg")
    with pytest.raises(LorasynthError, match="4x4 pixels; at least 8x8"):
        load_photo(encode(gradient(4, 4), "PNG"))


def test_cli_turns_a_bad_photo_into_one_error_line_and_exit_2(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(9_000, 9_000))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorasynth",
            "embed",
            str(bomb),
            "--embedder",
            "mini-eval",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bomb) in lines[0]
    assert proc.stdout == ""
