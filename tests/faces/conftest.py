"""Real face photos from installed packages (nothing is downloaded by the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# `make` unpacks the test photos of the face_recognition 1.3.0 source package here.
FACE_RECOGNITION_PHOTOS = Path(sys.prefix) / "share" / "face_recognition_test_images"


def astronaut() -> np.ndarray:
    """Eileen Collins, 512x512 (scikit-image)."""
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    """Grace Hopper, 512x600 (matplotlib's sample data)."""
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def mirrored_closer(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Another view of the same person: mirrored, cropped closer, rescaled, lighter."""
    x0, y0, x1, y1 = box
    pad = (x1 - x0) // 2
    crop = image[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad, ::-1]
    out = Image.fromarray(np.ascontiguousarray(crop)).resize((260, 260), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(out, dtype=np.float32) * 1.15 + 8, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def face_recognition_photos() -> Path:
    """obama.jpg, obama2.jpg, obama3.jpg (one person) and biden.jpg (another)."""
    if not (FACE_RECOGNITION_PHOTOS / "obama2.jpg").is_file():
        pytest.skip(f"{FACE_RECOGNITION_PHOTOS} is missing: run `make test` once to set it up")
    return FACE_RECOGNITION_PHOTOS
