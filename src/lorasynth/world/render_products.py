"""Procedural products for the mini-world: subject attributes + nuisance -> RGB image.

A product (bottle, jar, jug, mug...) is a superellipse body with a taper, a neck, a cap, an
optional handle and label, a material (matte to glossy) and a patterned two- or three-colour
palette. It stands in a scene: a background of a named colour, an optional table, a soft
shadow, and a light that shades the product (never the background, which keeps its named colour
so prompt fidelity can be read from the image's border, as for faces).

Everything is drawn with whole-array numpy on a supersampled grid and box-filtered down: about
fifty array operations per image, well under a millisecond at 32x32.

Product units: origin at the middle of the object, y down; one unit is half the image at scale 1.
Pose (roll, mirror), offset and scale only change the mapping from pixels to product units.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator, Sequence

import numpy as np

from lorasynth.world.attributes import BACKGROUNDS
from lorasynth.world.products import (
    HANDLE_THRESHOLD,
    LABEL_THRESHOLD,
    ProductAttributes,
    ProductNuisance,
    product_attributes,
    product_nuisance_rng,
    sample_product_nuisance,
)
from lorasynth.world.render_common import SUPERSAMPLE, check_size, iter_photos, render_batch

_CENTRE_Y = 0.02  # the object's middle in the image at zero offset (a little below centre)
_TABLE_SHADE = 0.8  # the table is the background colour, darker: the top border stays named
_SHADOW = 0.35
_UNIT = 1.2  # image half-widths per product unit at scale 1


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32).reshape(3, 1, 1)


def _coverage(distance: np.ndarray, gain: float) -> np.ndarray:
    """Soft inside-coverage from a signed distance (negative inside), about one pixel wide."""
    return np.clip(0.5 - distance * gain, 0.0, 1.0)


def _geometry(at: ProductAttributes) -> dict[str, float]:
    """Shape of one product in body units (body centre at the origin), plain floats."""
    h = 0.26 + 0.14 * at.body_height
    w = h * (0.45 + 0.6 * at.body_aspect)
    neck_w = w * (0.18 + 0.62 * at.neck_width)
    neck_l = 0.03 + 0.22 * at.neck_length
    cap_h = 0.025 + 0.07 * at.cap_height
    handle = at.handle_size >= HANDLE_THRESHOLD
    label = at.label_size >= LABEL_THRESHOLD
    return {
        "h": h,
        "w": w,
        "exp": 1.6 + 4.4 * at.body_exponent,
        "taper": (at.body_taper - 0.5) * 0.6,
        "neck_w": neck_w,
        "neck_l": neck_l,
        "cap_h": cap_h,
        "cap_w": neck_w * 1.15 + 0.01,
        "handle_r": 0.08 + 0.12 * (at.handle_size - HANDLE_THRESHOLD) / (1 - HANDLE_THRESHOLD)
        if handle
        else 0.0,
        "handle_y": h * (1.1 * at.handle_height - 0.55),
        "label_y": h * (1.0 * at.label_position - 0.5),
        "label_h": h * (0.1 + 0.3 * (at.label_size - LABEL_THRESHOLD) / (1 - LABEL_THRESHOLD))
        if label
        else 0.0,
        # The object's middle sits at the origin of product units: body centre shifted down.
        "shift": 0.5 * (neck_l + cap_h),
        "freq": 3.0 + 9.0 * at.pattern_frequency,
        "angle": math.pi * at.pattern_angle,
        "gloss": at.gloss,
    }


def _palette(at: ProductAttributes) -> dict[str, np.ndarray]:
    value = 0.3 + 0.65 * at.primary_value
    primary = _hsv(at.primary_hue, 0.25 + 0.7 * at.primary_saturation, value)
    # The pattern colour contrasts in value with the body, so patterns read at 32x32.
    secondary = _hsv(at.secondary_hue, 0.6, value - 0.42 if value >= 0.62 else value + 0.4)
    accent = _hsv(at.accent_hue, 0.75, 0.75)
    return {
        "primary": primary,
        "handle": primary * np.float32(0.75),
        "secondary": secondary,
        "accent": accent,
        "label": accent * np.float32(0.35) + np.float32(0.62),
    }


def _grids(nu: ProductNuisance, shift: float, n: int) -> tuple[np.ndarray, ...]:
    """Image coordinates (ix, iy) and body coordinates (x, y) of every supersampled pixel."""
    coords = ((np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0).astype(np.float32)
    ix, iy = np.meshgrid(coords, coords)
    px = (ix - 2.0 * nu.offset_x) / (nu.scale * _UNIT)
    py = (iy - 2.0 * nu.offset_y - _CENTRE_Y) / (nu.scale * _UNIT)
    roll = math.radians(nu.roll_deg)
    c, s = np.float32(math.cos(roll)), np.float32(math.sin(roll))
    x = c * px + s * py
    y = c * py - s * px
    if nu.mirrored:
        x = -x
    return ix, iy, x, y + np.float32(shift)


def _box(x: np.ndarray, y: np.ndarray, cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    """Signed distance (approximate) to an axis-aligned box in body units."""
    return np.maximum(np.abs(x - cx) - hx, np.abs(y - cy) - hy)


def render_product(
    attrs: ProductAttributes, nuisance: ProductNuisance, size: int = 32
) -> np.ndarray:
    """One product -> (size, size, 3) uint8 RGB; the same inputs always give the same bytes."""
    size = check_size(size)
    g, pal, nu = _geometry(attrs), _palette(attrs), nuisance
    n = size * SUPERSAMPLE
    scale = nu.scale * _UNIT
    gain = n * scale / 2.0  # 1 / (one supersampled pixel in product units)
    ix, iy, x, y = _grids(nu, g["shift"], n)
    h, w = g["h"], g["w"]

    bg = np.array(BACKGROUNDS[nu.background], dtype=np.float32).reshape(3, 1, 1) / 255.0
    rgb = np.broadcast_to(bg, (3, n, n)).copy()
    # The scene, in image coordinates: a table under the object, and the object's shadow.
    floor = 2.0 * nu.offset_y + _CENTRE_Y + scale * (h - g["shift"])  # the body's bottom
    if nu.table:
        table = np.clip((iy - (floor - 0.1 * scale)) * (n / 2.0), 0.0, 1.0)
        rgb *= 1.0 - (1.0 - _TABLE_SHADE) * table
    light = math.radians(nu.light_angle_deg)
    sx = 2.0 * nu.offset_x - 0.25 * nu.light_strength * math.cos(light) * scale
    shadow_r = (ix - sx) ** 2 / (1.3 * w * scale) ** 2 + (iy - floor) ** 2 / (0.06 * scale) ** 2
    rgb *= 1.0 - _SHADOW * np.clip(1.0 - shadow_r, 0.0, 1.0)

    # Body: a superellipse whose half width changes linearly with height (the taper).
    half_w = w * (1.0 + g["taper"] * np.clip(y / h, -1.0, 1.0))
    e = g["exp"]
    r = (np.abs(x / half_w) ** e + np.abs(y / h) ** e) ** (1.0 / e)
    body = _coverage((r - 1.0) * np.minimum(half_w, h), gain)
    top = -h * 0.75
    neck = _coverage(
        _box(x, y, 0.0, top - g["neck_l"] / 2 - 0.05, g["neck_w"], g["neck_l"] / 2 + 0.05), gain
    )
    cap_y = -h - g["neck_l"] - g["cap_h"] / 2 + 0.02
    cap = _coverage(_box(x, y, 0.0, cap_y, g["cap_w"], g["cap_h"] / 2), gain)
    mask = np.maximum(body, neck)

    colour = np.broadcast_to(pal["primary"], (3, n, n)).copy()
    # Pattern on body and neck, in the product's own (rolling) coordinates.
    u = x * math.cos(g["angle"]) + y * math.sin(g["angle"])
    v = y * math.cos(g["angle"]) - x * math.sin(g["angle"])
    f = g["freq"]
    soft = gain / (2.0 * math.pi * f)  # one pixel of anti-aliasing in units of the pattern
    kind = attrs.pattern
    if kind == "stripes":
        pattern = np.clip(0.5 + np.sin(2 * np.pi * f * u) * soft, 0.0, 1.0)
    elif kind == "dots":
        du = u * f - np.round(u * f)
        dv = v * f - np.round(v * f)
        pattern = _coverage((np.sqrt(du * du + dv * dv) - 0.28) / f, gain)
    elif kind == "checks":
        pattern = np.clip(0.5 + np.sin(np.pi * f * u) * np.sin(np.pi * f * v) * soft, 0.0, 1.0)
    else:
        pattern = None
    if pattern is not None:
        colour += (pal["secondary"] - colour) * pattern
    if g["label_h"] > 0:
        band = _coverage(np.abs(y - g["label_y"]) - g["label_h"], gain) * body
        colour += (pal["label"] - colour) * band

    # Material and light: cylinder shading across the body, then a specular highlight.
    across = np.clip(x / np.maximum(half_w, 1e-3), -1.2, 1.2)
    strength = 0.4 * nu.light_strength
    shade = 1.0 + strength * across * math.cos(light) - 0.15 * across * across
    shade += 0.5 * strength * np.clip(y / h, -1.0, 1.0) * math.sin(light)
    shade *= nu.brightness
    colour *= shade
    hx = 0.45 * math.cos(light) if nu.light_strength > 0 else -0.4
    hy = -0.35 + 0.2 * math.sin(light) if nu.light_strength > 0 else -0.35
    spread = 0.5 - 0.36 * g["gloss"]
    dist2 = ((across - hx) / spread) ** 2 + ((y / h - hy) / (1.5 * spread)) ** 2
    shine = (0.12 + 0.75 * g["gloss"]) * np.exp(-dist2) * (0.6 + 0.4 * nu.brightness)
    colour += (1.0 - colour) * shine * body

    if g["handle_r"] > 0:
        # A ring on the body's side, behind it: drawn first, the body covers its inner part.
        hy_ = g["handle_y"]
        side_w = w * (1.0 + g["taper"] * max(-1.0, min(1.0, hy_ / h)))
        cx = side_w + 0.55 * g["handle_r"]
        ring = np.abs(np.sqrt((x - cx) ** 2 + (y - hy_) ** 2) - g["handle_r"]) - 0.03
        handle = _coverage(ring, gain) * (x > 0)
        rgb += (pal["handle"] * shade - rgb) * handle
    rgb += (colour - rgb) * mask
    rgb += (pal["accent"] * shade - rgb) * cap

    k = SUPERSAMPLE
    out = rgb.reshape(3, size, k, size, k).mean(axis=(2, 4))
    out = np.clip(out * 255.0 + 0.5, 0.0, 255.0)
    return out.astype(np.uint8).transpose(1, 2, 0)


def render_products(
    attrs: Sequence[ProductAttributes], nuisances: Sequence[ProductNuisance], size: int = 32
) -> np.ndarray:
    """Product i is (attrs[i], nuisances[i]) -> (B, size, size, 3) uint8 RGB."""
    return render_batch(
        render_product,
        attrs,
        nuisances,
        check_size(size),
        "render_products needs one nuisance per product: got {attrs} attribute sets "
        "and {nuisances} nuisances",
    )


def iter_product(
    seed: int, n: int, nuisance_seed: int = 0, size: int = 32
) -> Iterator[tuple[np.ndarray, ProductNuisance]]:
    """n photos of product `seed`, one at a time; nuisances from (seed, nuisance_seed)."""
    return iter_photos(
        render_product,
        product_attributes,
        product_nuisance_rng,
        sample_product_nuisance,
        seed,
        n,
        nuisance_seed,
        size,
    )


def render_product_identity(
    seed: int, n: int, nuisance_seed: int = 0, size: int = 32
) -> list[tuple[np.ndarray, ProductNuisance]]:
    """n photos of product `seed` (a list of (image, nuisance))."""
    return list(iter_product(seed, n, nuisance_seed, size))
