"""What every mini-world renderer shares: image size limits, input checks, batches of subjects
and a subject's stream of photos. Each domain's renderer (`render.py` for faces,
`render_products.py`) draws one image; these wrap it the same way for every domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lorasynth.errors import LorasynthError

MIN_SIZE = 16
MAX_SIZE = 1024
SUPERSAMPLE = 2  # drawn at SUPERSAMPLE x size, then box-filtered: smooth edges at any size

RenderOne = Callable[[Any, Any, int], np.ndarray]  # (attributes, nuisance, size) -> uint8 RGB


def check_size(size: int) -> int:
    """An image size in [MIN_SIZE, MAX_SIZE] pixels as a Python int."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise LorasynthError(f"image size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise LorasynthError(f"image size must be in [{MIN_SIZE}, {MAX_SIZE}] pixels, got {size}")
    return int(size)


def check_count(n: int) -> int:
    """A number of images (a positive integer) as a Python int."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise LorasynthError(f"number of images must be a positive integer, got {n!r}")
    return int(n)


def render_batch(
    render_one: RenderOne,
    attrs: Sequence[Any],
    nuisances: Sequence[Any],
    size: int,
    mismatch: str,
) -> np.ndarray:
    """Subject i is (attrs[i], nuisances[i]) -> (B, size, size, 3) uint8 RGB.

    `mismatch` is the error when the lengths differ, formatted with {attrs} and {nuisances}.
    """
    if len(attrs) != len(nuisances):
        raise LorasynthError(mismatch.format(attrs=len(attrs), nuisances=len(nuisances)))
    out = np.empty((len(attrs), size, size, 3), dtype=np.uint8)
    for i, (at, nu) in enumerate(zip(attrs, nuisances, strict=True)):
        out[i] = render_one(at, nu, size)
    return out


def iter_photos(
    render_one: RenderOne,
    attributes: Callable[[int], Any],
    nuisance_rng: Callable[[int, int], np.random.Generator],
    sample_nuisance: Callable[[np.random.Generator], Any],
    seed: int,
    n: int,
    nuisance_seed: int = 0,
    size: int = 32,
) -> Iterator[tuple[np.ndarray, Any]]:
    """n (image, nuisance) photos of subject `seed`, rendered one at a time as they are read.

    Every input is checked here, not inside the generator, so bad input fails at the call.
    """
    n = check_count(n)
    size = check_size(size)
    attrs = attributes(seed)
    rng = nuisance_rng(seed, nuisance_seed)
    nuisances = (sample_nuisance(rng) for _ in range(n))
    return ((render_one(attrs, nu, size), nu) for nu in nuisances)
