"""Metrics of the mini-world pipeline: background prompt fidelity and Frechet distance.

Prompt fidelity is the share of generated images whose background colour is the one the prompt
names. The background is read from the image's border: the mean colour of the outer ring (top
and sides; the bottom holds the shoulders) goes to the nearest BACKGROUNDS colour. Renderer
backgrounds keep their named colour under any lighting, so on real renders this classifier is
exact (checked by tests and reported next to every fidelity number).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg

from lorasynth.errors import LorasynthError
from lorasynth.world.attributes import BACKGROUNDS

BORDER = 2  # pixels of the ring read at 32x32

_NAMES = tuple(BACKGROUNDS)
_PALETTE = np.array([BACKGROUNDS[n] for n in _NAMES], dtype=np.float64)


def _as_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise LorasynthError(f"images must be (B, H, W, 3) or (H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise LorasynthError(f"images must be uint8 RGB, got {images.dtype}")
    return images


def border_colours(images: np.ndarray, border: int = BORDER) -> np.ndarray:
    """Mean RGB (0-255) of each image's top, left and right border ring -> (B, 3)."""
    images = _as_batch(images)
    mask = np.zeros(images.shape[1:3], dtype=bool)
    mask[:border, :] = mask[:, :border] = mask[:, -border:] = True
    return images[:, mask].astype(np.float64).mean(axis=1)


def classify_background(images: np.ndarray) -> list[str]:
    """The BACKGROUNDS name nearest to each image's border colour."""
    colours = border_colours(images)
    dist = ((colours[:, None, :] - _PALETTE[None]) ** 2).sum(-1)
    return [_NAMES[i] for i in dist.argmin(axis=1)]


def background_of(prompt: str) -> str | None:
    """The background colour a prompt asks for ("..., blue background" -> "blue"), if any."""
    match = re.search(r"(\w+) background", prompt)
    return match.group(1) if match else None


def prompt_fidelity(images: np.ndarray, backgrounds: Sequence[str]) -> float:
    """Share of images whose classified background equals the requested one."""
    predicted = classify_background(images)
    if len(predicted) != len(backgrounds):
        raise LorasynthError(
            f"prompt fidelity needs one background per image: {len(predicted)} images, "
            f"{len(backgrounds)} backgrounds"
        )
    return float(np.mean([p == b for p, b in zip(predicted, backgrounds, strict=True)]))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to two (N, D) feature sets (FID's formula)."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise LorasynthError(f"features must be (N, D) with equal D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise LorasynthError("Frechet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Near-singular product: regularise both covariances, as FID implementations do.
        eps = 1e-6 * np.eye(a.shape[1])
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)
    return float(max(value, 0.0))


def pixel_features(images: np.ndarray, size: int = 8) -> np.ndarray:
    """Stand-in embedding: images box-downsampled to size x size, RGB in [0, 1], flattened."""
    images = _as_batch(images).astype(np.float64) / 255.0
    n, h, w, _ = images.shape
    if h % size or w % size:
        raise LorasynthError(f"images of {h}x{w} do not downsample evenly to {size}x{size}")
    pooled = images.reshape(n, size, h // size, size, w // size, 3).mean(axis=(2, 4))
    return pooled.reshape(n, -1)


def frechet_distance_images(
    images_a: np.ndarray,
    images_b: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray] = pixel_features,
) -> float:
    """Frechet distance between two uint8 image sets in the space of `embed` (images -> (N, D))."""
    return frechet_distance(np.asarray(embed(images_a)), np.asarray(embed(images_b)))
