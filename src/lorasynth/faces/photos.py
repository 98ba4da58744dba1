"""Photo bytes -> (H, W, 3) uint8 RGB, the one photo loader of lorasynth.

The type is sniffed from the first bytes, never from the file name; byte and pixel limits are
checked before any pixel is decoded (a decompression bomb is refused, not decoded); EXIF
orientation is applied; any mode (palette, grey, 16-bit, CMYK, alpha) becomes RGB, alpha over
white. Every failure is a LorasynthError whose one-line message names the photo.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorasynth.errors import LorasynthError

Photo = str | os.PathLike[str] | bytes | np.ndarray

# Leading bytes -> Pillow format name. Only these decoders are ever run on user bytes.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),  # after b"RIFF" and a 4-byte size
    (b"BM", 0, "BMP"),
)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
# Recognised but refused, so the message can say what the file is.
_OTHER_TYPES: tuple[tuple[bytes, int, str], ...] = (
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"GIF8", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "zip archive"),
)


class PhotoTooLarge(LorasynthError):
    """A photo over a byte or pixel limit (the service answers 413, not 422)."""


@dataclass(frozen=True)
class PhotoLimits:
    """Refuse photos larger than this before decoding them."""

    max_bytes: int = 50 * 2**20
    max_pixels: int = 64_000_000  # 8000 x 8000; phone photos are 12-50 MP
    min_side: int = 8


DEFAULT_LIMITS = PhotoLimits()


def photo_name(photo: Photo) -> str:
    """How messages name a photo: its path, or what kind of in-memory photo it is."""
    if isinstance(photo, bytes):
        return f"photo bytes ({len(photo):,} bytes)"
    if isinstance(photo, np.ndarray):
        return f"photo array {tuple(photo.shape)}"
    return str(photo)


def sniff_format(head: bytes) -> str | None:
    """The Pillow format of an accepted photo type from its first 16 bytes, else None."""
    for magic, offset, fmt in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    return None


def load_photo(
    photo: Photo, size: int | None = None, limits: PhotoLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """A photo (path, encoded bytes or (H, W, 3) uint8 array) as C-contiguous RGB uint8.

    With `size`, the photo is resized to (size, size) with bilinear filtering (what the mini
    embedders and the pipeline take); without, it keeps its own size.
    """
    if isinstance(photo, np.ndarray):
        image = _check_array(photo)
    else:
        name = photo_name(photo)
        data = photo if isinstance(photo, bytes) else _read_file(Path(photo), limits)
        image = decode_photo(data, name, limits)
    if size is not None and image.shape[:2] != (size, size):
        from PIL import Image

        image = np.asarray(
            Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
        )
    return np.ascontiguousarray(image)


def _check_array(photo: np.ndarray) -> np.ndarray:
    if photo.ndim != 3 or photo.shape[-1] != 3:
        raise LorasynthError(f"a photo array must be (H, W, 3) RGB, got shape {photo.shape}")
    if photo.dtype != np.uint8:
        raise LorasynthError(f"a photo array must be uint8 RGB, got dtype {photo.dtype}")
    return photo


def _read_file(path: Path, limits: PhotoLimits) -> bytes:
    if not path.is_file():
        raise LorasynthError(f"{path}: no such photo")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise PhotoTooLarge(
            f"{path}: {size:,} bytes is over the photo limit of {limits.max_bytes:,} bytes; "
            "save it smaller (e.g. as JPEG)"
        )
    return path.read_bytes()


def decode_photo(data: bytes, name: str, limits: PhotoLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB; `name` is how errors name the photo."""
    from PIL import Image, ImageOps

    if not data:
        raise LorasynthError(f"{name}: empty file, not a photo")
    if len(data) > limits.max_bytes:
        raise PhotoTooLarge(
            f"{name}: {len(data):,} bytes is over the photo limit of {limits.max_bytes:,} bytes"
        )
    fmt = sniff_format(data[:16])
    if fmt is None:
        other = next((t for m, o, t in _OTHER_TYPES if data[o : o + len(m)] == m), None)
        found = f"it is {other}" if other else f"its content starts with {data[:8]!r}"
        raise LorasynthError(
            f"{name}: not a readable image ({', '.join(FORMATS)} expected; {found})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise PhotoTooLarge(f"{name}: refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise LorasynthError(f"{name}: corrupt {fmt} header: {exc}") from None
    with im:
        width, height = im.size
        if width * height > limits.max_pixels:
            raise PhotoTooLarge(
                f"{name}: {width}x{height} = {width * height / 1e6:.1f} MP is over the limit of "
                f"{limits.max_pixels / 1e6:g} MP (a decompression bomb or an oversized photo); "
                "scale it down"
            )
        if min(width, height) < limits.min_side:
            raise LorasynthError(
                f"{name}: {width}x{height} pixels; at least {limits.min_side}x{limits.min_side} "
                "is needed"
            )
        try:
            im.load()
            rgb = _to_rgb(ImageOps.exif_transpose(im))
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise LorasynthError(f"{name}: corrupt or truncated {fmt} data: {exc}") from None
    return rgb


def _to_rgb(im) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8: alpha over white, 16/32-bit and float scaled to 8-bit."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0
        elif im.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
