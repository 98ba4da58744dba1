"""Who a mini-world product is (subject attributes) and how one photo of it looks (nuisances).

The second mini-world domain: bottles, jars, jugs and mugs with a shape family, a material, a
palette, a pattern and a label. As with faces (`attributes.py`), a subject is any Python int whose
attributes come from a generator seeded by that int alone, so nuisances (pose, placement,
lighting, background, table) can never change which product it is. Captions name the nuisances
a downstream model should obey, with the same named backgrounds as faces ("blue background").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lorasynth.world.sampling import (
    BACKGROUNDS,
    PHOTO_RANGES,
    AttributeVector,
    NuisanceRecord,
    stream_rng,
)

# Stream tags of their own: product seed 7 and face seed 7 share nothing.
_IDENTITY_DOMAIN = 0x9D0C7
_NUISANCE_DOMAIN = 0x9E15B

TILT_THRESHOLD_DEG = 10.0  # |roll| at or above this is captioned "tilted left/right"
HANDLE_THRESHOLD = 0.35  # handle_size below this: no handle
LABEL_THRESHOLD = 0.3  # label_size below this: no label
PATTERNS = ("plain", "stripes", "dots", "checks")  # pattern_type in [0, 1] in four equal bins


def product_rng(seed: int) -> np.random.Generator:
    """The generator that fixes a product's attributes; depends on the subject seed only."""
    return stream_rng(_IDENTITY_DOMAIN, (seed, "subject seed"))


def product_nuisance_rng(seed: int, nuisance_seed: int = 0) -> np.random.Generator:
    """The generator for the nuisances of one product's photos."""
    return stream_rng(_NUISANCE_DOMAIN, (seed, "subject seed"), (nuisance_seed, "nuisance seed"))


@dataclass(frozen=True)
class ProductAttributes(AttributeVector):
    """Continuous subject attributes, each in [0, 1]; render_products.py maps them to pixels.

    The field order is the order of `as_vector()` and of `PRODUCT_ATTRIBUTE_NAMES`: never
    reorder, only append (it is the ground truth an attribute regressor is scored against).
    """

    body_height: float
    body_aspect: float  # 0 slender, 1 squat (width relative to height)
    body_exponent: float  # superellipse exponent: 0 rounded/pointed, 1 boxy
    body_taper: float  # 0 narrow at the bottom, 0.5 straight, 1 wide at the bottom
    neck_width: float  # 0 a bottle's thin neck, 1 a jar's wide mouth
    neck_length: float
    cap_height: float  # rim or cap on the neck, in the accent colour
    handle_size: float  # below HANDLE_THRESHOLD: no handle; above: a ring on one side
    handle_height: float
    gloss: float  # 0 matte, 1 glossy (a small, bright highlight)
    primary_hue: float
    primary_saturation: float
    primary_value: float
    secondary_hue: float  # the pattern's colour
    accent_hue: float  # cap, rim and label
    pattern_type: float  # PATTERNS, in four equal bins
    pattern_frequency: float
    pattern_angle: float  # 0..1 -> 0..180 degrees
    label_size: float  # below LABEL_THRESHOLD: no label; above: a band of growing height
    label_position: float  # 0 high on the body, 1 low

    NAMES: ClassVar[tuple[str, ...]]
    _KIND: ClassVar[str] = "product"

    @property
    def pattern(self) -> str:
        return PATTERNS[min(int(self.pattern_type * len(PATTERNS)), len(PATTERNS) - 1)]


PRODUCT_ATTRIBUTE_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ProductAttributes)
)
ProductAttributes.NAMES = ProductAttributes._FIELDS = PRODUCT_ATTRIBUTE_NAMES


def product_attributes(seed: int) -> ProductAttributes:
    """The attributes of product `seed` (any int); uniform over the attribute cube."""
    return ProductAttributes.from_vector(product_rng(seed).random(len(PRODUCT_ATTRIBUTE_NAMES)))


@dataclass(frozen=True)
class ProductNuisance(NuisanceRecord):
    """How one photo of a product looks. roll in degrees (positive: the top leans toward the
    image's right); offsets in fractions of the image; light angle in degrees (0 = from the
    image's right, 90 = from below); `mirrored` shows the product from its other side."""

    roll_deg: float = 0.0
    offset_x: float = 0.0
    offset_y: float = 0.0
    scale: float = 1.0
    light_angle_deg: float = 300.0
    light_strength: float = 0.0
    brightness: float = 1.0
    background: str = "gray"
    table: bool = False
    mirrored: bool = False

    _RANGES: ClassVar[dict[str, tuple[float, float]]] = {**PHOTO_RANGES}

    _FLAGS: ClassVar[tuple[str, ...]] = ("table", "mirrored")


def sample_product_nuisance(rng: np.random.Generator) -> ProductNuisance:
    """One random nuisance; a fixed number of draws in a fixed order (deterministic)."""
    u = rng.random(9)
    names = list(BACKGROUNDS)
    # Tilt is bimodal, away from the caption threshold, so "tilted left" is never a coin flip.
    tilted = u[0] < 0.3
    sign = 1.0 if u[1] < 0.5 else -1.0
    roll = sign * (14.0 + 10.0 * u[2]) if tilted else 12.0 * u[2] - 6.0
    return ProductNuisance(
        roll_deg=float(roll),
        offset_x=float(0.16 * u[3] - 0.08),
        offset_y=float(0.10 * u[4] - 0.05),
        scale=float(0.85 + 0.25 * u[5]),
        light_angle_deg=float(360.0 * u[6]),
        light_strength=float(u[7]),
        brightness=float(0.85 + 0.3 * u[8]),
        background=names[int(rng.integers(len(names)))],
        table=bool(rng.random() < 0.4),
        mirrored=bool(rng.random() < 0.5),
    )


def product_caption(nuisance: ProductNuisance, subject: str = "a photo of a product") -> str:
    """e.g. "a photo of a product, tilted left, on a table, blue background"."""
    parts = [subject]
    if nuisance.roll_deg >= TILT_THRESHOLD_DEG:
        parts.append("tilted right")
    elif nuisance.roll_deg <= -TILT_THRESHOLD_DEG:
        parts.append("tilted left")
    if nuisance.table:
        parts.append("on a table")
    parts.append(f"{nuisance.background} background")
    return ", ".join(parts)


def product_grid_nuisances(background: str) -> list[ProductNuisance]:
    """Eight captioned variants on one background (a pipeline's sample-grid row)."""
    return [
        ProductNuisance(background=background),
        ProductNuisance(background=background, table=True),
        ProductNuisance(background=background, roll_deg=-18.0),
        ProductNuisance(background=background, roll_deg=18.0),
        ProductNuisance(background=background, table=True, roll_deg=-18.0),
        ProductNuisance(background=background, light_strength=0.9, light_angle_deg=180.0),
        ProductNuisance(background=background, mirrored=True),
        ProductNuisance(background=background),
    ]
