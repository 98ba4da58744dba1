"""5-point face alignment to the standard 112x112 ArcFace template (a similarity transform).

Landmarks are (5, 2) image (x, y) coordinates, pixel centres at integers, in the template's
order: the eye on the image's left, the eye on the image's right, the nose tip, the mouth
corner on the image's left, the one on the image's right (what SCRFD predicts). The
transform is the least-squares rotation + uniform scale + translation (Umeyama, 1991), the
same estimate as insightface's `norm_crop` (skimage's SimilarityTransform); the warp is
bilinear with black outside the photo.
"""

from __future__ import annotations

import numpy as np

from lorasynth.errors import LorasynthError

ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) matrix M of the similarity that maps `src` points closest to `dst` points.

    dst ~ M @ [x, y, 1]; reflections are excluded (a mirrored face is not the same face).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise LorasynthError(f"landmarks must be two (K, 2) arrays, got {src.shape}, {dst.shape}")
    if not np.isfinite(src).all():
        raise LorasynthError("landmarks contain NaN or Inf")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise LorasynthError("landmarks are all at one point: no transform fits them")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # the best proper rotation, not a reflection
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 crop: out[y, x] = image at M^-1 (x, y), bilinear, black outside."""
    from PIL import Image

    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    out = Image.fromarray(np.ascontiguousarray(image)).transform(
        (size, size),
        Image.Transform.AFFINE,
        data=_pillow_affine(inv),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.asarray(out, dtype=np.uint8)


def _pillow_affine(inv: np.ndarray) -> tuple[float, ...]:
    # Output centre x + 0.5 maps to input inv @ (x, y) + 0.5 in Pillow's corner frame.
    (a, b, c), (d, e, f) = inv
    return (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The (size, size, 3) ArcFace crop of the face with these 5 landmarks (size 112 or 224...)."""
    template = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
    return warp_affine(image, similarity_transform(landmarks, template), size)
