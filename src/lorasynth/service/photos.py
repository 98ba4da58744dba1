"""Uploaded photo bytes -> pixels and a face embedding, with loader errors as problems.

Decoding is lorasynth.faces.photos' (the one photo loader: type sniffed from the bytes, byte
and pixel limits checked before any pixel is decoded, EXIF orientation applied, any mode to
RGB). Its LorasynthError becomes 413 `too-large` when a limit was exceeded and 422
`bad-image` otherwise; a photo without a face is 422 `no-face`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from lorasynth.errors import LorasynthError
from lorasynth.service.problems import Problem

UPLOAD_NAME = "the uploaded photo"  # how loader messages name it (never the client's file name)


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


@dataclass
class PhotoEmbedding:
    embedding: np.ndarray  # (dim,) float32 little-endian, unit norm
    faces_found: int
    warnings: list[str] = field(default_factory=list)


def decode_photo(data: bytes, max_pixels: int, max_bytes: int) -> DecodedPhoto:
    """Decode an upload with the faces loader; 413 over a limit, 422 when not usable."""
    from lorasynth.faces.photos import PhotoLimits, PhotoTooLarge
    from lorasynth.faces.photos import decode_photo as load

    try:
        pixels = load(data, UPLOAD_NAME, PhotoLimits(max_bytes=max_bytes, max_pixels=max_pixels))
    except PhotoTooLarge as exc:
        raise Problem(413, str(exc), "too-large") from None
    except LorasynthError as exc:
        raise Problem(422, str(exc), "bad-image") from None
    return DecodedPhoto(pixels, pixels.shape[1], pixels.shape[0])


def embed_photo(synth, pixels: np.ndarray) -> PhotoEmbedding:
    """The photo's face embedding with the Synthesizer's embedder: its largest face, how many
    faces were found and the embedder's quality warnings (small, blurry, several faces)."""
    from lorasynth.faces.photos import photo_name

    faces = synth.faces
    try:
        if hasattr(faces, "analyse"):  # detecting embedders report what they found
            found = faces.analyse([pixels])[0]
            embedding, count, notes = found.embedding, len(found.faces), list(found.warnings)
        else:
            embedding, count, notes = faces.embed([pixels])[0], 1, []
    except LorasynthError as exc:
        message = str(exc)
        kind = "no-face" if "face" in message.lower() else "bad-image"
        raise Problem(422, message, kind) from None
    notes = [n.replace(photo_name(pixels), UPLOAD_NAME) for n in notes]
    embedding = np.asarray(embedding, dtype="<f4")
    embedding = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
    return PhotoEmbedding(embedding.astype("<f4"), count, notes)
