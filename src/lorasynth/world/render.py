"""Procedural cartoon faces for the mini-world: identity attributes + nuisance -> RGB image.

A face is drawn with numpy on a supersampled pixel grid: every shape is a soft-edged coverage
mask from an approximate distance field, composited back to front, and the grid is then
box-filtered down. Small features are computed only inside a window around them; geometry is
worked out once per face in plain floats, so the pixel work is a few hundred numpy calls.

Face units: origin at the head's centre, y down, one unit = half the image at scale 1. Pose,
offset and scale only change the mapping from pixels to face units.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from lorasynth.world.attributes import (
    BACKGROUNDS,
    IdentityAttributes,
    Nuisance,
    identity_attributes,
    nuisance_rng,
    sample_nuisance,
)
from lorasynth.world.render_common import (  # noqa: F401  (MIN_SIZE, MAX_SIZE: re-exported)
    MAX_SIZE,
    MIN_SIZE,
    SUPERSAMPLE,
    check_size,
    iter_photos,
    render_batch,
)

_HEAD_Y = -0.14  # head centre in the image at zero offset (room for the shoulders below)
_PIVOT_Y = 0.55  # the head tilts (roll) about the neck, not about its own centre
_MAX_YAW_RAD = 0.55
_PAD = 0.05  # face units added around every window; soft edges and rounding live inside it

Colour = tuple[float, float, float]
Params = dict[str, float | np.ndarray]
Window = tuple[slice, slice]
Scalar = float | np.ndarray  # a number, or one per pixel

# Colour ramps (sRGB 0-255), read piecewise-linearly by an attribute in [0, 1].
_SKIN: tuple[Colour, ...] = (
    (255, 226, 204),
    (241, 196, 164),
    (224, 170, 130),
    (196, 134, 92),
    (160, 102, 66),
    (118, 74, 46),
    (78, 50, 34),
)
_WARM: Colour = (0.06, 0.02, -0.07)  # skin undertone: +warm/olive, -cool/pink
_HAIR: tuple[Colour, ...] = (
    (22, 18, 18),
    (58, 38, 26),
    (104, 68, 40),
    (150, 72, 34),
    (200, 160, 92),
    (236, 214, 150),
    (212, 212, 208),
)
_EYES: tuple[Colour, ...] = (
    (52, 30, 18),
    (100, 62, 30),
    (130, 104, 46),
    (60, 120, 64),
    (50, 110, 190),
    (120, 132, 146),
)
_LIPS: tuple[Colour, ...] = ((226, 150, 150), (204, 96, 110), (172, 44, 58), (132, 62, 54))
_SHIRT: Colour = (70, 86, 112)
_SCLERA: Colour = (246, 244, 238)
_LINE: Colour = (34, 24, 22)  # eye outlines and nostrils
_PUPIL: Colour = (8, 8, 10)
_FRAME: Colour = (24, 24, 30)
_TEETH: Colour = (250, 250, 246)
_MOUTH_LINE: Colour = (96, 34, 36)
_HAT_ON_LIGHT: tuple[Colour, Colour] = ((44, 46, 66), (170, 40, 40))  # (crown, band)
_HAT_ON_DARK: tuple[Colour, Colour] = ((214, 196, 160), (60, 60, 70))


def _clamp(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def _unit(rgb: Colour) -> Colour:
    """0-255 -> 0-1."""
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)


def _ramp(table: tuple[Colour, ...], t: float) -> Colour:
    """Piecewise-linear colour at t in [0, 1], in 0-1 units."""
    pos = t * (len(table) - 1)
    i = min(int(pos), len(table) - 2)
    f = pos - i
    lo, hi = table[i], table[i + 1]
    return _unit(
        (lo[0] + (hi[0] - lo[0]) * f, lo[1] + (hi[1] - lo[1]) * f, lo[2] + (hi[2] - lo[2]) * f)
    )


def _mix(x: Colour, y: Colour, t: float) -> Colour:
    return (x[0] + (y[0] - x[0]) * t, x[1] + (y[1] - x[1]) * t, x[2] + (y[2] - x[2]) * t)


def _arr(rgb: Colour, factor: float = 1.0) -> np.ndarray:
    """A 0-1 colour, times `factor`, as a (3, 1, 1) float32 array (channels-first canvas)."""
    return np.array([_clamp(c * factor, 0.0, 1.0) for c in rgb], dtype=np.float32).reshape(3, 1, 1)


def _face_params(at: IdentityAttributes, nu: Nuisance) -> Params:
    """Geometry (face units, plain floats) and colours ((3, 1, 1) arrays) of one face."""
    p: Params = {}
    yaw = nu.yaw * _MAX_YAW_RAD
    sin_y, cos_y = math.sin(yaw), math.cos(yaw)
    p["sin_yaw"] = sin_y

    a = 0.37 + 0.14 * at.head_width
    b = 0.48 + 0.13 * at.head_height
    p["a"], p["b"] = a, b
    p["taper"] = 0.02 + 0.45 * at.jaw_taper

    # Features sit at a depth z in front of the head's centre: turning the head by `yaw`
    # moves them by z*sin(yaw) and foreshortens the one on the turning side.
    eye_dx = a * (0.3 + 0.2 * at.eye_spacing)
    eye_z = math.sqrt(max(a * a - eye_dx * eye_dx, 0.0)) + 0.05
    eye_y = b * (-0.16 + 0.24 * at.eye_height)
    eye_rx = 0.066 + 0.05 * at.eye_size
    p["eye_y"], p["eye_rx"] = eye_y, eye_rx
    p["eye_ry"] = eye_rx * (0.04 + 0.72 * nu.eye_openness)
    p["gaze"] = sin_y * eye_rx * 0.35
    for side, name in ((-1.0, "l"), (1.0, "r")):
        p[f"eye_x_{name}"] = side * eye_dx * cos_y + eye_z * sin_y
        turn = max(side * sin_y, 0.0) / math.sin(_MAX_YAW_RAD)
        p[f"eye_fs_{name}"] = 1.0 - 0.45 * turn

    brow_half_thick = 0.014 + 0.032 * at.brow_thickness
    p["brow_half_len"] = eye_rx * 1.3 + 0.015
    p["brow_half_thick"] = brow_half_thick
    p["brow_slope"] = (at.brow_tilt - 0.5) * 0.9
    p["brow_y"] = eye_y - eye_rx * 0.75 - 0.05 - brow_half_thick

    nose_len = b * (0.2 + 0.2 * at.nose_length)
    nose_half_w = a * (0.07 + 0.15 * at.nose_width)
    nose_x = a * 1.05 * sin_y
    p["nose_x"], p["nose_len"], p["nose_half_w"] = nose_x, nose_len, nose_half_w
    p["nose_bottom"] = eye_y + nose_len
    light_angle = math.radians(nu.light_angle_deg)
    # The bridge's shadow falls on the side away from the light.
    p["nose_shadow_x"] = nose_x + (-0.45 if math.cos(light_angle) >= 0 else 0.45) * nose_half_w

    smile = nu.smile
    p["mouth_x"] = a * 0.9 * sin_y
    p["mouth_y"] = min(eye_y + nose_len + 0.07 + 0.03 * smile, b * 0.78)
    p["mouth_half_w"] = a * (0.18 + 0.36 * at.mouth_width) * (1.0 - 0.2 * abs(sin_y))
    p["mouth_curve"] = -0.012 + 0.075 * smile  # corners rise as the smile grows
    p["lip_half"] = 0.032 + 0.02 * smile
    teeth = _clamp((smile - 0.45) * 4.0, 0.0, 1.0)  # a smile shows teeth, a neutral mouth a line
    mouth_inner = _mix(_unit(_MOUTH_LINE), _unit(_TEETH), teeth)
    p["mouth_inner_frac"] = 0.3 + 0.25 * teeth

    p["ear_x_l"] = -a * cos_y - 0.2 * a * sin_y
    p["ear_x_r"] = a * cos_y - 0.2 * a * sin_y
    p["ear_y"] = eye_y + 0.09
    p["ear_rx"] = 0.04 + 0.065 * at.ear_size
    p["ear_ry"] = 0.07 + 0.09 * at.ear_size

    vol = at.hair_volume
    hair_front = -b * (0.76 - 0.46 * at.hair_fringe)
    hair_x = 0.35 * a * sin_y
    hair_rx, hair_ry = a * (1.05 + 0.16 * vol), b * (1.03 + 0.12 * vol)
    hair_cy = -0.05 * b - 0.06 * b * vol
    p["hair_x"], p["hair_front"], p["hair_cy"] = hair_x, hair_front, hair_cy
    p["hair_rx"], p["hair_ry"] = hair_rx, hair_ry
    p["hair_slope"] = (at.hair_parting - 0.5) * 0.5 * b
    p["hair_drop"] = max(eye_y - hair_front, 0.05)  # sideburns come down to the eye line
    p["part_x"] = hair_x + (at.hair_parting - 0.5) * 1.3 * a
    hair_top, hair_end = hair_cy - hair_ry, b * (-0.3 + 2.0 * at.hair_length)
    p["back_x"], p["back_rx"] = 0.5 * hair_x, 0.97 * hair_rx
    p["back_y"], p["back_half"] = (hair_top + hair_end) / 2, max((hair_end - hair_top) / 2, 0.05)

    f = at.facial_hair
    # A third of identities are clean shaven; above that, stubble grows into a full beard.
    p["beard"] = 0.9 * _clamp((f - 0.3) / 0.7, 0.0, 1.0) + 0.06 * f
    p["beard_x"] = 0.6 * a * sin_y

    tone = _ramp(_SKIN, at.skin_tone)
    warm = at.skin_undertone - 0.5
    skin = (tone[0] + warm * _WARM[0], tone[1] + warm * _WARM[1], tone[2] + warm * _WARM[2])
    hair = _ramp(_HAIR, at.hair_colour)
    lips = _mix(skin, _ramp(_LIPS, at.lip_colour), 0.8)
    bg = _unit(BACKGROUNDS[nu.background])
    hat = _HAT_ON_DARK if 0.3 * bg[0] + 0.59 * bg[1] + 0.11 * bg[2] < 0.38 else _HAT_ON_LIGHT
    colours: dict[str, tuple[Colour, float]] = {  # name: (colour, brightness factor)
        "skin": (skin, 1.0),
        "skin_neck": (skin, 0.82),
        "skin_ear": (skin, 0.95),
        "skin_ear_in": (skin, 0.7),
        "skin_nose": (skin, 0.7),
        "skin_tip": (skin, 0.78),
        "hair": (hair, 1.0),
        "hair_dark": (hair, 0.78),
        "parting": (hair, 0.6),
        # Brows and beards of fair-haired people read darker than their hair.
        "brow": (hair, 0.55 + 0.25 * (1.0 - at.hair_colour)),
        "iris": (_ramp(_EYES, at.eye_colour), 1.0),
        "lips": (lips, 0.85 + 0.15 * (1.0 - at.skin_tone)),
        "mouth_inner": (mouth_inner, 1.0),
        "background": (bg, 1.0),
        "hat_crown": (_unit(hat[0]), 1.0),
        "hat_brim": (_unit(hat[0]), 0.8),
        "hat_band": (_unit(hat[1]), 1.0),
    }
    # One array for all colours: a numpy call per colour would cost more than the geometry.
    table = np.array(
        [[_clamp(c * f, 0.0, 1.0) for c in rgb] for rgb, f in colours.values()], np.float32
    ).reshape(-1, 3, 1, 1)
    p.update(zip(colours, table, strict=True))
    p["glasses"], p["hat"] = float(nu.glasses), float(nu.hat)

    p["light_x"] = 0.3 * nu.light_strength * math.cos(light_angle)
    p["light_y"] = 0.3 * nu.light_strength * math.sin(light_angle)
    p["brightness"] = nu.brightness
    p["roll"] = math.radians(nu.roll_deg)
    p["scale"] = nu.scale
    p["offset_x"], p["offset_y"] = 2.0 * nu.offset_x, 2.0 * nu.offset_y
    return p


# Fixed colours as canvas-ready arrays.
_C_SHIRT, _C_SCLERA, _C_LINE = _arr(_unit(_SHIRT)), _arr(_unit(_SCLERA)), _arr(_unit(_LINE))
_C_PUPIL, _C_FRAME = _arr(_unit(_PUPIL)), _arr(_unit(_FRAME))


def _clip01(x: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] in place (x is always a temporary)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _coverage(q: np.ndarray, r: float, gain: float) -> np.ndarray:
    """Coverage of {q < 1}, q a squared ellipse radius (overwritten), r its smaller radius.

    The distance to the edge is about (q - 1) * r / 2 near the edge, the only place where
    it matters; `gain` = 1 / (2 * edge width in face units).
    """
    k = r * gain
    q *= -k
    q += 0.5 + k
    return _clip01(q)


def _sq(x: np.ndarray, centre: float, inv: float) -> np.ndarray:
    """((x - centre) * inv) ** 2, in a new array."""
    out = x - centre
    out *= inv
    out *= out
    return out


def _ellipse(
    X: np.ndarray, Y: np.ndarray, cx: float, cy: float, rx: float, ry: float, gain: float
) -> np.ndarray:
    """Coverage of an axis-aligned ellipse."""
    q = _sq(X, cx, 1.0 / rx)
    q += _sq(Y, cy, 1.0 / ry)
    return _coverage(q, min(rx, ry), gain)


def _band(dist: np.ndarray, half_width: Scalar, edge: float) -> np.ndarray:
    """Coverage of |dist| < half_width by a pixel 1/edge wide (exact across the band).

    The cap at the band's own width in pixels gives thin lines their true, faint coverage,
    and makes a band whose half width falls to zero (a lens tip) vanish instead of smearing.
    """
    out = np.abs(dist)
    np.subtract(half_width, out, out=out)
    out *= edge
    out += 0.5
    np.minimum(out, half_width * (2.0 * edge), out=out)
    return _clip01(out)


def _lens(along: np.ndarray, centre: float, half_len: float, half_width: float) -> np.ndarray:
    """Half width of a lens at each pixel, for `_band`: negative beyond the tips.

    Flat shapes (eyes, mouths, brims, brows) drawn as lenses keep crisp tips at any aspect
    ratio, where an ellipse's approximate distance would blur far along its long axis.
    """
    profile = _sq(along, centre, 1.0 / half_len)
    np.subtract(1.0, profile, out=profile)
    profile *= half_width
    return profile


def _above(y: np.ndarray, limit: Scalar, edge: float) -> np.ndarray:
    """Coverage of y < limit."""
    out = limit - y
    out *= edge
    out += 0.5
    return _clip01(out)


class _Canvas:
    """One supersampled image (channels first), its grid in face units, and the person mask."""

    def __init__(self, p: Params, size: int, windows: bool = True) -> None:
        n = size * SUPERSAMPLE
        self.n, self.windows = n, windows
        coords = (np.arange(n, dtype=np.float64) + 0.5) * (2.0 / n) - 1.0
        s, cr, sr = p["scale"], math.cos(p["roll"]), math.sin(p["roll"])
        self.s, self.cr, self.sr = s, cr, sr
        # Pixel -> face units: undo offset and scale, then the roll about the neck pivot.
        self.qx, self.qy = p["offset_x"], p["offset_y"] + (_HEAD_Y + _PIVOT_Y) * s
        dx = ((coords - self.qx) / s).astype(np.float32).reshape(1, n)
        dy = ((coords - self.qy) / s).astype(np.float32).reshape(n, 1)
        self.X = np.float32(cr) * dx + np.float32(sr) * dy
        self.Y = np.float32(cr) * dy - np.float32(sr) * dx
        self.Y += np.float32(_PIVOT_Y)
        self.Xb, self.Yb = dx, dy + np.float32(_PIVOT_Y)  # the body does not roll
        self.gain = s * n / 4.0  # 1 / (2 * one supersampled pixel, in face units)
        self.edge = 2.0 * self.gain
        self.rgb = np.empty((3, n, n), dtype=np.float32)
        self.rgb[...] = p["background"]
        self.person = np.zeros((n, n), dtype=np.float32)

    def window(self, cx: float, cy: float, hx: float, hy: float) -> Window:
        """The pixel rows and columns covering a face-unit box (centre, half sizes)."""
        if not self.windows:
            return slice(None), slice(None)
        hx, hy = hx + _PAD, hy + _PAD
        s, cr, sr = self.s, self.cr, self.sr
        ix = self.qx + s * (cr * cx - sr * (cy - _PIVOT_Y))  # box centre, image coordinates
        iy = self.qy + s * (sr * cx + cr * (cy - _PIVOT_Y))
        ex = s * (abs(cr) * hx + abs(sr) * hy)  # half extents of the rotated box
        ey = s * (abs(sr) * hx + abs(cr) * hy)
        half, n = self.n / 2.0, self.n

        def span(lo: float, hi: float) -> slice:
            start = math.floor((lo + 1.0) * half) - 1
            stop = math.ceil((hi + 1.0) * half) + 1
            return slice(min(max(start, 0), n), min(max(stop, 0), n))

        return span(iy - ey, iy + ey), span(ix - ex, ix + ex)

    def row_of_body_y(self, y: float) -> float:
        """The (fractional) pixel row of a height in body coordinates (no roll)."""
        return ((y - _PIVOT_Y) * self.s + self.qy + 1.0) * self.n / 2.0 - 0.5

    def xy(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Face-unit coordinates of the pixels in a window."""
        return self.X[win], self.Y[win]

    def paint(
        self, win: Window, alpha: np.ndarray, colour: np.ndarray, person: bool = False
    ) -> None:
        """Composite a (3, 1, 1) colour over the window with coverage `alpha`."""
        region = self.rgb[:, win[0], win[1]]
        diff = colour - region
        diff *= alpha
        region += diff
        if person:
            target = self.person[win]
            np.maximum(target, alpha, out=target)


def _draw_body(c: _Canvas, p: Params) -> None:
    """Shoulders, long hair and neck: everything behind the head."""
    a, gain = p["a"], c.gain
    # The shirt does not roll: its rows are those below its top in body coordinates.
    top = min(max(math.floor(c.row_of_body_y(0.72 - 1.0 / gain)), 0), c.n) if c.windows else 0
    win = (slice(top, None), slice(None))
    shirt = _sq(c.Xb, 0.0, 1.0 / 0.86) + _sq(c.Yb[top:], 1.34, 1.0 / 0.62)  # (1, n) + (m, 1)
    c.paint(win, _coverage(shirt, 0.62, gain), _C_SHIRT, True)

    # Long hair hangs behind the head: a box with rounded ends and flat sides.
    hx, hrx, mid, half = p["back_x"], p["back_rx"], p["back_y"], p["back_half"]
    win = c.window(hx, mid, hrx, half)
    X, Y = c.xy(win)
    q = _sq(Y, mid, 1.0 / half)
    q *= q
    q += _sq(X, hx, 1.0 / hrx)
    c.paint(win, _coverage(q, hrx, gain), p["hair_dark"], True)

    # The neck is in front of long hair and ends in an open collar over the shirt.
    win = c.window(0.0, 0.45, a * 0.4, 0.45)
    X, Y = c.xy(win)
    neck = _band(X, a * 0.4, c.edge)
    neck *= _above(Y, 0.84, c.edge)
    neck *= Y > 0
    c.paint(win, neck, p["skin_neck"], True)


def _draw_head(c: _Canvas, p: Params) -> None:
    """Ears, the head itself and the beard."""
    a, b, gain = p["a"], p["b"], c.gain
    ey, erx, ery = p["ear_y"], p["ear_rx"], p["ear_ry"]
    # Both ears at once, mirrored about their midpoint (as the eyes are).
    mid, half_gap = 0.5 * (p["ear_x_l"] + p["ear_x_r"]), 0.5 * (p["ear_x_r"] - p["ear_x_l"])
    win = c.window(mid, ey, half_gap + erx, ery)
    X, Y = c.xy(win)
    du = X - mid
    np.abs(du, out=du)
    du -= half_gap
    du *= du
    dv = _sq(Y, ey, 1.0)
    ear = du * (1.0 / (erx * erx))
    ear += dv * (1.0 / (ery * ery))
    c.paint(win, _coverage(ear, erx, gain), p["skin_ear"], True)
    du *= 1.0 / (0.2 * erx * erx)
    dv *= 1.0 / (0.36 * ery * ery)
    du += dv
    inner = _coverage(du, 0.45 * erx, gain)
    inner *= 0.5
    c.paint(win, inner, p["skin_ear_in"])

    win = c.window(0.0, 0.0, a, b)
    X, Y = c.xy(win)
    t = Y * (1.0 / b)
    _clip01(t)
    t *= t
    t *= -p["taper"]
    t += 1.0  # the head's half width, in units of a: the jaw narrows toward the chin
    q = X * (1.0 / a)
    q /= t
    q *= q
    q += _sq(Y, 0.0, 1.0 / b)
    head = _coverage(q, min(a * (1.0 - p["taper"]), b), gain)
    c.paint(win, head, p["skin"], True)

    # Beard: the head below a line from under the nose that rises toward the sideburns.
    if p["beard"] > 0:
        line = _sq(X, p["beard_x"], 1.0 / a)
        line *= -0.45 * b
        line += p["nose_bottom"] + 0.025
        beard = _above(line, Y, c.edge)
        beard *= head
        beard *= p["beard"]
        c.paint(win, beard, p["brow"])


def _draw_nose_mouth(c: _Canvas, p: Params) -> None:
    """A shaded nose bridge, tip and nostrils; lips and the line or teeth between them."""
    gain, edge = c.gain, c.edge
    nx, nb, nw, nl = p["nose_x"], p["nose_bottom"], p["nose_half_w"], p["nose_len"]
    win = c.window(nx, nb - nl * 0.5, nw * 1.2, nl * 0.5 + 0.04)
    X, Y = c.xy(win)
    bridge = _band(X - p["nose_shadow_x"], _lens(Y, nb - nl * 0.45, nl * 0.5, nw * 0.32), edge)
    bridge *= 0.35
    c.paint(win, bridge, p["skin_nose"])
    tip = _ellipse(X, Y, nx, nb - 0.02, nw, 0.04, gain)
    tip *= 0.65
    c.paint(win, tip, p["skin_tip"])
    dv = _sq(Y, nb - 0.012, 1.0 / 0.016)
    nostrils = _sq(X, nx - nw * 0.5, 1.0 / (nw * 0.28))
    nostrils += dv
    right = _sq(X, nx + nw * 0.5, 1.0 / (nw * 0.28))
    right += dv
    np.minimum(nostrils, right, out=nostrils)
    nostrils = _coverage(nostrils, min(nw * 0.28, 0.016), gain)
    nostrils *= 0.6
    c.paint(win, nostrils, _C_LINE)

    # Mouth: a lens between two parabolas whose corners rise with the smile.
    mx, my, mw = p["mouth_x"], p["mouth_y"], p["mouth_half_w"]
    win = c.window(mx, my, mw, 0.1)
    X, Y = c.xy(win)
    um = _sq(X, mx, 1.0 / mw)
    dist = um - 0.35
    dist *= p["mouth_curve"]
    dist += Y
    dist -= my
    np.subtract(1.0, um, out=um)
    um *= p["lip_half"]  # lip half-thickness, thinning toward the corners
    c.paint(win, _band(dist, um, edge), p["lips"])
    um *= p["mouth_inner_frac"]
    inner = _band(dist, um, edge)
    inner *= 0.9
    c.paint(win, inner, p["mouth_inner"])


def _eye_relative(X: np.ndarray, p: Params) -> tuple[np.ndarray, np.ndarray]:
    """Both eyes at once: the distance outward from the nearer eye's centre, undoing its
    foreshortening (the eyes mirror each other about their midpoint), and the side (+-1).

    Drawing the pair in these mirrored coordinates halves the numpy calls of eyes, brows
    and glasses, which is most of their cost at 32x32.
    """
    xl, xr = p["eye_x_l"], p["eye_x_r"]
    mid = 0.5 * (xl + xr)
    right = mid < X
    out = X - mid
    np.abs(out, out=out)
    out -= 0.5 * (xr - xl)
    out *= np.where(right, np.float32(1.0 / p["eye_fs_r"]), np.float32(1.0 / p["eye_fs_l"]))
    return out, np.where(right, np.float32(1.0), np.float32(-1.0))


def _draw_eyes(c: _Canvas, p: Params) -> None:
    """Eyes (outline, white, iris, pupil; the opening shrinks as they close) and brows."""
    gain, edge = c.gain, c.edge
    ey, erx, ery, gaze = p["eye_y"], p["eye_rx"], p["eye_ry"], p["gaze"]
    by, bl, bt, slope = p["brow_y"], p["brow_half_len"], p["brow_half_thick"], p["brow_slope"]
    top, bottom = by - bt - bl * 0.45, ey + erx * 0.8
    half_gap = 0.5 * (p["eye_x_r"] - p["eye_x_l"])
    win = c.window(
        0.5 * (p["eye_x_l"] + p["eye_x_r"]),
        0.5 * (top + bottom),
        half_gap + max(bl, erx + 0.02),
        0.5 * (bottom - top),
    )
    X, Y = c.xy(win)
    xo, side = _eye_relative(X, p)
    dy = Y - ey
    c.paint(win, _band(dy, _lens(xo, 0.0, erx + 0.018, ery + 0.018), edge), _C_LINE)
    white = _band(dy, _lens(xo, 0.0, erx, ery), edge)
    c.paint(win, white, _C_SCLERA)
    # Iris and pupil: circles shifted by the gaze (toward the side the head turns).
    q = side * np.float32(-gaze)
    q += xo
    q *= q
    dy *= dy
    q += dy
    fs = min(p["eye_fs_l"], p["eye_fs_r"])
    iris = _coverage(q * (1.0 / (0.6 * erx) ** 2), 0.6 * erx * fs, gain)
    iris *= white
    c.paint(win, iris, p["iris"])
    q *= 1.0 / (0.27 * erx) ** 2
    pupil = _coverage(q, 0.27 * erx * fs, gain)
    pupil *= white
    c.paint(win, pupil, _C_PUPIL)

    # Brows: flat-ended, sheared so that their inner ends rise or fall with the tilt.
    across = xo * -slope
    across += Y
    across -= by
    half = _sq(xo, 0.0, 1.0 / bl)
    half *= half
    np.subtract(1.0, half, out=half)
    half *= bt  # half thickness: flat along the brow, quickly thinning at its ends
    c.paint(win, _band(across, half, edge), p["brow"])


def _draw_top(c: _Canvas, p: Params) -> None:
    """Hair on top, hat and glasses: everything in front of the face."""
    a, b, gain, edge = p["a"], p["b"], c.gain, c.edge
    hx, hrx, hry, hcy = p["hair_x"], p["hair_rx"], p["hair_ry"], p["hair_cy"]
    win = c.window(hx, hcy, hrx, hry)
    X, Y = c.xy(win)
    ux = X - hx
    ux *= 1.0 / a
    hairline = ux * p["hair_drop"]
    hairline += p["hair_slope"]
    hairline *= ux
    hairline += p["hair_front"]  # drops from the fringe toward the sideburns
    cap = _ellipse(X, Y, hx, hcy, hrx, hry, gain)
    cap *= _above(Y, hairline, edge)
    c.paint(win, cap, p["hair"], True)
    parting = _band(X - p["part_x"], 0.012, edge)
    parting *= _above(Y, p["hair_front"] - 0.03, edge)
    parting *= cap
    parting *= 0.6
    c.paint(win, parting, p["parting"])

    if p["hat"]:
        band_y, cx = -b * 0.42, hx * 0.4
        win = c.window(cx, -b * 0.7, a * 1.32, b * 0.5)
        X, Y = c.xy(win)
        crown = _ellipse(X, Y, cx, -b * 0.5, a * 1.12, b * 0.66, gain)
        crown *= _above(Y, band_y, edge)
        c.paint(win, crown, p["hat_crown"], True)
        stripe = _band(Y - (band_y - 0.07), 0.035, edge)
        stripe *= crown
        c.paint(win, stripe, p["hat_band"])
        brim = _band(Y - band_y, _lens(X, cx, a * 1.32, 0.05), edge)
        c.paint(win, brim, p["hat_brim"], True)

    if p["glasses"]:
        ey, radius = p["eye_y"], p["eye_rx"] * 1.35 + 0.04
        win = c.window(0.0, ey, a + 0.25, radius)
        X, Y = c.xy(win)
        xo, _ = _eye_relative(X, p)
        r = xo * xo
        r += _sq(Y, ey, 1.0)
        np.sqrt(r, out=r)
        r -= radius
        frame = _band(r, 0.026, edge)
        bridge = _band(Y - (ey - 0.03), 0.022, edge)
        bridge *= xo < -radius  # between the rims
        np.maximum(frame, bridge, out=frame)
        # Arms run from the rims back to the ears.
        arms = _band(Y - ey, 0.02, edge)
        arms *= (xo > radius) & (np.abs(X) < a)
        np.maximum(frame, arms, out=frame)
        c.paint(win, frame, _C_FRAME)


def _light_and_downsample(c: _Canvas, p: Params, size: int) -> np.ndarray:
    """Light the person (not the background: it keeps its named colour), then box-filter."""
    if p["light_x"] or p["light_y"] or p["brightness"] != 1.0:
        shade = c.X * (1.0 / p["a"])
        np.clip(shade, -1.3, 1.3, out=shade)
        shade *= p["light_x"]
        ramp_y = c.Y * (1.0 / p["b"])
        np.clip(ramp_y, -1.3, 1.3, out=ramp_y)
        ramp_y *= p["light_y"]
        shade += ramp_y
        shade += 1.0
        shade *= p["brightness"]
        shade -= 1.0
        shade *= c.person
        shade += 1.0
        c.rgb *= shade
    k = SUPERSAMPLE
    out = c.rgb[:, 0::k, 0::k].copy()
    for i in range(k):
        for j in range(k):
            if i or j:
                out += c.rgb[:, i::k, j::k]
    out *= 255.0 / (k * k)
    out += 0.5
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8).transpose(1, 2, 0)


def _render(p: Params, size: int, windows: bool = True) -> np.ndarray:
    """Draw one face from its `_face_params` -> (size, size, 3) uint8."""
    c = _Canvas(p, size, windows)
    _draw_body(c, p)
    _draw_head(c, p)
    _draw_nose_mouth(c, p)
    _draw_eyes(c, p)
    _draw_top(c, p)
    return _light_and_downsample(c, p, size)


def render_face(attrs: IdentityAttributes, nuisance: Nuisance, size: int = 32) -> np.ndarray:
    """One face -> (size, size, 3) uint8 RGB; the same inputs always give the same bytes."""
    return _render(_face_params(attrs, nuisance), check_size(size))


def render_faces(
    attrs: Sequence[IdentityAttributes], nuisances: Sequence[Nuisance], size: int = 32
) -> np.ndarray:
    """Face i is (attrs[i], nuisances[i]) -> (B, size, size, 3) uint8 RGB."""
    return render_batch(
        render_face,
        attrs,
        nuisances,
        check_size(size),
        "render_faces needs one nuisance per face: got {attrs} attribute sets "
        "and {nuisances} nuisances",
    )


def iter_identity(
    seed: int, n: int, nuisance_seed: int = 0, size: int = 32
) -> Iterator[tuple[np.ndarray, Nuisance]]:
    """Like `render_identity`, one photo at a time (for long runs that stream to disk)."""
    return iter_photos(
        render_face,
        identity_attributes,
        nuisance_rng,
        sample_nuisance,
        seed,
        n,
        nuisance_seed,
        size,
    )


def render_identity(
    seed: int, n: int, nuisance_seed: int = 0, size: int = 32
) -> list[tuple[np.ndarray, Nuisance]]:
    """n photos of identity `seed`; nuisances come from a generator of (seed, nuisance_seed)."""
    return list(iter_identity(seed, n, nuisance_seed, size))
