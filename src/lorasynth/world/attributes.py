"""Who a mini-world face is (identity attributes) and how one photo of them looks (nuisances).

An identity is any Python int; its attributes are drawn from a generator seeded by that int
alone, so nuisance sampling can never change who a face is. Captions name the nuisances that a
downstream model should obey (background colour above all), never the identity.
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

# Domain tags keep the identity and nuisance streams of one seed independent of each other.
_IDENTITY_DOMAIN = 0x1D3A7
_NUISANCE_DOMAIN = 0x6E15A

# Caption thresholds; sample_nuisance keeps values away from them so captions are unambiguous.
SMILE_THRESHOLD = 0.5
EYES_CLOSED_THRESHOLD = 0.3
TURNED_THRESHOLD = 0.5


def identity_rng(seed: int) -> np.random.Generator:
    """The generator that fixes an identity's attributes; depends on the identity seed only."""
    return stream_rng(_IDENTITY_DOMAIN, (seed, "identity seed"))


def nuisance_rng(seed: int, nuisance_seed: int = 0) -> np.random.Generator:
    """The generator for the nuisances of one identity's photos."""
    return stream_rng(_NUISANCE_DOMAIN, (seed, "identity seed"), (nuisance_seed, "nuisance seed"))


@dataclass(frozen=True)
class IdentityAttributes(AttributeVector):
    """Continuous identity attributes, each in [0, 1]; render.py maps them to geometry/colour.

    The field order is the order of `as_vector()` and of `ATTRIBUTE_NAMES`: never reorder,
    only append (it is the ground truth an attribute regressor is scored against).
    """

    head_width: float
    head_height: float
    jaw_taper: float  # 0 square jaw, 1 pointed chin
    skin_tone: float  # 0 very light, 1 very dark
    skin_undertone: float  # 0 cool/pink, 1 warm/olive
    eye_spacing: float
    eye_size: float
    eye_height: float  # vertical position of the eye line
    eye_colour: float  # dark brown -> hazel -> green -> blue -> grey
    brow_thickness: float
    brow_tilt: float  # 0 inner ends down (stern), 1 inner ends up (worried)
    nose_length: float
    nose_width: float
    mouth_width: float
    lip_colour: float  # pale pink -> red -> brown
    hair_colour: float  # black -> brown -> auburn -> blond -> platinum
    hair_length: float  # 0 cropped, 1 past the shoulders
    hair_volume: float  # how far the hair stands out from the skull
    hair_fringe: float  # 0 high/receding hairline, 1 low fringe
    hair_parting: float  # 0 parted far left, 0.5 centre, 1 far right
    ear_size: float
    facial_hair: float  # 0 clean shaven, 1 full beard

    ATTRIBUTE_NAMES: ClassVar[tuple[str, ...]]
    _KIND: ClassVar[str] = "identity"


ATTRIBUTE_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(IdentityAttributes))
IdentityAttributes.ATTRIBUTE_NAMES = IdentityAttributes._FIELDS = ATTRIBUTE_NAMES


def identity_attributes(seed: int) -> IdentityAttributes:
    """The attributes of identity `seed` (any int, negative or huge included); deterministic."""
    # Uniform draws spread identities evenly over the attribute cube: that is what keeps
    # tens of thousands of them visibly apart.
    values = identity_rng(seed).random(len(ATTRIBUTE_NAMES))
    return IdentityAttributes.from_vector(values)


@dataclass(frozen=True)
class Nuisance(NuisanceRecord):
    """How one photo of an identity looks: pose, lighting, expression, background, accessories.

    yaw in [-1, 1] turns the face toward the image's right when positive; roll in degrees;
    offsets in fractions of the image width/height; light angle in degrees (0 = from the
    image's right, 90 = from below), strength in [0, 1]; smile and eye openness in [0, 1].
    """

    yaw: float = 0.0
    roll_deg: float = 0.0
    offset_x: float = 0.0
    offset_y: float = 0.0
    scale: float = 1.0
    light_angle_deg: float = 0.0
    light_strength: float = 0.0
    brightness: float = 1.0
    smile: float = 0.0
    eye_openness: float = 1.0
    background: str = "gray"
    glasses: bool = False
    hat: bool = False

    _RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "yaw": (-1.0, 1.0),
        **PHOTO_RANGES,
        "smile": (0.0, 1.0),
        "eye_openness": (0.0, 1.0),
    }

    _FLAGS: ClassVar[tuple[str, ...]] = ("glasses", "hat")


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    """One random nuisance; draws a fixed number of values in a fixed order (deterministic)."""
    u = rng.random(14)
    names = list(BACKGROUNDS)
    # Captioned quantities are bimodal, away from the caption thresholds, so "smiling" or
    # "facing left" is never a coin flip near the boundary.
    turned = u[0] < 0.35
    yaw = (0.6 + 0.4 * u[1]) * (1.0 if u[2] < 0.5 else -1.0) if turned else 0.5 * u[1] - 0.25
    smiling = u[3] < 0.5
    smile = 0.6 + 0.4 * u[4] if smiling else 0.3 * u[4]
    closed = u[5] < 0.12
    eye_openness = 0.15 * u[6] if closed else 0.6 + 0.4 * u[6]
    return Nuisance(
        yaw=float(yaw),
        roll_deg=float(24.0 * u[7] - 12.0),
        offset_x=float(0.16 * u[8] - 0.08),
        offset_y=float(0.12 * u[9] - 0.06),
        scale=float(0.85 + 0.3 * u[10]),
        light_angle_deg=float(360.0 * u[11]),
        light_strength=float(u[12]),
        brightness=float(0.85 + 0.3 * u[13]),
        smile=float(smile),
        eye_openness=float(eye_openness),
        background=names[int(rng.integers(len(names)))],
        glasses=bool(rng.random() < 0.25),
        hat=bool(rng.random() < 0.2),
    )


def caption(nuisance: Nuisance, subject: str = "a photo of a person") -> str:
    """The training caption: subject, then the captioned nuisances, comma separated.

    e.g. "a photo of a person, smiling, blue background, wearing glasses".
    Directions are the image's ("facing left" = the face turned toward the image's left).
    """
    parts = [subject]
    if nuisance.smile >= SMILE_THRESHOLD:
        parts.append("smiling")
    if nuisance.eye_openness < EYES_CLOSED_THRESHOLD:
        parts.append("eyes closed")
    if nuisance.yaw >= TURNED_THRESHOLD:
        parts.append("facing right")
    elif nuisance.yaw <= -TURNED_THRESHOLD:
        parts.append("facing left")
    parts.append(f"{nuisance.background} background")
    worn = [name for name, on in (("glasses", nuisance.glasses), ("a hat", nuisance.hat)) if on]
    if worn:
        parts.append("wearing " + " and ".join(worn))
    return ", ".join(parts)
