"""Uploaded photo bytes -> an RGB array, with the limits checked before any pixel is decoded."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from lorasynth.service.problems import Problem

FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass
class DecodedPhoto:
    pixels: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    width: int
    height: int

    def png(self) -> bytes:
        """The photo re-encoded without any metadata (EXIF can hold GPS position, device ids)."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.pixels).save(buf, format="PNG")
        return buf.getvalue()


def decode_photo(data: bytes, max_pixels: int) -> DecodedPhoto:
    """Decode an upload; 413 when it has too many pixels, 422 when it is not a usable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise Problem(422, "the uploaded file is empty", "bad-image")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise Problem(413, f"image has too many pixels: {exc}", "too-large") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Problem(
            422, f"not a readable image ({', '.join(FORMATS)} expected): {exc}", "bad-image"
        ) from None
    with im:
        if im.format not in FORMATS:
            raise Problem(
                422,
                f"image format {im.format} is not accepted; use {', '.join(FORMATS)}",
                "bad-image",
            )
        width, height = im.size
        if width * height > max_pixels:
            raise Problem(
                413,
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,}",
                "too-large",
            )
        if width < 8 or height < 8:
            raise Problem(422, f"image is {width}x{height}; at least 8x8 is needed", "bad-image")
        try:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            raise Problem(422, f"image data is broken: {exc}", "bad-image") from None
    pixels = np.asarray(rgb, dtype=np.uint8)
    return DecodedPhoto(pixels, pixels.shape[1], pixels.shape[0])
